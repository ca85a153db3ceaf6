"""Run-time configuration, kept in a ContextVar.

DeZero keeps ``Config`` as a class with mutable class attributes; here the values live in one
immutable ``_State`` per context so that threads never see each other's settings and asyncio tasks
inherit the settings (and the active tapes) of the code that created them. ``using_config`` always
restores the previous value of its setting in ``finally`` (only that one, as DeZero does).

The hot path reads ``_state.get()`` once per Function call: it holds both the config flags and the
tuple of tapes that are recording.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Iterator


class _State:
    __slots__ = ("enable_backprop", "train", "tapes")

    def __init__(self, enable_backprop: bool = True, train: bool = True, tapes: tuple = ()):
        self.enable_backprop = enable_backprop
        self.train = train
        self.tapes = tapes

    def replace(self, **changes: Any) -> "_State":
        new = _State(self.enable_backprop, self.train, self.tapes)
        for k, v in changes.items():
            setattr(new, k, v)
        return new

    # The two changes made on hot paths (every backward, every with-block), without keywords
    def with_backprop(self, enable: bool) -> "_State":
        return _State(enable, self.train, self.tapes)

    def with_tapes(self, tapes: tuple) -> "_State":
        return _State(self.enable_backprop, self.train, tapes)


_FLAGS = ("enable_backprop", "train")
_state: ContextVar[_State] = ContextVar("tapegrad_state", default=_State())  # noqa: B039 (never mutated)


class _ConfigType:
    """``Config.enable_backprop`` and ``Config.train``, read from (and set in) the current context."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name in _FLAGS:
            return getattr(_state.get(), name)
        raise AttributeError(f"Config has no setting {name!r}; settings are {', '.join(_FLAGS)}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _FLAGS:
            raise AttributeError(
                f"Config has no setting {name!r}; settings are {', '.join(_FLAGS)}"
            )
        _state.set(_state.get().replace(**{name: bool(value)}))

    def __repr__(self) -> str:
        st = _state.get()
        return f"Config(enable_backprop={st.enable_backprop}, train={st.train})"


Config = _ConfigType()


@contextlib.contextmanager
def using_config(name: str, value: Any) -> Iterator[None]:
    """Set one setting of ``Config`` for the duration of a ``with`` block (in this context only)."""
    if name not in _FLAGS:
        raise AttributeError(f"Config has no setting {name!r}; settings are {', '.join(_FLAGS)}")
    old = getattr(_state.get(), name)
    _state.set(_state.get().replace(**{name: value}))
    try:
        yield
    finally:
        # Restore this one setting only (as DeZero): a ``Config.x = ...`` made inside the block
        # must survive it.
        _state.set(_state.get().replace(**{name: old}))


def no_grad() -> contextlib.AbstractContextManager[None]:
    """Compute without building a graph or recording onto tapes."""
    return using_config("enable_backprop", False)


def test_mode() -> contextlib.AbstractContextManager[None]:
    """Inference behaviour: dropout passes values through, batch_norm uses running statistics."""
    return using_config("train", False)


test_mode.__test__ = False  # not a pytest test
