"""Losses and layers with fused rules: mean_squared_error, softmax_cross_entropy, batch_norm.

Forwards reproduce DeZero's arithmetic (same values); the targets ``t`` and the batch-norm running
statistics are constant inputs, recorded on the tape with the rest.
"""

from __future__ import annotations

import numpy as np

from ..core import Variable
from ..registry import _OPS, register_op
from .base import Op, value, xp


@register_op("mean_squared_error")
class MeanSquaredError(Op):
    __slots__ = ()
    fresh = True  # losses are new 0-d arrays

    def forward(self, x0, x1):
        diff = x0 - x1
        return (diff**2).sum() / len(diff)

    uses_need = True

    def vjp(self, gy, xs, y, need=(True, True)):
        """d mse = (gy * diff * 2/N, -gy * diff * 2/N)"""
        x0, x1 = xs
        diff = x0 - x1
        if diff.__class__ is np.ndarray and gy.__class__ is not Variable:
            gx0 = gy * diff * (2.0 / len(diff))  # a 0-d gy broadcasts as broadcast_to would
        else:
            gx0 = xp.broadcast_to(gy, diff.shape) * diff * (2.0 / len(diff))
        gx1 = xp.sum_to(-gx0, x1.shape) if need[1] else None  # a target t needs none
        return (xp.sum_to(gx0, x0.shape) if need[0] else None), gx1


def _log_softmax_rows(x):
    m = x.max(axis=1, keepdims=True)
    s = np.exp(x - m).sum(axis=1, keepdims=True)
    return x - (np.log(s) + m)


@register_op("softmax_cross_entropy")
class SoftmaxCrossEntropy(Op):
    """Mean over the batch of -log softmax(x)[i, t[i]]; t holds class indices."""

    __slots__ = ()
    fresh = True

    def forward(self, x, t):
        n = x.shape[0]
        log_p = _log_softmax_rows(x)[np.arange(n), t.ravel()]
        return -log_p.sum() / np.float32(n)

    def vjp(self, gy, xs, y):
        """d sce = gy * (softmax(x) - onehot(t)) / N"""
        x, t = xs
        n, k = x.shape
        t = value(t)
        onehot = np.eye(k, dtype=value(x).dtype)[t.ravel()]
        if isinstance(x, np.ndarray):
            p = np.exp(_log_softmax_rows(x))
        else:
            p = _softmax_rows(x)
        return (p - onehot) * (gy * (1.0 / n)), None


def _softmax_rows(x):
    return _OPS["softmax"](1)(x)


def _to_2d(x):
    """(N, C, H, W) -> (N*H*W, C), as DeZero's batch norm sees images."""
    if x.ndim == 4:
        c = x.shape[1]
        return xp.reshape(xp.transpose(x, (0, 2, 3, 1)), (-1, c))
    return x


def _from_2d(y, shape):
    if len(shape) == 4:
        n, c, h, w = shape
        return xp.transpose(xp.reshape(y, (n, h, w, c)), (0, 3, 1, 2))
    return y


@register_op("batch_norm")
class BatchNorm(Op):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta over the batch (train) or running stats.

    Inputs: x, gamma, beta, running mean, running var. In training the batch's own statistics
    are used; the running ones are updated by ``F.batch_norm``, not here, so a replay changes
    nothing outside the tape.
    """

    attr_names = ("eps", "train")
    __slots__ = attr_names

    def __init__(self, eps=2e-5, train=True):
        self._seq = 0
        self.eps = float(eps)
        self.train = bool(train)

    def _stats(self, x2, mean, var):
        if self.train:
            mean, var = x2.mean(axis=0), x2.var(axis=0)
        return mean, 1 / np.sqrt(var + self.eps)

    def forward(self, x, gamma, beta, mean, var):
        if x.ndim not in (2, 4):
            raise ValueError(f"batch_norm takes 2-D or 4-D input, got {x.ndim}-D")
        x2 = _to_2d(x)
        mu, inv_std = self._stats(x2, mean, var)
        y = gamma * ((x2 - mu) * inv_std) + beta
        return _from_2d(y, x.shape)

    def vjp(self, gy, xs, y):
        """DeZero's rule: gx = (gy - mean(gy) - xc * mean(xc * gy)) * gamma * inv_std"""
        x, gamma = xs[0], xs[1]
        mean, var = value(xs[3]), value(xs[4])
        gy2, x2 = _to_2d(gy), _to_2d(x)
        n = gy2.shape[0]
        if self.train and isinstance(x2, Variable):
            # create_graph: the batch statistics are functions of x too, or the second
            # derivative would be wrong (DeZero treats them as constants here)
            xc = x2 - xp.sum(x2, axis=0) * (1.0 / n)
            inv_std = (xp.sum(xc * xc, axis=0) * (1.0 / n) + self.eps) ** -0.5
            xc = xc * inv_std
        else:
            mu, inv_std = self._stats(_to_2d(value(x)), mean, var)
            xc = (x2 - mu) * inv_std
        gbeta = xp.sum(gy2, axis=0)
        ggamma = xp.sum(xc * gy2, axis=0)
        if self.train:
            gx = (gy2 - gbeta / n - xc * ggamma / n) * (gamma * inv_std)
        else:
            gx = gy2 * (gamma * inv_std)
        return _from_2d(gx, x.shape), ggamma, gbeta, None, None
