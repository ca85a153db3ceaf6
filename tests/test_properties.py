"""Property tests: random expression DAGs against numerical gradients and offline backward, and
derivatives of higher order.

A DAG is drawn as a small program: leaves of broadcast-compatible shapes, then instructions that
each apply a smooth op to earlier values (chosen at random, so values are reused: fan-out). Values
are kept bounded (exp only of bounded values, products only while the bound stays small), so that
central differences in float64 are accurate to ~1e-8.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tapegrad
import tapegrad.functions as F
from tapegrad import Variable, no_grad

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

LEAF_SHAPES = [(2, 3), (3,), (2, 1), (), (1, 3)]
UNARY = ["sin", "cos", "tanh", "exp", "square", "neg"]
BINARY = ["add", "sub", "mul"]
MAX_BOUND = 30.0


def _apply(op: str, args: list, attrs: tuple):
    """Run one instruction on Variables (live) or ndarrays (numerics, under no_grad)."""
    if op == "sin":
        return F.sin(args[0])
    if op == "cos":
        return F.cos(args[0])
    if op == "tanh":
        return F.tanh(args[0])
    if op == "exp":
        return F.exp(args[0])
    if op == "square":
        return F.square(args[0])
    if op == "neg":
        return -args[0]
    if op == "add":
        return args[0] + args[1]
    if op == "sub":
        return args[0] - args[1]
    if op == "mul":
        return args[0] * args[1]
    if op == "scale":
        return args[0] * attrs[0]  # a Python scalar constant
    if op == "sum":
        axis, keepdims = attrs
        return F.sum(args[0], axis=axis, keepdims=keepdims)
    raise AssertionError(op)


def _broadcastable(a: tuple, b: tuple) -> bool:
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return True


@st.composite
def programs(draw):
    """(leaf shapes, instructions); each instruction is (op, operand indices, attrs)."""
    n_leaves = draw(st.integers(1, 3))
    shapes = [draw(st.sampled_from(LEAF_SHAPES)) for _ in range(n_leaves)]
    bounds = [1.0] * n_leaves
    program = []
    n_steps = draw(st.integers(1, 9))
    for _ in range(n_steps):
        n = len(shapes)
        kind = draw(st.sampled_from(["unary", "binary", "binary", "sum", "scale"]))
        i = draw(st.integers(0, n - 1))
        if kind == "binary":
            j = draw(st.sampled_from([k for k in range(n) if _broadcastable(shapes[i], shapes[k])]))
            op = draw(st.sampled_from(BINARY))
            shape = np.broadcast_shapes(shapes[i], shapes[j])
            bound = bounds[i] * bounds[j] if op == "mul" else bounds[i] + bounds[j]
            if bound <= MAX_BOUND:
                program.append((op, (i, j), ()))
                shapes.append(shape)
                bounds.append(bound)
                continue
            kind = "unary"  # too large: squash it instead
        if kind == "sum" and len(shapes[i]) > 0:
            ndim = len(shapes[i])
            axis = draw(st.sampled_from([None, *range(ndim), *range(-ndim, 0)]))
            keepdims = draw(st.booleans())
            size = int(np.prod(shapes[i])) if axis is None else shapes[i][axis]
            if bounds[i] * size <= MAX_BOUND:
                program.append(("sum", (i,), (axis, keepdims)))
                shapes.append(np.sum(np.zeros(shapes[i]), axis=axis, keepdims=keepdims).shape)
                bounds.append(bounds[i] * size)
                continue
            kind = "unary"
        if kind == "scale":
            c = draw(st.sampled_from([-1.5, 0.5, 2.0, 3]))
            if bounds[i] * abs(c) <= MAX_BOUND:
                program.append(("scale", (i,), (c,)))
                shapes.append(shapes[i])
                bounds.append(bounds[i] * abs(c))
                continue
        op = draw(st.sampled_from(UNARY))
        if op == "exp" and bounds[i] > 2.0:
            op = "tanh"
        if op == "square" and bounds[i] ** 2 > MAX_BOUND:
            op = "sin"
        bound = {
            "sin": 1.0,
            "cos": 1.0,
            "tanh": 1.0,
            "exp": float(np.exp(bounds[i])),
            "square": bounds[i] ** 2,
            "neg": bounds[i],
        }[op]
        program.append((op, (i,), ()))
        shapes.append(shapes[i])
        bounds.append(bound)
    return shapes[:n_leaves], program


def _run(leaves: list, program: list) -> list:
    values = list(leaves)
    for op, idx, attrs in program:
        values.append(_apply(op, [values[k] for k in idx], attrs))
    return values


def _loss(leaves: list[np.ndarray], program, direction: np.ndarray) -> float:
    with no_grad():
        out = _run([Variable(np.asarray(a)) for a in leaves], program)[-1]
    return float(np.sum(out.data * direction))


@SETTINGS
@given(prog=programs(), seed=st.integers(0, 2**32 - 1))
def test_random_dag_matches_numerical_and_offline_gradients(prog, seed):
    shapes, program = prog
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-1, 1, s) for s in shapes]
    xs = [Variable(a.copy(), name=f"x{k}") for k, a in enumerate(arrays)]
    with tapegrad.record() as tape:
        out = _run(xs, program)[-1]
    direction = rng.standard_normal(out.shape)
    out.grad = Variable(direction.copy())
    out.backward()
    live = [np.zeros(s) if x.grad is None else x.grad.data for x, s in zip(xs, shapes)]
    for g, s in zip(live, shapes):
        assert g.shape == s

    # against central differences, projected on random input directions
    eps = 1e-6
    for _ in range(2):
        vs = [rng.standard_normal(s) for s in shapes]
        plus = _loss([a + eps * v for a, v in zip(arrays, vs)], program, direction)
        minus = _loss([a - eps * v for a, v in zip(arrays, vs)], program, direction)
        numeric = (plus - minus) / (2 * eps)
        analytic = float(sum(np.sum(g * v) for g, v in zip(live, vs)))
        assert abs(numeric - analytic) <= 1e-6 * (1.0 + abs(analytic)), (numeric, analytic)

    # against the offline backward of the tape: equal bit for bit
    offline = tape.backward(of=tape.records[-1].outputs[0], grad=direction)
    assert set(offline) == set(tape.inputs)
    for x, g in zip(xs, live):
        if x.name not in offline:  # a leaf the program never used
            assert x.grad is None
            continue
        assert offline[x.name].shape == g.shape
        assert offline[x.name].tobytes() == g.tobytes(), x.name


@SETTINGS
@given(prog=programs(), seed=st.integers(0, 2**32 - 1))
def test_random_dag_replay_equals_a_live_run(prog, seed):
    shapes, program = prog
    rng = np.random.default_rng(seed)
    xs = [Variable(rng.uniform(-1, 1, s), name=f"x{k}") for k, s in enumerate(shapes)]
    with tapegrad.record() as tape:
        _run(xs, program)
    new = {x.name: rng.uniform(-1, 1, x.shape) for x in xs}
    replayed = tape.replay({k: v for k, v in new.items() if k in tape.inputs})
    with no_grad():
        live = _run([Variable(new[x.name]) for x in xs], program)[-1]
    out = replayed.records[-1].outputs[0]
    assert replayed[out].tobytes() == live.data.tobytes()


# -- higher order ------------------------------------------------------------------------------


def _newton(x0: float, iters: int) -> list[float]:
    """Minimise x**4 - 2 x**2 by Newton's method, both derivatives by backprop (DeZero step 33)."""
    x = Variable(np.array(x0))
    path = [x0]
    for _ in range(iters):
        y = x**4 - 2 * x**2
        x.cleargrad()
        y.backward(create_graph=True)
        gx = x.grad
        x.cleargrad()
        gx.backward()
        gx2 = x.grad
        x.data = x.data - gx.data / gx2.data
        path.append(float(x.data))
    return path


