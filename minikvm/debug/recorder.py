"""Recording, undoing and redoing guest instructions: reverse execution on KVM.

While recording, the debugger single-steps every instruction (on KVM the
only way to know where one instruction ends) and the :class:`Recorder` keeps
what each one changed in the :class:`~minikvm.debug.history.History`:

* **registers** -- ``kvm_regs`` before and after the step (the stepper has
  both; with ``KVM_CAP_SYNC_REGS`` they come from the run page), and
  ``kvm_sregs`` and ``kvm_fpu`` when they changed;
* **guest memory** -- every RAM slot gets ``KVM_MEM_LOG_DIRTY_PAGES`` while
  recording, and ``KVM_GET_DIRTY_LOG`` after each step names the pages the
  guest stored to (KVM marks them in ``mark_page_dirty``, virt/kvm/kvm_main.c;
  the call also clears the log). The VMM's own writes (device DMA, the
  debugger) go around KVM, so :meth:`GuestMemory.track_writes` names those.
  Each named page is compared with a *shadow* copy of RAM kept while
  recording, and only the changed bytes are logged, old and new;
* **devices** -- when a step dispatched a VM exit (``machine.exit_count``
  moved) or moved host input into a device, the state of every device
  model before and after (:func:`~minikvm.devices.state.save_devices`):
  undoing an ``out`` to the UART puts its registers and FIFOs back as they
  were;
* **sleeping in hlt** -- whether the vCPU waits in a ``hlt`` after the
  step (the stepper's wake-up, debug/stepper.py): undo and redo set KVM's
  MP state to match, so running on live from any point waits where the
  guest waited. A step that a pause or the timeout ended before anything
  ran is no entry.

Undo writes the old values back (``KVM_SET_REGS``/``SREGS``/``FPU``, RAM),
redo the new ones: no instruction runs again, so a device never sees an
access twice and output is not printed twice. At the end of the history the
machine is exactly where the recording left it, and stepping goes on live.

Not rewound (say so to whoever relies on it): the in-kernel irqchip, PIT and
LAPIC timers, MSRs other than EFER and the APIC base (which are in
``kvm_sregs``), the debug registers, pending events (``KVM_GET_VCPU_EVENTS``:
an interrupt shadow after ``sti``), and guest time. Other vCPUs are not
recorded: reverse execution is for the debugger's vCPU on a machine whose
other vCPUs are stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from minikvm.debug.events import StepRecord
from minikvm.debug.guestview import GuestView, linear_rip
from minikvm.debug.history import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
    Entry,
    History,
    MemoryChange,
    apply_words,
    changed_range,
    word_diff,
)
from minikvm.debug.stepper import Stepper
from minikvm.devices.state import restore_devices, save_devices
from minikvm.kvm.uapi import KVM_MEM_LOG_DIRTY_PAGES, kvm_fpu, kvm_regs, kvm_sregs
from minikvm.machine import Machine
from minikvm.memory import PAGE_SIZE, MemoryRegion

__all__ = ["DeviceStates", "Recorder", "machine_devices"]

#: How the device models' state is saved and restored: ``(save, restore)``
#: with ``save() -> state`` and ``restore(state)``; None: not at all.
DeviceStates = tuple[Callable[[], Any], Callable[[Any], None]]


def machine_devices(machine: Machine) -> DeviceStates:
    """Every device on the machine's port and MMIO buses, saved and restored
    whole (:mod:`minikvm.devices.state`), under the machine's lock as that
    module asks."""
    buses = (machine.pio, machine.mmio)

    def save() -> Any:
        with machine.lock:
            return save_devices(buses)

    def restore(states: Any) -> None:
        with machine.lock:
            restore_devices(buses, states)

    return save, restore


class Recorder:
    """Records the steps of one vCPU of ``machine`` and moves through them.

    ``step()`` is the debugger's way to execute one instruction: with
    recording off it is the stepper's; while recording it records, and while
    in the past it redoes the next entry instead of executing. ``devices``
    saves and restores the device models (default: every device on the
    machine's buses, :func:`machine_devices`).
    """

    def __init__(self, machine: Machine, view: GuestView, stepper: Stepper,
                 devices: DeviceStates | None = None) -> None:
        self.machine = machine
        self.view = view
        self.stepper = stepper
        self.devices = machine_devices(machine) if devices is None else devices
        self.vcpu = view.runner.vcpu
        #: The history while recording, else None.
        self.history: History | None = None
        #: Set when a redo has just reached the end of the history.
        self.reached_end = False
        self._shadow: dict[int, bytearray] = {}
        self._sregs = b""
        self._fpu = b""
        self._device_state: Any = None
        self._start_asleep = False
        # A step that moved devices but made no entry (a wait a pause ended):
        # the next entry saves the device states.
        self._devices_moved = False

    @property
    def active(self) -> bool:
        return self.history is not None

    @property
    def in_past(self) -> bool:
        return self.history is not None and not self.history.at_end

    # -- on and off ---------------------------------------------------------------------

    def start(self, max_entries: int = DEFAULT_MAX_ENTRIES,
              max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        """Begin a fresh history here (an old one is forgotten)."""
        history = History(max_entries, max_bytes)
        if self.history is None:
            self._log_dirty_pages(True)
            self.machine.memory.track_writes(True)
        self.history = history
        self._start_asleep = self.stepper.asleep
        self._resync()

    def stop(self) -> None:
        """Forget the history; the machine stays in whatever state it shows
        now (as gdb's ``record stop`` in the past: that becomes the present)."""
        if self.history is None:
            return
        self.history = None
        self._shadow = {}
        self._device_state = None
        self.machine.memory.track_writes(False)
        self._log_dirty_pages(False)

    def _log_dirty_pages(self, enabled: bool) -> None:
        """``KVM_SET_USER_MEMORY_REGION`` again on every RAM slot, the same
        mapping with ``KVM_MEM_LOG_DIRTY_PAGES`` set or cleared (KVM allows a
        flags-only change of a slot: ``KVM_MR_FLAGS_ONLY`` in kvm_main.c)."""
        flags = KVM_MEM_LOG_DIRTY_PAGES if enabled else 0
        for region in self.machine.memory.regions:
            self.machine.vm.set_user_memory_region(region.slot, region.guest_phys_addr,
                                                   region.size, region.host_address, flags)

    def _resync(self) -> None:
        """Take the machine as it is now as the state the next entry starts
        from: shadow RAM, sregs, FPU, devices; the dirty log and the VMM's
        write list emptied."""
        memory = self.machine.memory
        self._shadow = {region.slot: bytearray(region.mapping) for region in memory.regions}
        self._dirty_pages()
        self._sregs = bytes(self.vcpu.get_sregs())
        self._fpu = bytes(self.vcpu.get_fpu())
        self._device_state = self.devices[0]()

    def edited(self) -> None:
        """Registers or memory were changed from outside (a person, gdb).

        In the past that makes the recorded future impossible: it is dropped
        (gdb warns the same way) and execution is live from here. The edit
        itself is not an entry: its bytes go into the shadow as they are, so
        undoing an older entry keeps the edit wherever that entry did not write.
        """
        if self.history is None:
            return
        self.history.truncate()
        self._memory_changes()   # the VMM's write list names the edited pages
        self._sregs = bytes(self.vcpu.get_sregs())
        self._fpu = bytes(self.vcpu.get_fpu())

    # -- forwards -----------------------------------------------------------------------

    def step(self) -> StepRecord:
        """Execute (or, in the past, redo) one instruction."""
        history = self.history
        if history is None:
            return self.stepper.step()
        if not history.at_end:
            return self._redo(history)
        self.reached_end = False
        exits_before = self.machine.exit_count
        stepper = self.stepper
        record = stepper.step()
        moved = self._devices_moved or stepper.fed_input or self.machine.exit_count != exits_before
        stepper.fed_input = False
        if not stepper.ran:   # ended by a pause or the timeout: nothing to keep
            self._devices_moved = moved
            return record
        self._devices_moved = False
        history.append(self._entry(record, moved))
        return record

    def _entry(self, record: StepRecord, had_exits: bool) -> Entry:
        """What the step just taken changed."""
        vcpu = self.vcpu
        sregs = bytes(vcpu.get_sregs())
        sregs_change = None
        if sregs != self._sregs:
            sregs_change, self._sregs = (self._sregs, sregs), sregs
        fpu = bytes(vcpu.get_fpu())
        fpu_change = None
        if fpu != self._fpu:
            fpu_change, self._fpu = (self._fpu, fpu), fpu
        devices = None
        if had_exits:
            state = self.devices[0]()
            devices, self._device_state = (self._device_state, state), state
        return Entry(word_diff(bytes(record.before), bytes(record.after)), sregs_change,
                     fpu_change, self._memory_changes(), devices, record.stop,
                     self.stepper.asleep)

    def _dirty_pages(self) -> set[int]:
        """Page numbers written since the last call, by the guest
        (``KVM_GET_DIRTY_LOG``, one bit per page of each slot) or by the VMM."""
        pages = self.machine.memory.take_written()
        vm = self.machine.vm
        for region in self.machine.memory.regions:
            bits = int.from_bytes(vm.get_dirty_log(region.slot, region.size // PAGE_SIZE),
                                  "little")
            first = region.guest_phys_addr // PAGE_SIZE
            while bits:
                low = bits & -bits
                pages.add(first + low.bit_length() - 1)
                bits ^= low
        return pages

    def _memory_changes(self) -> tuple[MemoryChange, ...]:
        """The changed bytes of each dirty page against the shadow (which is
        brought up to date)."""
        pages = self._dirty_pages()
        if not pages:
            return ()
        memory = self.machine.memory
        changes = []
        for page in sorted(pages):
            address = page * PAGE_SIZE
            region = memory.region_at(address)
            if region is None:
                continue
            offset = address - region.guest_phys_addr
            shadow = self._shadow[region.slot]
            new = region.mapping[offset:offset + PAGE_SIZE]
            old = shadow[offset:offset + PAGE_SIZE]
            span = changed_range(old, new)
            if span is None:
                continue
            start, end = span
            changes.append((address + start, bytes(old[start:end]), new[start:end]))
            shadow[offset + start:offset + end] = new[start:end]
        return tuple(changes)

    # -- moving through the history -------------------------------------------------

    def undo(self) -> Entry | None:
        """Put the state before the previous entry back; None at the start."""
        if self.history is None:
            return None
        entry = self.history.undo()
        if entry is not None:
            self._apply(entry, forward=False)
        return entry

    def _redo(self, history: History) -> StepRecord:
        view = self.view
        before = kvm_regs.from_buffer_copy(view.regs())
        pc = view.pc
        entry = history.redo()
        assert entry is not None
        after, new_pc = self._apply(entry, forward=True)
        self.reached_end = history.at_end
        return StepRecord(before, after, pc, new_pc, stop=entry.stop)

    def _apply(self, entry: Entry, forward: bool) -> tuple[kvm_regs, int]:
        """Make the machine show the state after (``forward``) or before
        ``entry``; the registers and the linear RIP it has then.

        The view is handed the new registers (one ``KVM_SET_REGS`` per entry
        and no read back: this is the loop of a long reverse-continue)."""
        side = 1 if forward else 0
        vcpu = self.vcpu
        view = self.view
        block = bytearray(bytes(view.regs()))
        apply_words(block, entry.regs, forward)
        if entry.sregs is not None:
            self._sregs = entry.sregs[side]
            vcpu.set_sregs(kvm_sregs.from_buffer_copy(self._sregs))
        regs = kvm_regs.from_buffer_copy(block)
        vcpu.set_regs(regs)
        if entry.fpu is not None:
            self._fpu = entry.fpu[side]
            vcpu.set_fpu(kvm_fpu.from_buffer_copy(self._fpu))
        changes = entry.memory if forward else reversed(entry.memory)
        for address, old, new in changes:
            self._put(address, new if forward else old)
        if entry.devices is not None:
            self._device_state = entry.devices[side]
            self.devices[1](self._device_state)
        self._sleep_as_recorded()
        view.invalidate()
        pc = linear_rip(regs, kvm_sregs.from_buffer_copy(self._sregs))
        view.stepped(regs, pc)
        return regs, pc

    def _sleep_as_recorded(self) -> None:
        """Asleep in ``hlt`` or not, as the vCPU was at this point of the
        history (after the last entry done; at the start, as when the
        recording began, unless older entries were dropped)."""
        history = self.history
        assert history is not None
        last = history.last_done
        if last is not None:
            asleep = last.asleep
        else:
            asleep = self._start_asleep and not history.dropped
        self.stepper.sleep(asleep)

    def _put(self, address: int, data: bytes) -> None:
        """Write RAM and the shadow alike, around the VMM write list (this is
        not a change to record)."""
        region: MemoryRegion | None = self.machine.memory.region_at(address)
        if region is None:   # cannot happen: the entry was made from this RAM
            return
        offset = address - region.guest_phys_addr
        region.mapping[offset:offset + len(data)] = data
        self._shadow[region.slot][offset:offset + len(data)] = data
