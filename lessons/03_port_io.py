"""Lesson 03: port I/O exits, and a debug console.

Run it: ``python lessons/03_port_io.py`` (``--quiet``: checkpoints only).
Exercise: ``lessons/exercises/03_port_io.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from _common import Lesson, run_lesson

from minikvm.kvm.exits import Hlt, IoIn, IoOut
from minikvm.machine import Machine, StopKind

# Hand-assembled real-mode snippets (16-bit encodings, Intel SDM vol. 2).
ECHO_ONE_PORT = bytes([
    0xE4, 0xE9,        # in  al, 0xe9     ; ask the device on port 0xE9 for a byte
    0xE6, 0xE9,        # out 0xe9, al     ; print it
    0xF4,              # hlt
])
NOBODY_HOME = bytes([
    0xE4, 0x80,        # in  al, 0x80     ; port 0x80: no device here
    0xE6, 0x80,        # out 0x80, al
    0xF4,              # hlt
])
REP_OUTSB_TEXT = b"many bytes, one instruction\n"
REP_OUTSB = bytes([
    0xFC,                                   # cld              ; count upwards
    0xBE, 0x00, 0x11,                       # mov si, 0x1100   ; the text
    0xB9, len(REP_OUTSB_TEXT), 0x00,        # mov cx, <length>
    0xBA, 0xE9, 0x00,                       # mov dx, 0xe9
    0xF3, 0x6E,                             # rep outsb        ; out dx, byte [si++], cx times
    0xF4,                                   # hlt
])
REP_INSB_TEXT = b"read ahead, one exit\n"
REP_INSB = bytes([
    0xFC,                                   # cld              ; count upwards
    0xBF, 0x00, 0x12,                       # mov di, 0x1200   ; where the bytes go (ES:DI)
    0xB9, len(REP_INSB_TEXT), 0x00,         # mov cx, <length>
    0xBA, 0xE9, 0x00,                       # mov dx, 0xe9
    0xF3, 0x6C,                             # rep insb         ; in byte [di++], dx, cx times
    0xF4,                                   # hlt
])


def main(argv: Sequence[str] | None = None) -> int:
    lesson = Lesson("03", "Port I/O exits and a debug console", argv)
    lesson.narrate("""
        Besides memory, an x86 CPU has a second, separate address space: 65536 *I/O ports*,
        reached only with the `in` and `out` instructions. PC devices of the 1980s live there
        -- the serial port at 0x3F8, the keyboard controller at 0x60/0x64, the timer at 0x40.
        Under KVM, a port access that the kernel does not handle itself becomes a VM exit,
        `KVM_EXIT_IO`, and the VMM plays the device. That is the whole idea of *device
        emulation*: the guest believes it talks to hardware; it talks to a Python object.
    """)

    # -- 1. a VMM loop by hand ----------------------------------------------------------
    lesson.section("1. A VMM's main loop, by hand")
    hello = lesson.guest("hello.bin")
    lesson.narrate("""
        `guests/asm/hello.S` prints a greeting one byte at a time with `out 0xe9, al`, then
        `hlt`s. Port 0xE9 is the Bochs/QEMU *debug console*: each byte written there is
        printed by the host. No setup, no status register -- the simplest device there is.
        We let the `Machine` load it and set real mode, and write the loop ourselves on the
        raw vCPU:
    """)
    lesson.code("""
        text = bytearray()
        while True:
            exit = machine.vcpu.run()                     # KVM_RUN
            if isinstance(exit, IoOut) and exit.port == 0xE9:
                text += exit.data                         # "the device" prints the byte
            elif isinstance(exit, Hlt):
                break
    """)
    exits = 0
    text = bytearray()
    with Machine() as machine:
        machine.load_flat(hello, 0x1000)
        while exits < 1000:
            exit = machine.vcpu.run()
            exits += 1
            if isinstance(exit, IoOut) and exit.port == 0xE9:
                text += exit.data
            elif isinstance(exit, Hlt):
                break
    lesson.result("the guest printed", bytes(text).decode().strip())
    lesson.result("VM exits", exits)
    lesson.narrate(f"""
        {len(text)} characters, {exits} exits: one per `out`, plus the `hlt`. Every byte
        crossed from the guest to the kernel to Python and back -- a round trip of some
        microseconds. That is why real VMMs avoid exits on hot paths (virtio, lesson 09).
    """)
    lesson.checkpoint("hello text", repr(bytes(text)),
                      repr(b"Hello from a KVM guest, driven entirely from Python!\n"))
    lesson.checkpoint("exits for hello", exits, len(text) + 1)

    # -- 2. IN: the guest waits for an answer ---------------------------------------------
    lesson.section("2. An IN: the guest waits for our answer")
    lesson.narrate("""
        An `out` carries its data to us. An `in` is a question: the guest is stopped in the
        *middle* of the instruction, and KVM finishes it at the next `KVM_RUN` with whatever
        bytes the VMM left in the shared page. minikvm's `IoIn.complete()` puts them there.
        This four-byte guest reads port 0xE9 and prints what it got. The Bochs debug console
        answers a read with 0xE9 ("I am here"), which is how a guest can tell it exists;
        we answer the same by hand, and then, to prove who decides, with something else.
    """)
    lesson.code("""
        e4 e9     in  al, 0xe9
        e6 e9     out 0xe9, al
        f4        hlt
    """, "nasm")
    lesson.code("""
        question = machine.vcpu.run()    # IoIn: the guest waits inside its `in`
        question.complete([0xE9])        # our answer goes into the kvm_run page
        echoed = machine.vcpu.run()      # the `in` finishes; the `out` exits
    """)
    answers = {}
    for answer in (0xE9, ord("A")):
        with Machine() as machine:
            machine.load_flat(ECHO_ONE_PORT, 0x1000)
            question = machine.vcpu.run()
            assert isinstance(question, IoIn), question
            question.complete([answer])
            echoed = machine.vcpu.run()
            answers[answer] = (question, echoed)
        lesson.result(f"exit 1, answered with {answer:#x}",
                      f"IoIn port={question.port:#x} size={question.size}")
        lesson.result("exit 2", f"IoOut port={echoed.port:#x} data={echoed.data!r}")
    question = answers[0xE9][0]
    lesson.checkpoint("in al, 0xe9", f"IoIn port={question.port:#x} size={question.size}",
                      "IoIn port=0xe9 size=1")
    lesson.checkpoint("echo of answer 0xe9", repr(answers[0xE9][1].data), repr(b"\xe9"))
    lesson.checkpoint("echo of answer 0x41", repr(answers[ord("A")][1].data), repr(b"A"))

    # -- 3. string I/O ----------------------------------------------------------------------
    lesson.section("3. String I/O: rep outsb and rep insb")
    lesson.narrate("""
        `rep outsb` writes CX bytes from memory to a port in one instruction, `rep insb` reads
        CX bytes from a port into memory. `kvm_run.io` has a `count` field, so one exit
        *could* carry many items. Does it? Count the exits of each, first the output:
    """)
    events = []
    output = []
    with Machine(output=output.append) as machine:
        machine.load_flat(REP_OUTSB, 0x1000)
        machine.memory.write(0x1100, REP_OUTSB_TEXT)
        machine.listeners.append(events.append)
        stop = machine.run(timeout=10)
    printed = b"".join(output)
    io_events = [e for e in events if e.reason == "IO_OUT"]
    items = sum(e.accesses for e in io_events)
    lesson.result("exits for the rep outsb", len(io_events))
    lesson.result("bytes they carried", items)
    lesson.narrate("""
        Now the input, by hand as in section 2: the guest runs `rep insb` from port 0xE9 into
        memory at 0x1200, and we answer every `IoIn` with as many bytes as it asks for:
    """)
    lesson.code("""
        while not isinstance(exit := machine.vcpu.run(), Hlt):
            exit.complete(text[given:given + exit.count])    # exit.count bytes at once
            given += exit.count
    """)
    questions = []
    with Machine() as machine:
        machine.load_flat(REP_INSB, 0x1000)
        given = 0
        while len(questions) < 1000:
            exit = machine.vcpu.run()
            if isinstance(exit, Hlt):
                break
            assert isinstance(exit, IoIn), exit
            questions.append(exit.count)
            exit.complete(REP_INSB_TEXT[given:given + exit.count])
            given += exit.count
        received = machine.memory.read(0x1200, len(REP_INSB_TEXT))
    lesson.result("exits for the rep insb", len(questions))
    lesson.result("count of each", ", ".join(str(count) for count in questions))
    lesson.result("memory at 0x1200", bytes(received))
    lesson.narrate(f"""
        {len(io_events)} exits for {items} bytes out, {len(questions)} for
        {len(REP_INSB_TEXT)} bytes in. Why, in the KVM source (Linux 6.1): on VT-x and
        AMD-V the CPU exits on a string I/O instruction and KVM hands it to its
        *instruction emulator* (`handle_io` in `arch/x86/kvm/vmx/vmx.c`, `io_interception`
        in `arch/x86/kvm/svm/svm.c`). In `arch/x86/kvm/emulate.c`, `em_out` -- the code
        behind both `out` and `outs` -- passes the port exactly one item, so every byte of
        a `rep outsb` leaves KVM as its own `KVM_EXIT_IO` with `count` = 1, and the guest
        re-enters on the same instruction with CX one smaller. `em_in` goes through
        `pio_in_emulated`, which *reads ahead*: it asks for up to CX items at once -- at
        most 1024 bytes (the emulator's read cache, `struct read_cache` in
        `arch/x86/kvm/kvm_emulate.h`) and never past the next 4 KiB boundary of DI -- so
        one exit with `count` > 1 answers many iterations (`emulator_pio_in_out` in
        `arch/x86/kvm/x86.c` fills in `kvm_run.io`). kvm-pvm is a KVM module on the same
        core and emulator, and this host shows the same counts.

        What a VMM may rely on is the bytes, not the number of exits -- and an IN exit with
        `count` > 1 must be answered with all its items at once (`IoIn.complete()` takes
        them). String output is no shortcut: bulk data goes by DMA (virtio, lesson 09).
    """)
    lesson.checkpoint("rep outsb text", repr(printed), repr(REP_OUTSB_TEXT))
    lesson.checkpoint("rep outsb stop", stop.kind.value, "halt")
    lesson.checkpoint("exits for rep outsb, rep insb", f"{len(io_events)}, {len(questions)}",
                      f"{len(REP_OUTSB_TEXT)}, 1")
    lesson.checkpoint("rep insb received", repr(bytes(received)), repr(REP_INSB_TEXT))

    # -- 4. the machine's port bus ----------------------------------------------------------
    lesson.section("4. The machine's I/O port bus")
    lesson.narrate("""
        A VMM with more than one device needs a *bus*: a map from port ranges to device
        objects. `Machine` registers a few on its port bus. An exit is looked up there and the
        device sees only an offset inside its own range, so a device model never knows which
        port it sits on (`minikvm/bus.py`). Besides this lesson's two, there is COM1
        (lesson 08) and whatever else the machine has grown (an `i8042` keyboard controller,
        say, whose only job here is to let a Linux guest ask for a reset).
    """)
    with Machine() as machine:
        mappings = machine.pio.mappings
        lesson.table("machine.pio.mappings", ("ports", "device"),
                     [(f"{m.base:#x}-{m.end - 1:#x}", m.device.name) for m in mappings])
        ours = [machine.pio.find(port) for port in (0xE9, 0xF4)]
        found = ", ".join(f"{m.base:#x}-{m.end - 1:#x} {m.device.name}" for m in ours if m)
    lesson.checkpoint("ports of this lesson", found, "0xe9-0xe9 debugcon, 0xf4-0xf7 debug-exit")
    lesson.narrate("""
        A port nobody decodes still exits: the bus records the access and, as on a real PC
        where nobody drives the data lines, a read returns all ones (0xFF). Port 0x80 is where
        BIOSes write progress codes; here nobody listens.
    """)
    with Machine() as machine:
        machine.load_flat(NOBODY_HOME, 0x1000)
        read = machine.step()
        write = machine.step()
    lesson.result("in al, 0x80", read.description)
    lesson.result("out 0x80, al", write.description)
    lesson.checkpoint("unclaimed read", read.description,
                      "no device at port 0x80: read floats to 0xff")
    lesson.checkpoint("unclaimed write", write.description,
                      "no device at port 0x80: write of 0xff dropped")

    # -- 5. the debug-exit port --------------------------------------------------------
    lesson.section("5. Ending a run with a status: the debug-exit port")
    lesson.narrate("""
        QEMU's `isa-debug-exit` device lets a test guest end the VM with a status of its
        choosing; test suites such as kvm-unit-tests report pass/fail that way. Writing `v` to
        port 0xF4 (the device decodes 0xF4-0xF7, like QEMU's with `iosize=4`) ends the run
        with status `(v << 1) | 1` -- shifted and made odd, so that a guest's status can
        never be mistaken for the VMM's own (0 = clean halt, 124 = timeout).
        `guests/asm/exitcode.S` writes 0x2a:
    """)
    with Machine() as machine:
        machine.load_flat(lesson.guest("exitcode.bin"), 0x1000)
        event = machine.step()
    lesson.result("the exit, explained by the device", event.description)
    lesson.result("the machine stops", event.stop.message if event.stop else None)
    lesson.checkpoint("debug exit", f"{event.stop.kind.value} status {event.stop.status}",
                      "debug-exit status 85")
    assert event.stop.kind is StopKind.DEBUG_EXIT
    lesson.narrate("""
        From the shell: `minikvm run guests/build/exitcode.bin; echo $?` prints 85.

        **Exercise 03** (`lessons/exercises/03_port_io.md`): make a guest *read* the debug
        console port, print what it read in hex, and end the run through port 0xF4. Check it
        with `minikvm lesson check 03`.
    """)
    return lesson.finish()


if __name__ == "__main__":
    run_lesson(main)
