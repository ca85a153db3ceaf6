"""Ops that move values without arithmetic: reshape, transpose, broadcast, indexing, joining."""

from __future__ import annotations

import numpy as np

from ..core import Variable
from ..registry import register_op
from .base import Op, decode_index, encode_index, value, xp


@register_op("reshape")
class Reshape(Op):
    needs_x = False  # the rule reads only the input's shape and dtype
    attr_names = ("shape",)
    __slots__ = attr_names

    def __init__(self, shape):
        self._seq = 0
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x):
        return x.reshape(self.shape)

    def vjp(self, gy, xs, y):
        """d reshape(x) = reshape(gy, x.shape)"""
        return (xp.reshape(gy, xs[0].shape),)


@register_op("transpose")
class Transpose(Op):
    needs_x = False  # the rule reads only the input's shape and dtype
    attr_names = ("axes",)
    __slots__ = attr_names

    def __init__(self, axes=None):
        self._seq = 0
        self.axes = None if axes is None else tuple(int(a) for a in axes)

    def forward(self, x):
        return x.transpose(self.axes)

    def vjp(self, gy, xs, y):
        """d transpose(x, axes) = transpose(gy, argsort(axes))"""
        if self.axes is None:
            return (xp.transpose(gy),)
        n = len(self.axes)
        inv = tuple(int(i) for i in np.argsort([a % n for a in self.axes]))
        return (xp.transpose(gy, inv),)


@register_op("broadcast_to")
class BroadcastTo(Op):
    needs_x = False  # the rule reads only the input's shape and dtype
    attr_names = ("shape",)
    __slots__ = attr_names

    def __init__(self, shape):
        self._seq = 0
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x):
        return np.broadcast_to(x, self.shape)

    def vjp(self, gy, xs, y):
        """d broadcast_to(x) = sum_to(gy, x.shape)"""
        return (xp.sum_to(gy, xs[0].shape),)


@register_op("get_item")
class GetItem(Op):
    """y = x[index]; integer/boolean index arrays are extra (constant) inputs."""

    needs_x = False  # the rule reads only the input's shape and dtype
    attr_names = ("index",)
    __slots__ = attr_names

    def __init__(self, index):
        self._seq = 0
        self.index = index

    @classmethod
    def of(cls, x, index):
        parts, arrays = encode_index(index)
        return cls(parts)(x, *arrays)

    def forward(self, x, *arrays):
        return x[decode_index(self.index, arrays)]

    def vjp(self, gy, xs, y):
        """d x[i] = scatter-add of gy into zeros like x (repeated indices accumulate)"""
        x, arrays = xs[0], xs[1:]
        return (_get_item_grad(gy, self.index, x.shape, arrays),) + (None,) * len(arrays)


def _get_item_grad(gy, index, shape, arrays):
    if not isinstance(gy, Variable):  # an ndarray, or a NumPy scalar (0-d results of NumPy ops)
        gy = np.asarray(gy)
        gx = np.zeros(shape, dtype=gy.dtype)
        np.add.at(gx, decode_index(index, [value(a) for a in arrays]), gy)
        return gx
    return GetItemGrad(index, shape)(gy, *arrays)


@register_op("get_item_grad")
class GetItemGrad(Op):
    """The adjoint of get_item: zeros of ``in_shape`` with gy added at ``index``."""

    attr_names = ("index", "in_shape")
    __slots__ = attr_names

    def __init__(self, index, in_shape):
        self._seq = 0
        self.index = index
        self.in_shape = tuple(int(s) for s in in_shape)

    def forward(self, gy, *arrays):
        return _get_item_grad(gy, self.index, self.in_shape, arrays)

    def vjp(self, ggx, xs, y):
        """d scatter_add(gy) = ggx[index]"""
        arrays = xs[1:]
        return (xp.get_item(ggx, self.index, arrays),) + (None,) * len(arrays)


def _axis_slices(ndim, axis, sizes):
    """Encoded indices that cut pieces of the given sizes along ``axis``."""
    axis %= ndim
    start = 0
    out = []
    for n in sizes:
        out.append((("slice", None, None, None),) * axis + (("slice", start, start + n, None),))
        start += n
    return out


@register_op("concatenate")
class Concatenate(Op):
    needs_x = False  # the rule reads only the input's shape and dtype
    attr_names = ("axis",)
    __slots__ = attr_names

    def __init__(self, axis=0):
        self._seq = 0
        self.axis = int(axis)

    def forward(self, *xs):
        return np.concatenate(xs, axis=self.axis)

    def vjp(self, gy, xs, y):
        """d concatenate(xs) = the pieces of gy"""
        sizes = [x.shape[self.axis] for x in xs]
        return tuple(xp.get_item(gy, ix) for ix in _axis_slices(gy.ndim, self.axis, sizes))


@register_op("stack")
class Stack(Op):
    needs_x = False  # the rule reads only the input's shape and dtype
    attr_names = ("axis",)
    __slots__ = attr_names

    def __init__(self, axis=0):
        self._seq = 0
        self.axis = int(axis)

    def forward(self, *xs):
        return np.stack(xs, axis=self.axis)

    def vjp(self, gy, xs, y):
        """d stack(xs) = the slices of gy along axis"""
        axis = self.axis % gy.ndim
        lead = (("slice", None, None, None),) * axis
        return tuple(xp.get_item(gy, lead + (("int", i),)) for i in range(len(xs)))
