"""The ctypes mirrors in ``minikvm.kvm`` agree with the installed ``<linux/kvm.h>``.

A ctypes structure that is one byte off still "works": the ioctl succeeds and
the kernel reads the wrong register. So this test asks the C compiler, the
only authority on the header's layout. From the Python side it *generates* a
small C program that prints ``sizeof`` and ``offsetof`` for every field path
of every class in ``uapi.ALL_STRUCTS``, the value of every ioctl macro in
``ioctls.ALL_IOCTLS`` and of every constant; compiles it once with ``gcc``
against ``<linux/kvm.h>``; runs it; and compares each number with ctypes.
Because the program is generated from the same tables, nothing can be left
out; a last test checks that every entry really produced a line.

Structures C declares without a tag (``kvm_run``'s ``io``) are reached with
GCC's ``__typeof__`` through their parent (``_c_parent_`` in ``uapi``); a
member with no name at all (the exit union of ``kvm_run``) is checked at its
absolute position in the nearest parent C can name.

The layouts follow the Linux 6.1 UAPI headers; an older header fails to
compile (the failure prints GCC's message), a newer one must still pass.
"""

from __future__ import annotations

import ctypes
import enum
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minikvm.kvm import ioctls, uapi

# ---------------------------------------------------------------------------
# Walking the ctypes side
# ---------------------------------------------------------------------------

_COMPOSITE = (ctypes.Structure, ctypes.Union)


@dataclass(frozen=True)
class FieldEntry:
    """One field path of a class: where ctypes puts it and how big it is."""

    path: str        # C member designator, e.g. "io.port" or "redirtbl[0].fields"
    offset: int      # byte offset inside the class, per ctypes
    size: int        # sizeof the member, per ctypes
    bits: int | None  # bit-field width, or None for an ordinary member


def _is_composite(ctype: type) -> bool:
    return isinstance(ctype, type) and issubclass(ctype, _COMPOSITE)


def _is_array(ctype: type) -> bool:
    return isinstance(ctype, type) and issubclass(ctype, ctypes.Array)


def walk_fields(cls: type, prefix: str = "", base: int = 0) -> list[FieldEntry]:
    """Every member path of ``cls`` as C would spell it, nested ones included.

    Members listed in ``_anonymous_`` have no name in C: their fields are
    reached straight through the parent, so their name is not added to the path.
    Arrays contribute the whole array and then element ``[0]`` (recursively).
    """
    entries: list[FieldEntry] = []
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for field in cls._fields_:
        name, ctype = field[0], field[1]
        offset = base + getattr(cls, name).offset
        if name in anonymous:
            entries.extend(walk_fields(ctype, prefix, offset))
            continue
        path = prefix + name
        if len(field) == 3:
            entries.append(FieldEntry(path, offset, ctypes.sizeof(ctype), field[2]))
            continue
        entries.append(FieldEntry(path, offset, ctypes.sizeof(ctype), None))
        while _is_array(ctype):
            ctype = ctype._type_
            path += "[0]"
            entries.append(FieldEntry(path, offset, ctypes.sizeof(ctype), None))
        if _is_composite(ctype):
            entries.extend(walk_fields(ctype, path + ".", offset))
    return entries


@dataclass(frozen=True)
class CView:
    """How the C program names a Python class.

    ``ctype`` is a C type expression in which the class's member paths are
    valid; ``base`` is where the class starts inside that type (0 unless the
    class is a nameless member); ``whole`` says whether ``ctype`` *is* the
    class (so its sizeof can be compared).
    """

    ctype: str
    base: int
    whole: bool


def c_view(cls: type) -> CView:
    parent_info = getattr(cls, "_c_parent_", None)
    if parent_info is None:
        return CView(f"struct {cls.__name__}", 0, True)
    parent_name, member = parent_info
    parent = getattr(uapi, parent_name)
    outer = c_view(parent)
    if member in getattr(parent, "_anonymous_", ()):
        return CView(outer.ctype, outer.base + getattr(parent, member).offset, False)
    return CView(f"__typeof__((({outer.ctype} *)0)->{member})", 0, True)


def _set_path(obj: object, path: str, value: int) -> None:
    """``obj.<path> = value`` for a path like ``redirtbl[0].fields.mask``."""
    *parents, last = path.split(".")
    for part in parents:
        obj = _step(obj, part)
    setattr(obj, last, value)


