"""Elementwise ops: arithmetic, unary math, activations, masks.

Binary ops broadcast like NumPy; their rules sum each gradient back to its input's shape.
Masks in rules (relu, clip, ...) are taken from the input *values*, so with create_graph they are
constants of the backward graph, as in DeZero.

Arrays of ``parallel.BIG`` elements or more take a second path, in the forwards and in the rules
on raw arrays: the same arithmetic through ``parallel.ew`` (split across threads, the same numbers
bit for bit), with the rule's temporaries reused instead of allocated anew.
"""

from __future__ import annotations

import numpy as np

from .. import parallel as par
from ..registry import register_op
from .base import Op, value, xp

ew = par.ew


def _big(a) -> bool:
    """Whether rule input ``a`` takes the threaded path: a raw array (not a Variable, not one of
    the NumPy scalars that 0-d arithmetic gives) of ``parallel.BIG`` elements or more."""
    return a.__class__ is np.ndarray and a.size >= par.BIG


def _to_shapes(gx0, gx1, xs):
    """Sum each gradient of a broadcasting binary op back to its input's shape."""
    x0, x1 = xs
    if gx0.shape != x0.shape:
        gx0 = xp.sum_to(gx0, x0.shape)
    if gx1.shape != x1.shape:
        gx1 = xp.sum_to(gx1, x1.shape)
    return gx0, gx1


class Elementwise(Op):
    """An elementwise op: its forward always returns a new array."""

    __slots__ = ()
    fresh = True


@register_op("add")
class Add(Elementwise):
    needs_x = False  # the rule reads only the input's shape and dtype
    __slots__ = ()
    scalar_forward = True

    def forward(self, x0, x1):
        if x0.size >= par.BIG or x1.size >= par.BIG:
            return ew(np.add, x0, x1)
        return x0 + x1

    def vjp(self, gy, xs, y):
        """d(x0 + x1) = (gy, gy)"""
        return _to_shapes(gy, gy, xs)


@register_op("sub")
class Sub(Elementwise):
    needs_x = False  # the rule reads only the input's shape and dtype
    __slots__ = ()
    scalar_forward = True

    def forward(self, x0, x1):
        if x0.size >= par.BIG or x1.size >= par.BIG:
            return ew(np.subtract, x0, x1)
        return x0 - x1

    def vjp(self, gy, xs, y):
        """d(x0 - x1) = (gy, -gy)"""
        return _to_shapes(gy, ew(np.negative, gy) if _big(gy) else -gy, xs)


@register_op("mul")
class Mul(Elementwise):
    __slots__ = ()
    scalar_forward = True
    scalar_rule = True

    def forward(self, x0, x1):
        if x0.size >= par.BIG or x1.size >= par.BIG:
            return ew(np.multiply, x0, x1)
        return x0 * x1

    def vjp(self, gy, xs, y):
        """d(x0 * x1) = (gy * x1, gy * x0)"""
        x0, x1 = xs
        if _big(gy):
            return _to_shapes(ew(np.multiply, gy, x1), ew(np.multiply, gy, x0), xs)
        return _to_shapes(gy * x1, gy * x0, xs)


@register_op("div")
class Div(Elementwise):
    __slots__ = ()
    scalar_forward = True

    def forward(self, x0, x1):
        if x0.size >= par.BIG or x1.size >= par.BIG:
            return ew(np.true_divide, x0, x1)
        return x0 / x1

    def vjp(self, gy, xs, y):
        """d(x0 / x1) = (gy / x1, -gy * x0 / x1**2)"""
        x0, x1 = xs
        if _big(gy):
            t = ew(np.square, x1)  # x1**2 is np.square(x1) in NumPy
            t = ew(np.true_divide, ew(np.negative, x0), t, into=t)
            return _to_shapes(ew(np.true_divide, gy, x1), ew(np.multiply, gy, t, into=t), xs)
        return _to_shapes(gy / x1, gy * (-x0 / x1**2), xs)


