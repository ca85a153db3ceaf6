"""Reductions and the ops built on them: sum, mean, max, min, sum_to, logsumexp, softmax.

``axis`` is None, an int or a tuple of ints, as in NumPy. A rule first gives the incoming gradient
the keepdims shape, then broadcasts it back over the reduced axes.
"""

from __future__ import annotations

import numpy as np

from ..registry import register_op
from .base import Op, keepdims_shape, sum_to, value, xp


def _axis(axis):
    return tuple(int(a) for a in axis) if isinstance(axis, (tuple, list)) else axis


def _spread(gy, x_shape, axis, keepdims):
    """Broadcast a reduction's gradient back to the input's shape."""
    if not keepdims:
        gy = xp.reshape(gy, keepdims_shape(x_shape, axis))
    return xp.broadcast_to(gy, x_shape)


@register_op("sum")
class Sum(Op):
    needs_x = False  # the rule reads only the input's shape and dtype
    attr_names = ("axis", "keepdims")
    __slots__ = attr_names

    def __init__(self, axis=None, keepdims=False):
        self._seq = 0
        self.axis = _axis(axis)
        self.keepdims = bool(keepdims)

    def forward(self, x):
        return x.sum(axis=self.axis, keepdims=self.keepdims)

    def vjp(self, gy, xs, y):
        """d sum(x) = broadcast(gy)"""
        return (_spread(gy, xs[0].shape, self.axis, self.keepdims),)


@register_op("mean")
class Mean(Op):
    needs_x = False  # the rule reads only the input's shape and dtype
    attr_names = ("axis", "keepdims")
    __slots__ = attr_names

    def __init__(self, axis=None, keepdims=False):
        self._seq = 0
        self.axis = _axis(axis)
        self.keepdims = bool(keepdims)

    def forward(self, x):
        y = x.sum(axis=self.axis, keepdims=self.keepdims)
        return y * (np.size(y) / x.size)  # DeZero's average: sum, then scale

    def vjp(self, gy, xs, y):
        """d mean(x) = broadcast(gy) * n_out / n_in"""
        x = xs[0]
        n_out = int(np.prod(keepdims_shape(x.shape, self.axis)))
        return (_spread(gy * (n_out / x.size), x.shape, self.axis, self.keepdims),)


@register_op("max")
class Max(Op):
    attr_names = ("axis", "keepdims")
    __slots__ = attr_names
    needs_y = True
    _reduce = staticmethod(np.max)

    def __init__(self, axis=None, keepdims=False):
        self._seq = 0
        self.axis = _axis(axis)
        self.keepdims = bool(keepdims)

    def forward(self, x):
        return self._reduce(x, axis=self.axis, keepdims=self.keepdims)

    def vjp(self, gy, xs, y):
        """gy to every position equal to the extremum (as DeZero)"""
        x = value(xs[0])
        shape = keepdims_shape(x.shape, self.axis)
        cond = x == value(y).reshape(shape)
        gy = xp.broadcast_to(xp.reshape(gy, shape), cond.shape)
        return (gy * cond,)


@register_op("min")
class Min(Max):
    __slots__ = ()

    _reduce = staticmethod(np.min)


@register_op("sum_to")
class SumTo(Op):
    needs_x = False  # the rule reads only the input's shape and dtype
    attr_names = ("shape",)
    __slots__ = attr_names

    def __init__(self, shape):
        self._seq = 0
        self.shape = tuple(shape)

    def forward(self, x):
        return sum_to(x, self.shape)

    def vjp(self, gy, xs, y):
        """d sum_to(x) = broadcast_to(gy, x.shape)"""
        return (xp.broadcast_to(gy, xs[0].shape),)


@register_op("logsumexp")
class LogSumExp(Op):
    attr_names = ("axis", "keepdims")
    __slots__ = attr_names
    needs_y = True

    def __init__(self, axis=None, keepdims=False):
        self._seq = 0
        self.axis = _axis(axis)
        self.keepdims = bool(keepdims)

    def forward(self, x):
        m = x.max(axis=self.axis, keepdims=True)
        s = np.exp(x - m).sum(axis=self.axis, keepdims=True)
        y = np.log(s) + m
        return y if self.keepdims else np.squeeze(y, axis=self.axis)

    def vjp(self, gy, xs, y):
        """d logsumexp(x) = gy * exp(x - y)"""
        x = xs[0]
        shape = keepdims_shape(x.shape, self.axis)
        w = xp.exp(x - xp.reshape(y, shape))
        return (xp.broadcast_to(xp.reshape(gy, shape), x.shape) * w,)


@register_op("softmax")
class Softmax(Op):
    needs_x = False  # the rule reads only the input's shape and dtype
    attr_names = ("axis",)
    __slots__ = attr_names
    needs_y = True

    def __init__(self, axis=1):
        self._seq = 0
        self.axis = _axis(axis)

    def forward(self, x):
        y = x - x.max(axis=self.axis, keepdims=True)
        y = np.exp(y)
        y /= y.sum(axis=self.axis, keepdims=True)
        return y

    def vjp(self, gy, xs, y):
        """d softmax(x) = y * gy - y * sum(y * gy)"""
        gx = y * gy
        return (gx - y * xp.sum(gx, axis=self.axis, keepdims=True),)


@register_op("log_softmax")
class LogSoftmax(Op):
    needs_x = False  # the rule reads only the input's shape and dtype
    attr_names = ("axis",)
    __slots__ = attr_names
    needs_y = True

    def __init__(self, axis=1):
        self._seq = 0
        self.axis = _axis(axis)

    def forward(self, x):
        m = x.max(axis=self.axis, keepdims=True)
        y = x - m
        s = np.exp(y).sum(axis=self.axis, keepdims=True)
        return x - (np.log(s) + m)

    def vjp(self, gy, xs, y):
        """d log_softmax(x) = gy - exp(y) * sum(gy)"""
        return (gy - xp.exp(y) * xp.sum(gy, axis=self.axis, keepdims=True),)