def test_newton_converges_to_one_from_two():
    path = _newton(2.0, 10)
    # the book's trajectory: 2 -> 1.4545... -> 1.1510... -> ... -> 1
    assert path[1] == pytest.approx(1.4545454545454546, rel=1e-12)
    assert path[2] == pytest.approx(1.1510467893775467, rel=1e-12)
    assert path[-1] == pytest.approx(1.0, abs=1e-14)


@settings(max_examples=25, deadline=None)
@given(x0=st.floats(0.9, 4.0))
def test_newton_converges_to_one_from_the_right(x0):
    assert _newton(x0, 15)[-1] == pytest.approx(1.0, abs=1e-12)


def _nth_derivatives(fn, x0: np.ndarray, n: int) -> list[np.ndarray]:
    """[f'(x0), f''(x0), ..., f^(n)(x0)] elementwise, by repeated create_graph backward."""
    x = Variable(x0.copy())
    y = F.sum(fn(x))
    y.backward(create_graph=True)
    out = [x.grad.data.copy()]
    for _ in range(n - 1):
        gx = x.grad
        x.cleargrad()
        F.sum(gx).backward(create_graph=True)
        out.append(x.grad.data.copy())
    return out


@settings(max_examples=20, deadline=None)
@given(xs=st.lists(st.floats(-4.0, 4.0), min_size=1, max_size=4))
def test_derivatives_of_sin_cycle(xs):
    x0 = np.array(xs)
    ds = _nth_derivatives(F.sin, x0, 8)
    for n, d in enumerate(ds, start=1):
        np.testing.assert_allclose(d, np.sin(x0 + n * np.pi / 2), atol=1e-12, err_msg=f"order {n}")
    # the fourth derivative of sin is sin (and the eighth too)
    np.testing.assert_allclose(ds[3], np.sin(x0), atol=1e-12)
    np.testing.assert_allclose(ds[7], np.sin(x0), atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(xs=st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=4))
def test_second_derivative_of_tanh_matches_numerics(xs):
    x0 = np.array(xs)
    d1, d2 = _nth_derivatives(F.tanh, x0, 2)
    t = np.tanh(x0)
    np.testing.assert_allclose(d1, 1 - t * t, atol=1e-12)
    np.testing.assert_allclose(d2, -2 * t * (1 - t * t), atol=1e-12)
    # and against central differences of the first derivative, computed by backprop
    eps = 1e-5
    plus = _nth_derivatives(F.tanh, x0 + eps, 1)[0]
    minus = _nth_derivatives(F.tanh, x0 - eps, 1)[0]
    np.testing.assert_allclose(d2, (plus - minus) / (2 * eps), atol=1e-8)


def test_third_derivative_of_a_polynomial_through_a_dag():
    # y = x**2 * x**3 (fan-out of x into two pows and a mul): y''' = 60 x**2
    x0 = np.array([0.5, -1.5, 2.0])
    ds = _nth_derivatives(lambda x: x**2 * x**3, x0, 3)
    np.testing.assert_allclose(ds[0], 5 * x0**4)
    np.testing.assert_allclose(ds[1], 20 * x0**3)
    np.testing.assert_allclose(ds[2], 60 * x0**2)