@register_op("neg")
class Neg(Elementwise):
    needs_x = False  # the rule reads only the input's shape and dtype
    __slots__ = ()
    scalar_forward = True

    def forward(self, x):
        return ew(np.negative, x) if x.size >= par.BIG else -x

    def vjp(self, gy, xs, y):
        """d(-x) = -gy"""
        return (ew(np.negative, gy) if _big(gy) else -gy,)


@register_op("pow")
class Pow(Elementwise):
    attr_names = ("c",)
    __slots__ = attr_names

    def __init__(self, c):
        self._seq = 0
        self.c = c

    def forward(self, x):
        if x.size >= par.BIG:
            return _power(x, self.c)
        return x**self.c

    def vjp(self, gy, xs, y):
        """d(x**c) = c * x**(c-1) * gy"""
        (x,) = xs
        c = self.c
        if _big(gy) and _big(x):
            # x ** 1 is an exact copy of x: for x ** 2 (the usual case) skip making it
            t = ew(
                np.multiply, c, x if c - 1 == 1 and type(c) in (int, float) else _power(x, c - 1)
            )
            return (ew(np.multiply, t, gy, into=t),)
        return (c * x ** (c - 1) * gy,)


# What ``x ** c`` computes in NumPy for an inexact array and these exponents (its fast paths)
_POWER_FAST = {1: np.positive, 2: np.square, 0.5: np.sqrt, -1: np.reciprocal}


def _power(x: np.ndarray, c) -> np.ndarray:
    """``x ** c`` on a big array: for a real float array and a Python int or float exponent,
    NumPy's own shortcut ufunc for the exponents it special-cases, else np.power, through ``ew``;
    anything else (NumPy scalar exponents, which may promote, integer or complex arrays) as is."""
    if x.dtype.kind == "f" and type(c) in (int, float):
        return ew(_POWER_FAST.get(c, np.power), x, *(() if c in _POWER_FAST else (c,)))
    return x**c


@register_op("square")
class Square(Elementwise):
    __slots__ = ()
    scalar_forward = True
    scalar_rule = True

    def forward(self, x):
        return ew(np.square, x) if x.size >= par.BIG else np.square(x)  # x**2's own path

    def vjp(self, gy, xs, y):
        """d(x**2) = 2 * x * gy"""
        if _big(gy):
            t = ew(np.multiply, 2, xs[0])
            return (ew(np.multiply, t, gy, into=t),)
        return (2 * xs[0] * gy,)


@register_op("sqrt")
class Sqrt(Elementwise):
    needs_x = False  # the rule reads only the input's shape and dtype
    __slots__ = ()
    scalar_forward = True
    scalar_rule = True

    needs_y = True

    def forward(self, x):
        return ew(np.sqrt, x) if x.size >= par.BIG else np.sqrt(x)

    def vjp(self, gy, xs, y):
        """d sqrt(x) = gy / (2 * y)"""
        if _big(gy):
            t = ew(np.multiply, 2, y)
            return (ew(np.true_divide, gy, t, into=t),)
        return (gy / (2 * y),)


@register_op("exp")
class Exp(Elementwise):
    needs_x = False  # the rule reads only the input's shape and dtype
    __slots__ = ()
    scalar_forward = True
    scalar_rule = True

    needs_y = True

    def forward(self, x):
        return ew(np.exp, x) if x.size >= par.BIG else np.exp(x)

    def vjp(self, gy, xs, y):
        """d exp(x) = gy * y"""
        return (ew(np.multiply, gy, y) if _big(gy) else gy * y,)


@register_op("log")
class Log(Elementwise):
    __slots__ = ()
    scalar_forward = True
    scalar_rule = True

    def forward(self, x):
        return ew(np.log, x) if x.size >= par.BIG else np.log(x)

    def vjp(self, gy, xs, y):
        """d log(x) = gy / x"""
        return (ew(np.true_divide, gy, xs[0]) if _big(gy) else gy / xs[0],)


