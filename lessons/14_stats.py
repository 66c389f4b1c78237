"""Lesson 14: watching a vCPU without stopping it -- KVM's binary statistics.

Run it: ``python lessons/14_stats.py`` (``--quiet``: checkpoints only).
Exercise: ``lessons/exercises/14_stats.md``.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from _common import Lesson, hexdump, run_lesson

from minikvm.cli.info import halt_detection
from minikvm.core.runner import HALT_CHECK_FIRST, HALT_CHECK_INTERVAL
from minikvm.core.stop import Stop
from minikvm.kvm import ioctls
from minikvm.kvm.exits import Interrupted, IoOut
from minikvm.kvm.fd import ioctl
from minikvm.kvm.system import Kvm
from minikvm.kvm.uapi import (
    KVM_STATS_BASE_MASK,
    KVM_STATS_BASE_POW2,
    KVM_STATS_TYPE_CUMULATIVE,
    KVM_STATS_TYPE_INSTANT,
    KVM_STATS_TYPE_LINEAR_HIST,
    KVM_STATS_TYPE_LOG_HIST,
    KVM_STATS_TYPE_MASK,
    KVM_STATS_TYPE_PEAK,
    KVM_STATS_UNIT_BOOLEAN,
    KVM_STATS_UNIT_BYTES,
    KVM_STATS_UNIT_CYCLES,
    KVM_STATS_UNIT_MASK,
    KVM_STATS_UNIT_NONE,
    KVM_STATS_UNIT_SECONDS,
    KvmCap,
    KvmMpState,
    kvm_mp_state,
    kvm_stats_desc,
    kvm_stats_header,
)
from minikvm.kvm.stats import read_layout
from minikvm.lessons.checks_stats import CODE_ADDR, ENDS, PRINTED, SLEEPS
from minikvm.machine import Machine

#: The by-hand layouts: six u32 (the header); u32, s16, u16, u32, u32 (a
#: descriptor's fixed part, its name after it); one u64 (a value).
HEADER = struct.Struct("<6I")
DESC = struct.Struct("<IhHII")
U64 = struct.Struct("<Q")

TYPES = {KVM_STATS_TYPE_CUMULATIVE: "CUMULATIVE", KVM_STATS_TYPE_INSTANT: "INSTANT",
         KVM_STATS_TYPE_PEAK: "PEAK", KVM_STATS_TYPE_LINEAR_HIST: "LINEAR_HIST",
         KVM_STATS_TYPE_LOG_HIST: "LOG_HIST"}
UNITS = {KVM_STATS_UNIT_NONE: "NONE", KVM_STATS_UNIT_BYTES: "BYTES",
         KVM_STATS_UNIT_SECONDS: "SECONDS", KVM_STATS_UNIT_CYCLES: "CYCLES",
         KVM_STATS_UNIT_BOOLEAN: "BOOLEAN"}


def kind_of(flags: int) -> str:
    """A descriptor's type, by its KVM_STATS_TYPE_* name."""
    return TYPES.get(flags & KVM_STATS_TYPE_MASK, f"type {flags & KVM_STATS_TYPE_MASK:#x}")


def unit_of(flags: int, exponent: int) -> str:
    """A descriptor's unit in words: the unit times its base to the exponent."""
    unit = UNITS.get(flags & KVM_STATS_UNIT_MASK, f"unit {flags & KVM_STATS_UNIT_MASK:#x}")
    if unit == "SECONDS" and exponent == -9:
        return "ns"
    if unit == "NONE" and exponent == 0:
        return "-"
    if exponent == 0:
        return unit.lower()
    base = 2 if flags & KVM_STATS_BASE_MASK == KVM_STATS_BASE_POW2 else 10
    return f"{unit.lower()} x {base}^{exponent}"


