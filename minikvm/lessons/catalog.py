"""The lessons, in order: where each one's script, task and starting file live.

The lessons themselves are scripts in the source tree's ``lessons/`` folder
(``python lessons/03_port_io.py``), next to their exercises
(``lessons/exercises/``) and reference outputs (``lessons/expected/``). This
package only knows where they are; ``minikvm lesson list`` prints the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["EXERCISES", "LESSONS", "LessonInfo", "find_lesson", "lessons_dir"]

ROOT = Path(__file__).resolve().parent.parent.parent


def lessons_dir() -> Path:
    """The ``lessons/`` folder of this source tree."""
    return ROOT / "lessons"


@dataclass(frozen=True)
class LessonInfo:
    """One lesson: ``lessons/{number}_{slug}.py``, and its exercise's
    starting file in ``lessons/exercises/`` (None: no exercise)."""

    number: str
    slug: str
    title: str
    starter: str | None = None

    @property
    def script(self) -> Path:
        return lessons_dir() / f"{self.number}_{self.slug}.py"

    @property
    def task(self) -> Path | None:
        if self.starter is None:
            return None
        return lessons_dir() / "exercises" / f"{Path(self.starter).stem}.md"

    @property
    def starter_path(self) -> Path | None:
        return None if self.starter is None else lessons_dir() / "exercises" / self.starter

    @property
    def solution_path(self) -> Path | None:
        return (None if self.starter is None
                else lessons_dir() / "exercises" / "solutions" / self.starter)


LESSONS: tuple[LessonInfo, ...] = (
    LessonInfo("01", "open_kvm", "Opening /dev/kvm: the API version and capabilities"),
    LessonInfo("02", "first_run", "A VM, a memory slot, a vCPU and the first KVM_RUN"),
    LessonInfo("03", "port_io", "Port I/O exits and a debug console", "03_port_io.S"),
    LessonInfo("04", "real_mode", "Real mode: registers and segments", "04_real_mode.S"),
    LessonInfo("05", "protected_mode", "Protected mode and the GDT", "05_gdt.py"),
    LessonInfo("06", "paging", "Paging and long mode, one level at a time", "06_walk.py"),
    LessonInfo("07", "debugging", "Single-stepping, breakpoints and watchpoints", "07_dr7.py"),
    LessonInfo("08", "uart_irq", "The UART, the irqchip and an interrupt", "08_uart_irq.S"),
    LessonInfo("09", "virtqueue", "MMIO exits and the virtqueue, a descriptor at a time",
               "09_chain.c"),
    LessonInfo("10", "virtio_blk", "virtio-blk end to end", "10_get_id.c"),
    LessonInfo("11", "smp", "Several CPUs: INIT, SIPI and a spinlock", "11_spinlock.c"),
    LessonInfo("12", "gdb", "Debugging a guest with gdb: the remote protocol", "12_rsp.py"),
    LessonInfo("13", "snapshots", "What a VM is made of: snapshots and time travel",
               "13_undo.py"),
    LessonInfo("14", "stats", "Watching a vCPU without stopping it: KVM's binary statistics",
               "14_stats.py"),
)

#: Exercise numbers, in order (lessons 03 to 14 end with one).
EXERCISES: tuple[str, ...] = tuple(lesson.number for lesson in LESSONS if lesson.starter)


def find_lesson(number: str) -> LessonInfo | None:
    """The lesson numbered ``number`` ("3" and "03" alike), or None."""
    number = number.zfill(2)
    return next((lesson for lesson in LESSONS if lesson.number == number), None)