@register_op("sin")
class Sin(Elementwise):
    __slots__ = ()
    scalar_forward = True
    scalar_rule = True

    def forward(self, x):
        return ew(np.sin, x) if x.size >= par.BIG else np.sin(x)

    def vjp(self, gy, xs, y):
        """d sin(x) = gy * cos(x)"""
        if _big(gy) and _big(xs[0]):
            t = ew(np.cos, xs[0])
            return (ew(np.multiply, gy, t, into=t),)
        return (gy * xp.cos(xs[0]),)


@register_op("cos")
class Cos(Elementwise):
    __slots__ = ()
    scalar_forward = True
    scalar_rule = True

    def forward(self, x):
        return ew(np.cos, x) if x.size >= par.BIG else np.cos(x)

    def vjp(self, gy, xs, y):
        """d cos(x) = -gy * sin(x)"""
        if _big(gy) and _big(xs[0]):
            t = ew(np.sin, xs[0])
            t = ew(np.negative, t, into=t)
            return (ew(np.multiply, gy, t, into=t),)
        return (gy * -xp.sin(xs[0]),)


@register_op("tanh")
class Tanh(Elementwise):
    needs_x = False  # the rule reads only the input's shape and dtype
    __slots__ = ()
    scalar_forward = True
    scalar_rule = True

    needs_y = True

    def forward(self, x):
        return ew(np.tanh, x) if x.size >= par.BIG else np.tanh(x)

    def vjp(self, gy, xs, y):
        """d tanh(x) = gy * (1 - y**2)"""
        if _big(gy):
            t = ew(np.multiply, y, y)
            t = ew(np.subtract, 1, t, into=t)
            return (ew(np.multiply, gy, t, into=t),)
        return (gy * (1 - y * y),)


@register_op("abs")
class Abs(Elementwise):
    __slots__ = ()
    scalar_forward = True

    def forward(self, x):
        return ew(np.absolute, x) if x.size >= par.BIG else np.abs(x)

    def vjp(self, gy, xs, y):
        """d |x| = gy * sign(x)  (0 at 0)"""
        x = value(xs[0])
        if _big(gy) and _big(x):
            t = ew(np.sign, x)
            return (ew(np.multiply, gy, t, into=t),)
        return (gy * np.sign(x),)


@register_op("sigmoid")
class Sigmoid(Elementwise):
    needs_x = False  # the rule reads only the input's shape and dtype
    __slots__ = ()
    scalar_forward = True
    scalar_rule = True

    needs_y = True

    def forward(self, x):
        if x.size >= par.BIG:  # the same three steps, the temporary reused
            t = ew(np.multiply, x, 0.5)
            t = ew(np.tanh, t, into=t)
            t = ew(np.multiply, t, 0.5, into=t)
            return ew(np.add, t, 0.5, into=t)
        return np.tanh(x * 0.5) * 0.5 + 0.5  # DeZero's form: stable for large |x|

    def vjp(self, gy, xs, y):
        """d sigmoid(x) = gy * y * (1 - y)"""
        if _big(gy):
            t = ew(np.multiply, gy, y)
            return (ew(np.multiply, t, ew(np.subtract, 1, y), into=t),)
        return (gy * y * (1 - y),)


@register_op("relu")
class ReLU(Elementwise):
    __slots__ = ()
    scalar_forward = True

    def forward(self, x):
        return ew(np.maximum, x, 0.0) if x.size >= par.BIG else np.maximum(x, 0.0)

    def vjp(self, gy, xs, y):
        """d relu(x) = gy * (x > 0)"""
        if _big(gy):
            return (ew(np.multiply, gy, ew(np.greater, xs[0], 0)),)
        return (gy * (value(xs[0]) > 0),)


