"""The minikvm command as a new user meets it: statuses and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, slow_except


def minikvm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minikvm", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def assert_one_clean_line(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.kvm
def test_run_hello_prints_greeting_and_exits_0(guests):
    result = minikvm("run", str(guests / "hello.bin"), "--load-addr", "0x1000", "--entry", "0x1000")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello from a KVM guest, driven entirely from Python!\n"


@pytest.mark.kvm
@pytest.mark.slow
def test_run_exitcode_status_is_shifted_value(guests):
    assert minikvm("run", str(guests / "exitcode.bin")).returncode == (0x2A << 1) | 1


@pytest.mark.kvm
@pytest.mark.slow
def test_run_forever_loop_ends_with_124_at_timeout(guests):
    result = minikvm("run", str(guests / "spin.bin"), "--timeout", "0.5")
    assert result.returncode == 124
    assert_one_clean_line(result)
    assert "timeout" in result.stderr


@pytest.mark.kvm
@pytest.mark.slow
def test_info_shows_api_version_and_host(guests):
    result = minikvm("info")
    assert result.returncode == 0, result.stderr
    assert "API version" in result.stdout and "12" in result.stdout
    assert "host KVM" in result.stdout


@pytest.mark.parametrize("args, status, words", slow_except([
    (["run", "no/such/guest.bin"], 2, "no such file"),
    (["run", "guests"], 2, "is a directory"),
    (["run", "guests/hello.bin", "--load-addr", "zz"], 2, "not a number"),
    (["run", "guests/hello.bin", "--mem", "3x"], 2, "not a size"),
    (["run", "guests/hello.bin", "--timeout", "-1"], 2, "positive"),
    (["frobnicate"], 2, "invalid choice"),
    (["run", "guests/build/hello.bin", "--entry", "0x900000"], 2, "out of reach in real mode"),
    (["run", "guests/build/hello.bin", "--virtio-blk", "no/such.img"], 2, "no such disk image"),
    (["run", "guests/build/hello.bin", "--virtio-blk", "guests"], 2,
     "is a directory, not a disk image file"),
], "no such file"))
def test_bad_input_gets_one_line_and_nonzero_status(args, status, words, guests):
    result = minikvm(*args)
    assert result.returncode == status
    assert_one_clean_line(result)
    assert words in result.stderr


@pytest.mark.slow
def test_empty_guest_file_is_refused(tmp_path):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    result = minikvm("run", str(empty))
    assert result.returncode == 2
    assert_one_clean_line(result)
    assert "empty" in result.stderr


@pytest.mark.kvm
@pytest.mark.slow
def test_guest_larger_than_ram_is_refused(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x90" * (3 << 20))
    result = minikvm("run", str(big))
    assert result.returncode == 2
    assert_one_clean_line(result)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "info"])
def test_missing_kvm_device_is_status_1_with_advice(tmp_path, command, guests):
    args = ["--kvm", str(tmp_path / "kvm")]
    args += [command] + ([str(guests / "hello.bin")] if command == "run" else [])
    result = minikvm(*args)
    assert result.returncode == 1
    assert_one_clean_line(result)
    assert "KVM is not available" in result.stderr


# -- start-up: each command imports what it uses ------------------------------------------

#: What ``minikvm run`` has no use for: capstone (~11 MiB) and rich (~5 MiB)
#: and the front ends that bring them.
HEAVY = ("capstone", "rich", "minikvm.debug.debugger", "minikvm.tui", "minikvm.lessons")


def modules_after(code: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``code`` in a fresh interpreter; the modules loaded at its end."""
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    return result, set(result.stderr.split())


