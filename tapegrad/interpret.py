"""Interpreters over a tape: reverse (backward) and forward (replay).

Both rebuild each record's op from its name and attributes through the registry, so they work on a
tape loaded from a file by a process that never ran the script. For a tape recorded in this
process the recorded Function itself is used; built-in ops then run the very ``vjp`` the live
backward ran, in the same (reverse call) order, so live and offline gradients are equal bit for bit.
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
import weakref
from typing import Any

import numpy as np

from .config import no_grad
from .core import Variable, _call_backward
from .errors import GuardError
from .registry import get_op
from .tape import CONST, INPUT, NOT_PLAIN, OP, Tape


def _op_instance(fn: Any, op: str, attrs: dict) -> Any:
    """A Function object that can run record ``op``: the recorded one, or one rebuilt from attrs."""
    if fn is not None:
        return fn
    cls = get_op(op)
    lost = [k for k, v in attrs.items() if isinstance(v, str) and v.startswith(NOT_PLAIN)]
    if lost:
        raise ValueError(
            f"op {op!r}: attribute(s) {lost} held non-plain data ({attrs[lost[0]]}) that a tape "
            f"cannot store, so this record cannot be re-run offline; pass arrays as op inputs"
        )
    from_attrs = getattr(cls, "from_attrs", None)
    if from_attrs is not None:
        return from_attrs(attrs)
    obj = cls.__new__(cls)
    obj.__dict__.update(attrs)
    return obj


def _user_vjp(f: Any, gys: list, xs: list, ys: list) -> tuple:
    """Run a DeZero-style ``backward`` with the record's own values as inputs and outputs."""
    g = copy.copy(f)
    g.inputs = [Variable(np.asarray(x)) for x in xs]
    keep = [Variable(np.asarray(y)) for y in ys]
    g.outputs = [weakref.ref(v) for v in keep]
    with no_grad():
        return _call_backward(g, gys, False)


def _stand_in(tape: Tape, i: int) -> np.ndarray:
    """An array of value ``i``'s shape and dtype, without its numbers (a zero-stride view)."""
    shape, dtype = tape._shape_dtype(i)
    return np.broadcast_to(np.zeros((), dtype), shape)


def _resolve_output(tape: Tape, of: str | None) -> int:
    outs = tape.outputs
    if of is None:
        if len(outs) != 1:
            raise ValueError(
                f"this tape has {len(outs)} outputs ({', '.join(outs) or 'none'}); "
                f"name the one to differentiate with of=..."
            )
        of = outs[0]
    return tape._index_of(of)


def backward(
    tape: Tape, of: str | None = None, grad: Any = None, visit: Any = None, progress: Any = None
) -> dict[str, np.ndarray]:
    """d(output ``of``)/d(input) for every input of ``tape``, with cotangent ``grad`` (default ones).

    ``visit(k, gxs)``, when given, sees the input gradients each record ``k`` produced.
    """
    o = _resolve_output(tape, of)
    y = tape._value(o)
    if grad is None:
        seed = np.ones_like(y)
    else:
        seed = np.asarray(grad.data if isinstance(grad, Variable) else grad)
        if seed.shape != y.shape:
            raise ValueError(
                f"grad has shape {seed.shape} but output {tape.name_of(o)!r} has shape {y.shape}"
            )
    grads: dict[int, Any] = {o: seed}
    kinds = tape._kinds
    for k in range(len(tape._entries) - 1, -1, -1):
        if progress is not None:
            progress()
        fn, op, attrs, ins, outs, _ = tape._entry(k)
        if not any(i in grads for i in outs):
            continue
        gys = []
        for i in outs:
            g = grads.pop(i, None)
            if g is None:
                shape, dtype = tape._shape_dtype(i)
                g = np.zeros(shape, dtype)
            gys.append(g)
        f = _op_instance(fn, op, attrs)
        if getattr(f, "needs_x", True):
            xs = [tape._value(i) for i in ins]
        else:  # values left out by save(values="backward"): the rule reads only shape and dtype
            xs = [tape._value(i) if tape._has_value(i) else _stand_in(tape, i) for i in ins]
        if f.vjp is None:
            gxs = _user_vjp(f, gys, xs, [tape._value(i) for i in outs])
        elif f.uses_need:
            need = tuple([kinds[i] != CONST for i in ins])
            gxs = f.vjp(gys[0], xs, tape._value(outs[0]) if f.needs_y else None, need)
        else:
            gxs = f.vjp(gys[0], xs, tape._value(outs[0]) if f.needs_y else None)
        if visit is not None:
            visit(k, gxs)
        for i, gx in zip(ins, gxs):
            if gx is None or kinds[i] == CONST:
                continue
            prev = grads.get(i)
            grads[i] = gx if prev is None else prev + gx
    result = {}
    for i, kind in enumerate(kinds):
        if kind == INPUT:
            g = grads.get(i)
            if g is None:
                shape, dtype = tape._shape_dtype(i)
                g = np.zeros(shape, dtype)
            result[tape.name_of(i)] = np.asarray(g)
    return result


