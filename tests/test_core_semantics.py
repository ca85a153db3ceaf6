"""Variable, Function, Config and backward: the DeZero-compatible core (contract section 1)."""

from __future__ import annotations

import contextvars
import gc
import threading
import weakref

import numpy as np
import pytest

import tapegrad
import tapegrad.functions as F
from tapegrad import (
    Config,
    Function,
    Variable,
    as_array,
    as_variable,
    no_grad,
    test_mode,
    using_config,
)

# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


@pytest.fixture
def no_gc():
    """Run a test with the cyclic garbage collector off: only reference counting frees memory."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def grad_of(v: Variable) -> np.ndarray:
    assert v.grad is not None, "expected a gradient"
    assert isinstance(v.grad, Variable)
    return v.grad.data


# -- the seed example and accumulation ---------------------------------------------------------


def test_seed_example():
    x = Variable(np.array(2.0))
    y = Variable(np.array(3.0))
    z = F.add(F.square(x), F.square(y))
    z.backward()
    assert z.data == 13.0
    assert grad_of(x) == 4.0
    assert grad_of(y) == 6.0


def test_variable_used_twice_in_add_gets_the_sum():
    x = Variable(np.array(3.0))
    y = x + x
    y.backward()
    assert y.data == 6.0
    assert grad_of(x) == 2.0


def test_variable_used_twice_in_mul_gets_the_sum():
    x = Variable(np.array([3.0, -2.0]))
    y = x * x
    y.backward()
    np.testing.assert_array_equal(grad_of(x), 2 * x.data)


def test_diamond_graph():
    # x -> a = x**2 -> (b = a**2, c = a**2) -> y = b + c = 2 x**4, dy/dx = 8 x**3
    x = Variable(np.array(2.0))
    a = F.square(x)
    y = F.add(F.square(a), F.square(a))
    y.backward()
    assert y.data == 32.0
    assert grad_of(x) == 64.0


def test_diamond_with_unequal_depths():
    # one path is long, one is short: a record must wait for every use of its output
    x = Variable(np.array(0.7))
    a = F.sin(x)
    long_path = F.exp(F.tanh(F.square(a)))
    y = long_path * a + a
    y.backward()
    s, c = np.sin(0.7), np.cos(0.7)
    t = np.tanh(s * s)
    expected = (np.exp(t) * (1 - t * t) * 2 * s * c) * s + np.exp(t) * c + c
    np.testing.assert_allclose(grad_of(x), expected, rtol=1e-14)


def test_wide_fanout_accumulates_every_use():
    x = Variable(np.array(1.5))
    terms = [x * float(k) for k in range(1, 11)]
    y = terms[0]
    for t in terms[1:]:
        y = y + t
    y.backward()
    assert grad_of(x) == 55.0


def test_repeated_backward_accumulates_until_cleargrad():
    x = Variable(np.array(3.0))
    y = F.square(x)
    y.backward()
    assert grad_of(x) == 6.0
    y.backward()
    assert grad_of(x) == 12.0
    x.cleargrad()
    assert x.grad is None
    y.backward()
    assert grad_of(x) == 6.0


def test_backward_into_existing_grad_from_another_graph():
    x = Variable(np.array(2.0))
    F.square(x).backward()
    (x * 3.0).backward()
    assert grad_of(x) == 7.0


# -- retain_grad and the root's gradient -------------------------------------------------------


def test_intermediates_keep_grad_only_with_retain_grad():
    x = Variable(np.array(2.0))
    a = F.square(x)
    y = a * 3.0
    y.backward()
    assert a.grad is None
    assert y.grad is None  # the root is an output too: DeZero clears it
    assert grad_of(x) == 12.0

    x.cleargrad()
    a = F.square(x)
    y = a * 3.0
    y.backward(retain_grad=True)
    assert grad_of(a) == 3.0
    assert grad_of(y) == 1.0
    assert grad_of(x) == 12.0


def test_backward_on_nonscalar_output_seeds_with_ones():
    x = Variable(np.array([[1.0, 2.0], [3.0, 4.0]]))
    y = x * x
    y.backward()
    np.testing.assert_array_equal(grad_of(x), 2 * x.data)


def test_user_set_grad_is_the_seed():
    x = Variable(np.array([1.0, 2.0, 3.0]))
    y = x * 3.0
    y.grad = Variable(np.array([1.0, 10.0, 100.0]))
    y.backward()
    np.testing.assert_array_equal(grad_of(x), [3.0, 30.0, 300.0])
    assert y.grad is None  # used, then cleared like any non-leaf (as DeZero)

    x.cleargrad()
    y = x * 3.0
    y.grad = Variable(np.array([1.0, 10.0, 100.0]))
    y.backward(retain_grad=True)
    np.testing.assert_array_equal(grad_of(y), [1.0, 10.0, 100.0])
    np.testing.assert_array_equal(grad_of(x), [3.0, 30.0, 300.0])


def test_backward_of_a_leaf_sets_ones():
    x = Variable(np.array([1.0, 2.0]))
    x.backward()
    np.testing.assert_array_equal(grad_of(x), [1.0, 1.0])


def test_gradient_is_a_variable_of_the_input_shape_after_broadcasting():
    x = Variable(np.ones((2, 3)))
    b = Variable(np.ones(3))
    y = F.sum(x * b + b)
    y.backward()
    assert grad_of(b).shape == (3,)
    np.testing.assert_array_equal(grad_of(b), [4.0, 4.0, 4.0])


# -- no_grad, Config, using_config, test_mode --------------------------------------------------


def test_no_grad_builds_no_graph_and_records_nothing():
    x = Variable(np.array([1.0, 2.0]))
    with tapegrad.record() as tape:
        with no_grad():
            y = F.tanh(x) * 2.0
            z = x < 1.5
    assert y.creator is None
    assert z.creator is None
    assert len(tape) == 0
    assert tape.records == []


def test_config_flags_read_and_restore():
    assert Config.enable_backprop is True
    assert Config.train is True
    with using_config("enable_backprop", False):
        assert Config.enable_backprop is False
        with using_config("enable_backprop", True):
            assert Config.enable_backprop is True
        assert Config.enable_backprop is False
    assert Config.enable_backprop is True
    with test_mode():
        assert Config.train is False
    assert Config.train is True


def test_using_config_restores_after_an_exception():
    with pytest.raises(RuntimeError):
        with no_grad():
            raise RuntimeError("boom")
    assert Config.enable_backprop is True


def test_config_set_like_dezero_in_its_own_context():
    def body():
        Config.enable_backprop = False
        y = F.sin(Variable(np.array(1.0)))
        assert y.creator is None
        Config.enable_backprop = True
        y = F.sin(Variable(np.array(1.0)))
        assert y.creator is not None
        Config.train = False
        assert Config.train is False
        x = Variable(np.ones(1000))
        np.testing.assert_array_equal(F.dropout(x).data, x.data)  # test mode: identity

    contextvars.copy_context().run(body)
    assert Config.train is True  # the setting stayed in that context


def test_config_set_inside_a_using_config_block_survives_it():
    def body():
        with test_mode():
            Config.enable_backprop = False  # DeZero keeps this after the block
        assert Config.enable_backprop is False
        assert Config.train is True
        with no_grad():
            Config.train = False
        assert Config.train is False
        assert Config.enable_backprop is False  # restored to its value before no_grad

    contextvars.copy_context().run(body)
    assert Config.enable_backprop is True and Config.train is True


def test_config_set_in_a_thread_does_not_leak():
    seen = []

    def worker():
        Config.enable_backprop = False
        seen.append(Config.enable_backprop)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [False]
    assert Config.enable_backprop is True
    assert F.sin(Variable(np.array(1.0))).creator is not None


def test_unknown_config_name_is_an_error():
    with pytest.raises(AttributeError):
        with using_config("enable_backpropp", False):
            pass
    with pytest.raises(AttributeError):
        Config.enable_backpropp = False  # a typo must not silently do nothing


# -- unchain -----------------------------------------------------------------------------------


def test_unchain_cuts_the_graph_at_a_variable():
    x = Variable(np.array(2.0))
    a = F.square(x)
    a.unchain()
    assert a.creator is None
    y = a * 3.0
    y.backward()
    assert x.grad is None  # the gradient stops at a
    assert grad_of(a) == 3.0  # a is now a leaf


def test_unchain_backward_cuts_everything_upstream():
    x = Variable(np.array(2.0))
    a = F.square(x)
    b = F.exp(a)
    y = F.sin(b)
    y.unchain_backward()
    assert y.creator is not None  # the variable itself keeps its creator (as DeZero)
    assert b.creator is None
    assert a.creator is None
    y.backward()
    assert x.grad is None
    np.testing.assert_allclose(grad_of(b), np.cos(b.data))


# -- Variable attributes -----------------------------------------------------------------------


def test_variable_attributes():
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    v = Variable(data, name="v")
    assert v.data is data
    assert v.name == "v"
    assert v.shape == (2, 3)
    assert v.ndim == 2
    assert v.size == 6
    assert v.dtype == np.float32
    assert len(v) == 2
    assert v.grad is None
    assert v.creator is None
    assert v.generation == 0
    assert Variable(np.ones(1)).name is None


def test_generation_grows_along_the_graph():
    x = Variable(np.array(1.0))
    a = F.sin(x)
    b = F.cos(a)
    c = a + b
    assert (x.generation, a.generation, b.generation, c.generation) == (0, 1, 2, 3)
    assert c.creator.generation == 2


def test_generation_of_a_deep_chain_needs_no_recursion():
    # generations are computed on request; a chain far deeper than the recursion limit is fine
    x = Variable(np.array(0.5))
    y = x
    for _ in range(30_000):
        y = F.tanh(y)
    assert y.generation == 30_000
    assert y.creator.generation == 29_999
    z = y + x  # max over the inputs
    assert z.creator.generation == 30_000 and z.generation == 30_001


def test_generation_asked_before_the_call_is_not_kept():
    f = Square()
    assert f.generation == 0
    f(F.sin(Variable(np.array(1.0))))
    assert f.generation == 1


def test_generation_of_a_reused_instance_is_its_latest_call():
    f = Square()
    x = Variable(np.array(2.0))
    y1 = f(x)
    y2 = f(F.sin(F.sin(x)))
    assert y1.generation == 1  # each output keeps its own call's generation
    assert y2.generation == 3
    assert f.generation == 2  # the instance describes its latest call, as in DeZero


def test_outputs_are_weak_references_for_one_and_several_outputs():
    x = Variable(np.array(0.3))
    y = F.sin(x)
    (r,) = y.creator.outputs
    assert isinstance(r, weakref.ref) and r() is y
    s, c = SinCos()(x)
    refs = s.creator.outputs
    assert len(refs) == 2 and all(isinstance(r, weakref.ref) for r in refs)
    assert refs[0]() is s and refs[1]() is c


def test_repr_like_dezero():
    assert repr(Variable(np.array([1.0, 2.0]))) == "variable([1. 2.])"
    assert repr(Variable(np.array(3.0))) == "variable(3.0)"
    assert repr(Variable(None)) == "variable(None)"
    m = Variable(np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert repr(m) == "variable([[1. 2.]\n          [3. 4.]])"


@pytest.mark.parametrize("bad", [1.0, 1, [1, 2], (1.0,), "abc", True])
def test_variable_rejects_non_arrays(bad):
    with pytest.raises(TypeError):
        Variable(bad)


def test_variable_none_is_allowed():
    v = Variable(None)
    assert v.data is None
    v.data = np.array(1.0)  # DeZero allows filling it in later
    assert v.shape == ()


def test_as_array_and_as_variable():
    a = as_array(1.5)
    assert isinstance(a, np.ndarray) and a.shape == () and a == 1.5
    assert isinstance(as_array(np.float32(2.0)), np.ndarray)
    arr = np.ones(3)
    assert as_array(arr) is arr
    v = Variable(arr)
    assert as_variable(v) is v
    w = as_variable(arr)
    assert isinstance(w, Variable) and w.data is arr


# -- operators ---------------------------------------------------------------------------------

BINARY = {
    "+": (lambda a, b: a + b, np.add),
    "-": (lambda a, b: a - b, np.subtract),
    "*": (lambda a, b: a * b, np.multiply),
    "/": (lambda a, b: a / b, np.divide),
}


def _operand(kind: str, arr: np.ndarray):
    if kind == "Variable":
        return Variable(arr.copy())
    if kind == "ndarray":
        return arr.copy()
    return float(arr.flat[0])  # a Python scalar


def _numeric_partial(fn, a, b, which, eps=1e-6):
    """d sum(fn(a, b)) / d(a or b), by central differences (float64)."""
    base = a if which == 0 else b
    g = np.zeros_like(base)
    for i in np.ndindex(base.shape):
        hi, lo = base.copy(), base.copy()
        hi[i] += eps
        lo[i] -= eps
        args_hi = (hi, b) if which == 0 else (a, hi)
        args_lo = (lo, b) if which == 0 else (a, lo)
        g[i] = (fn(*args_hi).sum() - fn(*args_lo).sum()) / (2 * eps)
    return g


@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize(
    "left,right",
    [
        ("Variable", "Variable"),
        ("Variable", "ndarray"),
        ("ndarray", "Variable"),
        ("Variable", "scalar"),
        ("scalar", "Variable"),
    ],
)
def test_binary_operators_with_any_operand_kind(op, left, right, rng):
    fn, np_fn = BINARY[op]
    a = rng.uniform(0.5, 2.0, (2, 3))
    b = rng.uniform(0.5, 2.0, (2, 3))
    if left == "scalar":
        a = np.full((), a.flat[0])
    if right == "scalar":
        b = np.full((), b.flat[0])
    x0, x1 = _operand(left, a), _operand(right, b)
    y = fn(x0, x1)
    assert isinstance(y, Variable), f"{left} {op} {right} gave a {type(y).__name__}"
    np.testing.assert_allclose(y.data, np_fn(a, b), rtol=1e-15)
    F.sum(y).backward()
    for which, operand, base in ((0, x0, a), (1, x1, b)):
        if isinstance(operand, Variable):
            assert operand.grad.shape == base.shape
            np.testing.assert_allclose(
                grad_of(operand), _numeric_partial(np_fn, a, b, which), rtol=1e-6, atol=1e-8
            )


def test_operators_broadcast_and_sum_gradients_back():
    x = Variable(np.ones((2, 3)))
    b = Variable(np.array([1.0, 2.0, 3.0]))
    c = Variable(np.array([[2.0], [4.0]]))
    y = F.sum((x + b) * c)
    y.backward()
    np.testing.assert_array_equal(grad_of(b), [6.0, 6.0, 6.0])
    np.testing.assert_array_equal(grad_of(c), [[9.0], [9.0]])
    np.testing.assert_array_equal(grad_of(x), np.array([[2.0] * 3, [4.0] * 3]))


def test_matmul_operator_with_variables_and_arrays(rng):
    a = rng.standard_normal((2, 3))
    b = rng.standard_normal((3, 4))
    va, vb = Variable(a), Variable(b)
    for y in (va @ vb, a @ vb, va @ b):
        assert isinstance(y, Variable)
        np.testing.assert_array_equal(y.data, a @ b)
    gy = rng.standard_normal((2, 4))
    y = va @ vb
    y.grad = Variable(gy)
    y.backward()
    np.testing.assert_allclose(grad_of(va), gy @ b.T)
    np.testing.assert_allclose(grad_of(vb), a.T @ gy)
    vb.cleargrad()
    y = a @ vb  # ndarray on the left: still a Variable with a gradient for vb
    y.grad = Variable(gy)
    y.backward()
    np.testing.assert_allclose(grad_of(vb), a.T @ gy)


def test_neg_and_pow_by_constant():
    x = Variable(np.array([1.5, -2.0]))
    y = -x
    assert isinstance(y, Variable)
    np.testing.assert_array_equal(y.data, [-1.5, 2.0])
    F.sum(y).backward()
    np.testing.assert_array_equal(grad_of(x), [-1.0, -1.0])

    x = Variable(np.array([1.5, 2.0]))
    y = x**3
    F.sum(y).backward()
    np.testing.assert_allclose(grad_of(x), 3 * x.data**2)
    x.cleargrad()
    y = x**0.5
    F.sum(y).backward()
    np.testing.assert_allclose(grad_of(x), 0.5 / np.sqrt(x.data))


def test_pow_by_a_variable_is_refused():
    with pytest.raises(TypeError):
        Variable(np.array(2.0)) ** Variable(np.array(3.0))


def test_methods_reshape_transpose_T_sum_getitem():
    x = Variable(np.arange(6.0).reshape(2, 3))
    assert x.reshape(3, 2).shape == (3, 2)
    assert x.reshape((6,)).shape == (6,)
    assert x.transpose().shape == (3, 2)
    assert x.transpose(1, 0).shape == (3, 2)
    assert x.T.shape == (3, 2)
    assert x.sum().shape == ()
    assert x.sum(axis=0).shape == (3,)
    assert x.sum(axis=1, keepdims=True).shape == (2, 1)
    y = x[np.array([0, 0, 1])]
    np.testing.assert_array_equal(y.data, x.data[[0, 0, 1]])
    y.backward()
    np.testing.assert_array_equal(grad_of(x), [[2.0] * 3, [1.0] * 3])  # repeats accumulate


# -- comparisons and guards --------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn,np_fn,op",
    [
        (lambda a, b: a < b, np.less, "less"),
        (lambda a, b: a <= b, np.less_equal, "less_equal"),
        (lambda a, b: a > b, np.greater, "greater"),
        (lambda a, b: a >= b, np.greater_equal, "greater_equal"),
    ],
)
def test_comparisons_give_boolean_variables_and_are_recorded(fn, np_fn, op):
    a = np.array([1.0, 2.0, 3.0])
    with tapegrad.record() as tape:
        x = Variable(a, name="x")
        c = fn(x, 2.0)
        d = fn(np.array([2.0, 2.0, 2.0]), x)  # ndarray on the left
        y = x * 2.0
    assert isinstance(c, Variable) and c.dtype == np.bool_
    np.testing.assert_array_equal(c.data, np_fn(a, 2.0))
    assert isinstance(d, Variable) and d.dtype == np.bool_
    np.testing.assert_array_equal(d.data, np_fn(np.full(3, 2.0), a))
    assert [r.op for r in tape.records][:1] == [op]
    # comparison results are not outputs; the float result is
    assert tape.outputs == [tape.records[-1].outputs[0]]
    # and no gradient flows through a comparison
    F.sum(y).backward()
    np.testing.assert_array_equal(grad_of(x), [2.0, 2.0, 2.0])


def test_bool_of_a_variable_is_recorded_as_a_guard():
    with tapegrad.record() as tape:
        x = Variable(np.array([0.5]), name="x")
        taken = bool(x > 0.0)
        if x:
            y = x * 2.0
        else:
            y = x * 3.0
    assert taken is True
    ops = [r.op for r in tape.records]
    assert ops == ["greater", "guard", "guard", "mul"]
    assert tape.outputs == [tape.records[-1].outputs[0]]
    np.testing.assert_array_equal(y.data, [1.0])


def test_bool_outside_a_recording_is_plain():
    x = Variable(np.array(0.0))
    assert not x
    assert bool(Variable(np.array([2.0])))
    with pytest.raises(ValueError):
        bool(Variable(np.ones(3)))


# -- dtypes ------------------------------------------------------------------------------------


def test_float32_stays_float32_through_a_chain_with_python_scalars():
    x = Variable(np.array([0.5, 1.0, 2.0], dtype=np.float32))
    w = Variable(np.array([[1.0], [2.0], [3.0]], dtype=np.float32))
    a = (2.0 * x + 1) / 3.0 - 0.5
    b = 1.0 - F.tanh(a) ** 2 + F.exp(-a) * 0.25
    c = F.sin(b) / 2 + F.cos(b) - 3
    d = F.reshape(c, (1, 3)) @ w
    loss = F.mean(d * 1.5 + 1e-3)
    for v in (a, b, c, d, loss):
        assert v.dtype == np.float32, v
    loss.backward()
    assert x.grad.dtype == np.float32
    assert w.grad.dtype == np.float32


def test_float32_second_derivative_stays_float32():
    x = Variable(np.array([0.5, 1.0], dtype=np.float32))
    y = F.sum(F.tanh(x) * 3.0)
    y.backward(create_graph=True)
    gx = x.grad
    assert gx.dtype == np.float32
    x.cleargrad()
    F.sum(gx).backward()
    assert x.grad.dtype == np.float32


# -- memory: no reference cycles ---------------------------------------------------------------


def _graph(x: Variable) -> Variable:
    a = F.tanh(x) * x
    b = F.sin(a) + F.exp(a * 0.1)
    return F.sum(b * a)


def test_dropped_graph_is_freed_without_gc(no_gc):
    x = Variable(np.linspace(-1, 1, 5))
    y = _graph(x)
    refs = [weakref.ref(y.creator), weakref.ref(y.creator.inputs[0].creator)]
    del y
    assert [r() for r in refs] == [None, None]


def test_graph_is_freed_after_backward_without_gc(no_gc):
    x = Variable(np.linspace(-1, 1, 5))
    y = _graph(x)
    ref = weakref.ref(y.creator)
    y.backward()
    assert x.grad is not None
    del y
    assert ref() is None


def test_graph_is_freed_after_create_graph_backward_without_gc(no_gc):
    x = Variable(np.linspace(-1, 1, 5))
    y = _graph(x)
    ref = weakref.ref(y.creator)
    y.backward(create_graph=True)
    gx = x.grad
    assert gx.creator is not None  # the gradient has a graph of its own
    grad_ref = weakref.ref(gx.creator)
    gx.backward()  # a second order pass, then drop everything
    del y, gx
    x.cleargrad()
    assert ref() is None
    assert grad_ref() is None


def test_user_function_graph_is_freed_without_gc(no_gc):
    class Twice(Function):
        def forward(self, x):
            return 2 * x

        def backward(self, gy):
            return 2 * gy

    x = Variable(np.ones(3))
    y = Twice()(F.sin(x))
    ref = weakref.ref(y.creator)
    y.backward()
    del y
    assert ref() is None


def test_recorded_graph_is_freed_when_the_tape_is_dropped(no_gc):
    x = Variable(np.linspace(-1, 1, 5), name="x")
    with tapegrad.record() as tape:
        y = _graph(x)
    ref = weakref.ref(y.creator)
    y.backward()
    del y
    tape_ref = weakref.ref(tape)
    del tape
    assert tape_ref() is None
    assert ref() is None


# -- user Functions (DeZero's protocol) --------------------------------------------------------


class SinCos(Function):
    """Two outputs: sin(x) and cos(x)."""

    def forward(self, x):
        return np.sin(x), np.cos(x)

    def backward(self, gs, gc):
        (x,) = self.inputs
        return gs * F.cos(x) - gc * F.sin(x)


class Square(Function):
    def forward(self, x):
        return x**2

    def backward(self, gy):
        (x,) = self.inputs
        return 2 * x * gy


class StatefulReshape(Function):
    """Like DeZero's Reshape: remembers the input shape on self during forward."""

    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        return F.reshape(gy, self.x_shape)