def main(argv: Sequence[str] | None = None) -> int:
    lesson = Lesson("14", "Watching a vCPU without stopping it: KVM's binary statistics", argv)
    lesson.narrate("""
        A VMM mostly learns what its guest does from exits: KVM_RUN returns, the VMM looks.
        But some of the most interesting moments happen *inside* KVM_RUN, where the VMM cannot
        look: with the in-kernel irqchip a `hlt` never exits -- the vCPU just sleeps in the
        kernel until an interrupt comes. Has the guest finished, or is it waiting for its
        timer? This lesson recalls how minikvm answers that by stopping the vCPU (lesson 08's
        irqchip, the runner's halt check), shows why no other thread can simply *ask*, and then
        reads the answer without stopping anything: KVM keeps counters and states per vCPU and
        hands them out as a file, `KVM_GET_STATS_FD`.
    """)
    halt_check(lesson)
    with Kvm() as kvm:
        offered = kvm.check_extension(KvmCap.KVM_CAP_BINARY_STATS_FD) > 0
    if not offered:
        lesson.narrate("""
            This kernel does not offer binary statistics: `KVM_CHECK_EXTENSION
            (KVM_CAP_BINARY_STATS_FD)` says 0. They came with Linux 5.14, and the `blocking`
            statistic this lesson watches with 5.17. minikvm does without them here: its
            watchdog finds a sleeping vCPU after a quiet spell instead (section 4 would tell
            the rest). The lesson ends here.
        """)
        lesson.checkpoint("binary statistics on this kernel", "none (KVM_CAP_BINARY_STATS_FD 0)")
        return lesson.finish()
    if not by_hand(lesson):
        return lesson.finish()
    watching(lesson)
    watchdog(lesson)
    lesson.narrate("""
        That is how a VMM watches a vCPU without stopping it: a file of counters the kernel
        updates as it goes, laid out once (header, descriptors) and then read with one `pread`
        per value, from any thread, while KVM_RUN holds the vCPU's mutex. QEMU reads the same
        file for its `query-stats` command; minikvm reads one value of it, often, to notice a
        guest that went to sleep for good about a millisecond sooner.

        **Exercise 14** (`lessons/exercises/14_stats.md`): write the lookup -- given the file and
        a name, where is the value? `minikvm lesson check 14`.
    """)
    return lesson.finish()


@dataclass
class Ran:
    """What a run of one of the guests left: its output, the exits the VMM saw,
    how it stopped and when, and what the runner's halt checks found."""

    output: bytes
    events: list
    stop: Stop
    ended: float
    mp_state: KvmMpState | None
    halt_checks: int
    #: Of those, the ones the watchdog made early, on ``blocking``.
    early_checks: int


def run_guest(code: bytes, irqchip: bool, timeout: float = 10.0) -> Ran:
    """``code`` at CODE_ADDR in real mode on a fresh machine, run with ``Machine.run``."""
    output: list[bytes] = []
    with Machine(irqchip=irqchip, output=output.append) as machine:
        machine.load_flat(code, CODE_ADDR)
        events: list = []
        machine.listeners.append(events.append)
        stop = machine.run(timeout=timeout)
        ended = time.monotonic()
        runner = machine.runners[0]
        return Ran(b"".join(output), events, stop, ended, runner.mp_state, runner.halt_checks,
                   runner.early_checks)


def _guest_exits(events) -> str:
    """The kinds of the guest's exits, the VMM's own kicks left out."""
    return ", ".join(type(event.exit).__name__ for event in events
                     if not isinstance(event.exit, Interrupted))


def _state_name(state: KvmMpState | None) -> str:
    return "no halt check" if state is None else state.name


# -- 1. the halt check ---------------------------------------------------------------------------

