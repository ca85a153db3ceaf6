"""Comparisons and branch guards: recorded, boolean, without gradient.

A guard records ``bool(v)`` (an ``if`` on a value). Replaying a tape at new inputs re-evaluates the
guards; a different result means the script would have taken another path.
"""

from __future__ import annotations

import numpy as np

from ..registry import register_op
from .base import Op


class _Compare(Op):
    __slots__ = ()

    def vjp(self, gy, xs, y):
        """not differentiable"""
        return (None,) * len(xs)


@register_op("less")
class Less(_Compare):
    __slots__ = ()

    def forward(self, x0, x1):
        return np.less(x0, x1)


@register_op("less_equal")
class LessEqual(_Compare):
    __slots__ = ()

    def forward(self, x0, x1):
        return np.less_equal(x0, x1)


@register_op("greater")
class Greater(_Compare):
    __slots__ = ()

    def forward(self, x0, x1):
        return np.greater(x0, x1)


@register_op("greater_equal")
class GreaterEqual(_Compare):
    __slots__ = ()

    def forward(self, x0, x1):
        return np.greater_equal(x0, x1)


@register_op("guard")
class Guard(_Compare):
    __slots__ = ()

    def forward(self, x):
        if x.size != 1:
            raise ValueError(
                f"the truth value of a Variable with {x.size} elements is ambiguous; "
                f"use a one-element Variable"
            )
        return np.asarray(bool(x))
