"""The machine's lock (``minikvm/core/devicelock.py``): the run loop of one
vCPU touches the devices without the mutex while nobody else wants them, and
no other thread's access ever overlaps one of its own."""

from __future__ import annotations

import signal
import sys
import threading
import time

import pytest

from minikvm.core.devicelock import DeviceLock
from minikvm.devices.base import Device
from minikvm.machine import Machine, StopKind

PORTLOOP_COUNT = 0x1000 + 4   # where guests/asm/portloop.S keeps how many times to write


class Tally(Device):
    """A counter whose update is a read, a thread switch, a write: two
    updates that overlap lose one of them, and the count says so."""

    name = "tally"

    def __init__(self) -> None:
        self.count = 0

    def bump(self) -> None:
        seen = self.count
        time.sleep(0)   # let another thread run between the read and the write
        self.count = seen + 1

    def write(self, offset: int, size: int, value: int) -> None:
        self.bump()


def _owner_loop(lock: DeviceLock, tally: Tally, rounds: int) -> None:
    """What run_vcpu does per exit, as the owner (runloop.py)."""
    assert lock.own()
    try:
        for _ in range(rounds):
            lock.busy = True
            shared = lock.wanted
            if shared:
                lock.busy = False
                lock.mutex.acquire()
            try:
                tally.bump()
            finally:
                if shared:
                    lock.mutex.release()
                else:
                    lock.busy = False
            time.sleep(0)   # "KVM_RUN": the devices are free meanwhile
    finally:
        lock.disown()


def _race(lock: DeviceLock, others: int, rounds: int) -> int:
    """The owner and ``others`` threads (``with lock:``) bump one tally."""
    tally = Tally()
    owner = threading.Thread(target=_owner_loop, args=(lock, tally, rounds))
    owner.start()

    def other() -> None:
        for _ in range(rounds):
            with lock:
                tally.bump()

    threads = [threading.Thread(target=other) for _ in range(others)]
    for thread in threads:
        thread.start()
    for thread in [owner, *threads]:
        thread.join(timeout=60)
    return tally.count


def test_no_update_is_lost_between_the_owner_and_other_threads():
    assert _race(DeviceLock(), others=2, rounds=300) == 3 * 300


class Unannounced(DeviceLock):
    """A lock whose other threads take the mutex but never announce: the
    owner never sees them."""

    __slots__ = ()

    def _announce(self) -> None:
        pass

    def _withdraw(self) -> None:
        pass


@pytest.mark.slow
def test_without_the_announcement_updates_are_lost():
    """The test above can fail: with the handshake left out, the owner's
    unlocked updates overlap the other threads' (a race, so a few tries)."""
    assert any(_race(Unannounced(), others=2, rounds=300) < 3 * 300 for _ in range(5))


def test_one_loop_owns_the_devices_and_another_shares_them():
    lock = DeviceLock()
    assert lock.own() and lock.owner == threading.get_ident()
    second: list[bool] = []
    thread = threading.Thread(target=lambda: second.append(lock.own()))
    thread.start()
    thread.join()
    assert second == [False] and lock.wanted == 0
    with lock:                      # the owner's own thread: no announcement
        assert lock.wanted == 0
    lock.disown()
    assert lock.owner is None and not lock.busy


def test_another_thread_waits_while_the_owner_is_busy():
    lock = DeviceLock()
    assert lock.own()
    lock.busy = True
    entered = threading.Event()

    def other() -> None:
        with lock:
            entered.set()

    thread = threading.Thread(target=other, daemon=True)
    thread.start()
    assert not entered.wait(0.05)          # announced, waiting for the owner
    assert lock.wanted == 1
    lock.busy = False
    assert entered.wait(5)
    thread.join(5)
    assert lock.wanted == 0
    lock.disown()