def halt_check(lesson: Lesson) -> None:
    lesson.section("1. Where does hlt go? The halt check, and why nobody can ask")
    lesson.narrate(f"""
        Our guest is fourteen bytes of real-mode code: it prints {PRINTED.decode()!r} on the
        debug console (three `out`s to port 0xE9: three exits) and then runs `cli; hlt` --
        interrupts off, sleep: the classic "I am done". First without the in-kernel irqchip:
    """)
    lesson.code("""
        mov al, 'K' ; out 0xe9, al
        mov al, 'V' ; out 0xe9, al
        mov al, 'M' ; out 0xe9, al
        cli
        hlt
    """, "nasm")
    ran = run_guest(ENDS, irqchip=False)
    lesson.result("the guest printed", ran.output)
    lesson.result("exits", ", ".join(type(event.exit).__name__ for event in ran.events))
    lesson.result("stop", ran.stop.message)
    lesson.checkpoint("without the irqchip, the exits the VMM saw", _guest_exits(ran.events),
                      "IoOut, IoOut, IoOut, Hlt")
    lesson.narrate("""
        Without an in-kernel irqchip KVM cannot wake a halted vCPU itself (it has no interrupt
        controller to wake it), so `hlt` is an exit, `KVM_EXIT_HLT`, and the VMM decides. With
        the irqchip (`KVM_CREATE_IRQCHIP`, lesson 08) KVM has the local APIC, so it handles
        `hlt` itself: the vCPU goes to sleep *inside* KVM_RUN (`kvm_vcpu_halt`, then
        `kvm_vcpu_block`, virt/kvm/kvm_main.c) until an interrupt is due. The VMM sees nothing:
    """)
    ran = run_guest(ENDS, irqchip=True)
    checks = ran.halt_checks
    lesson.result("the guest printed", ran.output)
    lesson.result("exits", ", ".join(type(event.exit).__name__ for event in ran.events))
    lesson.result("stop", ran.stop.message)
    lesson.checkpoint("with the in-kernel irqchip, the guest's exits", _guest_exits(ran.events),
                      "IoOut, IoOut, IoOut")
    lesson.checkpoint("and yet the run ended", f"{ran.stop.kind.name}, the halt check read "
                      f"{_state_name(ran.mp_state)}",
                      "HALT, the halt check read KVM_MP_STATE_HALTED")
    lesson.narrate(f"""
        The last "exit", `Interrupted`, was minikvm's own doing: the **halt check**
        (minikvm/core/runner.py, docs/architecture.md). A second thread, the `Watchdog`, kicks
        the vCPU out of KVM_RUN (a signal: KVM_RUN returns `EINTR`); back on the vCPU's thread
        the runner asks KVM `KVM_GET_MP_STATE` -- `KVM_MP_STATE_HALTED` -- and `KVM_GET_REGS`
        -- RFLAGS.IF clear. Halted with interrupts off: nothing can wake it, the run is over
        (with IF set it is only waiting, and goes back in). Here that took
        {checks} check{'s' if checks != 1 else ''}.

        Why kick at all -- why can't the watchdog's thread just call `KVM_GET_MP_STATE`
        itself? Because every ioctl on a vCPU fd begins by taking that vCPU's mutex
        (`kvm_vcpu_ioctl`, virt/kvm/kvm_main.c: `mutex_lock_killable(&vcpu->mutex)`; in Linux
        6.1 a few other architectures let some interrupt ioctls through first, x86 none), and
        KVM_RUN holds it for as long as it runs -- sleeping in `hlt` included. Asking a
        sleeping vCPU would block the asker until the vCPU's next exit, which may be never. So
        the watchdog must *guess* when to kick: minikvm kicks after
        {HALT_CHECK_FIRST * 1000:g} ms without exits, doubling up to
        {HALT_CHECK_INTERVAL * 1000:g} ms while the vCPU keeps computing. A guess costs a kick
        too early (the guest was computing) or a millisecond too late.

        What the watchdog would like is to *see* the vCPU sleep, without the mutex. Section 3
        does exactly that; first, the file that makes it possible.
    """)


# -- 2. the statistics file, by hand ----------------------------------------------------------

