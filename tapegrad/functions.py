"""The functions of DeZero's ``functions.py`` (same names, arguments and results), plus NumPy-style
additions. Import as ``import tapegrad.functions as F``.

Each function records under its own op name (``F.tanh`` -> "tanh"). Those DeZero composes from
others (sigmoid_cross_entropy, binary_cross_entropy, expand_dims, flatten, embed_id) record as
their parts; ``accuracy`` is not differentiable and, as in DeZero, is not recorded.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .config import Config
from .core import Variable, _scalar_array, as_array, as_variable
from .ops.compare import Greater, GreaterEqual, Less, LessEqual
from .ops.elementwise import (
    Abs,
    Add,
    Clip,
    Cos,
    Div,
    Dropout,
    Exp,
    LeakyReLU,
    Log,
    Maximum,
    Minimum,
    Mul,
    Neg,
    Pow,
    ReLU,
    Sigmoid,
    Sin,
    Sqrt,
    Square,
    Sub,
    Tanh,
    Where,
)
from .ops.linalg import Linear, MatMul
from .ops.nn import BatchNorm, MeanSquaredError, SoftmaxCrossEntropy
from .ops.reduce import LogSoftmax, LogSumExp, Max, Mean, Min, Softmax, Sum, SumTo
from .ops.shape import BroadcastTo, Concatenate, GetItem, Reshape, Stack, Transpose

ArrayLike = Any

# -- elementwise math ---------------------------------------------------------------------------


def sin(x: ArrayLike) -> Variable:
    return Sin()(x)


def cos(x: ArrayLike) -> Variable:
    return Cos()(x)


def tanh(x: ArrayLike) -> Variable:
    return Tanh()(x)


def exp(x: ArrayLike) -> Variable:
    return Exp()(x)


def log(x: ArrayLike) -> Variable:
    return Log()(x)


def sqrt(x: ArrayLike) -> Variable:
    return Sqrt()(x)


def abs(x: ArrayLike) -> Variable:
    return Abs()(x)


def square(x: ArrayLike) -> Variable:
    return Square()(x)


def add(x0: ArrayLike, x1: ArrayLike) -> Variable:
    return Add()(x0, x1)


def sub(x0: ArrayLike, x1: ArrayLike) -> Variable:
    return Sub()(x0, x1)


def mul(x0: ArrayLike, x1: ArrayLike) -> Variable:
    return Mul()(x0, x1)


def div(x0: ArrayLike, x1: ArrayLike) -> Variable:
    return Div()(x0, x1)


def neg(x: ArrayLike) -> Variable:
    return Neg()(x)


def pow(x: ArrayLike, c: float) -> Variable:
    return Pow(c)(x)


def maximum(x0: ArrayLike, x1: ArrayLike) -> Variable:
    return Maximum()(x0, x1)


def minimum(x0: ArrayLike, x1: ArrayLike) -> Variable:
    return Minimum()(x0, x1)


def where(condition: ArrayLike, x0: ArrayLike, x1: ArrayLike) -> Variable:
    cond = condition.data if isinstance(condition, Variable) else np.asarray(condition, dtype=bool)
    # A Python number takes the dtype of the other branch (the boolean condition must not be the
    # reference dtype: where(c, x32, 0.0) stays float32).
    ref = [v.dtype for v in (x0, x1) if isinstance(v, (Variable, np.ndarray))]
    if ref:
        x0, x1 = (_scalar_array(v, ref[0]) if _is_number(v) else v for v in (x0, x1))
    return Where()(cond.astype(bool, copy=False), x0, x1)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def clip(x: ArrayLike, x_min: float, x_max: float) -> Variable:
    return Clip(x_min, x_max)(x)


# -- comparisons (boolean, no gradient) -------------------------------------------------------


def less(x0: ArrayLike, x1: ArrayLike) -> Variable:
    return Less()(x0, x1)


def less_equal(x0: ArrayLike, x1: ArrayLike) -> Variable:
    return LessEqual()(x0, x1)


def greater(x0: ArrayLike, x1: ArrayLike) -> Variable:
    return Greater()(x0, x1)


def greater_equal(x0: ArrayLike, x1: ArrayLike) -> Variable:
    return GreaterEqual()(x0, x1)


# -- shapes ---------------------------------------------------------------------------------------


def reshape(x: ArrayLike, shape: Sequence[int]) -> Variable:
    shape = tuple(shape)
    if x.shape == shape:
        return as_variable(x)
    return Reshape(shape)(x)


def expand_dims(x: ArrayLike, axis: int) -> Variable:
    x = as_variable(x)
    shape = list(x.shape)
    shape.insert(axis, 1)
    return reshape(x, tuple(shape))


def flatten(x: ArrayLike) -> Variable:
    """Flattens the input. Does not affect the batch size."""
    return reshape(x, (x.shape[0], -1))


def transpose(x: ArrayLike, axes: Sequence[int] | None = None) -> Variable:
    return Transpose(axes)(x)


def broadcast_to(x: ArrayLike, shape: Sequence[int]) -> Variable:
    shape = tuple(shape)
    if x.shape == shape:
        return as_variable(x)
    return BroadcastTo(shape)(x)


def sum_to(x: ArrayLike, shape: Sequence[int]) -> Variable:
    shape = tuple(shape)
    if x.shape == shape:
        return as_variable(x)
    return SumTo(shape)(x)


def get_item(x: ArrayLike, slices: Any) -> Variable:
    return GetItem.of(x, slices)


def concatenate(xs: Sequence[ArrayLike], axis: int = 0) -> Variable:
    return Concatenate(axis)(*xs)


def stack(xs: Sequence[ArrayLike], axis: int = 0) -> Variable:
    return Stack(axis)(*xs)


# -- reductions ---------------------------------------------------------------------------------


def sum(x: ArrayLike, axis: Any = None, keepdims: bool = False) -> Variable:
    return Sum(axis, keepdims)(x)


def average(x: ArrayLike, axis: Any = None, keepdims: bool = False) -> Variable:
    return Mean(axis, keepdims)(x)


mean = average


def max(x: ArrayLike, axis: Any = None, keepdims: bool = False) -> Variable:
    return Max(axis, keepdims)(x)


def min(x: ArrayLike, axis: Any = None, keepdims: bool = False) -> Variable:
    return Min(axis, keepdims)(x)


def logsumexp(x: ArrayLike, axis: Any = None, keepdims: bool = False) -> Variable:
    return LogSumExp(axis, keepdims)(x)


# -- linear algebra -------------------------------------------------------------------------------


def matmul(x: ArrayLike, W: ArrayLike) -> Variable:
    return MatMul()(x, W)


def linear(x: ArrayLike, W: ArrayLike, b: ArrayLike | None = None) -> Variable:
    if b is None or (isinstance(b, Variable) and b.data is None):
        return Linear()(x, W)
    return Linear()(x, W, b)


# -- activations ------------------------------------------------------------------------------------


def sigmoid(x: ArrayLike) -> Variable:
    return Sigmoid()(x)


def relu(x: ArrayLike) -> Variable:
    return ReLU()(x)


def leaky_relu(x: ArrayLike, slope: float = 0.2) -> Variable:
    return LeakyReLU(slope)(x)


def softmax(x: ArrayLike, axis: int = 1) -> Variable:
    return Softmax(axis)(x)


def log_softmax(x: ArrayLike, axis: int = 1) -> Variable:
    return LogSoftmax(axis)(x)


# -- losses ------------------------------------------------------------------------------------------


def mean_squared_error(x0: ArrayLike, x1: ArrayLike) -> Variable:
    return MeanSquaredError()(x0, x1)


def softmax_cross_entropy(x: ArrayLike, t: ArrayLike) -> Variable:
    t = t.data if isinstance(t, Variable) else np.asarray(t)
    return SoftmaxCrossEntropy()(x, t)


def sigmoid_cross_entropy(x: ArrayLike, t: ArrayLike) -> Variable:
    if x.ndim != t.ndim:
        t = t.reshape(*x.shape)
    x, t = as_variable(x), _labels(t, x.dtype)
    N = len(x)
    p = sigmoid(x)
    p = clip(p, 1e-15, 1.0)
    tlog_p = t * log(p) + (1 - t) * log(1 - p)
    return -1 * sum(tlog_p) / N


def binary_cross_entropy(p: ArrayLike, t: ArrayLike) -> Variable:
    if p.ndim != t.ndim:
        t = t.reshape(*p.shape)
    t = _labels(t, p.dtype)
    N = len(t)
    p = clip(p, 1e-15, 0.999)
    tlog_p = t * log(p) + (1 - t) * log(1 - p)
    return -1 * sum(tlog_p) / N


def _labels(t: ArrayLike, dtype: np.dtype) -> ArrayLike:
    """Targets given as an array are constants (not tape inputs, no gradient); integer or boolean
    labels take the floating dtype of the prediction, so float32 stays float32 (0 and 1 are exact,
    so float64 results are unchanged). A Variable ``t`` is left alone, as in DeZero."""
    if isinstance(t, Variable):
        return t
    t = np.asarray(t)
    if t.dtype.kind in "biu" and dtype.kind == "f":
        t = t.astype(dtype)
    return t


def accuracy(y: ArrayLike, t: ArrayLike) -> Variable:
    """The fraction of rows whose argmax equals t. Not differentiable, not recorded."""
    y, t = as_variable(y), as_variable(t)
    pred = y.data.argmax(axis=1).reshape(t.shape)
    return Variable(as_array((pred == t.data).mean()))


# -- layers ------------------------------------------------------------------------------------------


def embed_id(x: ArrayLike, W: ArrayLike) -> Variable:
    return get_item(W, x)


def dropout(x: ArrayLike, dropout_ratio: float = 0.5) -> Variable:
    """In training, zero each element with probability ``dropout_ratio`` and scale the rest.

    The mask is drawn as DeZero draws it (``np.random.rand(*x.shape) > ratio``) and recorded as a
    constant input, so replaying the tape reuses it.
    """
    x = as_variable(x)
    if not Config.train:
        return x
    mask = np.random.rand(*x.shape) > dropout_ratio
    return Dropout(dropout_ratio)(x, mask)


def batch_norm(
    x: ArrayLike,
    gamma: ArrayLike,
    beta: ArrayLike,
    mean: np.ndarray,
    var: np.ndarray,
    decay: float = 0.9,
    eps: float = 2e-5,
) -> Variable:
    """Batch normalization; in training, also updates ``mean`` and ``var`` in place (as DeZero)."""
    train = bool(Config.train)
    mean_v = mean.data if isinstance(mean, Variable) else mean
    var_v = var.data if isinstance(var, Variable) else var
    y = BatchNorm(eps, train)(x, gamma, beta, mean_v, var_v)
    if train:
        xd = x.data if isinstance(x, Variable) else np.asarray(x)
        if xd.ndim == 4:
            xd = xd.transpose(0, 2, 3, 1).reshape(-1, xd.shape[1])
        m = xd.size // np.size(gamma.data if isinstance(gamma, Variable) else gamma)
        s = m - 1.0 if m - 1.0 > 1.0 else 1.0
        mean_v *= decay
        mean_v += (1 - decay) * xd.mean(axis=0)
        var_v *= decay
        var_v += (1 - decay) * (m / s) * xd.var(axis=0)
    return y


batch_nrom = batch_norm  # DeZero's spelling
