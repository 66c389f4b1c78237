"""Lesson 12: debugging a guest with gdb -- the remote protocol, packet by packet.

Run it: ``python lessons/12_gdb.py`` (``--quiet``: checkpoints only).
Exercise: ``lessons/exercises/12_rsp.md``.
"""

from __future__ import annotations

import select
import shutil
import subprocess
import threading
from collections.abc import Sequence

from _common import Lesson, run_lesson

from minikvm.debug.breakpoints import decode_dr7
from minikvm.gdb.packets import EventKind, PacketReader, encode_packet
from minikvm.gdb.serve import listen, serve_gdb
from minikvm.gdb.session import Session
from minikvm.gdb.target import Target
from minikvm.kvm.host import detect_host
from minikvm.kvm.uapi import KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP
from minikvm.machine import Machine


class Wire:
    """gdb's end of the conversation, by hand: frame a packet, hand the bytes
    to the stub's :class:`Session`, and read back what it sent -- waiting,
    after a resume, until the guest stopped (the stub's server loop does the
    same with a socket)."""

    def __init__(self, machine: Machine) -> None:
        self.sent = bytearray()
        self.target = Target(machine)
        self.session = Session(self.target, self.sent.extend)

    def __call__(self, packet: str | bytes) -> tuple[bytes, bytes]:
        data = packet.encode() if isinstance(packet, str) else packet
        self.sent.clear()
        self.session.received(encode_packet(data))
        while self.session.running:
            if select.select([self.target.wakeup], [], [], 0.05)[0]:
                self.session.target_woke()
        return encode_packet(data), bytes(self.sent)

    def replies(self, packet: str | bytes) -> list[bytes]:
        """The packets' data the stub sent back (read with the stub's own
        packet reader; the acks left out)."""
        _, answer = self(packet)
        return [event.data for event in PacketReader().feed(answer)
                if event.kind is EventKind.PACKET]

    def reply(self, packet: str | bytes) -> str:
        """The last packet's data the stub sent back."""
        return self.replies(packet)[-1].decode()


def named(reply: str, names: dict[int, str]) -> str:
    """``reply`` with the guest's addresses replaced by their symbols (they
    depend on the compiler; checkpoints must not)."""
    for address, name in names.items():
        reply = reply.replace(f"{address:x}", f"<{name}>")
    return reply