def by_hand(lesson: Lesson) -> bool:
    """Section 2; False when this kernel lacks what the rest of the lesson needs."""
    lesson.section("2. KVM_GET_STATS_FD by hand: header, descriptors, data")
    lesson.narrate("""
        `KVM_GET_STATS_FD` on a vCPU fd (or a VM fd) returns a **new file descriptor**, read-only,
        whose contents are that vCPU's statistics (Documentation/virt/kvm/api.rst,
        "KVM_GET_STATS_FD"; `kvm_vcpu_ioctl_get_stats_fd`, virt/kvm/kvm_main.c). It is an ordinary
        file to read: no ioctls, no structures passed by pointer. (Getting it *is* an ioctl on
        the vCPU fd, which waits for the vCPU's mutex like every other: open it while the vCPU
        is not running -- minikvm's runner does, when it is made.) Reading it runs
        `kvm_stats_read` (virt/kvm/binary_stats.c), which copies from four blocks one after
        another -- a header, an id string, the descriptors, the data -- and the data are copied
        straight out of the live `struct kvm_vcpu` at each read, **without taking the vCPU's
        mutex** (`kvm_vcpu_stats_read`). A fresh vCPU, and its statistics fd:
    """)
    lesson.code("""
        fd = ioctl(vcpu.fd, KVM_GET_STATS_FD)                 # a new fd, read-only
        flags, name_size, num_desc, id_offset, desc_offset, data_offset = \\
            struct.unpack("<6I", os.pread(fd, 24, 0))         # struct kvm_stats_header
    """)
    with Kvm() as kvm, kvm.create_vm() as vm, vm.create_vcpu(0) as vcpu:
        fd = ioctl(vcpu.fd, ioctls.KVM_GET_STATS_FD)
        try:
            return _read_the_file(lesson, vcpu, fd)
        finally:
            os.close(fd)


