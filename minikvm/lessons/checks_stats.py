"""The check of exercise 14: find a statistic in KVM's binary statistics file, by hand.

``KVM_GET_STATS_FD`` on a vCPU gives a read-only file: a header, an id
string, one descriptor per statistic (its fixed fields, then its name padded
with NULs to ``name_size`` bytes) and the data, the values themselves
(Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD"; the reading side is
``kvm_stats_read``, virt/kvm/binary_stats.c). The learner writes
``find_stat(fd, name)``: where in that file the statistic's first value
lies, and how many values it has -- what :class:`~minikvm.kvm.stats.KvmStats`
works out once per fd so that the watchdog can read ``blocking`` with one
``pread``.

The check asks a fresh vCPU's file for every statistic it offers, a name it
does not offer and a name that is only the start of one, each with a new fd,
and compares with the file's descriptors
(:func:`~minikvm.kvm.stats.read_layout`, the parser ``KvmStats`` itself
uses, first confirmed against a ``KvmStats``). Then it asks a few names
again on a file it builds itself (:func:`rearranged`): the same statistics
laid out another way the format allows, so that numbers copied from this
host instead of read from the header do not pass. A wrong answer is named
by what it most likely is: the offset inside the data block, the
descriptors' offset taken for the data's, another statistic's place, a
name matched in part, numbers that are not this header's, bytes for values.

The guests here are shared with lesson 14.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from minikvm.kvm.stats import StatDescriptor, read_layout
from minikvm.kvm.uapi import kvm_stats_desc, kvm_stats_header
from minikvm.lessons.learner import learner_function, their_error
from minikvm.lessons.verdict import Verdict, not_yet, passed

__all__ = ["CODE_ADDR", "ENDS", "PRINTED", "SLEEPS", "check_14", "open_stats_fd"]

#: Where the guests are loaded and start, in real mode.
CODE_ADDR = 0x1000
#: Three port exits: ``mov al, 'K'; out 0xe9, al`` and the same for 'V'
#: and 'M' (the debug console prints them). Hand-assembled.
_PRINT = bytes.fromhex("b04be6e9" "b056e6e9" "b04de6e9")
PRINTED = b"KVM"
#: ... then ``sti; hlt``: asleep, waiting for an interrupt that never comes.
SLEEPS = _PRINT + b"\xfb\xf4"
#: ... then ``cli; hlt``: asleep for good.
ENDS = _PRINT + b"\xfa\xf4"
#: A name no kernel gives a statistic.
_NO_SUCH = "no_such_statistic"


def open_stats_fd(vcpu: Any) -> int:
    """A new statistics fd of ``vcpu`` (``KVM_GET_STATS_FD``), for the caller to close."""
    from minikvm.kvm import ioctls
    from minikvm.kvm.fd import ioctl

    return ioctl(vcpu.fd, ioctls.KVM_GET_STATS_FD)


# -- the check -------------------------------------------------------------------------------

def _questions(descs: list[StatDescriptor]) -> list[str]:
    """The names to ask, in order: the two the lesson reads, a histogram,
    every other one in the kernel's order, then two that are not there."""
    names = [desc.name for desc in descs]
    first = [name for name in ("exits", "blocking") if name in names]
    histograms = [desc.name for desc in descs if desc.size > 1]
    if histograms:
        first.append("halt_poll_success_hist" if "halt_poll_success_hist" in histograms
                     else histograms[0])
    rest = [name for name in names if name not in first]
    # A name that is only the start of one ("exit"): a lookup must compare whole names.
    prefix = next((name[:-1] for name in first + names
                   if len(name) > 1 and name[:-1] not in names), None)
    return first + rest + [_NO_SUCH] + ([prefix] if prefix else [])


_REARRANGED = ("The rearranged file holds this vCPU's statistics laid out another way that "
               "the format allows: roomier names, gaps, more descriptors. A find_stat() that "
               "takes every number from the header finds them as in the kernel's file.")


def _rearranged_questions(descs: list[StatDescriptor]) -> list[str]:
    """What to ask of the rearranged file: exits, a histogram, the last real
    statistic (past 4 KiB of descriptors there), a prefix, a missing name."""
    names = [d.name for d in descs]
    asked = [name for name in ("exits",) if name in names]
    asked += [d.name for d in descs if d.size > 1][:1]
    asked.append(names[-1])
    asked += [q for q in _questions(descs)[-2:] if q not in asked]
    return asked