def gdb_transcript(elf, commands: list[str]) -> str | None:
    """Real gdb, with ``set debug remote 1``, each command announced by an
    ``echo``; the lines that show packets and gdb's own answers."""
    if shutil.which("gdb") is None:
        return None
    with Machine(output=lambda data: None) as machine:
        machine.load_elf(elf)
        server = listen("127.0.0.1", 0)
        server.settimeout(60)
        port = server.getsockname()[1]
        thread = threading.Thread(target=serve_gdb, args=(machine, None), daemon=True,
                                  kwargs={"server": server, "say": lambda line: None})
        thread.start()
        args = ["gdb", "-batch", "-nx", str(elf), "-ex", f"target remote 127.0.0.1:{port}",
                "-ex", "set debug remote 1"]
        for command in commands:
            args += ["-ex", f"echo (gdb) {command}\\n", "-ex", command]
        result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=60)
        thread.join(timeout=30)
    lines = []
    started = False
    for line in result.stdout.splitlines():
        started = started or line.startswith("(gdb) ")
        if not started or "[remote] wait" in line or "packet_ok" in line or "select_thread" \
                in line or "process_wide_stop" in line or "first resumed" in line \
                or "ambiguous" in line:
            continue
        line = line.replace("[remote] Sending packet: ", "  -> ").replace(
            "[remote] Packet received: ", "  <- ").strip(" ") if "[remote]" in line else line
        lines.append(line if len(line) <= 96 else line[:93] + "...")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    lesson = Lesson("12", "Debugging a guest with gdb: the remote protocol", argv)
    lesson.narrate("""
        `minikvm run GUEST --gdb 127.0.0.1:1234` stops the guest before its first instruction
        and waits for `gdb GUEST -ex 'target remote 127.0.0.1:1234'`. From then on, every gdb
        command that touches the guest -- `print`, `break`, `continue`, `stepi`, `x/s` -- is
        turned by gdb into short text messages, *packets*, which a *stub* answers: the GDB
        Remote Serial Protocol (GDB manual, appendix "Remote Protocol"). The same protocol
        talks to QEMU's `-s`, to a JTAG probe, to `gdbserver`. minikvm's stub is
        `minikvm/gdb/`: it turns each packet into the debugger of lesson 07 and KVM's ioctls.

        The guest is `guests/c/gdbdemo.c`, built with `-g`: it prints a greeting, counts
        `counter` up three times in `count()`, then prints `twice(answer)` and exits with it
        through the debug-exit port. In this lesson we play gdb ourselves, one packet at a
        time; at the end, real gdb shows the same packets.
    """)
    elf = lesson.guest("gdbdemo.elf")
    output = bytearray()
    with Machine(output=output.extend) as machine:
        image = machine.load_elf(elf)
        symbol = {name: image.symbols.lookup(name).address
                  for name in ("_start", "twice", "count", "answer", "counter", "greeting")}
        names = {address: name for name, address in symbol.items()}
        wire = Wire(machine)

        # -- 1. a packet --------------------------------------------------------------------
        lesson.section("1. A packet on the wire: $data#checksum, and + for 'got it'")
        lesson.narrate("""
            A packet is `$`, the data, `#`, and two hex digits: the sum of the data bytes
            modulo 256. The receiver answers `+` (intact) or `-` (send it again) before its
            reply (section "Overview"). The first thing gdb asks is `?`: why is the program
            stopped?
        """)
        packet, answer = wire("?")
        lesson.result("gdb sends", packet.decode())
        lesson.result("the stub answers", answer.decode())
        lesson.narrate("""
            `+`, then the reply `T05thread:1;`: stopped with signal 5 (SIGTRAP, how debuggers
            say "stopped for the debugger") in thread 1. Each vCPU is a thread for gdb; thread
            1 is vCPU 0. Its checksum is two more digits after the `#`.
        """)
        lesson.checkpoint("the first stop reply", wire.reply("?"), "T05thread:1;")

        # -- 2. registers -----------------------------------------------------------------------
        lesson.section("2. Which registers? The target description, then g")
        xml = ""
        offset = 0
        while True:
            piece = wire.reply(f"qXfer:features:read:target.xml:{offset:x},400")
            xml += piece[1:]
            offset += len(piece) - 1
            if piece.startswith("l"):
                break
        registers = xml.count("<reg ")
        lesson.narrate(f"""
            Before it reads a register gdb must know which there are. It asks for the *target
            description*, an XML file, in pieces (`qXfer:features:read:target.xml:OFFSET,LENGTH`;
            `m` means more follows, `l` the last piece). Ours has {registers} registers, each
            with a name, a size and a number -- the numbers `g` (all registers) and `p N`
            (one) use. The stub picks the list by the CPU mode: long mode gets gdb's x86-64
            registers, real and protected mode its i386 ones.
        """)
        lesson.block("\n".join(line for line in xml.splitlines()[:4] + ["..."] + [
            line for line in xml.splitlines() if 'name="rip"' in line or 'name="cr3"' in line]))
        block = bytes.fromhex(wire.reply("g"))
        rip = int.from_bytes(block[16 * 8:17 * 8], "little")
        lesson.narrate("""
            `g` answers every register, in that order, as little-endian hex: RAX first, RIP
            the 17th. Behind it: `KVM_GET_REGS` (general registers), `KVM_GET_SREGS`
            (segments, CR0-CR4, EFER) and `KVM_GET_FPU` (x87, SSE) -- three ioctls, one reply.
        """)
        lesson.checkpoint("registers in the description", registers, 65)
        lesson.checkpoint("rip from g", names.get(rip, hex(rip)), "_start")

        # -- 3. memory ---------------------------------------------------------------------------
        lesson.section("3. Memory: m to read, X to write, through the guest's page tables")
        greeting = wire.reply(f"m{symbol['greeting']:x},12")
        lesson.result(f"m{symbol['greeting']:x},12  (x/s greeting)", greeting)
        lesson.narrate("""
            gdb's addresses are the guest's *virtual* addresses. The stub walks the guest's
            page tables (CR3, as in lesson 06) to find the guest-physical page, and reads the
            RAM minikvm mapped. An address no page table maps, or one beyond RAM, is an error,
            `E0e` (EFAULT): gdb prints "Cannot access memory at address ...".
        """)
        lesson.checkpoint("m greeting", bytes.fromhex(greeting).decode(), "hello from gdbdemo")
        lesson.checkpoint("m of an unmapped address", wire.reply("m7f0000000000,4"), "E0e")
        five = (5).to_bytes(4, "little")
        reply = wire.reply(f"X{symbol['answer']:x},4:".encode() + five)
        lesson.result(f"X{symbol['answer']:x},4:<4 bytes>  (set var answer = 5)", reply)
        lesson.checkpoint("answer after X", wire.reply(f"m{symbol['answer']:x},4"), "05000000")

        # -- 4. breakpoints and watchpoints --------------------------------------------------
        lesson.section("4. Z packets: watchpoints and breakpoints, as debug registers")
        lesson.narrate("""
            `watch counter` becomes `Z2,ADDR,4` (type 2: a write watchpoint of 4 bytes), `break`
            becomes `Z0` (software) and `hbreak` `Z1` (hardware); `z` removes them. Then
            `continue` is `vCont;c`, and the stub answers only when the guest has stopped again
            -- with a stop reply that says why: `watch:ADDR`, `swbreak:`, `hwbreak:`.
        """)
        wire(f"Z2,{symbol['counter']:x},4")
        stop = wire.reply("vCont;c")
        counter = int.from_bytes(bytes.fromhex(wire.reply(f"m{symbol['counter']:x},4")), "little")
        watchpoint = wire.target.debuggers[0].watchpoints
        mechanism = next(iter(watchpoint.values())).mechanism
        lesson.result("Z2 + vCont;c", stop)
        lesson.narrate(f"""
            A watchpoint is a *trap*: the guest stopped just after the write, in `count()`,
            and `counter` is 1 now. On this host (`{detect_host().flavour}`) it was caught by
            **{mechanism}**: where debug registers watch data writes (hardware KVM) a DR slot
            does it at full speed; where they do not fire (kvm-pvm), minikvm single-steps and
            compares -- the stub's answer is the same.
        """)
        lesson.checkpoint("watchpoint stop", named(stop, names), "T05watch:<counter>;thread:1;")
        lesson.checkpoint("counter at the watchpoint", counter, 1)
        wire(f"z2,{symbol['counter']:x},4")
        wire(f"Z1,{symbol['twice']:x},1")
        stop = wire.reply("vCont;c")
        control, debugreg = wire.target.debuggers[0].runner.guest_debug
        slot = decode_dr7(debugreg[7])[0]
        flags = [name for bit, name in ((KVM_GUESTDBG_ENABLE, "ENABLE"),
                                        (KVM_GUESTDBG_USE_HW_BP, "USE_HW_BP"),
                                        (KVM_GUESTDBG_SINGLESTEP, "SINGLESTEP")) if control & bit]
        lesson.result("Z1 + vCont;c", stop)
        lesson.result("KVM_SET_GUEST_DEBUG of that run",
                      f"control {'|'.join(flags)}, DR0={debugreg[0]:#x}, DR7={debugreg[7]:#x}")
        lesson.narrate("""
            `Z1` became DR0 = the address of `twice` and DR7 slot 0 = "execute, 1 byte" --
            exactly the registers you set by hand in lesson 07 -- handed to KVM with
            `KVM_SET_GUEST_DEBUG` (`KVM_GUESTDBG_USE_HW_BP`). An instruction breakpoint is a
            *fault*: the guest stopped *before* `twice` ran, at its first instruction. (`Z0`
            would have patched an `int3` into guest memory where KVM catches it, or used a
            debug register where it does not: `monitor breakpoints` says which.)
        """)
        rip = int.from_bytes(bytes.fromhex(wire.reply("g"))[16 * 8:17 * 8], "little")
        lesson.checkpoint("breakpoint stop", stop, "T05hwbreak:;thread:1;")
        lesson.checkpoint("DR0 and DR7 slot 0",
                          f"DR0=<{names.get(debugreg[0], hex(debugreg[0]))}>, {slot.condition} "
                          f"{slot.size} byte", "DR0=<twice>, execute 1 byte")
        lesson.checkpoint("rip at the breakpoint", names.get(rip, hex(rip)), "twice")

        # -- 5. monitor and the end ------------------------------------------------------------
        lesson.section("5. monitor: asking the VMM; W: the guest's end")
        text = b"".join(bytes.fromhex(reply[1:].decode())
                        for reply in wire.replies("qRcmd," + b"exits 2".hex())[:-1])
        lesson.narrate("""
            `monitor TEXT` in gdb is `qRcmd,HEX(TEXT)`; the stub answers with console output
            packets (`O` + hex) and `OK`. gdb sees a program; the VMM sees a machine, and the
            monitor commands show it: `monitor exits` (the last VM exits, explained), `monitor
            cpu` (mode, CR0/CR4/EFER bits), `monitor translate ADDR` (the page walk),
            `monitor breakpoints` (what catches each one here).
        """)
        lesson.block("(gdb) monitor exits 2\n" + text.decode())
        wire(f"z1,{symbol['twice']:x},1")
        console, end = wire.replies("vCont;c")
        lesson.result("vCont;c", f"{console[:24].decode()}...  (hex of: "
                                  f"{bytes.fromhex(console[1:].decode()).decode().strip()!r})")
        lesson.result("then", end.decode())
        lesson.narrate("""
            The guest ran to its end: an `O` packet tells gdb why in words, then `W15` says the
            program exited with status 0x15 = 21 = (10 << 1) | 1 -- the debug-exit port's
            status for the value 10, which is twice the 5 we wrote into `answer`. gdb prints
            "[Inferior 1 (Remote target) exited with code 025]" (in octal), and `minikvm run`
            exits with the same status.
        """)
        lesson.checkpoint("the guest's end", end.decode(), "W15")
        lesson.checkpoint("the guest printed", output.decode().splitlines()[-1],
                          "twice(answer) = 10")
        wire.target.close()

    # -- 6. real gdb ---------------------------------------------------------------------------
    lesson.section("6. Real gdb, with set debug remote 1")
    transcript = gdb_transcript(elf, ["print answer", "set var answer = 5", "break twice",
                                      "continue", "stepi", "continue"])
    if transcript is None:
        lesson.narrate("gdb is not installed here (`apt install gdb`): this part shows its "
                       "packets when it is.")
    else:
        lesson.narrate("""
            `set debug remote 1` makes gdb print every packet it sends (`->`) and receives
            (`<-`). Each command below is followed by its packets. Notice: `break` sends
            nothing -- gdb inserts breakpoints (`Z0`) only when the guest is about to run, and
            removes them (`z0`) when it stops; `X ADDR,0:` is gdb asking whether binary
            writes work before it uses one; `stepi` is `vCont;s:1`; and after every stop gdb
            reads the registers (`g`) and the stack -- even in the middle of printing
            `Breakpoint 1, twice (x=5)`, when it needs the argument's value.
        """)
        lesson.block(transcript)

    lesson.section("7. Other CPU modes")
    lesson.narrate("""
        The stub describes the registers of the mode the boot vCPU is in when gdb connects:
        in long mode gdb's `i386:x86-64` (RAX..R15, RIP, 64 bits), in real and protected mode
        its `i386` (EAX..EDI, EIP, 32 bits) -- a 64-bit description would show a 32-bit guest
        with 64-bit registers, and the guest's `EIP` as the low half of `RIP`. gdb takes the
        architecture from the description, or from the ELF file: a 32-bit ELF (protected.elf)
        needs nothing more. For **real mode** tell gdb to decode 16-bit code:
        `gdb -ex 'set architecture i8086' -ex 'target remote ...'` (the line `minikvm run
        --gdb` prints says so). gdb knows nothing of segments: its addresses are linear
        addresses, which for minikvm's real-mode guests (CS = 0) are the offsets.
    """)
    with Machine(output=lambda data: None) as machine:
        machine.load_elf(lesson.guest("protected.elf"))
        wire = Wire(machine)
        xml = wire.reply("qXfer:features:read:target.xml:0,fff")
        architecture = xml[xml.index("<architecture>") + 14:xml.index("</architecture>")]
        wire.target.close()
    lesson.checkpoint("a 32-bit guest's description", architecture, "i386")
    lesson.narrate("""
        **Exercise 12** (`lessons/exercises/12_rsp.md`): frame and escape gdb's `X` packet
        yourself, so that bytes like `#` and `}` reach the guest. `minikvm lesson check 12`.
    """)
    return lesson.finish()


if __name__ == "__main__":
    run_lesson(main)
