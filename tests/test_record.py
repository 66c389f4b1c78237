"""minikvm.record: the records of the run path keep the dataclass semantics
their callers rely on (equality, hash, repr, replace, frozen fields, copies)."""

import copy
import pickle

import pytest

from minikvm.core.config import MachineConfig, VirtioSpec
from minikvm.core.stop import Requests, Stop, StopKind
from minikvm.loaders.image import LoadedImage, LoadedSegment
from minikvm.loaders.multiboot import MultibootImage
from minikvm.x86.modes import CpuMode


def test_stops_that_differ_only_in_their_event_are_equal_and_hash_alike():
    first = Stop(StopKind.HALT, 0, "halted", rip=0x1000, event="one exit")
    second = first.but(event="another exit", breakpoint=object())
    assert first == second and hash(first) == hash(second)
    assert first != first.but(steps=1) and first != first.but(rip=0x1001)
    assert repr(first) == ("Stop(kind=<StopKind.HALT: 'halt'>, status=0, message='halted', "
                           "rip=4096, vcpu=0, old_value=None, new_value=None, steps=0)")


def test_a_frozen_record_refuses_assignment_and_survives_copy_and_pickle():
    stop = Stop(StopKind.TIMEOUT, 124, "timed out", vcpu=2)
    with pytest.raises(AttributeError):
        stop.status = 0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del stop.message
    assert copy.deepcopy(stop) == stop == pickle.loads(pickle.dumps(stop))


def test_replace_goes_through_the_checks_of_init():
    config = MachineConfig(guest="a.bin", virtio=(VirtioSpec("rng"),))
    assert config.replace(guest="b.bin") == MachineConfig(guest="b.bin", virtio=(VirtioSpec("rng"),))
    with pytest.raises(ValueError):
        config.replace(mem_size=4097)
    with pytest.raises(TypeError):
        config.replace(colour="red")
    with pytest.raises(ValueError):
        VirtioSpec("blk")


def test_a_record_is_equal_only_to_its_own_class_and_a_mutable_one_is_unhashable():
    segment = LoadedSegment(0x1000, 16, 16)
    image = LoadedImage("flat", 0x1000, CpuMode.REAL, [segment])
    multiboot = MultibootImage("flat", 0x1000, CpuMode.REAL, [segment], image.symbols)
    assert image == LoadedImage("flat", 0x1000, CpuMode.REAL, [LoadedSegment(0x1000, 16, 16)],
                                image.symbols)
    assert image != multiboot and multiboot.modules == [] and multiboot.symbols is not None
    assert MultibootImage._fields[:6] == LoadedImage._fields
    with pytest.raises(TypeError):
        hash(image)
    assert Requests(pause=True) == Requests(pause=True) != Requests()
