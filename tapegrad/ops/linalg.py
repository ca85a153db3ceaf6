"""Matrix products: matmul (also ``@``) and linear (x @ W + b)."""

from __future__ import annotations

import numpy as np

from .._pool import pool
from ..registry import register_op
from .base import Op, sum_to, xp


def _matmul_vjp(gy, a, b):
    """Gradients of a @ b, with NumPy's promotion of 1-D operands and broadcast batch dims."""
    if a.ndim == 1 and b.ndim == 1:
        return gy * b, gy * a
    if a.ndim == 1:  # (n,) @ (..., n, m): a acts as (1, n), y loses that axis
        a2, g2 = xp.reshape(a, (1,) + a.shape), xp.reshape(gy, gy.shape[:-1] + (1, gy.shape[-1]))
        b2 = b
    elif b.ndim == 1:  # (..., k, n) @ (n,): b acts as (n, 1)
        a2, b2, g2 = a, xp.reshape(b, b.shape + (1,)), xp.reshape(gy, gy.shape + (1,))
    else:
        a2, b2, g2 = a, b, gy
    ga = xp.sum_to(xp.matmul(g2, xp.swap_last(b2)), a2.shape)
    gb = xp.sum_to(xp.matmul(xp.swap_last(a2), g2), b2.shape)
    return xp.reshape(ga, a.shape), xp.reshape(gb, b.shape)


@register_op("matmul")
class MatMul(Op):
    __slots__ = ()
    fresh = True  # a product is always a new array

    def forward(self, a, b):
        return pool.product(np.matmul, a, b)

    uses_need = True

    def vjp(self, gy, xs, y, need=(True, True)):
        """d (a @ b) = (gy @ b.T, a.T @ gy)"""
        a, b = xs
        if a.__class__ is np.ndarray and gy.__class__ is np.ndarray and a.ndim == b.ndim == 2:
            # a first-order backward of a product of matrices: the two products, directly
            ga = pool.product(np.matmul, gy, b.T) if need[0] else None
            return ga, (pool.product(np.matmul, a.T, gy) if need[1] else None)
        if (need[0] and need[1]) or a.ndim < 2 or b.ndim < 2:
            ga, gb = _matmul_vjp(gy, a, b)
        else:  # one side is data (a constant): compute only the other side's product
            ga = xp.sum_to(xp.matmul(gy, xp.swap_last(b)), a.shape) if need[0] else None
            gb = xp.sum_to(xp.matmul(xp.swap_last(a), gy), b.shape) if need[1] else None
        return (ga if need[0] else None), (gb if need[1] else None)


@register_op("linear")
class Linear(Op):
    """y = x @ W (+ b); two or three inputs."""

    __slots__ = ()
    fresh = True

    def forward(self, x, W, b=None):
        y = pool.product(np.dot, x, W)  # x.dot(W), as DeZero
        if b is not None:
            y += b
        return y

    uses_need = True

    def vjp(self, gy, xs, y, need=(True, True, True)):
        """d (x @ W + b) = (gy @ W.T, x.T @ gy, sum_to(gy, b.shape))"""
        x, W = xs[0], xs[1]
        if x.__class__ is np.ndarray and gy.__class__ is np.ndarray and x.ndim == 2:
            # a first-order backward of the usual 2-D layer: the products below, directly
            gx = pool.product(np.matmul, gy, W.T) if need[0] else None
            gW = pool.product(np.matmul, x.T, gy)
            if len(xs) == 2:
                return gx, gW
            return gx, gW, sum_to(gy, xs[2].shape) if xs[2].shape != gy.shape else gy
        gx = xp.matmul(gy, xp.transpose(W)) if need[0] else None  # data x needs no gradient
        # x of any rank (forward allows (..., n) @ (n, m)): gW sums over all leading axes.
        # For the usual 2-D x both reshapes are no-ops (DeZero's arithmetic).
        n, m = W.shape
        gW = xp.matmul(
            xp.transpose(xp.reshape(x, (x.size // n, n))), xp.reshape(gy, (gy.size // m, m))
        )
        if len(xs) == 2:
            return gx, gW
        return gx, gW, xp.sum_to(gy, xs[2].shape)
