"""The lessons' catalog and the checker of their exercises.

The lessons are scripts in the source tree's ``lessons/`` folder (``python
lessons/03_port_io.py``); lessons 03 to 14 end with an exercise,
``lessons/exercises/NN_*.md``, and a starting file the learner copies and
changes. ``minikvm lesson check NN`` (the command is :mod:`minikvm.cli.lesson`)
builds the learner's version, runs it on a real machine (or calls it, for
the exercises that are a Python function) and says in plain words whether it
does what was asked -- and when it does not, what it did instead, read from
the machine's own state (registers, device state, what the guest printed).

* :mod:`~minikvm.lessons.catalog` -- the lessons in order, and their files;
* :mod:`~minikvm.lessons.checker` -- :func:`check_exercise`, which runs one
  check and contains whatever the learner's file does;
* :mod:`~minikvm.lessons.checks_cpu` -- exercises 03-07 (ports, CR0, GDT,
  page walk, debug registers);
* :mod:`~minikvm.lessons.checks_devices` -- exercises 08-10 (UART interrupt,
  virtqueue, virtio-blk);
* :mod:`~minikvm.lessons.checks_smp` -- exercise 11 (a spinlock across vCPUs);
* :mod:`~minikvm.lessons.checks_gdb` -- exercise 12 (a gdb remote packet);
* :mod:`~minikvm.lessons.checks_reverse` -- exercise 13 (undoing a recorded
  instruction);
* :mod:`~minikvm.lessons.checks_stats` -- exercise 14 (finding a statistic in
  KVM's binary statistics file);
* :mod:`~minikvm.lessons.learner` -- importing, building and running the
  learner's code as an untrusted guest;
* :mod:`~minikvm.lessons.verdict` -- the :class:`Verdict` and its words.

The guests are built by :mod:`minikvm.guestbuild`, like every guest built
outside ``guests/Makefile``.
"""

from minikvm.lessons.catalog import EXERCISES, LESSONS, LessonInfo, find_lesson, lessons_dir
from minikvm.lessons.checker import check_exercise
from minikvm.lessons.verdict import Verdict

__all__ = [
    "EXERCISES",
    "LESSONS",
    "LessonInfo",
    "Verdict",
    "check_exercise",
    "find_lesson",
    "lessons_dir",
]