@register_op("leaky_relu")
class LeakyReLU(Elementwise):
    attr_names = ("slope",)
    __slots__ = attr_names

    def __init__(self, slope=0.2):
        self._seq = 0
        self.slope = slope

    def forward(self, x):
        y = x.copy()
        y[x <= 0] *= self.slope
        return y

    def vjp(self, gy, xs, y):
        """d leaky_relu(x) = gy * (1 if x > 0 else slope)"""
        x = value(xs[0])
        mask = (x > 0).astype(x.dtype)
        mask[mask <= 0] = self.slope
        return (gy * mask,)


@register_op("clip")
class Clip(Elementwise):
    attr_names = ("x_min", "x_max")
    __slots__ = attr_names

    def __init__(self, x_min, x_max):
        self._seq = 0
        self.x_min = x_min
        self.x_max = x_max

    def forward(self, x):
        return np.clip(x, self.x_min, self.x_max)

    def vjp(self, gy, xs, y):
        """d clip(x) = gy where x_min <= x <= x_max, else 0"""
        x = value(xs[0])
        return (gy * ((x >= self.x_min) & (x <= self.x_max)),)


def _tie_split(x0, x1, dtype):
    """Weights of x0 in max(x0, x1): 1 where larger, 1/2 on ties (as JAX and PyTorch)."""
    return (x0 > x1).astype(dtype) + (x0 == x1).astype(dtype) * 0.5


@register_op("maximum")
class Maximum(Elementwise):
    __slots__ = ()
    scalar_forward = True

    def forward(self, x0, x1):
        if x0.size >= par.BIG or x1.size >= par.BIG:
            return ew(np.maximum, x0, x1)
        return np.maximum(x0, x1)

    def vjp(self, gy, xs, y):
        """d max(x0, x1): gy to the larger input, split evenly on ties"""
        x0, x1 = value(xs[0]), value(xs[1])
        w = _tie_split(x0, x1, value(gy).dtype)
        return _to_shapes(gy * w, gy * (1 - w), xs)


@register_op("minimum")
class Minimum(Elementwise):
    __slots__ = ()
    scalar_forward = True

    def forward(self, x0, x1):
        if x0.size >= par.BIG or x1.size >= par.BIG:
            return ew(np.minimum, x0, x1)
        return np.minimum(x0, x1)

    def vjp(self, gy, xs, y):
        """d min(x0, x1): gy to the smaller input, split evenly on ties"""
        x0, x1 = value(xs[0]), value(xs[1])
        w = _tie_split(x1, x0, value(gy).dtype)
        return _to_shapes(gy * w, gy * (1 - w), xs)


@register_op("where")
class Where(Elementwise):
    __slots__ = ()

    def forward(self, cond, x0, x1):
        return np.where(cond, x0, x1)

    def vjp(self, gy, xs, y):
        """d where(c, x0, x1) = (None, gy where c, gy where not c)"""
        cond = value(xs[0])
        zero = np.zeros((), value(gy).dtype)
        g0 = xp.sum_to(xp.where(cond, gy, zero), xs[1].shape)
        g1 = xp.sum_to(xp.where(cond, zero, gy), xs[2].shape)
        return None, g0, g1


@register_op("dropout")
class Dropout(Elementwise):
    """y = x * mask / (1 - ratio); the mask is an input so a replay reuses the recorded draw."""

    needs_x = False  # the rule reads only the input's shape and dtype
    attr_names = ("ratio",)
    __slots__ = attr_names

    def __init__(self, ratio=0.5):
        self._seq = 0
        self.ratio = ratio

    def forward(self, x, mask):
        scale = np.array(1.0 - self.ratio).astype(x.dtype)
        return x * mask / scale

    def vjp(self, gy, xs, y):
        """d dropout(x) = gy * mask / (1 - ratio)"""
        x, mask = xs
        scale = np.array(1.0 - self.ratio).astype(value(x).dtype)
        return gy * value(mask) / scale, None