def command_modules(argv: list[str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    """``minikvm ARGV`` run through the CLI's ``main`` in a fresh interpreter,
    which must return 0; the modules loaded at its end."""
    result, modules = modules_after("from minikvm.cli import main\n"
                                    f"status = main({argv!r})\n"
                                    "assert status == 0, status")
    assert result.returncode == 0, result.stderr[-2000:]
    return result, modules


def heavy(modules: set[str], names: tuple[str, ...] = HEAVY) -> list[str]:
    """The ``modules`` that are one of ``names`` or inside one of them."""
    return sorted(name for name in modules
                  if any(name == h or name.startswith(h + ".") for h in names))


def test_building_the_parser_imports_no_command_body():
    result, modules = modules_after("from minikvm.cli import build_parser\nbuild_parser()")
    assert result.returncode == 0
    assert heavy(modules) == []


@pytest.mark.kvm
def test_run_loads_neither_debugger_nor_tui_nor_lessons_nor_capstone_nor_rich(guests):
    hello = str(guests / "hello.bin")
    result, modules = command_modules(["run", hello, "--load-addr", "0x1000", "--entry", "0x1000"])
    assert "Hello from a KVM guest" in result.stdout
    assert "minikvm.machine" in modules          # the check sees what a run loads ...
    assert heavy(modules) == []                  # ... and none of this


@pytest.mark.kvm
def test_trace_loads_neither_debugger_nor_tui_nor_lessons_nor_capstone(guests):
    # The tracer lives in the debugger's package, whose other modules (and
    # capstone, ~11 MiB) a trace has no use for.
    hello = str(guests / "hello.bin")
    result, modules = command_modules(["trace", hello, "--load-addr", "0x1000", "--entry",
                                       "0x1000"])
    assert "IO_OUT" in result.stdout
    assert "minikvm.debug.trace" in modules       # the check sees what a trace loads ...
    assert [name for name in heavy(modules) if not name.startswith("rich")] == []


@pytest.mark.kvm
def test_lesson_check_loads_no_markdown_renderer():
    # A check runs after every save, or over a whole class's files: the
    # renderer of `lesson show` (markdown-it, pygments) is ~120 ms of imports
    # it has no use for.
    solution = ROOT / "lessons" / "exercises" / "solutions" / "05_gdt.py"
    result, modules = command_modules(["lesson", "check", "05", "--file", str(solution)])
    assert "PASSED" in result.stdout
    assert "minikvm.lessons.checker" in modules    # the check sees what a check loads ...
    assert heavy(modules, ("rich.markdown", "markdown_it", "pygments")) == []   # ... not this


def imported_modules(path) -> set[str]:
    """Every module ``path`` imports, at its top or inside a function. The
    syntax tree is test_architecture's, parsed once per run (parsing all of
    minikvm takes ~1 s here)."""
    import ast

    from tests.test_architecture import parse

    names = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_command_entry_imports_the_cli():
    # The CLI stands on the TUI, the debugger and the lessons, never the other
    # way round: no cycle, and each of them stays usable from Python alone.
    package = ROOT / "minikvm"
    importers = sorted(
        str(path.relative_to(package)) for path in package.rglob("*.py")
        if path.parent.name != "cli" and path != package / "__main__.py"
        and any(name == "minikvm.cli" or name.startswith("minikvm.cli.")
                for name in imported_modules(path)))
    assert importers == []


@pytest.mark.parametrize("argv", [
    ["run", "g.bin", "--mem", "4M", "--timeout", "2"],
    ["--kvm", "/dev/null", "trace", "g.bin", "--limit", "5"],
    ["--kvm=/dev/null", "tui", "g.bin"],
    ["lesson", "list"],
])
def test_a_parser_built_for_one_command_parses_its_line_as_the_whole_parser_does(argv):
    from minikvm.cli import build_parser, command_named

    assert command_named(argv) == next(w for w in argv if not w.startswith("-")
                                       and w != "/dev/null")
    assert build_parser(command_named(argv)).parse_args(argv) == build_parser().parse_args(argv)


def test_no_command_is_guessed_from_a_line_that_argparse_must_read():
    from minikvm.cli import command_named

    assert command_named(["--help"]) is None
    assert command_named(["--kv", "run", "trace"]) is None   # an abbreviated --kvm
    assert command_named(["rnu", "g.bin"]) is None
    assert command_named([]) is None