def _step(obj: object, part: str) -> object:
    name, _, rest = part.partition("[")
    obj = getattr(obj, name)
    while rest:
        index, _, rest = rest.partition("]")
        obj = obj[int(index)]
        rest = rest.lstrip("[")
    return obj


def _nonzero_bytes(buffer: bytes, shift: int = 0) -> dict[int, int]:
    return {i + shift: b for i, b in enumerate(buffer) if b}


# ---------------------------------------------------------------------------
# The constants to check
# ---------------------------------------------------------------------------

def _uapi_enums() -> list[type[enum.Enum]]:
    return [obj for name in uapi.__all__
            if isinstance(obj := getattr(uapi, name), type) and issubclass(obj, enum.Enum)]


def _other_constants() -> dict[str, int]:
    """Module-level ``KVM_*`` ints of uapi and members of its enums except
    ``KvmExit`` and ``KvmCap`` (which have tests of their own)."""
    found: dict[str, int] = {}
    for name in uapi.__all__:
        value = getattr(uapi, name)
        if name.startswith("KVM_") and isinstance(value, int):
            found[name] = int(value)
    for enum_cls in _uapi_enums():
        if enum_cls in (uapi.KvmExit, uapi.KvmCap):
            continue
        for member in enum_cls:
            found[member.name] = int(member)
    return found


EXIT_REASONS = {m.name: int(m) for m in uapi.KvmExit}
CAPABILITIES = {m.name: int(m) for m in uapi.KvmCap}
OTHER_CONSTANTS = _other_constants()
FLEXIBLE_ARRAY_FACTORIES = {
    uapi.kvm_msrs: uapi.make_kvm_msrs,
    uapi.kvm_msr_list: uapi.make_kvm_msr_list,
    uapi.kvm_cpuid2: uapi.make_kvm_cpuid2,
    uapi.kvm_xsave: uapi.make_kvm_xsave,
}

# ---------------------------------------------------------------------------
# Generating, compiling and running the C program
# ---------------------------------------------------------------------------

_C_PRELUDE = """\
/* Generated by tests/test_abi_conformance.py: prints what the C compiler
 * thinks of every structure, ioctl and constant minikvm mirrors. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <linux/kvm.h>

static void dump_nonzero(const char *cls, const char *path, const void *p, size_t n)
{
    const unsigned char *b = p;
    printf("bits %s %s", cls, path);
    for (size_t i = 0; i < n; i++)
        if (b[i])
            printf(" %zu:%u", i, b[i]);
    printf("\\n");
}

#define CONSTANT(kind, name) printf(kind " " #name " %llu\\n", (unsigned long long)(name))

int main(void)
{
"""


def _constant_lines(kind: str, names: list[str]) -> list[str]:
    lines = []
    for name in names:
        lines += [f"#ifdef {name}", f'    CONSTANT("{kind}", {name});', "#else",
                  f'    printf("{kind} {name} undefined\\n");', "#endif"]
    return lines


def generate_c_program() -> str:
    lines = [_C_PRELUDE]
    for cls in uapi.ALL_STRUCTS:
        view = c_view(cls)
        name = cls.__name__
        if view.whole:
            lines.append(f'    printf("size {name} %zu\\n", sizeof({view.ctype}));')
        for entry in walk_fields(cls):
            if entry.bits is None:
                lines.append(
                    f'    printf("field {name} {entry.path} %zu %zu\\n", '
                    f"offsetof({view.ctype}, {entry.path}), "
                    f"sizeof((({view.ctype} *)0)->{entry.path}));")
            else:
                all_ones = (1 << entry.bits) - 1
                lines.append(
                    f"    {{ {view.ctype} x; memset(&x, 0, sizeof x); "
                    f"x.{entry.path} = {all_ones}; "
                    f'dump_nonzero("{name}", "{entry.path}", &x, sizeof x); }}')
        if cls in FLEXIBLE_ARRAY_FACTORIES:
            member = cls._flexible_array_[0]
            lines.append(
                f'    printf("flex {name} {member} %zu %zu\\n", '
                f"offsetof({view.ctype}, {member}), "
                f"sizeof((({view.ctype} *)0)->{member}[0]));")
    lines += _constant_lines("ioctl", list(ioctls.ALL_IOCTLS))
    lines += _constant_lines("ioctl", ["KVMIO"])
    lines += _constant_lines("exit", list(EXIT_REASONS))
    lines += _constant_lines("cap", list(CAPABILITIES))
    lines += _constant_lines("const", list(OTHER_CONSTANTS))
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


