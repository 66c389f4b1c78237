"""The lessons run, and say what their reference output says; the exercise
checker passes the reference solutions and turns wrong ones away with words.

Each lesson is run as a learner runs it, as a script in a fresh process,
once with ``--quiet`` (its CHECKPOINT lines must equal
``lessons/expected/NN.txt``) and once with its full narration (which must
render, and hold the same checkpoints).
"""

from __future__ import annotations

import difflib
import importlib.util
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.cli import main as minikvm_main
from minikvm.debug.history import Entry, word_diff
from minikvm.kvm.uapi import KvmCap
from minikvm.lessons import (
    EXERCISES,
    LESSONS,
    LessonInfo,
    Verdict,
    check_exercise,
    lessons_dir,
)
from minikvm.lessons.checks_reverse import REG_NAMES, step_of
from tests.conftest import ROOT, slow_except, slow_only

LESSON_IDS = [lesson.number for lesson in LESSONS]
EXERCISE_LESSONS = [lesson for lesson in LESSONS if lesson.starter]
MISTAKES = lessons_dir() / "exercises" / "solutions" / "mistakes"


def run_lesson(lesson: LessonInfo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(lesson.script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


def lesson_main(argv: list[str]) -> int:
    """``minikvm lesson ARGV...``, in this process."""
    return minikvm_main(["lesson", *argv])


def checkpoints(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.startswith("CHECKPOINT ")]


def _kernel_has_blocking() -> bool:
    """Whether this kernel offers a vCPU's binary statistics with ``blocking``
    (Linux 5.17): what lesson 14 and its exercise need."""
    from minikvm.kvm.system import Kvm

    with Kvm() as kvm:
        if kvm.check_extension(KvmCap.KVM_CAP_BINARY_STATS_FD) <= 0:
            return False
        with kvm.create_vm() as vm, vm.create_vcpu(0) as vcpu:
            return "blocking" in vcpu.stats().names


def skip_without_what_it_needs(number: str) -> None:
    """Lesson 14 says so and ends early on a kernel without binary statistics
    (lessons/README.md): its reference output and exercise are those of a
    kernel that has them."""
    if number == "14" and not _kernel_has_blocking():
        pytest.skip("this kernel has no binary statistics with 'blocking' (Linux 5.17)")


# -- the lesson files ---------------------------------------------------------------------


def test_every_lesson_has_a_script_and_reference_output():
    for lesson in LESSONS:
        assert lesson.script.is_file(), lesson.script
        assert (lessons_dir() / "expected" / f"{lesson.number}.txt").is_file(), lesson.number


def test_lessons_are_numbered_01_to_14_in_order():
    assert LESSON_IDS == [f"{n:02d}" for n in range(1, 15)]


def test_every_exercise_has_a_task_a_starter_and_a_solution():
    assert [lesson.number for lesson in EXERCISE_LESSONS] == list(EXERCISES)
    assert list(EXERCISES) == [f"{n:02d}" for n in range(3, 15)]
    for lesson in EXERCISE_LESSONS:
        assert lesson.task.is_file(), lesson.task
        assert lesson.starter_path.is_file(), lesson.starter_path
        assert lesson.solution_path.is_file(), lesson.solution_path
        assert "minikvm lesson check " + lesson.number in lesson.task.read_text()


def test_the_lessons_readme_names_every_lesson_and_its_command():
    readme = (lessons_dir() / "README.md").read_text()
    for lesson in LESSONS:
        assert f"python lessons/{lesson.script.name}" in readme, lesson.number
    for number in EXERCISES:
        assert f"minikvm lesson check {number}" in readme


# -- running the lessons ---------------------------------------------------------------------


@pytest.mark.kvm
@pytest.mark.parametrize("number", slow_except(LESSON_IDS, "01"))
def test_lesson_quiet_output_matches_its_reference(number):
    skip_without_what_it_needs(number)
    lesson = next(lesson for lesson in LESSONS if lesson.number == number)
    result = run_lesson(lesson, "--quiet")
    assert result.returncode == 0, result.stderr
    expected = (lessons_dir() / "expected" / f"{number}.txt").read_text()
    assert result.stdout == expected, "".join(difflib.unified_diff(
        expected.splitlines(True), result.stdout.splitlines(True),
        f"lessons/expected/{number}.txt", f"lesson {number} --quiet"))
    assert result.stdout and all(line.startswith("CHECKPOINT ")
                                 for line in result.stdout.splitlines())


@pytest.mark.kvm
@pytest.mark.slow
@pytest.mark.parametrize("number", LESSON_IDS)
def test_lesson_narration_runs_and_holds_the_same_checkpoints(number):
    skip_without_what_it_needs(number)
    lesson = next(lesson for lesson in LESSONS if lesson.number == number)
    result = run_lesson(lesson)
    assert result.returncode == 0, result.stderr
    expected = (lessons_dir() / "expected" / f"{number}.txt").read_text().splitlines()
    assert checkpoints(result.stdout) == expected
    assert f"Lesson {number} done" in result.stdout
    assert len(result.stdout.splitlines()) > 3 * len(expected)  # there is a story around them


@pytest.mark.slow
def test_a_lesson_without_kvm_says_so_in_one_line(tmp_path):
    # The lessons open /dev/kvm through Kvm(); point it at a missing device.
    script = tmp_path / "no_kvm.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(lessons_dir())!r})\n"
        "from _common import run_lesson\n"
        "from minikvm.kvm.system import Kvm\n"
        "def main(argv):\n"
        "    Kvm('/nonexistent/kvm')\n"
        "    return 0\n"
        "run_lesson(main)\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("this lesson needs KVM: /nonexistent/kvm does not exist")
    assert "Traceback" not in result.stderr


# -- the exercise checker -----------------------------------------------------------------------


def verdict_text(verdict: Verdict) -> str:
    return "\n".join([verdict.message, *verdict.details])


@pytest.mark.kvm
@pytest.mark.parametrize("number", slow_only(EXERCISES, "09", "10", "11", "12", "13"))
def test_reference_solution_passes(number):
    skip_without_what_it_needs(number)
    lesson = next(lesson for lesson in LESSONS if lesson.number == number)
    verdict = check_exercise(number, lesson.solution_path)
    assert verdict.passed, verdict_text(verdict)


#: What the checker must say about the unchanged starting file.
STARTER_SAYS = {
    "03": "never read port 0xE9",
    "04": "printed CR0=0x00000000, but its CR0 is 0x00000010",
    "05": "a code segment, and code is never writable",
    "06": "has PS (bit 7) set: it maps a 2 MiB page itself",
    "07": "watches write of 4 byte(s)",
    "08": "MCR bit 3, OUT2, is clear",
    "09": "its flags have no VIRTQ_DESC_F_NEXT",
    "10": "no VIRTIO_BLK_T_GET_ID (type 8) request",
    "11": "increments were overwritten",
    "12": "Every '#' in the data ends the packet there",
    "13": "your undo wrote nothing back: the store was not undone",
    "14": "returned None, but this vCPU's statistics file has 'exits'",
}

#: A plausible wrong answer for each exercise, and what the checker must say about it.
MISTAKE_SAYS = {
    "04": "PE (bit 0) is clear in real mode",
    "05": "landed at physical 0x0, not at 0x10000",
    "06": "Right page, wrong offset",
    "07": "Nothing is switched on",
    "08": "bit 2 is OUT1",
    "09": "device-readable buffer after a writable one",
    "10": "GET_ID into 0 bytes (needs 20): IOERR",
    "11": "spin_unlock must store 0",
    "12": "the escape byte itself must be escaped too",
    "13": "RIP is 0x100f; before the instruction it was 0x100d",
    "14": "You used desc_offset as the data offset",
}


@pytest.mark.kvm
@pytest.mark.parametrize("number", slow_only(EXERCISES, "08", "09", "10", "11", "12"))
def test_unchanged_starting_file_is_turned_away_with_the_reason(number):
    skip_without_what_it_needs(number)
    lesson = next(lesson for lesson in LESSONS if lesson.number == number)
    verdict = check_exercise(number, lesson.starter_path)
    assert not verdict.passed
    assert STARTER_SAYS[number] in verdict_text(verdict)


@pytest.mark.kvm
@pytest.mark.parametrize("number", slow_only(sorted(MISTAKE_SAYS), "08", "09", "10", "11", "12"))
def test_plausible_mistake_is_turned_away_with_the_reason(number):
    skip_without_what_it_needs(number)
    lesson = next(lesson for lesson in LESSONS if lesson.number == number)
    verdict = check_exercise(number, MISTAKES / lesson.starter)
    assert not verdict.passed
    assert MISTAKE_SAYS[number] in verdict_text(verdict)


def test_a_guest_that_does_not_assemble_gets_the_assembler_errors(tmp_path):
    source = tmp_path / "broken.S"
    source.write_text(".code16\n_start:\n    mov %ax, %nosuchregister\n")
    verdict = check_exercise("03", source)
    assert not verdict.passed
    assert verdict.message == "broken.S does not build."
    assert "nosuchregister" in verdict_text(verdict)


def test_a_python_file_that_is_not_python_is_named_with_its_line(tmp_path):
    source = tmp_path / "mine.py"
    source.write_text("def data_descriptor(:\n    return 0\n")
    verdict = check_exercise("05", source)
    assert not verdict.passed
    assert verdict.message.startswith("mine.py is not valid Python")
    assert "line 1" in verdict.message


def test_an_exception_in_the_learners_function_is_a_sentence_with_its_line(tmp_path):
    source = tmp_path / "mine.py"
    source.write_text("def debug_registers(address):\n    return [address] * (1 // 0)\n")
    verdict = check_exercise("07", source)
    assert not verdict.passed
    assert "ZeroDivisionError" in verdict.message and "mine.py line 2" in verdict.message


def test_a_function_with_another_name_is_asked_for_by_name(tmp_path):
    source = tmp_path / "mine.py"
    source.write_text("def walker(memory, cr3, vaddr):\n    return None\n")
    verdict = check_exercise("06", source)
    assert not verdict.passed
    assert "has no function walk()" in verdict.message


@pytest.mark.kvm
def test_a_descriptor_that_is_not_a_64_bit_number_is_refused_before_running(tmp_path):
    source = tmp_path / "mine.py"
    source.write_text("def data_descriptor():\n    return 1 << 64\n")
    verdict = check_exercise("05", source)
    assert not verdict.passed
    assert "must be an int that fits in 64 bits" in verdict.message


@pytest.mark.kvm
@pytest.mark.slow
def test_a_guest_that_loops_forever_is_stopped_and_said_so(tmp_path, monkeypatch):
    from minikvm.lessons import learner

    monkeypatch.setattr(learner, "GUEST_TIMEOUT", 0.5)
    source = tmp_path / "loop.S"
    source.write_text(".code16\n.globl _start\n_start:\n    jmp _start\n")
    verdict = check_exercise("04", source)
    assert not verdict.passed
    assert "still running after 0.5 s" in verdict.message


# -- the command -------------------------------------------------------------------------------


def test_lesson_list_shows_every_lesson(capsys):
    assert lesson_main(["list"]) == 0
    out = capsys.readouterr().out
    for lesson in LESSONS:
        assert lesson.number in out


def test_lesson_list_at_80_columns_shows_every_command_whole(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert lesson_main(["list"]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 80
    for lesson in LESSONS:
        assert f"python lessons/{lesson.script.name}" in out
        if lesson.starter:
            assert f"minikvm lesson check {lesson.number}" in out


def test_check_without_a_file_here_says_how_to_start(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert lesson_main(["check", "3"]) == 2
    out = capsys.readouterr().out
    assert "there is no ./03_port_io.S here" in out and "cp " in out


def test_check_of_a_lesson_without_exercise_is_a_usage_error(capsys):
    assert lesson_main(["check", "02"]) == 2
    assert "lesson 02 has no exercise" in capsys.readouterr().out


def test_check_of_an_unknown_lesson_is_a_usage_error(capsys):
    assert lesson_main(["check", "42"]) == 2
    assert "there is no lesson '42'" in capsys.readouterr().out


@pytest.mark.kvm
def test_check_reports_passed_and_status_0(capsys):
    solution = lessons_dir() / "exercises" / "solutions" / "03_port_io.S"
    assert lesson_main(["check", "03", "--file", str(solution)]) == 0
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.kvm
def test_check_reports_not_yet_and_status_1(capsys):
    starter = lessons_dir() / "exercises" / "03_port_io.S"
    assert lesson_main(["check", "03", "--file", str(starter)]) == 1
    out = capsys.readouterr().out
    assert "NOT YET" in out and "never read port 0xE9" in out


def test_show_prints_the_task(capsys):
    assert lesson_main(["show", "05"]) == 0
    assert "a segment descriptor, by hand" in capsys.readouterr().out


def test_starting_files_are_copies_a_learner_can_use_in_place():
    # The checker's default is the starter's name in the current folder.
    for lesson in EXERCISE_LESSONS:
        assert Path(lesson.starter).name == lesson.starter


# -- exercise 13: what the learner's undo() is given ------------------------------------------

_U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


@settings(max_examples=100, deadline=None)
@given(st.lists(_U64, min_size=18, max_size=18), st.lists(_U64, min_size=18, max_size=18),
       st.lists(st.booleans(), min_size=18, max_size=18))
def test_a_step_names_exactly_the_registers_the_entry_changed_with_before_and_after(
        before, other, changed):
    after = [new if flip else old for old, new, flip in zip(before, other, changed)]
    entry = Entry(word_diff(struct.pack("<18Q", *before), struct.pack("<18Q", *after)),
                  memory=((0x2000, b"\x00", b"\x04"),))
    step = step_of(entry)
    assert step.regs == {name: (old, new) for name, old, new in zip(REG_NAMES, before, after)
                         if old != new}
    assert step.memory == [(0x2000, b"\x00", b"\x04")]


@pytest.mark.kvm
def test_an_undo_that_puts_a_non_number_in_a_register_is_told_so(tmp_path):
    source = tmp_path / "13_undo.py"
    source.write_text("def undo(step, regs, memory):\n    regs['rax'] = 'before'\n")
    verdict = check_exercise("13", source)
    assert not verdict.passed
    assert "regs['rax'] is 'before'" in verdict.message and "64 bits" in verdict.message


# -- lesson and exercise 14: KVM's binary statistics --------------------------------------------

#: Lines of the reference solution of exercise 14, and a wrong version of
#: each that the checker must name.
STATS_MISTAKES = [
    ("return data_offset + offset, size", "return offset, size",
     "is the descriptor's offset field as it stands"),
    ("return data_offset + offset, size", "return data_offset + offset, 8 * size",
     "That is its size in bytes"),
    ("return data_offset + offset, size", "return data_offset + 8 * (start // stride), size",
     "if every statistic had one value"),
    ("return data_offset + offset, size", "return data_offset + offset, 1",
     "one per bucket for a histogram"),
    ("stride = DESC.size + name_size", "stride = DESC.size",
     "returned None, but this vCPU's statistics file has 'exits'"),
    ('padded.split(b"\\0", 1)[0].decode() == name',
     'padded.split(b"\\0", 1)[0].decode().startswith(name)',
     "there is no statistic 'exit': only 'exits' begins that way"),
    ('padded.split(b"\\0", 1)[0].decode() == name',
     'name in padded.split(b"\\0", 1)[0].decode()',
     "Compare whole names (the NULs after a name stripped)."),
    # Numbers that happen to be the kernel's, not the header's: the checker's
    # rearranged file (roomier names, gaps, more statistics) tells them apart.
    ("return data_offset + offset, size", "return desc_offset + num_desc * stride + offset, size",
     "adds up the blocks before the data as if they followed each other"),
    ("stride = DESC.size + name_size", "stride = DESC.size + HOST_NAME_SIZE",
     "The rearranged file holds this vCPU's statistics laid out another way"),
    ("return data_offset + offset, size", "return HOST_DATA_OFFSET + offset, size",
     "laid out differently, as the header allows"),
    # The next descriptor's fields with this one's name: not a partial match.
    ("DESC.unpack_from(descriptors, start)", "DESC.unpack_from(descriptors, start + stride)",
     "the fields you used belong to another descriptor than the name you matched"),
]


def _host_numbers() -> dict[str, str]:
    """The data_offset and name_size of this kernel's vCPU statistics file:
    what a find_stat that copied this host's numbers would have written in."""
    from minikvm.machine import Machine

    with Machine() as machine:
        header = machine.vcpu.stats().header
        return {"HOST_DATA_OFFSET": str(header.data_offset),
                "HOST_NAME_SIZE": str(header.name_size)}


@pytest.mark.kvm
@pytest.mark.parametrize(("right", "wrong", "said"), STATS_MISTAKES,
                         ids=["no data_offset", "bytes", "one value each", "histogram of 1",
                              "stride without the name", "prefix", "substring",
                              "data after the descriptors", "name_size of this host",
                              "data_offset of this host", "the next descriptor's fields"])
def test_a_find_stat_that_goes_wrong_is_told_how(tmp_path, right, wrong, said):
    skip_without_what_it_needs("14")
    solution = (lessons_dir() / "exercises" / "solutions" / "14_stats.py").read_text()
    assert solution.count(right) == 1
    source = tmp_path / "14_stats.py"
    for placeholder, number in _host_numbers().items():
        wrong = wrong.replace(placeholder, number)
    source.write_text(solution.replace(right, wrong))
    verdict = check_exercise("14", source)
    assert not verdict.passed
    assert said in verdict_text(verdict)


@pytest.mark.kvm
def test_a_find_stat_that_closes_its_fd_is_still_judged_by_its_answers(tmp_path):
    skip_without_what_it_needs("14")
    solution = (lessons_dir() / "exercises" / "solutions" / "14_stats.py").read_text()
    source = tmp_path / "14_stats.py"
    source.write_text(solution.replace("    return None\n", "    os.close(fd)\n    return None\n"))
    verdict = check_exercise("14", source)
    assert verdict.passed, verdict_text(verdict)


def _lesson_module(number: str, monkeypatch):
    """A lesson script imported as a module (its folder on sys.path, for _common)."""
    lesson = next(lesson for lesson in LESSONS if lesson.number == number)
    monkeypatch.syspath_prepend(str(lessons_dir()))
    spec = importlib.util.spec_from_file_location(f"lesson_{number}", lesson.script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)   # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.kvm
def test_lesson_14_on_a_kernel_without_binary_statistics_says_so_and_ends_cleanly(
        monkeypatch, capsys):
    from minikvm.kvm.system import Kvm

    module = _lesson_module("14", monkeypatch)
    answer = Kvm.check_extension

    def without_statistics(kvm, cap):
        return 0 if cap == KvmCap.KVM_CAP_BINARY_STATS_FD else answer(kvm, cap)

    monkeypatch.setattr(Kvm, "check_extension", without_statistics)
    assert module.main(["--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    section_1 = (lessons_dir() / "expected" / "14.txt").read_text().splitlines()[:3]
    assert lines == section_1 + [
        "CHECKPOINT binary statistics on this kernel: none (KVM_CAP_BINARY_STATS_FD 0)"]


@pytest.mark.kvm
def test_exercise_14_on_a_kernel_without_binary_statistics_is_the_hosts_problem(monkeypatch):
    from minikvm.kvm.errors import KvmUnavailableError
    from minikvm.kvm.system import Kvm

    answer = Kvm.check_extension
    monkeypatch.setattr(Kvm, "check_extension", lambda kvm, cap: 0
                        if cap == KvmCap.KVM_CAP_BINARY_STATS_FD else answer(kvm, cap))
    solution = lessons_dir() / "exercises" / "solutions" / "14_stats.py"
    with pytest.raises(KvmUnavailableError, match="KVM_GET_STATS_FD"):
        check_exercise("14", solution)
