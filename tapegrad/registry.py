"""The op registry: stable op names -> Function subclasses.

A tape names its ops; this table is how a name becomes code again, for replay and offline backward.
Nothing here imports the ops: each op family registers itself when ``tapegrad.ops`` is imported, and a
user module registers its own Functions with ``@register_op("mylib.scale")``. Names are never
re-bound to another class silently, because saved tapes depend on them.
"""

from __future__ import annotations

import re
from typing import Callable, TypeVar

from .errors import UnknownOpError

_OPS: dict[str, type] = {}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

T = TypeVar("T", bound=type)


def register_op(name: str) -> Callable[[T], T]:
    """Class decorator: record this Function subclass on tapes as ``name``.

    The class's plain-data attributes (those set in ``__init__``) are saved with each record, and
    ``replay``/``backward`` of a loaded tape rebuild the Function from name and attributes.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"op name {name!r} is not a dotted identifier such as 'mylib.scale'")

    def deco(cls: T) -> T:
        from .core import Function  # the core defines Function; registry is imported first

        if not (isinstance(cls, type) and issubclass(cls, Function)):
            raise TypeError(f"register_op({name!r}) decorates a Function subclass, not {cls!r}")
        old = _OPS.get(name)
        if old is not None and old is not cls and _qualname(old) != _qualname(cls):
            raise ValueError(f"op name {name!r} is already registered to {_qualname(old)}")
        cls.op = name
        cls._registered = True
        _OPS[name] = cls
        return cls

    return deco


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def get_op(name: str) -> type:
    """The Function class registered as ``name``; ``UnknownOpError`` if none is."""
    try:
        return _OPS[name]
    except KeyError:
        raise UnknownOpError(
            f"op {name!r} is not registered in this process; import the module that defines it "
            f"(its Function class decorated with @tapegrad.register_op({name!r})) before replaying"
        ) from None


def registered_ops() -> dict[str, type]:
    """A copy of the registry: op name -> Function class."""
    return dict(_OPS)