def _header_words(header: Any) -> str:
    return (f"This file's header: name_size {header.name_size}, num_desc {header.num_desc}, "
            f"id_offset {header.id_offset}, desc_offset {header.desc_offset}, data_offset "
            f"{header.data_offset}.")


def _desc_words(desc: StatDescriptor) -> str:
    return (f"Descriptor {desc.index} ({desc.name!r}) lies at byte {desc.at}: size "
            f"{desc.size}, offset {desc.offset}.")


def _wrong_place(offset: int, desc: StatDescriptor, header: Any,
                 descs: list[StatDescriptor], kernel: Any = None) -> str:
    """Why ``offset`` is not where ``desc``'s values begin, as best it can be
    guessed. ``kernel``: the kernel's own header, when ``header`` is the
    rearranged file's (:func:`rearranged`)."""
    right = header.data_offset + desc.offset
    if offset == desc.offset:
        return (f"{offset} is the descriptor's offset field as it stands: it counts from the "
                f"start of the data block, and the data block begins at data_offset "
                f"({header.data_offset}) in the file. Add it.")
    if offset == header.desc_offset + desc.offset:
        return (f"You used desc_offset as the data offset: desc_offset ({header.desc_offset}) "
                f"is where the descriptors begin; the values begin at data_offset "
                f"({header.data_offset}).")
    if offset == desc.at:
        return ("That is where the descriptor itself lies; the values it describes are in the "
                "data block, at data_offset + its offset field.")
    if offset == header.data_offset + 8 * desc.index and desc.index * 8 != desc.offset:
        return ("That is where the value would be if every statistic had one value; but a "
                "histogram has `size` values, so the places of those after it move on. Use the "
                "descriptor's offset field.")
    if kernel is not None and offset == kernel.data_offset + desc.offset:
        return (f"That is where it lies in the kernel's own file, but this file is laid out "
                f"differently, as the header allows: use this header's numbers, not the ones "
                f"your machine happened to show or an earlier file had (name_size "
                f"{header.name_size}, not {kernel.name_size}; data_offset "
                f"{header.data_offset}, not {kernel.data_offset}).")
    stride = 16 + header.name_size
    after_descs = header.desc_offset + header.num_desc * stride
    packed = {after_descs, header.id_offset + header.name_size + header.num_desc * stride,
              24 + header.name_size + header.num_desc * stride}
    if offset - desc.offset in packed - {header.data_offset}:
        return (f"That adds up the blocks before the data as if they followed each other "
                f"({offset - desc.offset}); the header says where the data begins: data_offset "
                f"({header.data_offset}). The kernel leaves no gaps today; the format allows "
                f"them (Documentation/virt/kvm/api.rst).")
    other = next((d for d in descs if header.data_offset + d.offset == offset), None)
    containing = [d for d in descs if desc.name in d.name and d is not desc]
    found_by_scan = ([d for d in containing if d.index < desc.index][:1]
                     + [d for d in containing if d.index > desc.index][-1:])
    if other is not None and other in found_by_scan:
        return (f"That is where {other.name!r} begins: you matched {other.name!r}, which "
                f"contains {desc.name!r}. Compare whole names (the NULs after a name stripped).")
    if other is not None:
        return (f"That is where {other.name!r} begins (descriptor {other.index}), not "
                f"{desc.name!r} (descriptor {desc.index}): the fields you used belong to another "
                f"descriptor than the name you matched. Each descriptor takes 16 + name_size "
                f"= {16 + header.name_size} bytes: its fixed fields, then its name.")
    return (f"Its first value is at data_offset ({header.data_offset}) + the descriptor's "
            f"offset field ({desc.offset}) = {right}.")