def test_user_function_calling_returns_variable_or_list():
    x = Variable(np.array([0.1, 0.2]))
    out = SinCos()(x)
    assert isinstance(out, list) and len(out) == 2
    assert all(isinstance(o, Variable) for o in out)
    assert isinstance(Square()(x), Variable)


def test_two_outputs_one_dropped_gets_a_zero_gradient():
    seen = []

    class Spy(SinCos):
        def backward(self, gs, gc):
            seen.append((gs.data.copy(), gc.data.copy()))
            return super().backward(gs, gc)

    x = Variable(np.array([0.5, 1.0]))
    s, c = Spy()(x)
    del c  # dropped: DeZero's backward crashes on the dead output
    y = F.sum(s * 2.0)
    y.backward()
    np.testing.assert_allclose(grad_of(x), 2 * np.cos(x.data))
    ((gs, gc),) = seen
    np.testing.assert_array_equal(gc, np.zeros(2))
    np.testing.assert_array_equal(gs, [2.0, 2.0])


def test_two_outputs_one_unused_gets_a_zero_gradient():
    x = Variable(np.array([0.5, 1.0]))
    s, c = SinCos()(x)  # s stays alive but nobody uses it
    F.sum(c).backward()
    np.testing.assert_allclose(grad_of(x), -np.sin(x.data))
    assert s.grad is None


