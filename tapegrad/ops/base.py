"""The base class of built-in ops and the small namespace their derivative rules are written in.

A built-in op is a Function subclass registered under a stable name, with:
- ``attr_names``: its plain-data attributes (what a tape stores and what rebuilds the op),
- ``forward(*xs)`` on ndarrays,
- ``vjp(gy, xs, y)``: the gradient of each input, reading only the incoming gradient ``gy``, the
  inputs ``xs``, the output ``y`` (only when ``needs_y``) and the attributes.

Rules are written with operators and the functions of ``xp`` below, which run NumPy on ndarrays and
the recorded op on Variables. So one rule serves a first-order backward on raw arrays and a
``create_graph=True`` backward whose computation is itself recorded and differentiable.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core import Function, Variable
from ..registry import _OPS


class Op(Function):
    __slots__ = ()  # each op declares its attributes as slots: no per-call __dict__
    attr_names: tuple[str, ...] = ()
    _rule = True
    needs_y = False
    # needs_x = False: the rule reads only its inputs' shapes and dtypes, so a tape saved with
    # values="backward" may leave those values out.
    needs_x = True
    # uses_need: vjp takes a 4th argument, a tuple saying which inputs need a gradient (those
    # that are not constants), so it can skip work such as a matmul for the data input.
    uses_need = False

    def __init__(self) -> None:
        self._seq = 0

    def attrs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.attr_names}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "Op":
        missing = [k for k in cls.attr_names if k not in attrs]
        if missing:
            raise ValueError(
                f"op {cls.op!r} needs attributes {missing}, the record has {sorted(attrs)}"
            )
        return cls(**{k: attrs[k] for k in cls.attr_names})

    def backward(self, *gys: Variable):
        """DeZero's protocol, for code that calls ``f.backward(gy)`` itself."""
        y = self.outputs[0]() if self.needs_y else None
        gxs = self.vjp(gys[0], self.inputs, y)
        return gxs if len(gxs) > 1 else gxs[0]


def value(x: Any) -> Any:
    """The ndarray inside a Variable (for masks and constants a rule must not differentiate)."""
    return x.data if isinstance(x, Variable) else x


class xp:
    """NumPy on ndarrays, recorded ops on Variables: the vocabulary of derivative rules."""

    @staticmethod
    def exp(x):
        return _OPS["exp"]()(x) if isinstance(x, Variable) else np.exp(x)

    @staticmethod
    def log(x):
        return _OPS["log"]()(x) if isinstance(x, Variable) else np.log(x)

    @staticmethod
    def sin(x):
        return _OPS["sin"]()(x) if isinstance(x, Variable) else np.sin(x)

    @staticmethod
    def cos(x):
        return _OPS["cos"]()(x) if isinstance(x, Variable) else np.cos(x)

    @staticmethod
    def sum(x, axis=None, keepdims=False):
        if isinstance(x, Variable):
            return _OPS["sum"](axis, keepdims)(x)
        return x.sum(axis=axis, keepdims=keepdims)

    @staticmethod
    def reshape(x, shape):
        shape = tuple(shape)
        if x.shape == shape:
            return x
        return _OPS["reshape"](shape)(x) if isinstance(x, Variable) else x.reshape(shape)

    @staticmethod
    def transpose(x, axes=None):
        return _OPS["transpose"](axes)(x) if isinstance(x, Variable) else x.transpose(axes)

    @staticmethod
    def swap_last(x):
        """Swap the last two axes (the transpose of a batch of matrices)."""
        axes = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
        return xp.transpose(x, axes)

    @staticmethod
    def matmul(a, b):
        if isinstance(a, Variable) or isinstance(b, Variable):
            return _OPS["matmul"]()(a, b)
        return a @ b

    @staticmethod
    def sum_to(x, shape):
        shape = tuple(shape)
        if x.shape == shape:
            return x
        return _OPS["sum_to"](shape)(x) if isinstance(x, Variable) else sum_to(x, shape)

    @staticmethod
    def broadcast_to(x, shape):
        shape = tuple(shape)
        if x.shape == shape:
            return x
        if isinstance(x, Variable):
            return _OPS["broadcast_to"](shape)(x)
        return np.broadcast_to(x, shape)

    @staticmethod
    def where(cond, x0, x1):
        if isinstance(x0, Variable) or isinstance(x1, Variable):
            return _OPS["where"]()(cond, x0, x1)
        return np.where(cond, x0, x1)

    @staticmethod
    def get_item(x, index, arrays=()):
        """``x[index]`` where ``index`` is an encoded index (see shape.encode_index)."""
        if isinstance(x, Variable):
            return _OPS["get_item"](index)(x, *arrays)
        return x[decode_index(index, [value(a) for a in arrays])]


def sum_to(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``x`` over broadcast axes down to ``shape`` (the adjoint of broadcasting)."""
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape) if s == 1)
    y = x.sum(axes, keepdims=True)
    if lead > 0:
        y = y.squeeze(tuple(range(lead)))
    return y


def keepdims_shape(shape: tuple[int, ...], axis: Any) -> tuple[int, ...]:
    """The shape a reduction over ``axis`` has with keepdims=True."""
    ndim = len(shape)
    if axis is None:
        return (1,) * ndim
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = {a % ndim for a in axes} if ndim else set()
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


# -- indices as plain data ---------------------------------------------------------------------
# An index such as x[1:3, None, idx] is stored as a tuple of components, each a tuple:
#   ("int", i)  ("slice", start, stop, step)  ("none",)  ("ellipsis",)  ("array", k)
# where ("array", k) is the k-th extra input of the op (an integer or boolean ndarray, recorded
# as a constant on the tape, so that arrays never live in attributes).


def encode_index(index: Any) -> tuple[tuple, list[np.ndarray]]:
    if not isinstance(index, tuple):
        index = (index,)
    parts: list[tuple] = []
    arrays: list[np.ndarray] = []
    for c in index:
        if isinstance(c, Variable):
            c = c.data
        if c is None:
            parts.append(("none",))
        elif c is Ellipsis:
            parts.append(("ellipsis",))
        elif isinstance(c, slice):
            parts.append(("slice", _plain_int(c.start), _plain_int(c.stop), _plain_int(c.step)))
        elif isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_)):
            parts.append(("int", int(c)))
        else:
            a = np.asarray(c)
            if a.dtype.kind not in "iub":
                raise IndexError(
                    f"get_item: only integers, slices, None, Ellipsis and integer or boolean "
                    f"arrays are valid indices, got {type(c).__name__} of dtype {a.dtype}"
                )
            parts.append(("array", len(arrays)))
            arrays.append(a)
    return tuple(parts), arrays


def _plain_int(v: Any) -> int | None:
    return None if v is None else int(v)


def decode_index(parts: tuple, arrays: list) -> tuple:
    out: list[Any] = []
    for p in parts:
        kind = p[0]
        if kind == "int":
            out.append(p[1])
        elif kind == "slice":
            out.append(slice(p[1], p[2], p[3]))
        elif kind == "none":
            out.append(None)
        elif kind == "ellipsis":
            out.append(Ellipsis)
        elif kind == "array":
            out.append(arrays[p[1]])
        else:
            raise ValueError(f"get_item: unknown index component {p!r}")
    return tuple(out)