def _judge(name: str, answer: object, header: Any, descs: list[StatDescriptor],
           kernel: Any = None) -> Verdict | None:
    """None when ``answer`` is right for ``name``; else what is wrong, in words.
    ``kernel``: the kernel's own header, when the file asked was rearranged."""
    asked = f"find_stat(fd, {name!r}) returned {answer!r}"
    if kernel is not None:
        asked += " on the rearranged file"
    desc = next((d for d in descs if d.name == name), None)
    if desc is None:
        if answer is None:
            return None
        longer = [d.name for d in descs if d.name.startswith(name)]
        if longer:
            return not_yet(f"{asked}, but there is no statistic {name!r}: only {longer[0]!r} "
                           "begins that way. Compare whole names (the NULs after a name "
                           "stripped), not the start of one.")
        return not_yet(f"{asked}, but this vCPU has no statistic of that name: then the "
                       "answer is None.")
    if answer is None:
        where = "the rearranged file" if kernel is not None else "this vCPU's statistics file"
        return not_yet(f"{asked}, but {where} has {name!r}: descriptor "
                       f"{desc.index} of {len(descs)}.",
                       "Walk the descriptors from desc_offset: each takes 16 bytes of fields "
                       "and then its name, padded with NULs to name_size bytes -- 16 + "
                       f"{header.name_size} = {16 + header.name_size} here. Compare the name "
                       "without its NULs.", _header_words(header))
    if (not isinstance(answer, tuple) or len(answer) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in answer)):
        return not_yet(f"{asked}: the answer must be a tuple of two ints (the byte offset "
                       "of the first value in the file, the number of values), or None.")
    offset, count = answer
    right = header.data_offset + desc.offset
    if offset != right:
        return not_yet(f"{asked}, but the first value of {name!r} lies at byte {right} of "
                       "the file.",
                       _wrong_place(offset, desc, header, descs, kernel),
                       _header_words(header), _desc_words(desc))
    if count != desc.size:
        if count == 8 * desc.size:
            why = ("That is its size in bytes; the answer counts values (u64s): the "
                   "descriptor's size field.")
        else:
            why = ("The descriptor's size field says how many u64 values the statistic has: "
                   "one for a counter, one per bucket for a histogram.")
        return not_yet(f"{asked}: the place is right, but {name!r} has {desc.size} "
                       f"value{'s' if desc.size != 1 else ''}.", why, _desc_words(desc))
    return None


#: The rearranged file: names 8 bytes roomier than the kernel's, a gap
#: after the id and another before the data, and this many made-up
#: statistics before the real ones (more than fit in 4 KiB of descriptors).
_ROOMIER = 8
_GAPS = (40, 24)
_PADDING_STATS = 32


def rearranged(header: Any, descs: list[StatDescriptor], data: bytes) -> bytes:
    """The kernel's statistics file laid out another way that its header
    allows (Documentation/virt/kvm/api.rst: every offset and ``name_size``
    come from the header): what a ``find_stat`` that reads the header must
    find as easily as the kernel's own, and one that copied this host's
    numbers does not. The real statistics keep their values and their
    places in the data block; made-up ones (``minikvm_pad_N``, one value
    each, after the real data) come first among the descriptors."""
    name_size = header.name_size + _ROOMIER
    padded = [(f"minikvm_pad_{n}", 0, 0, 1, len(data) + 8 * n, 0) for n in range(_PADDING_STATS)]
    real = [(d.name, d.flags, d.exponent, d.size, d.offset, d.bucket_size) for d in descs]
    entries = padded + real
    id_offset = 24
    desc_offset = id_offset + name_size + _GAPS[0]
    data_offset = desc_offset + len(entries) * (16 + name_size) + _GAPS[1]
    new = kvm_stats_header(flags=0, name_size=name_size, num_desc=len(entries),
                           id_offset=id_offset, desc_offset=desc_offset, data_offset=data_offset)
    out = bytearray(bytes(new))
    out += b"kvm-exercise/vcpu-0".ljust(name_size, b"\0") + bytes(_GAPS[0])
    for name, flags, exponent, size, offset, bucket in entries:
        out += bytes(kvm_stats_desc(flags=flags, exponent=exponent, size=size, offset=offset,
                                    bucket_size=bucket))
        out += name.encode().ljust(name_size, b"\0")
    out += bytes(_GAPS[1])
    out += data + b"".join(struct.pack("<Q", 1000 + n) for n in range(_PADDING_STATS))
    return bytes(out)


