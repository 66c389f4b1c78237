"""Plain records for the modules every command loads: the part of
:mod:`dataclasses` they use, without its cost at import.

``@dataclass`` writes a class's ``__init__``, ``__repr__`` and ``__eq__``
(and for ``frozen=True`` also ``__hash__``, ``__setattr__`` and
``__delattr__``) as Python source and compiles each with ``exec`` when the
module is imported (Lib/dataclasses.py, ``_create_fn``): 0.5-1.8 ms per
class on our machines, ~16 ms for the records ``minikvm run`` loads, where
a class written out costs ~0.01 ms (its code is in the ``.pyc``). So the
records on that path spell out their ``__init__`` and take the rest from
here, computed from their fields: the names in their ``__slots__``, after
those of the record classes they derive from (:attr:`Record._fields`):

* ``repr`` and ``==`` as a dataclass's: ``Name(field=value, ...)``, and
  equal only to a record of the same class with equal fields;
  ``_uncompared`` names the fields ``==`` and ``hash`` skip and
  ``_unshown`` those ``repr`` skips (dataclasses' ``compare=False`` and
  ``repr=False``);
* :meth:`Record.replace`: a copy with some fields changed
  (``dataclasses.replace``), through the class's own ``__init__``;
* :class:`FrozenRecord`: fields set once, in ``__init__`` through
  :meth:`FrozenRecord._set`; assigning one later raises ``AttributeError``
  (as ``dataclasses.FrozenInstanceError``, a subclass of it, does), and
  the record is hashable. A plain :class:`Record` is mutable and, like a
  dataclass with ``eq``, not hashable.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

__all__ = ["FrozenRecord", "Record"]

R = TypeVar("R", bound="Record")


class Record:
    """A mutable record: its fields are its ``__slots__``."""

    __slots__ = ()
    #: The field names, in order: the bases' fields, then this class's ``__slots__``.
    _fields: ClassVar[tuple[str, ...]] = ()
    #: Fields that ``==`` (and ``hash``) leave out.
    _uncompared: ClassVar[frozenset[str]] = frozenset()
    #: Fields that ``repr`` leaves out.
    _unshown: ClassVar[frozenset[str]] = frozenset()
    __hash__ = None  # type: ignore[assignment]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__slots__", ())
        cls._fields = (*cls._fields, *((own,) if isinstance(own, str) else own))

    def _compared(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields
                     if name not in self._uncompared)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._compared() == other._compared()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields
                          if name not in self._unshown)
        return f"{type(self).__name__}({shown})"

    def replace(self: R, **changes: Any) -> R:
        """A copy with the fields in ``changes`` changed (``dataclasses.replace``)."""
        values = {name: getattr(self, name) for name in self._fields}
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {sorted(unknown)[0]!r}")
        values.update(changes)
        return type(self)(**values)


class FrozenRecord(Record):
    """An immutable, hashable record."""

    __slots__ = ()

    def _set(self, **values: Any) -> None:
        """Set the fields, once, from ``__init__``."""
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a {type(self).__name__}")

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        # copy and pickle hand back the slots' values (object.__getstate__).
        for name, value in state[1].items():
            object.__setattr__(self, name, value)

    def __hash__(self) -> int:
        return hash(self._compared())