def _read_the_file(lesson: Lesson, vcpu, fd: int) -> bool:
    flags, name_size, num_desc, id_offset, desc_offset, data_offset = HEADER.unpack(
        os.pread(fd, HEADER.size, 0))
    lesson.result("header", f"flags {flags}, name_size {name_size}, num_desc {num_desc}, "
                            f"id_offset {id_offset}, desc_offset {desc_offset}, "
                            f"data_offset {data_offset}")
    ident = os.pread(fd, name_size, id_offset).split(b"\0", 1)[0].decode()
    lesson.result(f"the id string (at {id_offset})", ident)
    lesson.checkpoint("sizeof(kvm_stats_header), sizeof(kvm_stats_desc)",
                      f"{ctypes.sizeof(kvm_stats_header)}, {ctypes.sizeof(kvm_stats_desc)}",
                      f"{HEADER.size}, {DESC.size}")
    lesson.checkpoint("the id string, its pid left out", re.sub(r"^kvm-\d+/", "kvm-<pid>/", ident),
                      "kvm-<pid>/vcpu-0")
    lesson.narrate(f"""
        Six u32: no offset is fixed by the ABI, the header gives each one, and a reader must
        use them (this kernel happens to put the id right after the 24-byte header, the
        descriptors after the id's {name_size} bytes). `name_size` is the room for every name:
        each descriptor is 16 bytes of fields **and then** its name, padded with NULs to
        `name_size` bytes -- so descriptor *i* lies at `desc_offset + i * (16 + name_size)`, no
        need to read those before it. The id names the thread that created the vCPU and the
        vCPU (`kvm-PID/vcpu-ID`, written when the vCPU is created: `kvm_vcpu_init` called from
        `kvm_vm_ioctl_create_vcpu`, virt/kvm/kvm_main.c; the PID is the process's when its main
        thread made the vCPU), handy when one reads many of these files. The first descriptor,
        by hand:
    """)
    stride = DESC.size + name_size
    raw = os.pread(fd, stride, desc_offset)
    d_flags, d_exponent, d_size, d_offset, d_bucket = DESC.unpack_from(raw)
    d_name = raw[DESC.size:].split(b"\0", 1)[0].decode()
    lesson.code("""
        raw = os.pread(fd, 16 + name_size, desc_offset)       # descriptor 0 and its name
        flags, exponent, size, offset, bucket_size = struct.unpack_from("<IhHII", raw)
        name = raw[16:].split(b"\\0", 1)[0].decode()
    """)
    lesson.block(f"descriptor 0 at {desc_offset}: flags {d_flags:#x}, exponent {d_exponent}, "
                 f"size {d_size}, offset {d_offset}, bucket_size {d_bucket}, name {d_name!r}\n"
                 + hexdump(raw[:DESC.size], desc_offset))
    lesson.narrate("""
        `flags` holds three 4-bit fields (include/uapi/linux/kvm.h): bits 0-3 the **type** --
        `KVM_STATS_TYPE_CUMULATIVE` (a count that only grows), `INSTANT` (a value now, up or
        down), `PEAK` (the largest seen), `LINEAR_HIST` and `LOG_HIST` (histograms of `size`
        buckets; `bucket_size` is a linear histogram's bucket width); bits 4-7 the **unit** --
        `NONE`, `BYTES`, `SECONDS`, `CYCLES`, `BOOLEAN` (0 or 1); bits 8-11 the **base**,
        `POW10` or `POW2`, which `exponent` raises: `SECONDS`, `POW10`, -9 is nanoseconds.
        `size` is how many u64 values the statistic has, and `offset` where the first one lies
        -- counted from the start of the **data block**, which begins at `data_offset`.

        minikvm's `read_layout` (minikvm/kvm/stats.py, which `KvmStats` uses) makes that read
        for each of the `num_desc` descriptors. Then the whole data block in one `pread`, and every
        statistic of this vCPU -- narration only: the list differs between kernels, and
        between KVM flavours (this host's KVM is described by `minikvm info`):
    """)
    _, descs = read_layout(fd)
    data = os.pread(fd, max(desc.offset + 8 * desc.size for desc in descs), data_offset)
    rows = []
    for desc in descs:
        values_of = struct.unpack_from(f"<{desc.size}Q", data, desc.offset)
        value = (values_of[0] if desc.size == 1 else
                 f"{desc.size} buckets, {sum(values_of)} counted")
        rows.append((desc.index, desc.name, kind_of(desc.flags),
                     unit_of(desc.flags, desc.exponent), desc.size, desc.offset, value))
    lesson.table(f"the {len(descs)} statistics of a vCPU that never ran",
                 ("#", "name", "type", "unit", "size", "offset", "value"), rows)
    by_name = {desc.name: desc for desc in descs}
    lesson.narrate("""
        Most are counters of events KVM handles without telling the VMM: exits of every kind
        (`exits` counts each VM exit, `vcpu_enter_guest` in arch/x86/kvm/x86.c), page faults it
        fixed itself, halt polling. Two are not counts but states, `INSTANT`: `guest_mode` (the
        vCPU runs a nested guest) and **`blocking`** -- 1 while the vCPU sleeps in
        `kvm_vcpu_block`, which sets it before going to sleep and clears it after waking
        (virt/kvm/kvm_main.c). That is the one we want. (Before it blocks, a halted vCPU may
        spin for up to a few hundred microseconds hoping for an early wake-up -- halt polling,
        in `kvm_vcpu_halt`, bounded by `halt_poll_ns` and counted by the `halt_poll_*`
        statistics; `blocking` turns 1 only when it really goes to sleep.)
    """)
    tiled = all(desc.offset == sum(8 * d.size for d in descs[:desc.index]) for desc in descs)
    lesson.checkpoint("the values lie back to back, in the descriptors' order", tiled, True)
    exits = by_name.get("exits")
    lesson.checkpoint("'exits': type, unit, values",
                      None if exits is None else f"{kind_of(exits.flags)}, "
                      f"{UNITS.get(exits.flags & KVM_STATS_UNIT_MASK)}, {exits.size}",
                      "CUMULATIVE, NONE, 1")
    blocking = by_name.get("blocking")
    if blocking is None:
        lesson.narrate("""
            This kernel has the statistics file but no `blocking` statistic: it came with Linux
            5.17. minikvm's watchdog then waits for a quiet spell (section 1), and the rest of
            this lesson has nothing to watch. It ends here.
        """)
        lesson.checkpoint("'blocking' offered", False)
        return False
    lesson.checkpoint("'blocking': type, values", f"{kind_of(blocking.flags)}, {blocking.size}",
                      "INSTANT, 1")
    here = data_offset + blocking.offset
    lesson.code(f"""
        U64.unpack(os.pread(fd, 8, data_offset + {blocking.offset}))[0]   # 'blocking': byte {here}
    """)
    now = U64.unpack(os.pread(fd, 8, here))[0]
    lesson.result("blocking", now)
    lesson.checkpoint("blocking of a vCPU that never ran", now, 0)
    lesson.narrate("""
        The layout never changes while the fd is open, so a reader walks the descriptors once
        and from then on reads one statistic with one `pread` of eight bytes at a fixed place:
        one system call, no lock, nothing allocated. minikvm wraps exactly that,
        `KvmStats` (minikvm/kvm/stats.py), opened once per vCPU by `Vcpu.stats()`:
    """)
    stats = vcpu.stats()
    lesson.code("""
        stats = vcpu.stats()               # KVM_GET_STATS_FD once; the descriptors read once
        stats.names                        # the statistics, in the kernel's order
        stats.read("exits")                # one pread
        blocking = stats.reader("blocking")    # a callable: one pread per call, nothing looked up
    """)
    lesson.checkpoint("KvmStats names what the walk by hand found",
                      stats.names == [desc.name for desc in descs], True)
    lesson.checkpoint("KvmStats reads 'exits' and 'blocking' where we did",
                      (stats.read("exits"), stats.reader("blocking")())
                      == (U64.unpack_from(data, exits.offset)[0], now), True)
    return True