def _rearranged_fd(contents: bytes) -> int:
    """A read-only fd on ``contents`` (a memory file): ``pread`` works on
    it as on the kernel's."""
    writer = os.memfd_create("minikvm-exercise-14", os.MFD_CLOEXEC)
    try:
        if os.write(writer, contents) != len(contents):
            raise RuntimeError("the rearranged statistics file was not written whole")
        return os.open(f"/proc/self/fd/{writer}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(writer)


def _confirm_reference(stats: Any, fd: int, header: Any, descs: list[StatDescriptor]) -> None:
    """The descriptors read here name what ``KvmStats`` names, and its
    reads agree with the places they give (the vCPU is stopped: its values
    hold still); else the check itself is wrong, not the learner."""
    if [desc.name for desc in descs] != stats.names:
        raise RuntimeError("the checker's descriptors and KvmStats disagree on the names")
    for desc in descs:
        value = int.from_bytes(os.pread(fd, 8, header.data_offset + desc.offset), "little")
        if value != stats.read(desc.name):
            raise RuntimeError(f"the checker and KvmStats read {desc.name!r} differently")


def check_14(path: Path, work: Path) -> Verdict:
    """find_stat(fd, name): every statistic of a fresh vCPU where KVM put it."""
    from minikvm.kvm.errors import KvmUnavailableError
    from minikvm.kvm.uapi import KvmCap
    from minikvm.machine import Machine

    find_stat, problem = learner_function(path, "find_stat")
    if problem is not None:
        return problem
    with Machine() as machine:
        if machine.kvm.check_extension(KvmCap.KVM_CAP_BINARY_STATS_FD) <= 0:
            raise KvmUnavailableError("exercise 14 reads KVM's binary statistics "
                                      "(KVM_GET_STATS_FD, Linux 5.14 and later), and this "
                                      "kernel has none")
        stats = machine.vcpu.stats()
        fd = open_stats_fd(machine.vcpu)
        try:
            header, descs = read_layout(fd)
            _confirm_reference(stats, fd, header, descs)
        finally:
            os.close(fd)
        answers: dict[str, Any] = {}
        for name in _questions(descs):
            fd = open_stats_fd(machine.vcpu)
            try:
                answers[name] = find_stat(fd, name)
            except Exception as err:  # noqa: BLE001 - the learner's code may raise anything
                return not_yet(f"find_stat(fd, {name!r}) raised {their_error(err, path)}.",
                               _header_words(header))
            finally:
                try:
                    os.close(fd)
                except OSError:       # the learner closed it: no harm done
                    pass
            wrong = _judge(name, answers[name], header, descs)
            if wrong is not None:
                return wrong
        # The same statistics, laid out another way the header allows.
        fd = open_stats_fd(machine.vcpu)
        try:
            size = max(d.offset + 8 * d.size for d in descs)
            data = os.pread(fd, size, header.data_offset)
        finally:
            os.close(fd)
        if len(data) != size:
            raise RuntimeError("the vCPU's statistics file ended before its last value")
        contents = rearranged(header, descs, data)
        fd = _rearranged_fd(contents)
        try:
            other_header, other_descs = read_layout(fd)
        finally:
            os.close(fd)
        rearranged_asked = _rearranged_questions(descs)
        for name in rearranged_asked:
            fd = _rearranged_fd(contents)
            try:
                answer = find_stat(fd, name)
            except Exception as err:  # noqa: BLE001 - the learner's code may raise anything
                return not_yet(f"find_stat(fd, {name!r}) on the rearranged file raised "
                               f"{their_error(err, path)}.", _REARRANGED,
                               _header_words(other_header))
            finally:
                try:
                    os.close(fd)
                except OSError:
                    pass
            wrong = _judge(name, answer, other_header, other_descs, kernel=header)
            if wrong is not None:
                wrong.details.append(_REARRANGED)
                return wrong
        details = [f"Then the same statistics in a file laid out another way the header allows "
                   f"(name_size {other_header.name_size}, gaps before the descriptors and the "
                   f"data, {_PADDING_STATS} more statistics first): the {len(rearranged_asked)} "
                   f"names asked there ({', '.join(map(repr, rearranged_asked))}) answered "
                   f"right too."]
        histogram = next((d for d in descs if d.size > 1 and d.name in answers), None)
        if histogram is not None:
            details.append(f"{histogram.name!r} is a histogram: {histogram.size} values from "
                           f"byte {answers[histogram.name][0]}.")
        if "exits" in answers:
            machine.load_flat(ENDS, CODE_ADDR)
            stop = machine.run(timeout=10)
            fd = open_stats_fd(machine.vcpu)
            try:
                seen = int.from_bytes(os.pread(fd, 8, answers["exits"][0]), "little")
            finally:
                os.close(fd)
            details.append(f"Then a guest printed {PRINTED.decode()!r} with three `out`s and "
                           f"halted ({stop.kind.name}); 8 bytes read at your offset of 'exits' "
                           f"gave {seen}: every VM exit KVM counted, the `out`s and the `hlt` "
                           f"among them (KvmStats.read('exits') says {stats.read('exits')}).")
    missing = [name for name in answers if name not in stats.names]
    return passed(f"Your find_stat() found all {len(descs)} statistics of a fresh vCPU where "
                  f"KVM put them, and None for {' and '.join(map(repr, missing))}.",
                  *details,
                  "That is the walk minikvm's KvmStats makes once per fd; after it, reading a "
                  "statistic is one pread at a fixed place -- which is how the watchdog reads "
                  "'blocking' while the vCPU is inside KVM_RUN.")