def test_two_outputs_both_used():
    x = Variable(np.array([0.5, 1.0]))
    s, c = SinCos()(x)
    F.sum(s * c).backward()  # d(sin cos) = cos^2 - sin^2
    np.testing.assert_allclose(grad_of(x), np.cos(2 * x.data))


def test_one_function_instance_called_twice_makes_two_records():
    f = Square()
    a = Variable(np.array(3.0), name="a")
    b = Variable(np.array(5.0), name="b")
    with tapegrad.record() as tape:
        ya = f(a)
        yb = f(b)
    # inputs/outputs describe the latest call
    assert f.inputs[0] is b
    assert f.outputs[0]() is yb
    assert len(tape) == 2
    assert tape.records[0].inputs == ("a",)
    assert tape.records[1].inputs == ("b",)
    ya.backward()
    yb.backward()
    assert grad_of(a) == 6.0
    assert grad_of(b) == 10.0
    g = tape.backward(of=tape.records[0].outputs[0])
    assert g["a"] == 6.0 and g["b"] == 0.0


def test_one_function_instance_called_twice_in_one_graph():
    f = Square()
    x = Variable(np.array(2.0))
    y = f(f(x))  # x**4
    y.backward()
    assert grad_of(x) == 32.0


def test_builtin_op_instance_called_twice():
    from tapegrad.ops.elementwise import Sin

    s = Sin()
    a, b = Variable(np.array(1.0)), Variable(np.array(2.0))
    ya, yb = s(a), s(b)
    ya.backward()
    yb.backward()
    np.testing.assert_allclose(grad_of(a), np.cos(1.0))
    np.testing.assert_allclose(grad_of(b), np.cos(2.0))