# -- 3. watching from a second thread ---------------------------------------------------------

def watching(lesson: Lesson) -> None:
    lesson.section("3. Watching a running vCPU from another thread")
    lesson.narrate(f"""
        Now the guest ends in `sti; hlt` instead: interrupts **on**, then sleep -- waiting for
        an interrupt, here one that never comes. We run it by hand on a thread of its own (a
        `KVM_RUN` after each `out`, as in lesson 02), and from this thread read two statistics
        through a second fd while it runs: `exits` and `blocking`.
    """)
    lesson.code("""
        def vcpu_thread():                     # KVM_RUN until a kick
            while not isinstance(exit := vcpu.run(), Interrupted):
                handled.append(exit)           # the three outs: nothing to answer
            handled.append(exit)

        def read(name):                        # one statistic: one pread
            return U64.unpack(os.pread(fd, 8, data_offset + offset_of[name]))[0]

        threading.Thread(target=vcpu_thread).start()
        while read("blocking") != 1:
            samples.append((read("exits"), read("blocking")))
    """)
    with Machine(irqchip=True) as machine:
        vcpu = machine.vcpu
        machine.load_flat(SLEEPS, CODE_ADDR)
        fd = ioctl(vcpu.fd, ioctls.KVM_GET_STATS_FD)
        try:
            header, descs = read_layout(fd)
            place = {desc.name: header.data_offset + desc.offset for desc in descs}

            def read(name: str) -> int:
                return U64.unpack(os.pread(fd, 8, place[name]))[0]

            handled: list = []

            def vcpu_thread() -> None:
                while not isinstance(exit := vcpu.run(), Interrupted):
                    handled.append(exit)
                handled.append(exit)

            guest = threading.Thread(target=vcpu_thread, name="lesson14-vcpu")
            samples = [(read("exits"), read("blocking"))]
            guest.start()
            asked: list[str] = []
            asker = None
            try:
                asleep = _wait_for(lambda: read("blocking") == 1, samples, read)
                exits_then = read("exits")
                asleep_value = read("blocking")

                def ask() -> None:
                    state = kvm_mp_state()
                    ioctl(vcpu.fd, ioctls.KVM_GET_MP_STATE, state)
                    asked.append(KvmMpState(state.mp_state).name)

                asker = threading.Thread(target=ask, name="lesson14-asker")
                asker.start()
                asker.join(0.2)
                waiting = asker.is_alive() and asleep
            finally:
                vcpu.kick()
                guest.join(10)
            if asker is not None:
                asker.join(10)
            after = read("blocking")
        finally:
            os.close(fd)
        outs = [exit for exit in handled if isinstance(exit, IoOut)]
        printed = b"".join(exit.data for exit in outs)
        last = type(handled[-1]).__name__ if handled else None
        rip = vcpu.get_regs().rip
    distinct = [sample for i, sample in enumerate(samples) if i == 0 or sample != samples[i - 1]]
    lesson.table("what this thread read", ("exits", "blocking"), distinct)
    lesson.result("the vCPU thread handled", f"{len(outs)} outs, printing {printed!r}")
    lesson.result("exits counted by KVM by then", exits_then)
    lesson.checkpoint("port exits the vCPU thread handled", f"{len(outs)}, printing "
                      f"{printed.decode()!r}", f"3, printing {PRINTED.decode()!r}")
    lesson.checkpoint("blocking, read from this thread while the vCPU sleeps in hlt",
                      asleep_value, 1)
    lesson.checkpoint("KVM counted at least the three outs as exits", exits_then >= 3, True)
    lesson.narrate(f"""
        `exits` is {exits_then} here: KVM counts *every* VM exit, the ones it handles itself
        included -- the `hlt` is one -- and on hardware KVM there are exits the VMM never hears
        of (an external interrupt of the host, a first touch of a guest page). Which exits a
        KVM flavour takes differs; that is why a program uses these numbers to watch, not to
        count instructions.

        While `blocking` read 1, a third thread asked the vCPU `KVM_GET_MP_STATE` -- the
        question the halt check asks. It did not get an answer: it waited for the mutex that
        KVM_RUN holds. Then we kicked the vCPU (`vcpu.kick()`: `immediate_exit` and a signal to
        its thread), KVM_RUN returned `EINTR`, and the mutex went to the waiting ioctl:
    """)
    lesson.checkpoint("KVM_GET_MP_STATE from another thread, 0.2 s later",
                      "still waiting for the vCPU's mutex" if waiting else "answered",
                      "still waiting for the vCPU's mutex")
    lesson.checkpoint("after the kick", f"KVM_RUN returned {last}, KVM_GET_MP_STATE "
                      f"answered {asked[0] if asked else None}",
                      "KVM_RUN returned Interrupted, KVM_GET_MP_STATE answered "
                      "KVM_MP_STATE_HALTED")
    lesson.checkpoint("RIP after the kick: past the hlt", rip == CODE_ADDR + len(SLEEPS), True)
    lesson.checkpoint("blocking after the kick", after, 0)
    lesson.narrate("""
        The vCPU is still halted -- the kick only took it out of KVM_RUN; the next KVM_RUN
        would put it back to sleep -- but it is no longer *blocking*: the statistic says
        "sleeping inside KVM_RUN right now", not "halted". Which is what a watcher needs: a
        vCPU that is out of KVM_RUN can be asked anything.

        With minikvm's API the same watch is a `Machine.run` on a thread, and the reader of
        section 2:
    """)
    with_the_api(lesson)


