"""Module attributes built on first use: the rarely used enums of
:mod:`minikvm.kvm.uapi` and :mod:`minikvm.x86.flags`.

Every command imports those two modules, and an ``IntEnum``/``IntFlag``
costs ~25-40 us per member to create (``KvmCap``'s 116 members ~3 ms). An
enum a run does not need is defined where it stands, inside a function
that returns it, and the module's ``__getattr__`` (PEP 562, called only for
a name the module does not have yet) builds it the first time it is asked
for -- ``module.KvmCap`` and ``from module import KvmCap`` alike -- and binds
it, so the next look-up is an ordinary one. The module-level aliases of its
members (``KVM_GUESTDBG_ENABLE`` for ``KvmGuestDbg.KVM_GUESTDBG_ENABLE``,
``CR4_PAE`` for ``Cr4.PAE``) come with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["lazy_enums"]


def lazy_enums(namespace: dict[str, Any], builders: dict[str, Callable[[], type]],
               aliases: tuple[tuple[str, str, str], ...] = ()
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the module whose globals are
    ``namespace``: ``builders`` maps an enum's name to the function that
    creates it; each of ``aliases`` is ``(prefix, enum name, strip)``: a
    name in the module's ``__all__`` that starts with ``prefix`` is the member
    of that enum named by the name less ``strip`` (``("CR4_", "Cr4", "CR4_")``:
    ``CR4_PAE`` is ``Cr4.PAE``; with ``strip=""`` the member has the alias's name)."""

    def __getattr__(name: str) -> Any:
        if name in builders:
            cls = builders[name]()
            cls.__qualname__ = name        # as if defined at the top (pickle finds it)
            # Two threads asking at once may each build one; the first bound
            # is the module's for both (dict.setdefault is atomic in CPython).
            return namespace.setdefault(name, cls)
        for prefix, enum_name, strip in aliases:
            if name.startswith(prefix) and name in namespace["__all__"]:
                cls = namespace[enum_name] if enum_name in namespace else __getattr__(enum_name)
                return namespace.setdefault(name, cls[name.removeprefix(strip)])
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *namespace["__all__"]})

    return __getattr__, __dir__