def test_stateful_user_function_reused_keeps_each_calls_state():
    r = StatefulReshape((6,))
    a = Variable(np.ones((2, 3)))
    b = Variable(np.ones((3, 2)))
    with tapegrad.record() as tape:
        ya = r(a)
        yb = r(b)
        loss = F.sum(ya * np.arange(6.0)) + F.sum(yb * np.arange(6.0))
    loss.backward()
    np.testing.assert_array_equal(grad_of(a), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(grad_of(b), np.arange(6.0).reshape(3, 2))
    offline = tape.backward()
    np.testing.assert_array_equal(offline[tape.inputs[0]], grad_of(a))
    np.testing.assert_array_equal(offline[tape.inputs[1]], grad_of(b))


def test_user_function_second_order():
    x = Variable(np.array(3.0))
    y = Square()(Square()(x))  # x**4
    y.backward(create_graph=True)
    gx = x.grad
    assert gx.data == 108.0
    x.cleargrad()
    gx.backward()
    assert grad_of(x) == 108.0  # 12 x**2


# -- clear errors ------------------------------------------------------------------------------


def test_shape_mismatch_in_add_names_the_op_and_both_shapes():
    with pytest.raises(ValueError) as info:
        Variable(np.ones((2, 3))) + Variable(np.ones(4))
    msg = str(info.value)
    assert "add" in msg
    assert "(2, 3)" in msg and "(4,)" in msg


@pytest.mark.parametrize(
    "call,op",
    [
        (lambda a, b: a @ b, "matmul"),
        (lambda a, b: a * b, "mul"),
        (lambda a, b: a - b, "sub"),
        (lambda a, b: a / b, "div"),
        (lambda a, b: F.matmul(a, b), "matmul"),
        (lambda a, b: F.linear(a, b), "linear"),
    ],
)
def test_shape_mismatch_errors_at_the_call(call, op):
    a = Variable(np.ones((2, 3)))
    b = Variable(np.ones((4, 2)))
    with pytest.raises(ValueError) as info:
        call(a, b)
    msg = str(info.value)
    assert op in msg
    assert "(2, 3)" in msg and "(4, 2)" in msg


def test_user_backward_returning_too_few_gradients():
    class Bad(Function):
        def forward(self, x0, x1):
            return x0 + x1

        def backward(self, gy):
            return gy

    y = Bad()(Variable(np.ones(2)), Variable(np.ones(2)))
    with pytest.raises(ValueError, match=r"Bad.*1 gradients? for 2 inputs"):
        y.backward()


def test_user_backward_returning_a_wrong_shape():
    class BadShape(Function):
        def forward(self, x):
            return x.sum()

        def backward(self, gy):
            return gy  # should be broadcast to x's shape

    y = BadShape()(Variable(np.ones((2, 2))))
    with pytest.raises(ValueError, match=r"BadShape.*\(\).*\(2, 2\)"):
        y.backward()


def test_function_rejects_unsupported_inputs():
    with pytest.raises(TypeError):
        F.sin("not a number")
    with pytest.raises(TypeError):
        Variable(np.ones(2)) + [1.0, 2.0]