def rebuild(tape: Tape, inputs: dict[str, Any] | None = None) -> dict[str, Variable]:
    """Re-run the tape as a live graph of Variables (for higher-order derivatives).

    Returns every value by name; inputs are fresh leaf Variables (with ``inputs`` replacing some).
    """
    given = inputs or {}
    vs: list[Any] = [None] * len(tape._kinds)
    for i, kind in enumerate(tape._kinds):
        if kind != OP:
            v = given.get(tape.name_of(i), tape._value(i)) if kind == INPUT else tape._value(i)
            v = np.array(v.data if isinstance(v, Variable) else v, copy=True)
            vs[i] = Variable(v, name=tape.name_of(i)) if kind == INPUT else v
    for k in range(len(tape._entries)):
        fn, op, attrs, ins, outs, _ = tape._entry(k)
        f = _op_instance(None if fn is None else copy.copy(fn), op, attrs)
        ys = f(*[vs[i] for i in ins])
        for i, y in zip(outs, ys if isinstance(ys, list) else [ys]):
            vs[i] = y
    return {tape.name_of(i): v for i, v in enumerate(vs)}


def replay(tape: Tape, inputs: dict[str, Any], strict: bool = True, progress: Any = None) -> Tape:
    """Re-run ``tape`` with some inputs replaced; constants (dropout masks too) are reused.

    Raises ``GuardError`` when a recorded comparison or branch guard gives another result, since the
    script would then have taken another path (with ``strict=False``, warns instead).
    """
    given = dict(inputs)
    index = {tape.name_of(i): i for i, k in enumerate(tape._kinds) if k == INPUT}
    unknown = sorted(set(given) - set(index))
    if unknown:
        raise KeyError(
            f"replay: {unknown} are not inputs of this tape; its inputs are {list(index)}"
        )
    new = Tape(meta=dict(tape.meta))
    new._names = list(tape._names)
    new._kinds = list(tape._kinds)
    new._taken = set(tape._taken)
    vals: list[Any] = [None] * len(tape._kinds)
    for i, kind in enumerate(tape._kinds):
        if kind == INPUT and tape.name_of(i) in given:
            v = given[tape.name_of(i)]
            v = np.array(v.data if isinstance(v, Variable) else v, copy=True)
            shape, dtype = tape._shape_dtype(i)
            if v.dtype != dtype and np.can_cast(v.dtype, dtype, "same_kind"):
                v = v.astype(dtype)  # float64 for a float32 input, ints for a float input
            vals[i] = v
        elif kind != OP:
            vals[i] = tape._value(i)
    with no_grad():
        for k in range(len(tape._entries)):
            if progress is not None:
                progress()
            fn, op, attrs, ins, outs, src = tape._entry(k)
            f = _op_instance(None if fn is None else copy.copy(fn), op, attrs)
            xs = [vals[i] for i in ins]
            try:
                ys = f.forward(*xs)
            except (ValueError, IndexError) as e:
                shapes = ", ".join(str(np.shape(x)) for x in xs)
                recorded = ", ".join(str(tape._shape_dtype(i)[0]) for i in ins)
                raise ValueError(
                    f"replay: record {k} ({op}) cannot run on inputs of shapes {shapes} "
                    f"(recorded: {recorded}): {e}"
                ) from None
            if type(ys) is not tuple:
                ys = (ys,)
            for i, y in zip(outs, ys):
                vals[i] = np.asarray(y)
            if ys and np.asarray(ys[0]).dtype == np.bool_ and op in _GUARDS:
                _check_guard(tape, k, op, outs, vals, src, strict)
    new._values = vals
    new._entries = [(None,) + tuple(tape._entry(k)[1:]) for k in range(len(tape._entries))]
    return new


_GUARDS = {"guard", "less", "less_equal", "greater", "greater_equal"}


def _check_guard(tape: Tape, k: int, op: str, outs: tuple, vals: list, src: Any, strict: bool):
    old = tape._value(outs[0]) if tape._has_value(outs[0]) else None
    if old is None:
        return
    now = vals[outs[0]]
    if old.shape == now.shape and np.array_equal(old, now):
        return
    where = f" at {src[0]}:{src[1]}" if src else ""
    msg = (
        f"replay: record {k} ({op}){where} was {_short(old)} when recorded and is "
        f"{_short(now)} now: the script would have taken another branch"
    )
    if strict:
        raise GuardError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside tapegrad."""
    pkg = os.path.dirname(os.path.abspath(__file__)) + os.sep
    level, f = 2, sys._getframe(2)  # 1: the function warning, 2: its caller
    while f is not None and f.f_code.co_filename.startswith(pkg):
        level, f = level + 1, f.f_back
    return level


def _short(a: np.ndarray) -> str:
    s = np.array2string(np.asarray(a), threshold=6)
    return s if len(s) < 80 else s[:77] + "..."