@dataclass
class KernelAnswers:
    """What the compiled program printed, parsed."""

    sizes: dict[str, int]
    fields: dict[tuple[str, str], tuple[int, int]]
    bits: dict[tuple[str, str], dict[int, int]]
    flex: dict[tuple[str, str], tuple[int, int]]
    values: dict[tuple[str, str], int | None]  # (kind, name) -> value, None if undefined


def _parse(output: str) -> KernelAnswers:
    answers = KernelAnswers({}, {}, {}, {}, {})
    for line in output.splitlines():
        kind, *rest = line.split()
        if kind == "size":
            answers.sizes[rest[0]] = int(rest[1])
        elif kind == "field":
            answers.fields[(rest[0], rest[1])] = (int(rest[2]), int(rest[3]))
        elif kind == "flex":
            answers.flex[(rest[0], rest[1])] = (int(rest[2]), int(rest[3]))
        elif kind == "bits":
            answers.bits[(rest[0], rest[1])] = {
                int(i): int(b) for i, b in (pair.split(":") for pair in rest[2:])}
        else:
            answers.values[(kind, rest[0])] = None if rest[1] == "undefined" else int(rest[1])
    return answers


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> KernelAnswers:
    """Compile and run the generated program once for the whole module."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"the mirrors are x86-64 only; this machine is {platform.machine()}")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (install gcc and linux-libc-dev to run the ABI check)")
    workdir: Path = tmp_path_factory.mktemp("abi")
    source = workdir / "abi_dump.c"
    binary = workdir / "abi_dump"
    source.write_text(generate_c_program())
    build = subprocess.run([gcc, "-std=gnu11", "-O0", "-o", str(binary), str(source)],
                           capture_output=True, text=True, timeout=120)
    if build.returncode != 0:
        if "linux/kvm.h" in build.stderr and "No such file" in build.stderr:
            pytest.skip("<linux/kvm.h> is not installed (install linux-libc-dev)")
        pytest.fail(f"the generated C program ({source}) does not compile against "
                    f"<linux/kvm.h>:\n{build.stderr[-4000:]}", pytrace=False)
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60, check=True)
    return _parse(run.stdout)


# ---------------------------------------------------------------------------
# The conformance tests
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls", uapi.ALL_STRUCTS, ids=lambda c: c.__name__)
def test_struct_layout_matches_kernel(kernel: KernelAnswers, cls: type) -> None:
    name = cls.__name__
    view = c_view(cls)
    problems = []
    if view.whole and kernel.sizes[name] != ctypes.sizeof(cls):
        problems.append(f"sizeof: C {kernel.sizes[name]}, ctypes {ctypes.sizeof(cls)}")
    for entry in walk_fields(cls):
        if entry.bits is None:
            c_offset, c_size = kernel.fields[(name, entry.path)]
            if (c_offset, c_size) != (view.base + entry.offset, entry.size):
                problems.append(
                    f"{entry.path}: C offset {c_offset} size {c_size}, "
                    f"ctypes offset {view.base + entry.offset} size {entry.size}")
        else:
            obj = cls()
            _set_path(obj, entry.path, (1 << entry.bits) - 1)
            ours = _nonzero_bytes(bytes(obj), view.base)
            if kernel.bits[(name, entry.path)] != ours:
                problems.append(f"bit-field {entry.path}: C sets bytes "
                                f"{kernel.bits[(name, entry.path)]}, ctypes {ours}")
    if cls in FLEXIBLE_ARRAY_FACTORIES:
        member = cls._flexible_array_[0]
        sized = type(FLEXIBLE_ARRAY_FACTORIES[cls](1))
        ours = (getattr(sized, member).offset, ctypes.sizeof(cls._flexible_array_[1]))
        if kernel.flex[(name, member)] != ours:
            problems.append(f"flexible array {member}[]: C offset/element size "
                            f"{kernel.flex[(name, member)]}, ctypes {ours}")
    if problems:
        pytest.fail(f"struct {name} differs from <linux/kvm.h>:\n  " + "\n  ".join(problems),
                    pytrace=False)


def _check_value(kernel: KernelAnswers, kind: str, name: str, ours: int) -> None:
    theirs = kernel.values[(kind, name)]
    assert theirs is not None, (
        f"{name} is not defined in the installed <linux/kvm.h> (older than Linux 6.1?)")
    assert theirs == ours, f"{name}: <linux/kvm.h> says {theirs:#x}, minikvm {ours:#x}"


@pytest.mark.parametrize("name", list(ioctls.ALL_IOCTLS))
def test_ioctl_number_matches_kernel(kernel: KernelAnswers, name: str) -> None:
    _check_value(kernel, "ioctl", name, ioctls.ALL_IOCTLS[name])


def test_kvmio_matches_kernel(kernel: KernelAnswers) -> None:
    _check_value(kernel, "ioctl", "KVMIO", ioctls.KVMIO)


@pytest.mark.parametrize("name", list(EXIT_REASONS))
def test_exit_reason_matches_kernel(kernel: KernelAnswers, name: str) -> None:
    _check_value(kernel, "exit", name, EXIT_REASONS[name])


@pytest.mark.parametrize("name", list(CAPABILITIES))
def test_capability_matches_kernel(kernel: KernelAnswers, name: str) -> None:
    _check_value(kernel, "cap", name, CAPABILITIES[name])


@pytest.mark.parametrize("name", list(OTHER_CONSTANTS))
def test_constant_matches_kernel(kernel: KernelAnswers, name: str) -> None:
    _check_value(kernel, "const", name, OTHER_CONSTANTS[name])


def test_every_mirrored_name_was_checked_by_the_compiler(kernel: KernelAnswers) -> None:
    """No silent skip: each struct, field, ioctl and constant printed a line."""
    missing = []
    for cls in uapi.ALL_STRUCTS:
        name = cls.__name__
        if c_view(cls).whole and name not in kernel.sizes:
            missing.append(f"sizeof {name}")
        for entry in walk_fields(cls):
            table = kernel.fields if entry.bits is None else kernel.bits
            if (name, entry.path) not in table:
                missing.append(f"{name}.{entry.path}")
    expected_values = ([("ioctl", n) for n in ioctls.ALL_IOCTLS]
                       + [("exit", n) for n in EXIT_REASONS]
                       + [("cap", n) for n in CAPABILITIES]
                       + [("const", n) for n in OTHER_CONSTANTS])
    missing += [f"{kind} {n}" for kind, n in expected_values if (kind, n) not in kernel.values]
    assert not missing, f"not checked against C: {missing}"


# ---------------------------------------------------------------------------
# Consistency of the Python tables themselves (no compiler needed)
# ---------------------------------------------------------------------------

def test_all_structs_lists_every_structure_in_uapi() -> None:
    defined = {obj for obj in vars(uapi).values()
               if _is_composite(obj) and obj.__module__ == uapi.__name__}
    assert defined == set(uapi.ALL_STRUCTS)


def test_all_structs_lists_every_nested_structure() -> None:
    listed = set(uapi.ALL_STRUCTS)
    for cls in uapi.ALL_STRUCTS:
        for field in cls._fields_:
            ctype = field[1]
            while _is_array(ctype):
                ctype = ctype._type_
            if _is_composite(ctype):
                assert ctype in listed, f"{cls.__name__}.{field[0]} has unlisted type {ctype}"


@pytest.mark.parametrize("cls", [c for c in uapi.ALL_STRUCTS if hasattr(c, "_c_parent_")],
                         ids=lambda c: c.__name__)
def test_c_parent_names_the_member_of_that_type(cls: type) -> None:
    """``_c_parent_`` must point at a member of the parent whose type is ``cls``
    (or an array of it, for ``redirtbl[0]``)."""
    parent_name, member = cls._c_parent_
    parent = getattr(uapi, parent_name)
    field_name = member.partition("[")[0]
    ctype = dict((f[0], f[1]) for f in parent._fields_)[field_name]
    while _is_array(ctype):
        ctype = ctype._type_
    assert ctype is cls


def test_kvm_run_exit_union_is_256_bytes_and_s_union_is_2048() -> None:
    """The header pads both unions so that new exits never move later fields."""
    assert ctypes.sizeof(uapi.kvm_run_exit) == 256
    assert ctypes.sizeof(uapi.kvm_run_s) == 2048
    assert uapi.kvm_run.kvm_valid_regs.offset == uapi.kvm_run.hw.offset + 256


def test_kvm_run_exit_details_are_reachable_without_the_union_name() -> None:
    """``run.io.port`` works as in C, and all exit details share the same bytes."""
    run = uapi.kvm_run()
    run.io.port = 0x3F8
    port_at = uapi.kvm_run.io.offset + uapi.kvm_run_io.port.offset
    assert bytes(run)[port_at:port_at + 2] == b"\xf8\x03"
    assert run.hw.hardware_exit_reason == 0x3F8 << 16  # the same union bytes
    assert uapi.kvm_run.io.offset == uapi.kvm_run.mmio.offset == uapi.kvm_run.hw.offset == 32


@pytest.mark.parametrize("factory, count_field, array_field", [
    (uapi.make_kvm_msrs, "nmsrs", "entries"),
    (uapi.make_kvm_msr_list, "nmsrs", "indices"),
    (uapi.make_kvm_cpuid2, "nent", "entries"),
], ids=lambda v: getattr(v, "__name__", v))
def test_make_flexible_struct_has_room_for_n_and_sets_the_count(factory, count_field,
                                                                array_field) -> None:
    obj = factory(5)
    header = type(obj).__mro__[1]
    assert isinstance(obj, header)
    assert getattr(obj, count_field) == 5
    assert len(getattr(obj, array_field)) == 5
    element_size = ctypes.sizeof(header._flexible_array_[1])
    assert ctypes.sizeof(obj) == ctypes.sizeof(header) + 5 * element_size
    assert bytes(obj)[ctypes.sizeof(header):] == bytes(5 * element_size)


def test_make_flexible_struct_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError):
        uapi.make_kvm_msrs(-1)


def test_ioctl_numbers_are_unique_within_each_file_descriptor() -> None:
    for table in (ioctls.SYSTEM_IOCTLS, ioctls.VM_IOCTLS, ioctls.VCPU_IOCTLS):
        assert len(set(table.values())) == len(table)


def test_check_extension_is_accepted_by_system_and_vm_fds() -> None:
    assert ioctls.SYSTEM_IOCTLS["KVM_CHECK_EXTENSION"] == ioctls.VM_IOCTLS["KVM_CHECK_EXTENSION"]


def test_all_ioctls_is_the_union_of_the_three_tables() -> None:
    merged = {**ioctls.SYSTEM_IOCTLS, **ioctls.VM_IOCTLS, **ioctls.VCPU_IOCTLS}
    assert ioctls.ALL_IOCTLS == merged
    for name, number in merged.items():
        assert getattr(ioctls, name) == number


def test_kvm_get_regs_encodes_read_direction_size_type_and_number() -> None:
    fields = ioctls.decode_ioctl(ioctls.KVM_GET_REGS)
    assert fields == (ioctls._IOC_READ, ioctls.KVMIO, 0x81, ctypes.sizeof(uapi.kvm_regs))


def test_ioctl_name_gives_the_kernel_name() -> None:
    assert ioctls.ioctl_name(ioctls.KVM_RUN) == "KVM_RUN"
    assert ioctls.ioctl_name(ioctls.KVM_SET_USER_MEMORY_REGION) == "KVM_SET_USER_MEMORY_REGION"


def test_ioctl_name_of_an_unknown_number_is_hex() -> None:
    assert ioctls.ioctl_name(0x1234ABCD).startswith("0x1234abcd")
    assert ioctls.ioctl_name(-1) == "-1"


@given(st.integers(0, 3), st.integers(0, 0xFF), st.integers(0, 0xFF), st.integers(0, 0x3FFF))
def test_decode_ioctl_inverts_ioc(direction: int, type_: int, nr: int, size: int) -> None:
    assert ioctls.decode_ioctl(ioctls._IOC(direction, type_, nr, size)) == (
        direction, type_, nr, size)


@pytest.mark.parametrize("args", [(4, 0xAE, 0, 0), (0, 0x100, 0, 0), (0, 0xAE, 0x100, 0),
                                  (0, 0xAE, 0, 1 << 14), (0, 0xAE, -1, 0)])
def test_ioc_refuses_a_field_that_does_not_fit(args: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError):
        ioctls._IOC(*args)
