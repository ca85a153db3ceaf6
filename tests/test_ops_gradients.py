"""Gradients of every function in ``tapegrad.functions`` and every registered op.

- first order: the vector-Jacobian product in a random output direction against central
  differences in float64 (broadcasting, axes, keepdims, indexing, kinks avoided);
- float32: values and gradients stay float32 and agree with float64 (also with Python scalars);
- second order: ``backward(create_graph=True)`` against differences of the first derivative;
- every registered op (an explicit list, so a rename fails here) has a gradient case, and the live
  ``backward()`` equals the tape's offline ``backward()`` bit for bit.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest
from gradcheck_util import (
    as_vars,
    assert_close,
    forward_value,
    live_hvp,
    live_vjp,
    numerical_hvp,
    numerical_vjp,
)

import tapegrad
import tapegrad.functions as F
from tapegrad import Variable
from tapegrad.core import _out_refs
from tapegrad.registry import _OPS as _OPS_TABLE


@pytest.fixture(autouse=True)
def _restore_numpy_global_rng():
    """The dropout cases re-seed NumPy's global RNG at each evaluation (the same mask every time);
    leave the global state as it was."""
    state = np.random.get_state()
    yield
    np.random.set_state(state)


# -- input makers -----------------------------------------------------------------------------


def normal(r: np.random.Generator, *shape: int) -> np.ndarray:
    return np.asarray(r.normal(size=shape))


def positive(r: np.random.Generator, *shape: int) -> np.ndarray:
    return np.asarray(r.uniform(0.5, 2.0, size=shape))


def away(r: np.random.Generator, *shape: int) -> np.ndarray:
    """Values at least 0.2 away from 0 (the kink of relu, abs, leaky_relu, comparisons)."""
    return np.asarray(r.choice([-1.0, 1.0], size=shape) * r.uniform(0.2, 1.5, size=shape))


def divisor(r: np.random.Generator, *shape: int) -> np.ndarray:
    """Values of either sign, at least 1.2 away from 0."""
    d = away(r, *shape)
    return d + np.sign(d)


def distinct(r: np.random.Generator, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    """Arrays whose values are all different by at least 0.25 (no ties for max/min/maximum)."""
    sizes = [int(np.prod(s)) for s in shapes]
    grid = r.permutation(sum(sizes)) * 0.25 - 0.125 * sum(sizes)
    grid = grid + r.uniform(-0.02, 0.02, size=grid.shape)
    out, start = [], 0
    for s, n in zip(shapes, sizes):
        out.append(grid[start : start + n].reshape(s))
        start += n
    return out


def labels(r: np.random.Generator, n: int, k: int) -> np.ndarray:
    return r.integers(0, k, size=n)


# -- the cases ----------------------------------------------------------------------------------


class Case(NamedTuple):
    func: str  # the tapegrad.functions name (or op) the case is about
    id: str
    fn: Callable[..., Variable]
    make: Callable[[np.random.Generator], tuple]
    wrt: tuple[int, ...] = (0,)


CASES: list[Case] = []


def case(func: str, id: str, fn: Callable, make: Callable, wrt: tuple[int, ...] = (0,)) -> None:
    CASES.append(Case(func, f"{func}-{id}", fn, make, wrt))


# elementwise math
case("sin", "2d", F.sin, lambda r: (normal(r, 3, 4),))
case("cos", "2d", F.cos, lambda r: (normal(r, 3, 4),))
case("tanh", "2d", F.tanh, lambda r: (normal(r, 3, 4),))
case("exp", "2d", F.exp, lambda r: (normal(r, 3, 4),))
case("log", "2d", F.log, lambda r: (positive(r, 3, 4),))
case("sqrt", "2d", F.sqrt, lambda r: (positive(r, 3, 4),))
case("abs", "2d", F.abs, lambda r: (away(r, 3, 4),))
case("square", "2d", F.square, lambda r: (normal(r, 3, 4),))
case("neg", "F", F.neg, lambda r: (normal(r, 3, 4),))
case("neg", "operator", lambda x: -x, lambda r: (normal(r, 2, 3),))
case("pow", "c2", lambda x: F.pow(x, 2), lambda r: (normal(r, 3, 4),))
case("pow", "c3-operator", lambda x: x**3, lambda r: (normal(r, 3, 4),))
case("pow", "c0.5", lambda x: F.pow(x, 0.5), lambda r: (positive(r, 3, 4),))
case("pow", "c-1.5", lambda x: x**-1.5, lambda r: (positive(r, 3, 4),))
case("pow", "c2.5-0d", lambda x: x**2.5, lambda r: (positive(r),))

# binary arithmetic, broadcasting on both sides, scalars and ndarrays on either side
BROADCAST = [
    ((3, 4), (3, 4)),
    ((3, 4), (4,)),
    ((4,), (3, 4)),
    ((3, 1), (1, 4)),
    ((2, 3, 4), (3, 1)),
    ((), (3, 4)),
    ((3, 4), ()),
]
for _name, _f in [("add", F.add), ("sub", F.sub), ("mul", F.mul)]:
    for _s0, _s1 in BROADCAST:
        case(
            _name,
            f"{_s0}x{_s1}",
            _f,
            lambda r, s0=_s0, s1=_s1: (normal(r, *s0), normal(r, *s1)),
            (0, 1),
        )
for _s0, _s1 in BROADCAST:
    case(
        "div",
        f"{_s0}x{_s1}",
        F.div,
        lambda r, s0=_s0, s1=_s1: (normal(r, *s0), divisor(r, *s1)),
        (0, 1),
    )
case("add", "operator", lambda a, b: a + b, lambda r: (normal(r, 3, 4), normal(r, 4)), (0, 1))
case("add", "scalar-right", lambda x: x + 2.5, lambda r: (normal(r, 3, 4),))
case("add", "scalar-left", lambda x: 2.5 + x, lambda r: (normal(r, 3, 4),))
case("add", "ndarray-left", lambda a, x: a + x, lambda r: (normal(r, 3, 4), normal(r, 4)), (1,))
case("sub", "operator", lambda a, b: a - b, lambda r: (normal(r, 3, 1), normal(r, 4)), (0, 1))
case("sub", "scalar-left", lambda x: 2.0 - x, lambda r: (normal(r, 3, 4),))
case("sub", "ndarray-left", lambda a, x: a - x, lambda r: (normal(r, 3, 4), normal(r, 3, 4)), (1,))
case("mul", "operator", lambda a, b: a * b, lambda r: (normal(r, 2, 3), normal(r, 2, 3)), (0, 1))
case("mul", "scalar-left", lambda x: 3.0 * x, lambda r: (normal(r, 3, 4),))
case("mul", "ndarray-right", lambda x, a: x * a, lambda r: (normal(r, 4), normal(r, 3, 4)))
case("mul", "same-var", lambda x: x * x, lambda r: (normal(r, 3, 4),))
case("div", "operator", lambda a, b: a / b, lambda r: (normal(r, 3, 4), positive(r, 4)), (0, 1))
case("div", "int-right", lambda x: x / 3, lambda r: (normal(r, 3, 4),))
case("div", "scalar-left", lambda x: 2.0 / x, lambda r: (positive(r, 3, 4),))
case("div", "ndarray-left", lambda a, x: a / x, lambda r: (normal(r, 3, 4), positive(r, 4)), (1,))


def _max_pair(r, s0, s1):
    return tuple(distinct(r, s0, s1))


for _name, _f in [("maximum", F.maximum), ("minimum", F.minimum)]:
    for _s0, _s1 in [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((), (2, 3))]:
        case(_name, f"{_s0}x{_s1}", _f, lambda r, s0=_s0, s1=_s1: _max_pair(r, s0, s1), (0, 1))
    case(_name, "scalar", lambda x, f=_f: f(x, 0.0), lambda r: (away(r, 3, 4),))

_COND = np.array(
    [[True, False, True, True], [False, False, True, False], [True, True, False, True]]
)
case(
    "where",
    "same-shape",
    lambda a, b: F.where(_COND, a, b),
    lambda r: (normal(r, 3, 4), normal(r, 3, 4)),
    (0, 1),
)
case(
    "where",
    "broadcast",
    lambda a, b: F.where(_COND[:, :1], a, b),
    lambda r: (normal(r, 4), normal(r, 3, 1)),
    (0, 1),
)
case("where", "scalar", lambda a: F.where(_COND, a, 0.0), lambda r: (normal(r, 3, 4),))
case("where", "variable-cond", lambda a: F.where(a > 0, a, 2 * a), lambda r: (away(r, 3, 4),))

# activations
case("sigmoid", "2d", F.sigmoid, lambda r: (3 * normal(r, 3, 4),))
case("relu", "2d", F.relu, lambda r: (away(r, 3, 4),))
case("leaky_relu", "default", F.leaky_relu, lambda r: (away(r, 3, 4),))
case("leaky_relu", "slope0.1", lambda x: F.leaky_relu(x, 0.1), lambda r: (away(r, 2, 5),))
for _name, _f in [("softmax", F.softmax), ("log_softmax", F.log_softmax)]:
    case(_name, "axis1", _f, lambda r: (normal(r, 3, 4),))
    case(_name, "axis0", lambda x, f=_f: f(x, axis=0), lambda r: (normal(r, 3, 4),))
    case(_name, "axis-1-3d", lambda x, f=_f: f(x, axis=-1), lambda r: (normal(r, 2, 3, 4),))
    case(_name, "axis(1,2)", lambda x, f=_f: f(x, axis=(1, 2)), lambda r: (normal(r, 2, 3, 4),))


def _clip_case(r):
    (x,) = distinct(r, (3, 4))
    return (x,)


case("clip", "inside-and-out", lambda x: F.clip(x, -0.6, 0.9), _clip_case)

# shapes
case("reshape", "F", lambda x: F.reshape(x, (4, 3)), lambda r: (normal(r, 3, 4),))
case("reshape", "minus1", lambda x: F.reshape(x, (2, -1)), lambda r: (normal(r, 3, 4),))
case("reshape", "method", lambda x: x.reshape(6, 2), lambda r: (normal(r, 3, 4),))
case("reshape", "method-tuple", lambda x: x.reshape((2, 2, 3)), lambda r: (normal(r, 3, 4),))
case("expand_dims", "axis0", lambda x: F.expand_dims(x, 0), lambda r: (normal(r, 3, 4),))
case("expand_dims", "axis1", lambda x: F.expand_dims(x, 1), lambda r: (normal(r, 3, 4),))
case("expand_dims", "axis2", lambda x: F.expand_dims(x, 2), lambda r: (normal(r, 3, 4),))
case("flatten", "3d", F.flatten, lambda r: (normal(r, 2, 3, 2),))
case("transpose", "none", F.transpose, lambda r: (normal(r, 2, 3, 4),))
case("transpose", "axes", lambda x: F.transpose(x, (1, 0, 2)), lambda r: (normal(r, 2, 3, 4),))
case("transpose", "neg-axes", lambda x: F.transpose(x, (-1, 0, 1)), lambda r: (normal(r, 2, 3, 4),))
case("transpose", "T", lambda x: x.T, lambda r: (normal(r, 3, 4),))
case("transpose", "method", lambda x: x.transpose(2, 0, 1), lambda r: (normal(r, 2, 3, 4),))
case("sum_to", "(3,4)->(1,4)", lambda x: F.sum_to(x, (1, 4)), lambda r: (normal(r, 3, 4),))
case("sum_to", "(2,3,4)->(3,1)", lambda x: F.sum_to(x, (3, 1)), lambda r: (normal(r, 2, 3, 4),))
case("sum_to", "(2,3,4)->(4,)", lambda x: F.sum_to(x, (4,)), lambda r: (normal(r, 2, 3, 4),))
case("sum_to", "->()", lambda x: F.sum_to(x, ()), lambda r: (normal(r, 3, 4),))
case("broadcast_to", "(1,4)", lambda x: F.broadcast_to(x, (3, 4)), lambda r: (normal(r, 1, 4),))
case("broadcast_to", "(4,)", lambda x: F.broadcast_to(x, (2, 3, 4)), lambda r: (normal(r, 4),))
case("broadcast_to", "()", lambda x: F.broadcast_to(x, (2, 3)), lambda r: (normal(r),))
case("broadcast_to", "(3,1)", lambda x: F.broadcast_to(x, (2, 3, 4)), lambda r: (normal(r, 3, 1),))
case(
    "concatenate",
    "axis0",
    lambda a, b: F.concatenate([a, b]),
    lambda r: (normal(r, 2, 3), normal(r, 4, 3)),
    (0, 1),
)
case(
    "concatenate",
    "axis1-three",
    lambda a, b, c: F.concatenate((a, b, c), axis=1),
    lambda r: (normal(r, 2, 3), normal(r, 2, 1), normal(r, 2, 2)),
    (0, 1, 2),
)
case(
    "concatenate",
    "axis-1",
    lambda a, b: F.concatenate([a, b], axis=-1),
    lambda r: (normal(r, 2, 2, 3), normal(r, 2, 2, 2)),
    (0, 1),
)
case(
    "concatenate",
    "ndarray-piece",
    lambda a, c: F.concatenate([a, c], axis=0),
    lambda r: (normal(r, 2, 3), normal(r, 1, 3)),
)
for _axis in (0, 1, -1):
    case(
        "stack",
        f"axis{_axis}",
        lambda a, b, c, ax=_axis: F.stack([a, b, c], axis=ax),
        lambda r: (normal(r, 2, 3), normal(r, 2, 3), normal(r, 2, 3)),
        (0, 1, 2),
    )

# indexing
_IDX = np.array([0, 2, 0, 0, 3])
_MASK = np.array(
    [[True, False, True, False], [False, False, True, True], [True, True, True, False]]
)
GET_ITEMS: list[tuple[str, Any]] = [
    ("int", 1),
    ("neg-int", -1),
    ("slice", slice(1, 3)),
    ("neg-step", slice(None, None, -1)),
    ("tuple-slices", (slice(0, 2), slice(1, None, 2))),
    ("repeated-int-array", _IDX[:3]),
    ("repeated-2-arrays", (np.array([0, 1, 0, 0]), np.array([2, 2, 2, 1]))),
    ("list", [2, 2, 1]),
    ("array-and-slice", (np.array([2, 0, 2]), slice(1, 3))),
    ("None-Ellipsis", (None, Ellipsis, 1)),
    ("Ellipsis-slice", (Ellipsis, slice(1, 3))),
    ("int-None-step", (1, None, slice(None, None, 2))),
    ("bool-mask-full", _MASK),
    ("bool-mask-rows", np.array([True, False, True])),
    ("scalar-element", (1, 2)),
]
for _id, _ix in GET_ITEMS:
    case("get_item", _id, lambda x, ix=_ix: x[ix], lambda r: (normal(r, 3, 4),))
case("get_item", "F", lambda x: F.get_item(x, (_IDX[:4], 1)), lambda r: (normal(r, 4, 3),))
case("get_item", "3d-repeated", lambda x: x[:, [1, 1, 0]], lambda r: (normal(r, 2, 3, 2),))
case(
    "get_item",
    "scalar-then-mul",  # a 0-d gradient arrives as a NumPy scalar
    lambda x: x[0, 1] * 2.0,
    lambda r: (normal(r, 2, 3),),
)
case(
    "embed_id",
    "repeated",
    lambda W: F.embed_id(np.array([[0, 2], [2, 4]]), W),
    lambda r: (normal(r, 5, 3),),
)
case("embed_id", "1d", lambda W: F.embed_id(np.array([1, 1, 1]), W), lambda r: (normal(r, 4, 2),))

# reductions
for _name in ["sum", "average", "mean", "logsumexp"]:
    _f = getattr(F, _name)
    case(_name, "all", _f, lambda r: (normal(r, 3, 4),))
    case(_name, "axis0", lambda x, f=_f: f(x, axis=0), lambda r: (normal(r, 3, 4),))
    case(
        _name,
        "axis1-keep",
        lambda x, f=_f: f(x, axis=1, keepdims=True),
        lambda r: (normal(r, 3, 4),),
    )
    case(_name, "axis-1", lambda x, f=_f: f(x, axis=-1), lambda r: (normal(r, 2, 3, 4),))
    case(_name, "all-keep", lambda x, f=_f: f(x, keepdims=True), lambda r: (normal(r, 2, 3),))
    case(_name, "tuple(0,2)", lambda x, f=_f: f(x, axis=(0, 2)), lambda r: (normal(r, 2, 3, 4),))
    case(
        _name,
        "tuple(0,-1)-keep",
        lambda x, f=_f: f(x, axis=(0, -1), keepdims=True),
        lambda r: (normal(r, 2, 3, 4),),
    )
case("sum", "method", lambda x: x.sum(axis=1), lambda r: (normal(r, 3, 4),))
for _name in ["max", "min"]:
    _f = getattr(F, _name)
    case(_name, "all", _f, lambda r: tuple(distinct(r, (3, 4))))
    case(_name, "axis0", lambda x, f=_f: f(x, axis=0), lambda r: tuple(distinct(r, (3, 4))))
    case(
        _name,
        "axis-1-keep",
        lambda x, f=_f: f(x, axis=-1, keepdims=True),
        lambda r: tuple(distinct(r, (2, 3, 4))),
    )
    case(
        _name,
        "tuple(0,2)",
        lambda x, f=_f: f(x, axis=(0, 2)),
        lambda r: tuple(distinct(r, (2, 3, 4))),
    )

# linear algebra
MATMUL = [
    ((4,), (4,)),
    ((4,), (4, 3)),
    ((2, 4), (4,)),
    ((2, 4), (4, 3)),
    ((2, 3, 4), (2, 4, 5)),
    ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)),
    ((4,), (2, 4, 3)),
    ((2, 3, 4), (4,)),
]
for _s0, _s1 in MATMUL:
    case(
        "matmul",
        f"{_s0}@{_s1}",
        F.matmul,
        lambda r, s0=_s0, s1=_s1: (normal(r, *s0), normal(r, *s1)),
        (0, 1),
    )
case("matmul", "operator", lambda a, b: a @ b, lambda r: (normal(r, 2, 3), normal(r, 3, 2)), (0, 1))
case(
    "matmul", "ndarray-left", lambda a, b: a @ b, lambda r: (normal(r, 2, 3), normal(r, 3, 2)), (1,)
)
case(
    "linear",
    "bias",
    F.linear,
    lambda r: (normal(r, 4, 3), normal(r, 3, 5), normal(r, 5)),
    (0, 1, 2),
)
case(
    "linear",
    "bias-row",
    F.linear,
    lambda r: (normal(r, 4, 3), normal(r, 3, 5), normal(r, 1, 5)),
    (0, 1, 2),
)
case("linear", "no-bias", F.linear, lambda r: (normal(r, 4, 3), normal(r, 3, 5)), (0, 1))
case(
    "linear",
    "batched-3d-x",
    F.linear,
    lambda r: (normal(r, 2, 4, 3), normal(r, 3, 5), normal(r, 5)),
    (0, 1, 2),
)
case("linear", "1d-x", F.linear, lambda r: (normal(r, 3), normal(r, 3, 2), normal(r, 2)), (0, 1, 2))

# losses
case(
    "mean_squared_error",
    "2d",
    F.mean_squared_error,
    lambda r: (normal(r, 4, 3), normal(r, 4, 3)),
    (0, 1),
)
case(
    "mean_squared_error",
    "broadcast",
    F.mean_squared_error,
    lambda r: (normal(r, 4, 3), normal(r, 3)),
    (0, 1),
)
case(
    "mean_squared_error", "1d", F.mean_squared_error, lambda r: (normal(r, 5), normal(r, 5)), (0, 1)
)
case(
    "softmax_cross_entropy",
    "labels",
    F.softmax_cross_entropy,
    lambda r: (normal(r, 4, 5), labels(r, 4, 5)),
)
case(
    "softmax_cross_entropy",
    "labels-column",
    F.softmax_cross_entropy,
    lambda r: (normal(r, 4, 3), labels(r, 4, 3).reshape(4, 1)),
)
case(
    "sigmoid_cross_entropy",
    "2d",
    F.sigmoid_cross_entropy,
    lambda r: (normal(r, 4, 3), labels(r, 12, 2).reshape(4, 3)),
)
case(
    "sigmoid_cross_entropy",
    "reshape-t",
    F.sigmoid_cross_entropy,
    lambda r: (normal(r, 4, 1), labels(r, 4, 2)),
)
case(
    "binary_cross_entropy",
    "2d",
    F.binary_cross_entropy,
    lambda r: (r.uniform(0.05, 0.95, size=(4, 3)), labels(r, 12, 2).reshape(4, 3).astype(float)),
)


# layers
DROPOUT_SEED = 7


def _dropout(ratio):
    def fn(x):
        np.random.seed(DROPOUT_SEED)  # the same mask at every evaluation (numerical check too)
        return F.dropout(x, ratio)

    return fn


case("dropout", "0.5", _dropout(0.5), lambda r: (normal(r, 4, 5),))
case("dropout", "0.3", _dropout(0.3), lambda r: (normal(r, 3, 4),))


def _batch_norm(train: bool):
    def fn(x, gamma, beta, mean, var):
        # fresh running statistics each call: F.batch_norm updates them in place in training
        with tapegrad.using_config("train", train):
            return F.batch_norm(x, gamma, beta, mean.copy(), var.copy())

    return fn


def _bn_args(r, shape):
    c = shape[1]
    return (
        normal(r, *shape),
        positive(r, c),
        normal(r, c),
        0.1 * normal(r, c),
        positive(r, c),
    )


case("batch_norm", "2d-train", _batch_norm(True), lambda r: _bn_args(r, (6, 3)), (0, 1, 2))
case("batch_norm", "4d-train", _batch_norm(True), lambda r: _bn_args(r, (2, 3, 2, 2)), (0, 1, 2))
case("batch_norm", "2d-test", _batch_norm(False), lambda r: _bn_args(r, (5, 3)), (0, 1, 2))
case("batch_norm", "4d-test", _batch_norm(False), lambda r: _bn_args(r, (2, 2, 3, 2)), (0, 1, 2))

# comparisons and branch guards are recorded without gradient: the gradient flows around them
for _name, _f in [
    ("greater", lambda x: x * (x > 0.0)),
    ("greater_equal", lambda x: x * (x >= 0.0)),
    ("less", lambda x: x * (x < 0.0)),
    ("less_equal", lambda x: x * (0.0 >= x)),
]:
    case(_name, "mask", _f, lambda r: (away(r, 3, 4),))


def _branchy(x):
    if F.sum(x) > 0:  # recorded as a guard while a tape records
        return x * 2.0
    return x * 3.0


case("guard", "if", _branchy, lambda r: (positive(r, 3),))


def _get_item_grad(gy):
    # the adjoint of get_item is an op of its own (it appears in create_graph backwards)
    op = tapegrad.registered_ops()["get_item_grad"]
    return op((("array", 0), ("slice", None, None, None)), (4, 3))(gy, np.array([0, 2, 0]))


case("get_item_grad", "repeated", _get_item_grad, lambda r: (normal(r, 3, 3),))

CASE_IDS = [c.id for c in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS), "duplicate case ids"

FUNCTIONS = (
    "sin cos tanh exp log reshape expand_dims flatten sum sum_to broadcast_to average mean "
    "matmul linear transpose get_item sigmoid relu softmax log_softmax leaky_relu "
    "mean_squared_error softmax_cross_entropy sigmoid_cross_entropy binary_cross_entropy "
    "embed_id dropout batch_norm max min clip square add mul sub div neg pow sqrt abs maximum "
    "minimum where concatenate stack logsumexp"
).split()

# The registered built-in ops. A rename breaks saved tapes, so it must break this list too.
EXPECTED_OPS = sorted(
    "abs add batch_norm broadcast_to clip concatenate cos div dropout exp get_item get_item_grad "
    "greater greater_equal guard leaky_relu less less_equal linear log log_softmax logsumexp "
    "matmul max maximum mean mean_squared_error min minimum mul neg pow relu reshape sigmoid sin "
    "softmax softmax_cross_entropy sqrt square stack sub sum sum_to tanh transpose where".split()
)


def builtin_ops() -> dict[str, type]:
    return {
        n: c for n, c in tapegrad.registered_ops().items() if c.__module__.startswith("tapegrad.")
    }


def make_args(c: Case, rng: np.random.Generator, dtype: Any = np.float64) -> tuple:
    args = [np.asarray(a) if isinstance(a, np.generic) else a for a in c.make(rng)]
    return tuple(
        a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args
    )


def direction(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = np.float64):
    return rng.normal(size=shape).astype(dtype)


# -- first order, float64 -------------------------------------------------------------------------


def test_every_function_has_a_case():
    covered = {c.func for c in CASES}
    missing = [f for f in FUNCTIONS if f not in covered]
    assert not missing, f"no gradient case for {missing}"
    for f in FUNCTIONS:
        assert callable(getattr(F, f)), f


# What a function records: its own name, except where DeZero composes it from other functions.
RECORDS_AS = {
    "expand_dims": "reshape",
    "flatten": "reshape",
    "average": "mean",
    "embed_id": "get_item",
}
COMPOSED = {"sigmoid_cross_entropy", "binary_cross_entropy"}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_records_under_its_own_name(name, rng):
    c = next(c for c in CASES if c.func == name)
    tape, _, _ = _record(c, make_args(c, rng))
    ops = [r.op for r in tape.records]
    if name in COMPOSED:
        assert len(ops) > 1 and set(ops) <= set(EXPECTED_OPS), ops
    else:
        assert ops == [RECORDS_AS.get(name, name)], ops


OPERATORS = {
    "add": lambda x: x + 1.0,
    "sub": lambda x: 1.0 - x,
    "mul": lambda x: x * x,
    "div": lambda x: x / 2,
    "neg": lambda x: -x,
    "pow": lambda x: x**2,
    "matmul": lambda x: x @ x.data,
    "get_item": lambda x: x[0],
}


@pytest.mark.parametrize("op", OPERATORS)
def test_operators_record_under_their_names(op, rng):
    x = Variable(rng.normal(size=(2, 2)), name="x")
    with tapegrad.record() as tape:
        OPERATORS[op](x)
    assert [r.op for r in tape.records] == [op]


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_gradient_matches_central_differences(c: Case, rng):
    args = make_args(c, rng)
    y = forward_value(c.fn, args, c.wrt)
    w = direction(rng, y.shape)
    value, grads = live_vjp(c.fn, args, c.wrt, w)
    np.testing.assert_array_equal(value, y)
    numeric = numerical_vjp(c.fn, args, c.wrt, w)
    for i, g, n in zip(c.wrt, grads, numeric):
        assert g is not None, f"argument {i} got no gradient"
        assert g.shape == np.shape(args[i]), (i, g.shape, np.shape(args[i]))
        assert g.dtype == np.float64, (i, g.dtype)
        assert_close(g, n, rtol=1e-5, atol=1e-7, what=f"{c.id}: d/d arg {i}")


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_an_op_said_to_return_fresh_arrays_never_returns_an_inputs_memory(c: Case, rng):
    # A tape keeps the outputs of a ``fresh`` op without checking them against the user's arrays.
    args = make_args(c, rng)
    with tapegrad.record() as tape:
        out = c.fn(*args)  # kept alive: the last call's output is checked too
    for fn, *_ in tape._entries:
        if type(fn).fresh:
            ys = [r()._data for r in _out_refs(fn._outs)]
            for x in fn._ins:
                for y in ys:
                    assert not np.shares_memory(x._data, y), (c.id, fn)
    del out


def test_softmax_gradient_in_a_random_direction_is_not_zero(rng):
    # The gradient of sum(softmax(x)) is zero; a broken rule can hide behind it. Ours must not.
    x = Variable(rng.normal(size=(3, 4)))
    F.sum(F.softmax(x)).backward()
    np.testing.assert_allclose(x.grad.data, 0.0, atol=1e-12)
    x.cleargrad()
    w = rng.normal(size=(3, 4))
    y = F.softmax(x)
    y.grad = Variable(w)
    y.backward()
    p = y.data
    expected = p * (w - (p * w).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(x.grad.data, expected, rtol=1e-12, atol=1e-14)
    assert np.abs(x.grad.data).max() > 1e-3


def test_dropout_mask_is_numpys_draw(np_seed):
    x = Variable(np.ones((4, 5)))
    np.random.seed(3)
    y = F.dropout(x, 0.4)
    np.random.seed(3)
    mask = np.random.rand(4, 5) > 0.4
    np.testing.assert_array_equal(y.data, mask / np.float64(0.6))
    y.backward()
    np.testing.assert_array_equal(x.grad.data, mask / np.float64(0.6))
    with tapegrad.test_mode():
        assert F.dropout(x, 0.4) is x


def test_batch_norm_updates_running_statistics(rng):
    x = rng.normal(size=(8, 3)) * 2 + 1
    mean, var = np.zeros(3), np.ones(3)
    F.batch_norm(Variable(x), Variable(np.ones(3)), Variable(np.zeros(3)), mean, var, decay=0.8)
    np.testing.assert_allclose(mean, 0.2 * x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(var, 0.8 + 0.2 * x.var(axis=0) * 8 / 7, rtol=1e-12)
    before = mean.copy(), var.copy()
    with tapegrad.test_mode():
        y = F.batch_norm(Variable(x), Variable(np.ones(3)), Variable(np.zeros(3)), mean, var)
    np.testing.assert_array_equal(mean, before[0])
    np.testing.assert_array_equal(var, before[1])
    np.testing.assert_allclose(y.data, (x - mean) / np.sqrt(var + 2e-5), rtol=1e-12)


def test_repeated_indices_accumulate(rng):
    x = Variable(rng.normal(size=(4, 2)))
    y = x[np.array([1, 1, 3, 1])]
    y.backward()
    np.testing.assert_array_equal(x.grad.data, [[0, 0], [3, 3], [0, 0], [1, 1]])


# -- float32 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_float32_values_and_gradients_stay_float32(c: Case, rng):
    args64 = make_args(c, rng)
    args32 = tuple(
        a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
        for a in args64
    )
    y64 = forward_value(c.fn, args64, c.wrt)
    w = direction(rng, y64.shape)
    v64, g64 = live_vjp(c.fn, args64, c.wrt, w)
    v32, g32 = live_vjp(c.fn, args32, c.wrt, w.astype(np.float32))
    assert v32.dtype == np.float32, v32.dtype
    assert_close(v32, v64, rtol=1e-4, atol=1e-5, what=f"{c.id}: value")
    for i, a, b in zip(c.wrt, g32, g64):
        assert a is not None, f"argument {i} got no gradient"
        assert a.dtype == np.float32, (i, a.dtype)
        assert_close(a, b, rtol=2e-3, atol=1e-4, what=f"{c.id}: d/d arg {i}")


SCALAR_EXPRS = {
    "x * 2.0": lambda x: x * 2.0,
    "2.0 * x": lambda x: 2.0 * x,
    "2.0 - x": lambda x: 2.0 - x,
    "x - 1": lambda x: x - 1,
    "x + 0.5": lambda x: x + 0.5,
    "1 + x": lambda x: 1 + x,
    "x / 3": lambda x: x / 3,
    "3.0 / x": lambda x: 3.0 / x,
    "x ** 2": lambda x: x**2,
    "x ** 0.5": lambda x: x**0.5,
    "-x": lambda x: -x,
    "maximum(x, 0.0)": lambda x: F.maximum(x, 0.0),
    "where(c, x, 0.0)": lambda x: F.where(x.data > 1, x, 0.0),
    "clip(x, 0.7, 1.5)": lambda x: F.clip(x, 0.7, 1.5),
    "leaky_relu": lambda x: F.leaky_relu(x, 0.1),
    "mean": F.mean,
    "sum": F.sum,
    "mse": lambda x: F.mean_squared_error(x, np.ones(3, np.float32)),
    "sigmoid_cross_entropy": lambda x: F.sigmoid_cross_entropy(x, np.array([0, 1, 1])),
    "binary_cross_entropy": lambda x: F.binary_cross_entropy(x / 3, np.array([0, 1, 1])),
    "dropout": lambda x: F.dropout(x, 0.5),
}


@pytest.mark.parametrize("expr", SCALAR_EXPRS, ids=list(SCALAR_EXPRS))
def test_python_scalars_never_upcast_float32(expr, np_seed):
    x = Variable(np.array([0.5, 1.25, 2.0], dtype=np.float32))
    y = SCALAR_EXPRS[expr](x)
    assert y.dtype == np.float32, y.dtype
    y.backward()
    assert x.grad.dtype == np.float32, x.grad.dtype


def test_float32_second_order_stays_float32():
    x = Variable(np.array([0.5, 1.5], dtype=np.float32))
    y = F.tanh(x) * 2.0 + x**3 / 3
    y.backward(create_graph=True)
    gx = x.grad
    assert gx.dtype == np.float32
    x.cleargrad()
    gx.backward()
    assert x.grad.dtype == np.float32


# -- second order -------------------------------------------------------------------------------------

SECOND: list[Case] = [
    Case("tanh", "tanh", F.tanh, lambda r: (normal(r, 2, 3),)),
    Case("sin", "sin", F.sin, lambda r: (normal(r, 2, 3),)),
    Case("cos", "cos", F.cos, lambda r: (normal(r, 2, 3),)),
    Case("exp", "exp", F.exp, lambda r: (normal(r, 2, 3),)),
    Case("log", "log", F.log, lambda r: (positive(r, 2, 3),)),
    Case("sqrt", "sqrt", F.sqrt, lambda r: (positive(r, 2, 3),)),
    Case("mul", "mul-broadcast", F.mul, lambda r: (normal(r, 2, 3), normal(r, 3)), (0, 1)),
    Case("mul", "square-by-mul", lambda x: x * x * x, lambda r: (normal(r, 2, 3),)),
    Case("div", "div", F.div, lambda r: (normal(r, 2, 3), positive(r, 2, 3)), (0, 1)),
    Case("sigmoid", "sigmoid", F.sigmoid, lambda r: (normal(r, 2, 3),)),
    Case("softmax", "softmax", F.softmax, lambda r: (normal(r, 2, 4),)),
    Case("log_softmax", "log_softmax", F.log_softmax, lambda r: (normal(r, 2, 4),)),
    Case(
        "logsumexp",
        "logsumexp-axis1",
        lambda x: F.logsumexp(x, axis=1),
        lambda r: (normal(r, 2, 4),),
    ),
    Case("logsumexp", "logsumexp-all", F.logsumexp, lambda r: (normal(r, 2, 3),)),
    Case("matmul", "matmul", F.matmul, lambda r: (normal(r, 2, 3), normal(r, 3, 2)), (0, 1)),
    Case(
        "matmul", "matmul-batched", F.matmul, lambda r: (normal(r, 2, 2, 3), normal(r, 3)), (0, 1)
    ),
    Case(
        "linear",
        "linear",
        F.linear,
        lambda r: (normal(r, 2, 3), normal(r, 3, 2), normal(r, 2)),
        (0, 1, 2),
    ),
    Case(
        "sum",
        "sum-times-x",
        lambda x: F.sum(x, axis=1, keepdims=True) * x,
        lambda r: (normal(r, 2, 3),),
    ),
    Case("mean", "mean-squared", lambda x: F.mean(x, axis=0) ** 2, lambda r: (normal(r, 2, 3),)),
    Case(
        "get_item",
        "get_item-repeated",
        lambda x: x[np.array([0, 2, 0])] * x[1:4],
        lambda r: (normal(r, 4),),
    ),
    Case("get_item", "get_item-sin", lambda x: F.sin(x[:, [1, 1]]), lambda r: (normal(r, 2, 3),)),
    Case("pow", "pow3", lambda x: x**3, lambda r: (normal(r, 2, 3),)),
    Case("pow", "pow0.5", lambda x: F.pow(x, 0.5), lambda r: (positive(r, 2, 3),)),
    Case("pow", "pow-1", lambda x: x**-1, lambda r: (positive(r, 2, 3),)),
    Case(
        "softmax_cross_entropy",
        "softmax_cross_entropy",
        F.softmax_cross_entropy,
        lambda r: (normal(r, 3, 4), labels(r, 3, 4)),
    ),
    Case(
        "mean_squared_error",
        "mse",
        F.mean_squared_error,
        lambda r: (normal(r, 3, 2), normal(r, 3, 2)),
        (0, 1),
    ),
    Case(
        "concatenate",
        "concatenate",
        lambda a, b: F.concatenate([a, b]) ** 2,
        lambda r: (normal(r, 1, 2), normal(r, 2, 2)),
        (0, 1),
    ),
    Case(
        "stack",
        "stack",
        lambda a, b: F.sin(F.stack([a, b])),
        lambda r: (normal(r, 3), normal(r, 3)),
        (0, 1),
    ),
    Case(
        "broadcast_to",
        "broadcast-sum_to",
        lambda x: F.sum_to(F.broadcast_to(x, (2, 3)) ** 2, (1, 3)),
        lambda r: (normal(r, 3),),
    ),
    Case(
        "where",
        "where",
        lambda x: F.where(x.data > 0, x * x, F.sin(x)),
        lambda r: (normal(r, 2, 3),),
    ),
    Case("max", "max", lambda x: F.max(x, axis=1) ** 2, lambda r: tuple(distinct(r, (2, 3)))),
    Case("transpose", "transpose", lambda x: F.transpose(x) * x.T, lambda r: (normal(r, 2, 3),)),
    Case(
        "batch_norm",
        "batch_norm-2d-train",
        _batch_norm(True),
        lambda r: _bn_args(r, (5, 3)),
        (0, 1, 2),
    ),
    Case(
        "batch_norm",
        "batch_norm-4d-train",
        _batch_norm(True),
        lambda r: _bn_args(r, (2, 3, 2, 2)),
        (0, 1, 2),
    ),
    Case(
        "batch_norm",
        "batch_norm-2d-test",
        _batch_norm(False),
        lambda r: _bn_args(r, (5, 3)),
        (0, 1, 2),
    ),
    Case("reshape", "reshape", lambda x: F.reshape(x, (3, 2)) ** 3, lambda r: (normal(r, 2, 3),)),
]


@pytest.mark.parametrize("c", SECOND, ids=[c.id for c in SECOND])
def test_second_order_matches_differences_of_first(c: Case, rng):
    args = make_args(c, rng)
    y = forward_value(c.fn, args, c.wrt)
    w = direction(rng, y.shape)
    v = [direction(rng, np.shape(args[i])) for i in c.wrt]
    auto = live_hvp(c.fn, args, c.wrt, w, v)
    numeric = numerical_hvp(c.fn, args, c.wrt, w, v)
    for i, a, n in zip(c.wrt, auto, numeric):
        assert_close(a, n, rtol=1e-5, atol=1e-6, what=f"{c.id}: second derivative, arg {i}")


@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_second_order_of_every_case(c: Case, rng):
    """The same check over every first-order case (rules written once serve both orders)."""
    test_second_order_matches_differences_of_first(c, rng)


def test_fourth_derivative_of_sin_is_sin(rng):
    x = Variable(rng.normal(size=5))
    y = F.sin(x)
    for _ in range(4):
        y.backward(create_graph=True)
        y = x.grad
        x.cleargrad()
    np.testing.assert_allclose(y.data, np.sin(x.data), rtol=1e-12)


# -- every registered op: listed, covered, live == offline bit for bit ---------------------------------


def _record(c: Case, args: tuple):
    vs = as_vars(args, c.wrt)
    with tapegrad.record() as tape:
        y = c.fn(*vs)
    return tape, vs, y


@functools.cache
def op_coverage() -> dict[str, tuple[int, ...]]:
    """op name -> indices of the CASES whose recording contains that op."""
    cover: dict[str, list[int]] = {}
    rng = np.random.default_rng(0)
    for k, c in enumerate(CASES):
        tape, _, _ = _record(c, make_args(c, rng))
        for op in {r.op for r in tape.records}:
            cover.setdefault(op, []).append(k)
    return {op: tuple(ks) for op, ks in cover.items()}


def test_registered_builtin_ops_are_the_expected_list():
    assert sorted(builtin_ops()) == EXPECTED_OPS


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("op", EXPECTED_OPS)
def test_every_op_is_covered_and_live_backward_equals_offline_replay(op, dtype, rng):
    assert sorted(builtin_ops()) == EXPECTED_OPS
    assert op in builtin_ops(), f"op {op!r} is not registered"
    cls = builtin_ops()[op]
    assert cls.op == op
    assert isinstance(cls.attr_names, tuple)
    covering = op_coverage().get(op, ())
    assert covering, f"no gradient case records op {op!r}"
    for k in covering:
        c = CASES[k]
        args = make_args(c, rng, dtype)
        tape, vs, y = _record(c, args)
        assert tape.outputs and len(tape.outputs) == 1, (c.id, tape.outputs)
        assert sorted(tape.inputs) == sorted(f"x{i}" for i in c.wrt), (c.id, tape.inputs)
        for r in tape.records:
            if r.op != op:
                continue
            # name + plain-data attributes rebuild the op, and it recomputes the recorded value
            rebuilt = tapegrad.registered_ops()[r.op].from_attrs(r.attrs)
            assert rebuilt.attrs() == r.attrs, (c.id, rebuilt.attrs(), r.attrs)
            ys = rebuilt.forward(*[tape[name] for name in r.inputs])
            ys = ys if isinstance(ys, tuple) else (ys,)
            for name, yv in zip(r.outputs, ys):
                assert np.array_equal(np.asarray(yv), tape[name]), (c.id, name)
        w = direction(rng, y.shape, y.dtype)
        offline = tape.backward(grad=w)
        y.grad = Variable(w)
        y.backward()
        for i in c.wrt:
            live = vs[i].grad.data
            off = offline[f"x{i}"]
            assert type(off) is np.ndarray and off.dtype == live.dtype, (c.id, type(off), off.dtype)
            assert np.array_equal(live, off), f"{c.id}: live and offline gradients differ, arg {i}"


@pytest.mark.parametrize("op", EXPECTED_OPS)
def test_a_tape_saved_with_only_the_values_backward_needs_gives_the_same_gradients(
    op, rng, tmp_path
):
    # values="backward" leaves out what no rule reads (an op with needs_x = False reads only its
    # inputs' shapes): the offline gradients must not change by a bit.
    for k in op_coverage().get(op, ())[:2]:
        c = CASES[k]
        tape, vs, y = _record(c, make_args(c, rng, np.float64))
        w = direction(rng, y.shape, y.dtype)
        full = tape.backward(grad=w)
        path = tmp_path / f"{c.id}.tape"
        tape.save(path, values="backward")
        small = tapegrad.load(path)
        assert set(small.value_names) == set(tape.value_names)
        got = small.backward(grad=w)
        for name in full:
            assert np.array_equal(got[name], full[name]), (c.id, name)


def test_values_backward_leaves_out_what_no_rule_reads(tmp_path):
    x = Variable(np.linspace(-1.0, 1.0, 12).reshape(3, 4), name="x")
    with tapegrad.record() as tape:
        h = F.reshape(x + 1.0, (4, 3))  # add and reshape read only shapes: h's input is not kept
        y = F.sum(F.tanh(h))
    tape.save(tmp_path / "b.tape", values="backward")
    tape.save(tmp_path / "n.tape", values="none")
    small, bare = tapegrad.load(tmp_path / "b.tape"), tapegrad.load(tmp_path / "n.tape")
    kept = [n for i, n in enumerate(small.value_names) if small._has_value(i)]
    assert "x" in kept and small.outputs[0] in kept
    assert len(kept) < len(tape.value_names)
    np.testing.assert_array_equal(small.backward()["x"], tape.backward()["x"])
    assert bare.records == tape.records
    with pytest.raises(KeyError, match="not saved"):
        bare[bare.outputs[0]]
    y.backward()


# -- 0-d values as NumPy scalars ---------------------------------------------------------------

SCALAR_RULE_OPS = sorted(name for name, cls in _OPS_TABLE.items() if cls.scalar_rule)
SPECIAL = [0.3, -1.7, 0.0, -0.0, 1e-310, -1e300, np.inf, -np.inf, np.nan, 2.5e-8, 7.0]


def test_the_ops_that_take_scalars_are_the_expected_ones():
    assert SCALAR_RULE_OPS == sorted(
        ["mul", "square", "sqrt", "exp", "log", "sin", "cos", "tanh", "sigmoid"]
    )


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("name", SCALAR_RULE_OPS)
def test_a_scalar_rule_gives_the_same_bits_on_scalars_and_0d_arrays(name, dtype):
    """backward passes 0-d float values of these ops to their rules as NumPy scalars; an offline
    backward passes 0-d arrays: both must give the same bits, special values included."""
    cls = _OPS_TABLE[name]
    n = 2 if name == "mul" else 1
    with np.errstate(all="ignore"):
        for i, v in enumerate(SPECIAL):
            xs = [np.array(v, dtype), np.array(SPECIAL[(i + 3) % len(SPECIAL)], dtype)][:n]
            gy = np.array(SPECIAL[(i + 5) % len(SPECIAL)], dtype)[()]
            y = np.asarray(cls().forward(*xs))
            on_arrays = cls().vjp(gy, tuple(xs), y)
            on_scalars = cls().vjp(gy, tuple(x[()] for x in xs), y[()])
            for a, b in zip(on_arrays, on_scalars):
                a, b = np.asarray(a), np.asarray(b)
                assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (name, v)


SCALAR_FORWARD_OPS = sorted(name for name, cls in _OPS_TABLE.items() if cls.scalar_forward)


def test_the_ops_whose_forward_takes_scalars_are_the_expected_ones():
    assert SCALAR_FORWARD_OPS == sorted(
        "add sub mul div neg square sqrt exp log sin cos tanh abs sigmoid relu maximum minimum".split()
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", SCALAR_FORWARD_OPS)
def test_a_scalar_forward_gives_the_same_bits_on_scalars_and_0d_arrays(name, dtype):
    """A 0-d result is kept as a NumPy scalar and reaches these forwards so (an offline replay
    and DeZero run them on 0-d arrays): the same bits, special values included."""
    cls = _OPS_TABLE[name]
    n = 2 if name in ("add", "sub", "mul", "div", "maximum", "minimum") else 1
    with np.errstate(all="ignore"):
        for i, v in enumerate(SPECIAL):
            xs = [np.array(v, dtype), np.array(SPECIAL[(i + 3) % len(SPECIAL)], dtype)][:n]
            on_arrays = np.asarray(cls().forward(*xs))
            for mixed in ([x[()] for x in xs], [xs[0][()], *xs[1:]]):
                on_scalars = np.asarray(cls().forward(*mixed))
                assert on_arrays.dtype == on_scalars.dtype, (name, v)
                assert on_arrays.tobytes() == on_scalars.tobytes(), (name, v)


def test_a_0d_result_is_kept_as_a_scalar_and_data_gives_one_array(rng):
    x = Variable(np.array(0.5), name="x")
    with tapegrad.record() as tape:
        y = F.tanh(x * 2.0 + 1.0)
    assert type(y._data) is np.float64  # kept small until asked for
    d = y.data
    assert type(d) is np.ndarray and d.shape == () and y.data is d
    d[...] = 7.0  # the caller's array: the tape keeps the value it recorded
    assert tape[tape.outputs[0]] == np.tanh(0.5 * 2.0 + 1.0)
    assert type(tape[tape.outputs[0]]) is np.ndarray
    assert repr(F.tanh(x)) == f"variable({np.tanh(0.5)})" and len(str(F.exp(x))) > 0


def test_ops_and_functions_that_want_arrays_get_0d_arrays_from_scalar_results():
    seen = []

    class Spy(tapegrad.Function):
        def forward(self, a, b):
            seen.append((type(a), type(b)))
            return a + b

        def backward(self, gy):
            seen.append(type(gy.data))
            return gy, gy

    x = Variable(np.array(0.25, np.float32))
    y = x * 3.0  # a NumPy scalar inside
    z = Spy()(y, F.reshape(F.sin(x), ()))
    w = F.sum(F.broadcast_to(z, (3,))) + F.reshape(y, (1,))[0]
    w.backward()
    assert seen[0] == (np.ndarray, np.ndarray) and seen[1] is np.ndarray
    assert x.grad.dtype == np.float32 and type(x.grad.data) is np.ndarray
    expect = 3 * (3.0 + np.cos(np.float32(0.25))) + 3.0
    np.testing.assert_allclose(x.grad.data, expect, rtol=1e-6)
