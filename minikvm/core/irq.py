"""An interrupt wire from a device model into KVM's in-kernel irqchip."""

from __future__ import annotations

__all__ = ["KvmIrqLine"]


class KvmIrqLine:
    """An interrupt wire into KVM's in-kernel irqchip (``KVM_IRQ_LINE``).

    Only level changes reach the kernel: a device that recomputes its line on
    every register access would otherwise cost an ioctl each time.
    """

    def __init__(self, vm, gsi: int) -> None:
        self.vm = vm
        self.gsi = gsi
        self.level = False
        self.changes = 0

    def set_level(self, level: bool) -> None:
        level = bool(level)
        if level != self.level:
            self.level = level
            self.changes += 1
            self.vm.irq_line(self.gsi, level)