@pytest.mark.kvm
def test_a_thread_at_a_device_while_the_guest_runs_loses_no_update(guests):
    """The guest bumps a device (each ``out`` to port 0x80) while another
    thread bumps it too through ``Machine.lock``: every update counts."""
    tally = Tally()
    with Machine() as machine:
        machine.load_flat(guests / "portloop.bin", 0x1000)
        machine.memory.write_u32(PORTLOOP_COUNT, 500)
        machine.add_pio_device(0x80, 1, tally)
        done = threading.Event()
        bumps = [0]

        def other() -> None:
            while not done.is_set():
                with machine.lock:
                    tally.bump()
                bumps[0] += 1

        thread = threading.Thread(target=other)
        thread.start()
        try:
            stop = machine.run(timeout=60)
        finally:
            done.set()
            thread.join(timeout=10)
        assert stop.kind is StopKind.HALT
        assert bumps[0] > 0 and tally.count == 500 + bumps[0]
        assert machine.lock.owner is None and machine.lock.wanted == 0


def test_sharing_from_the_owners_own_thread_does_not_wait_for_itself():
    """A loop started from inside the owner's device work (busy) shares the
    devices at once instead of waiting for its own thread."""
    lock = DeviceLock()
    done = threading.Event()

    def owner() -> None:
        assert lock.own()
        lock.busy = True
        lock.share()
        assert lock.wanted == 1
        lock.unshare()
        lock.disown()
        done.set()

    thread = threading.Thread(target=owner, daemon=True)   # a hang fails, not hangs
    thread.start()
    assert done.wait(5), "the owner waited for itself"


def test_the_lock_taken_inside_the_owners_own_device_work_is_refused():
    """Not re-entrant, as before: on the owner's fast path (no mutex held)
    it would work alone and hang the day another thread wants the devices,
    so it is refused every time."""
    lock = DeviceLock()
    assert lock.own()
    lock.busy = True
    with pytest.raises(RuntimeError, match="not re-entrant"):
        lock.acquire()
    lock.busy = False
    with lock:                      # between two exits: allowed
        pass
    lock.disown()
    assert not lock.mutex.locked() and lock.wanted == 0


@pytest.mark.kvm
def test_a_listener_that_takes_the_machine_lock_is_an_error_not_a_hang(guests):
    with Machine() as machine:
        machine.load_flat(guests / "portloop.bin", 0x1000)
        machine.memory.write_u32(PORTLOOP_COUNT, 5)

        def listener(event) -> None:
            with machine.lock:
                pass

        machine.listeners.append(listener)
        raised: list[BaseException] = []

        def run() -> None:
            try:
                machine.run(timeout=30)
            except BaseException as err:   # noqa: BLE001 -- what the run raised is the result
                raised.append(err)

        # On a thread of its own, so that a hang (the lock taken anyway,
        # while the halt watchdog wants it) fails the test instead.
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(20)
        assert not thread.is_alive(), "the run hung"
        assert len(raised) == 1 and isinstance(raised[0], RuntimeError)
        assert "not re-entrant" in str(raised[0])
        assert machine.lock.owner is None and not machine.lock.busy
        assert not machine.lock.mutex.locked()


def test_a_wait_interrupted_by_a_signal_leaves_nothing_taken():
    """A signal handler that raises while a thread waits for a busy owner
    (Ctrl-C, SIGTERM): the mutex is free and the wish withdrawn, or the
    owner's next exit would wait for ever."""
    lock = DeviceLock()
    owned = threading.Event()
    release = threading.Event()

    def owner() -> None:
        assert lock.own()
        lock.busy = True
        owned.set()
        release.wait(10)
        lock.busy = False
        lock.disown()

    thread = threading.Thread(target=owner, daemon=True)
    thread.start()
    assert owned.wait(5)

    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            with lock:              # the main thread waits: the owner is busy
                pytest.fail("entered while the owner was busy")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        release.set()
        thread.join(5)
    assert not lock.mutex.locked() and lock.wanted == 0
    with lock:
        pass


def test_a_python_without_the_gil_gets_no_owner_and_takes_the_mutex(monkeypatch):
    """Dekker's order rests on the GIL; free-threaded, every loop locks."""
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    lock = DeviceLock()
    assert not lock.own() and lock.owner is None