def _wait_for(condition: Callable[[], bool], samples: list, read: Callable[[str], int],
              seconds: float = 10.0) -> bool:
    """Poll ``condition`` (recording (exits, blocking) in ``samples``) until
    it holds or ``seconds`` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append((read("exits"), read("blocking")))
        if condition():
            return True
        time.sleep(0.0002)
    return False


def with_the_api(lesson: Lesson) -> None:
    lesson.code("""
        blocking = machine.vcpu.stats().reader("blocking")
        worker = threading.Thread(target=lambda: stops.append(machine.run(timeout=10)))
        worker.start()
        ... blocking() == 1 ...
        machine.pause()
    """)
    with Machine(irqchip=True) as machine:
        machine.load_flat(SLEEPS, CODE_ADDR)
        blocking = machine.vcpu.stats().reader("blocking")
        stops: list = []
        worker = threading.Thread(target=lambda: stops.append(machine.run(timeout=10)),
                                  name="lesson14-run")
        worker.start()
        seen = 0
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and seen != 1:
                seen = blocking()
                time.sleep(0.0002)
        finally:
            machine.pause()
            worker.join(10)
        after = blocking()
    lesson.checkpoint("blocking while Machine.run's vCPU sleeps", seen, 1)
    lesson.checkpoint("the run's stop", stops[0].kind.name if stops else None, "PAUSED")
    lesson.checkpoint("blocking after the pause", after, 0)
    lesson.narrate("""
        One difference: under `Machine.run` the watchdog is running too, and now and then kicks
        the sleeping vCPU for a halt check (the guest has IF set, so it goes back to sleep).
        For that fraction of a millisecond `blocking` reads 0 -- the vCPU is out of KVM_RUN -- which
        is why the loop above waits for a 1 rather than taking the first read.
    """)


# -- 4. minikvm's watchdog ---------------------------------------------------------------------

def watchdog(lesson: Lesson) -> None:
    lesson.section("4. What minikvm's watchdog does with it")
    lesson.narrate(f"""
        The watchdog (core/runner.py, `Watchdog`) wakes every {HALT_CHECK_FIRST * 1000:g} ms
        while the vCPU makes exits. Beside section 1's rule -- kick after a quiet spell -- it
        now reads `blocking` through the reader above: if the vCPU made exits since the last
        halt check and is asleep *now*, it kicks at once. A guest that ends in `cli; hlt` is
        usually seen at the first wake-up after its last exit instead of one to two periods
        later -- not while KVM still polls before it sleeps (`kvm_vcpu_halt` polls first and
        only then calls `kvm_vcpu_block`, which sets `blocking`; virt/kvm/kvm_main.c), nor
        within the limit below.
    """)
    with Machine(irqchip=True) as machine:
        with_reader = machine.runners[0].blocking_reader() is not None
    with Machine(irqchip=False) as machine:
        without = machine.runners[0].blocking_reader() is None
    lesson.checkpoint("a runner with halt checks (irqchip) has a blocking reader", with_reader,
                      True)
    lesson.checkpoint("a runner without (no irqchip: hlt exits) has none", without, True)
    ran = run_guest(ENDS, irqchip=True)
    guest_events = [event for event in ran.events if not isinstance(event.exit, Interrupted)]
    late = (ran.ended - guest_events[-1].time) * 1000 if guest_events else float("nan")
    lesson.result("cli; hlt", f"{ran.stop.message}, {late:.2f} ms after the last exit, "
                              f"{ran.halt_checks} halt check"
                              f"{'s' if ran.halt_checks != 1 else ''}, "
                              f"{ran.early_checks} asked early (on 'blocking')")
    lesson.checkpoint("cli; hlt under the watchdog", ran.stop.kind.name, "HALT")
    lesson.narrate("""
        (The time is to the end of the run: the kick, `KVM_GET_MP_STATE`, the registers and
        the run loop's own way out are in it, a few hundred microseconds here. Whether the
        check was early is narrated, not a checkpoint: a wake-up that lands while KVM still
        polls, before `blocking` turns 1, falls back on the quiet rule.)
    """)
    lesson.narrate(f"""
        Two things keep the early check honest. It is made only for the *first* check after an
        exit: a vCPU that computes without exits is never asleep, and gets the quiet-spell
        checks as before. And it is made **at most once per {HALT_CHECK_INTERVAL * 1000:g}
        ms**: a guest that sleeps in `sti; hlt` between interrupts (its timer, its UART) would
        otherwise be found asleep at every wake-up and kicked for nothing each time
        (tests/test_kvm_stats.py makes such a guest and counts). A vCPU asleep with IF set is
        checked, found waiting, and left to sleep on; let the `sti; hlt` guest do that under
        the watchdog for 0.3 s:
    """)
    ran = run_guest(SLEEPS, irqchip=True, timeout=0.3)
    checks = ran.halt_checks
    lesson.result("sti; hlt for 0.3 s", f"{ran.stop.message}; {checks} halt checks, each "
                                        "finding it halted with IF set")
    lesson.checkpoint("sti; hlt for 0.3 s", f"{ran.stop.kind.name}, the last halt check read "
                      f"{_state_name(ran.mp_state)}",
                      "TIMEOUT, the last halt check read KVM_MP_STATE_HALTED")
    lesson.narrate(f"""
        {checks} kicks in 0.3 s: after the guest's last exit the checks spread out (1, 2, 4 ...
        ms, then one per {HALT_CHECK_INTERVAL * 1000:g} ms), and the early one can come only
        once, since the guest makes no more exits. The run ends at its timeout.

        And the fallback: where the kernel has no statistics fd (before Linux 5.14) or no
        `blocking` (before 5.17), `blocking_reader()` is None and the watchdog does what
        section 1 described. `minikvm info` says which of the two this host gets:
    """)
    with Kvm() as kvm:
        row = halt_detection(kvm)
    lesson.result("minikvm info: halt detection", row)
    lesson.checkpoint("minikvm info's halt detection uses 'blocking'", "'blocking'" in row, True)


if __name__ == "__main__":
    run_lesson(main)
