"""The machine's lock: who may touch the devices, and when.

Devices are plain Python objects, touched by whatever handles an exit and by
threads that look at them while the guest runs (the end-of-input watch of
``minikvm run``, the recorder saving them, another vCPU's loop). The rule is
one mutex: whoever touches a device holds it -- with one exception that
makes the commonest case cheap.

A machine with one vCPU has one run loop, and while nobody else is at the
devices it takes no lock at all: a ``threading.Lock`` taken and given back
around every exit was ~860 of the ~9,500 user-space instructions of an exit
(callgrind, ``benchmarks/exit_latency.py``'s guest; the handshake below
costs about half of that, and touches no lock's memory after ``KVM_RUN``
left the caches cold). That loop is the *owner* (:meth:`DeviceLock.own`).
Every other thread still takes the mutex, and announces itself first; the
owner looks for announcements before each exit's device work and, when
there is one, takes the mutex too. (With several vCPUs one loop becomes the
owner and the others announce themselves for their whole run, so all take
the mutex: the fast path is for the one-vCPU machine.)

Announcement and look form Dekker's handshake (Dijkstra, "Cooperating
sequential processes", 1965): the owner *first* says it is busy, *then*
looks whether anyone is wanted; another thread *first* says it wants the
devices, *then* waits until the owner is not busy. In either order of the
four steps at least one side sees the other: the owner sees the wish and
takes the mutex, or the other thread sees the owner busy and waits for it
to finish. The steps are Python attribute stores and loads, which CPython's
global interpreter lock orders one after the other across threads (a thread
switch hands the GIL over through a mutex: a full memory barrier). A
free-threaded Python (3.13t without the GIL) gives no such order -- a load
may pass an earlier store to another address -- so there :meth:`DeviceLock.own`
refuses and every loop takes the mutex.

The rule that was always there stays: the lock is not re-entrant. A listener
or a device that takes ``machine.lock`` while its run loop is at the devices
is an error. On the owner's fast path (no mutex held) it would work alone and
hang only on the day another thread wants the devices too, so there it is
refused at once (``RuntimeError``); everywhere else the mutex is held and it
hangs at once, as any non-re-entrant lock does.
"""

from __future__ import annotations

import sys
import threading
import time

__all__ = ["DeviceLock"]

#: How long a thread that wants the devices sleeps between two looks at a
#: busy owner: first 0.1 ms (the owner is busy for one exit's device work,
#: microseconds), doubling up to 5 ms when the work blocks (ACPI S3 sleeps in
#: a port write; a console write may wait for a full pipe), so that a waiting
#: thread does not spin on the CPU the guest needs.
_POLL_FIRST = 0.0001
_POLL_MOST = 0.005


def _gil_orders_threads() -> bool:
    """Whether attribute stores and loads of different threads happen in
    one order: true with the global interpreter lock (every CPython before
    3.13, and 3.13+ unless built and run free-threaded)."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    return is_gil_enabled is None or bool(is_gil_enabled())


class DeviceLock:
    """The devices' lock (:attr:`Machine.lock <minikvm.machine.Machine.lock>`).

    ``with lock:`` (or :meth:`acquire`/:meth:`release`) from any thread.
    The owner's run loop uses :attr:`busy`, :attr:`wanted` and
    :attr:`mutex` directly, as :meth:`own` describes.
    """

    __slots__ = ("mutex", "owner", "busy", "wanted", "_guard", "_announced")

    def __init__(self) -> None:
        #: The mutex everyone but the owner's fast path holds at the devices.
        self.mutex = threading.Lock()
        #: The thread (``threading.get_ident()``) of the run loop that may
        #: touch the devices without the mutex while nobody else wants them.
        self.owner: int | None = None
        #: The owner is at the devices without the mutex right now.
        self.busy = False
        #: Threads other than the owner that hold or wait for the devices.
        self.wanted = 0
        self._guard = threading.Lock()   # for ``wanted``'s read-modify-write
        #: The mutex's current holder announced itself (so release withdraws it).
        self._announced = False

    # -- any thread ---------------------------------------------------------

    def acquire(self) -> None:
        """Take the devices: the mutex, and if a run loop owns them (on
        another thread) the announcement it looks for, then wait until it
        is not busy. The owner's own thread just takes the mutex -- unless
        it is busy at the devices right now (a listener or a device taking
        the lock inside the loop's device work): ``RuntimeError``, since the
        lock is not re-entrant."""
        me = threading.get_ident()
        if self.busy and self.owner == me:
            raise RuntimeError("Machine.lock is not re-entrant: taken inside the run loop's "
                               "own device work (from a listener or a device)")
        self.mutex.acquire()
        try:
            owner = self.owner   # read while holding the mutex: see own()
            if owner is not None and owner != me:
                self._announce()   # withdraws itself if interrupted
                self._announced = True
        except BaseException:
            # Interrupted while waiting (a signal handler raised): nothing
            # may stay taken, or the owner's next exit would wait for ever.
            self.mutex.release()
            raise

    def release(self) -> None:
        """Give the devices back."""
        if self._announced:
            self._announced = False
            self._withdraw()
        self.mutex.release()

    def __enter__(self) -> DeviceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def share(self) -> None:
        """Announce for a while (a run loop that is not the owner: another
        vCPU's), so that the owner takes the mutex for every exit until
        :meth:`unshare`; the caller takes the mutex itself for each access."""
        self._announce()

    def unshare(self) -> None:
        """End :meth:`share`."""
        self._withdraw()

    # -- the owner ------------------------------------------------------------

    def own(self) -> bool:
        """The calling thread's run loop becomes the owner, unless another
        thread's is (then False: :meth:`share` instead).

        The owner's loop, for each exit's device work: ``busy = True``,
        then look at ``wanted``; if it is 0, do the work and set ``busy =
        False``; else set ``busy = False`` and do the work holding
        :attr:`mutex`. :meth:`disown` when the loop ends.

        A thread that took the mutex before the owner was set did not
        announce itself; so the owner takes the mutex once here, after
        setting :attr:`owner`: whoever holds it is done before the first
        exit without it, and whoever takes it later reads :attr:`owner`
        (while holding it, :meth:`acquire`) and announces."""
        if not _gil_orders_threads():
            return False
        with self._guard:
            if self.owner is not None:
                return False
            self.owner = threading.get_ident()
        try:
            with self.mutex:
                pass
        except BaseException:   # interrupted while waiting: not the owner after all
            self.owner = None
            raise
        return True

    def disown(self) -> None:
        """The owner's loop ended: everyone takes the mutex again."""
        self.busy = False
        self.owner = None

    # -- the handshake ----------------------------------------------------------

    def _announce(self) -> None:
        """Say this thread wants the devices, then wait for a busy owner.
        Interrupted (a signal handler raised), it withdraws the wish
        itself: no ``wanted`` is left behind to slow every later exit."""
        with self._guard:
            self.wanted += 1
        # Only after the wish is visible: an owner busy now started its
        # exit's device work before it could see the wish, and finishes it.
        # (On the owner's own thread -- a loop run from inside its device
        # work -- there is nobody to wait for.)
        me = threading.get_ident()
        pause = _POLL_FIRST
        try:
            while self.busy and self.owner != me:
                time.sleep(pause)
                pause = min(pause * 2, _POLL_MOST)
        except BaseException:
            self._withdraw()
            raise

    def _withdraw(self) -> None:
        with self._guard:
            self.wanted -= 1
