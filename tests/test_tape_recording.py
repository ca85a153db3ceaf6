"""Recording onto tapes (contract section 2, recording part): what a tape holds and how it replays."""

from __future__ import annotations

import asyncio
import threading
import warnings
import weakref

import numpy as np
import pytest

import tapegrad
import tapegrad.functions as F
from tapegrad import Function, Variable, no_grad


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


# -- inputs, constants, outputs, names ---------------------------------------------------------


def test_inputs_are_named_leaves_in_first_use_order():
    a = Variable(np.ones(2), name="a")
    b = Variable(np.ones(2), name="b")
    c = Variable(np.ones(2), name="c")
    with tapegrad.record() as tape:
        y = c * b  # c is used first
        y = y + a
        y = y * c  # reused: still one input
    assert tape.inputs == ["c", "b", "a"]


def test_unnamed_and_duplicate_names_get_unique_generated_names():
    w1 = Variable(np.ones(2), name="W")
    w2 = Variable(np.full(2, 2.0), name="W")  # a second, distinct Variable called W
    u1 = Variable(np.full(2, 3.0))
    u2 = Variable(np.full(2, 4.0))
    with tapegrad.record() as tape:
        y = F.sum(w1 * w2 + u1 * u2)
    inputs = tape.inputs
    assert len(inputs) == 4
    assert inputs[0] == "W"
    assert len(set(inputs)) == 4
    assert len(set(tape.value_names)) == len(tape.value_names)  # unique within the tape
    # each name reads back the value of its own Variable
    for name, v in zip(inputs, (w1, w2, u1, u2)):
        np.testing.assert_array_equal(tape[name], v.data)
    grads = tape.backward()
    y.backward()
    for name, v in zip(inputs, (w1, w2, u1, u2)):
        np.testing.assert_array_equal(grads[name], v.grad.data)


def test_scalars_and_arrays_on_the_way_are_constants():
    x = Variable(np.array([1.0, 2.0]), name="x")
    with tapegrad.record() as tape:
        y = x * 2.0 + np.array([10.0, 20.0])
        y = 3 - y
        y = F.sum(y / np.float64(4.0))
    assert tape.inputs == ["x"]
    assert len(tape.constants) == 4
    consts = sorted(float(np.sum(tape[c])) for c in tape.constants)
    assert consts == [2.0, 3.0, 4.0, 30.0]
    grads = tape.backward()
    assert set(grads) == {"x"}  # constants get no gradient
    np.testing.assert_array_equal(grads["x"], [-0.5, -0.5])


def test_value_made_before_recording_is_an_input():
    x = Variable(np.array([1.0, 2.0]), name="x")
    h = F.sin(x)  # made outside the tape
    with tapegrad.record() as tape:
        y = F.sum(h * h)
    assert len(tape.inputs) == 1
    (name,) = tape.inputs
    np.testing.assert_array_equal(tape[name], np.sin([1.0, 2.0]))
    y.backward()
    np.testing.assert_array_equal(tape.backward()[name], 2 * np.sin([1.0, 2.0]))


def test_outputs_are_unconsumed_float_values():
    x = Variable(np.array([1.0, -1.0]), name="x")
    with tapegrad.record() as tape:
        a = F.tanh(x)
        _ = a > 0  # a comparison: not an output
        b = F.exp(a)
        c = F.sum(b)
        d = F.sin(a)  # a second, separate result
    names = {r.outputs[0]: r.op for r in tape.records}
    assert [names[o] for o in tape.outputs] == ["sum", "sin"]
    np.testing.assert_array_equal(tape[tape.outputs[0]], c.data)
    np.testing.assert_array_equal(tape[tape.outputs[1]], d.data)
    with pytest.raises(ValueError):
        tape.backward()  # two outputs: say which
    g = tape.backward(of=tape.outputs[0])
    np.testing.assert_allclose(g["x"], np.exp(np.tanh(x.data)) * (1 - np.tanh(x.data) ** 2))


def test_values_are_kept_as_recorded_through_in_place_updates():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3))
    t = rng.standard_normal((8, 1))
    W = Variable(rng.standard_normal((3, 1)), name="W")
    b = Variable(np.zeros(1), name="b")
    W0, b0 = W.data.copy(), b.data.copy()
    lr = 0.1
    with tapegrad.record() as tape:
        for _ in range(5):
            loss = F.mean_squared_error(F.linear(x, W, b), t)
            W.cleargrad()
            b.cleargrad()
            loss.backward()
            W.data -= lr * W.grad.data
            b.data -= lr * b.grad.data
    assert not np.array_equal(W.data, W0)  # the loop did train
    assert tape["W"].tobytes() == W0.tobytes()
    assert tape["b"].tobytes() == b0.tobytes()
    assert tape["W"].dtype == W0.dtype and tape["W"].shape == W0.shape


def test_a_leaf_array_nothing_else_holds_is_kept_without_a_copy():
    # A parameter's array that only the Variable refers to is kept by the tape as it is; once
    # the tape is gone, the Variable still has that very array (a training step copies nothing).
    W = tapegrad.Parameter(np.arange(3.0), name="W")
    original = weakref.ref(W._data)
    with tapegrad.record() as tape:
        F.sum(W * W).backward()
    assert tape["W"].base is original() or np.shares_memory(tape["W"], original())
    del tape
    W.data -= 0.5 * W.grad.data
    assert W.data is original()
    np.testing.assert_array_equal(W.data, [0.0, 0.0, 0.0])


def test_every_training_step_keeps_a_parameter_without_a_copy():
    # Each step's tape is gone by the update, so every step (not only the first) keeps W's
    # array as it is, and W keeps that very array through all the updates.
    W = tapegrad.Parameter(np.arange(3.0), name="W")
    original = weakref.ref(W._data)
    for step in range(3):
        W.cleargrad()
        with tapegrad.record() as tape:
            F.sum(W * W).backward()
        assert np.shares_memory(tape["W"], original()), step
        del tape
        W.data -= 0.25 * W.grad.data
        assert W.data is original()
    np.testing.assert_array_equal(W.data, np.arange(3.0) * 0.5**3)


def test_a_parameter_lent_to_a_tape_that_is_kept_is_copied_for_the_next_tape():
    W = tapegrad.Parameter(np.arange(3.0), name="W")
    with tapegrad.record() as first:
        F.sum(W * W).backward()
    kept = first["W"]
    with tapegrad.record() as second:
        F.sum(W * 3.0)
    W.data[...] = -1.0  # in place, through the Variable
    np.testing.assert_array_equal(first["W"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(second["W"], [0.0, 1.0, 2.0])
    assert np.shares_memory(first["W"], kept)
    with tapegrad.record() as outer:  # a slot named by a tape still recording is not taken
        F.sum(W * 2.0)
        with tapegrad.record() as inner:
            F.sum(W * 4.0)
        F.sum(W * 5.0)
    assert outer.inputs == ["W"] and inner.inputs == ["W"]
    assert len(outer.records) == 6 and len(inner.records) == 2


def test_a_freed_tape_leaves_the_table_of_tapes_that_keep_arrays():
    from tapegrad.core import _lenders

    W = tapegrad.Parameter(np.arange(3.0), name="W")
    with tapegrad.record() as tape:
        F.sum(W * W + W)  # W used twice: the tape enters the table once
    assert tape._serial in _lenders
    serial = tape._serial
    del tape
    assert serial not in _lenders


def test_a_record_block_is_entered_once_and_decorates_a_function_per_call():
    block = tapegrad.record()
    with block:
        pass
    with pytest.raises(RuntimeError, match="already in use"):
        block.__enter__()

    @tapegrad.record()
    def step(x):
        return F.sum(x * x)

    x = Variable(np.arange(3.0))
    with tapegrad.record() as outer:
        step(x)
        step(x)  # a new inner tape each call; the enclosing tape sees both calls
    assert [r.op for r in outer.records] == ["mul", "sum", "mul", "sum"]


def test_reaching_a_kept_array_while_its_tape_lives_gives_the_variable_a_copy():
    W = tapegrad.Parameter(np.arange(3.0), name="W")
    with tapegrad.record() as tape:
        y = F.sum(W * 2.0)
    a = W.data  # the tape is alive: W hands out an array of its own
    a *= 0  # changed in place, without telling anyone
    np.testing.assert_array_equal(W.data, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(tape["W"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(tape.replay({})[tape.outputs[0]], y.data)


def test_a_leaf_array_the_user_also_holds_is_copied_at_first_use():
    arr = np.arange(3.0)
    W = Variable(arr, name="W")
    with tapegrad.record() as tape:
        F.sum(W * W)
    arr += 10  # through the user's own reference: the tape cannot see this, so it copied
    np.testing.assert_array_equal(tape["W"], [0.0, 1.0, 2.0])


def test_later_records_see_the_value_the_leaf_had_then():
    # `W.data -= ...` assigns .data: the tape stores the updated W as a new input, "W@2".
    with tapegrad.record() as tape:
        W = Variable(np.array([1.0, 2.0]), name="W")
        for _ in range(2):
            loss = F.sum(W * W)
            W.cleargrad()
            loss.backward()
            live = W.grad.data.copy()
            W.data -= 0.1 * W.grad.data
    last = tape.outputs[-1]
    assert tape.inputs == ["W", "W@2"]
    np.testing.assert_array_equal(tape["W@2"], [0.8, 1.6])
    grads = tape.backward(of=last)
    np.testing.assert_array_equal(grads["W@2"], live)
    np.testing.assert_array_equal(grads["W"], [0.0, 0.0])
    np.testing.assert_array_equal(tape.replay({})[last], tape[last])


@pytest.mark.parametrize(
    "view", [lambda W: W.T, lambda W: W.reshape(4), lambda W: W[0]], ids=["T", "reshape", "slice"]
)
def test_views_of_a_leaf_are_kept_as_recorded(view):
    with tapegrad.record() as tape:
        W = Variable(np.array([[1.0, 2.0], [3.0, 4.0]]), name="W")
        v = view(W)
        recorded = v.data.copy()
        F.sum(v * v).backward()
        W.data -= 0.5 * W.grad.data  # the training step, in place
    assert tape[tape.records[0].outputs[0]].tobytes() == recorded.tobytes()


def test_tape_values_are_bit_for_bit():
    x = Variable(np.array([0.1, 1 / 3, np.pi], dtype=np.float64), name="x")
    with tapegrad.record() as tape:
        y = F.exp(F.sin(x))
    assert tape["x"].tobytes() == x.data.tobytes()
    assert tape[tape.outputs[0]].tobytes() == y.data.tobytes()


def test_unknown_name_is_a_key_error():
    with tapegrad.record() as tape:
        F.sin(Variable(np.ones(1), name="x"))
    with pytest.raises(KeyError):
        tape["nope"]


# -- records -----------------------------------------------------------------------------------


def test_records_have_op_attrs_inputs_outputs():
    x = Variable(np.ones((2, 3)), name="x")
    with tapegrad.record() as tape:
        a = F.sum(x, axis=1, keepdims=True)
        b = F.reshape(a, (1, 2))
        c = F.leaky_relu(b, 0.1)
    r0, r1, r2 = tape.records
    assert r0.op == "sum"
    assert r0.attrs == {"axis": 1, "keepdims": True}
    assert r0.inputs == ("x",)
    assert r1.op == "reshape" and r1.attrs == {"shape": (1, 2)}
    assert r1.inputs == r0.outputs
    assert r2.op == "leaky_relu" and r2.attrs == {"slope": 0.1}
    assert r2.inputs == r1.outputs
    assert tape.outputs == list(r2.outputs)
    np.testing.assert_array_equal(tape[r2.outputs[0]], c.data)
    for r in tape.records:
        assert isinstance(r.inputs, tuple) and isinstance(r.outputs, tuple)
        assert isinstance(r.attrs, dict)


OP_NAMES = [
    (lambda x, m: F.tanh(x), "tanh"),
    (lambda x, m: F.sin(x), "sin"),
    (lambda x, m: F.log(x), "log"),
    (lambda x, m: F.sum(x), "sum"),
    (lambda x, m: x @ m, "matmul"),
    (lambda x, m: F.matmul(x, m), "matmul"),
    (lambda x, m: x[0], "get_item"),
    (lambda x, m: x[:, np.array([1, 1])], "get_item"),
    (lambda x, m: F.get_item(x, 1), "get_item"),
    (lambda x, m: x + x, "add"),
    (lambda x, m: x - 1.0, "sub"),
    (lambda x, m: 2.0 * x, "mul"),
    (lambda x, m: x / 2.0, "div"),
    (lambda x, m: -x, "neg"),
    (lambda x, m: x**3, "pow"),
    (lambda x, m: x.T, "transpose"),
    (lambda x, m: x.reshape(3, 2), "reshape"),
]


@pytest.mark.parametrize("call,op", OP_NAMES)
def test_op_names_on_the_tape(call, op):
    x = Variable(np.full((2, 3), 0.5), name="x")
    m = Variable(np.ones((3, 2)), name="m")
    with tapegrad.record() as tape:
        call(x, m)
    assert [r.op for r in tape.records] == [op]


def test_user_function_records_with_its_attributes():
    class Scale(Function):
        def __init__(self, k):
            self.k = k

        def forward(self, x):
            return x * self.k

        def backward(self, gy):
            return gy * self.k

    with tapegrad.record() as tape:
        Scale(2.5)(Variable(np.ones(2), name="x"))
    (r,) = tape.records
    assert r.op.endswith("Scale")
    assert r.attrs == {"k": 2.5}
    np.testing.assert_array_equal(tape.backward()["x"], [2.5, 2.5])


def test_str_lists_one_line_per_record_with_shapes_and_dtypes():
    x = Variable(np.ones((2, 3), dtype=np.float32), name="x")
    w = Variable(np.ones((3, 4), dtype=np.float32), name="w")
    with tapegrad.record() as tape:
        h = F.tanh(x @ w)
        F.sum(h, axis=0)
    text = str(tape)
    lines = text.splitlines()
    for r in tape.records:
        matching = [ln for ln in lines if f"{r.op}(" in ln]
        assert len(matching) == 1, text
    mm = next(ln for ln in lines if "matmul(" in ln)
    assert "x" in mm and "w" in mm
    assert "f32" in mm
    assert "[2,3]" in mm and "[3,4]" in mm and "[2,4]" in mm
    sm = next(ln for ln in lines if "sum(" in ln)
    assert "[4]" in sm and "axis=0" in sm


# -- offline backward and replay ---------------------------------------------------------------


def _mlp_params(rng):
    return (
        Variable(rng.standard_normal((4, 8)) * 0.5, name="W1"),
        Variable(np.zeros(8), name="b1"),
        Variable(rng.standard_normal((8, 3)) * 0.5, name="W2"),
        Variable(np.zeros(3), name="b2"),
    )


def _mlp_loss(x, params, t):
    W1, b1, W2, b2 = params
    h = F.tanh(F.linear(x, W1, b1))
    return F.softmax_cross_entropy(F.linear(h, W2, b2), t)


def test_tape_backward_equals_live_gradients_on_an_mlp(rng):
    params = _mlp_params(rng)
    x = Variable(rng.standard_normal((6, 4)), name="x")
    t = np.array([0, 1, 2, 2, 1, 0])
    with tapegrad.record() as tape:
        loss = _mlp_loss(x, params, t)
    loss.backward()
    grads = tape.backward()
    assert set(grads) == {"x", "W1", "b1", "W2", "b2"}
    for v in (x, *params):
        assert grads[v.name].dtype == v.grad.data.dtype
        assert grads[v.name].tobytes() == v.grad.data.tobytes(), v.name


def test_tape_backward_equals_live_on_a_dag_with_fanout(rng):
    x = Variable(rng.standard_normal((3, 2)), name="x")
    w = Variable(rng.standard_normal(2), name="w")
    with tapegrad.record() as tape:
        a = F.sin(x) * w  # x used below again, a used three times
        b = a * a + F.exp(F.tanh(a))
        c = F.sum(b * x, axis=0) + F.sum(a, axis=0) * w
        y = F.sum(c * c)
    y.backward()
    grads = tape.backward()
    assert grads["x"].tobytes() == x.grad.data.tobytes()
    assert grads["w"].tobytes() == w.grad.data.tobytes()


def test_tape_backward_with_a_cotangent(rng):
    x = Variable(rng.standard_normal(3), name="x")
    with tapegrad.record() as tape:
        y = F.tanh(x) * 2.0
    gy = np.array([1.0, -2.0, 0.5])
    y.grad = Variable(gy)
    y.backward()
    assert tape.backward(grad=gy)["x"].tobytes() == x.grad.data.tobytes()


def test_replay_with_new_inputs_equals_a_live_run(rng):
    params = _mlp_params(rng)
    t = np.array([2, 0, 1])
    with tapegrad.record() as tape:
        loss = _mlp_loss(Variable(rng.standard_normal((3, 4)), name="x"), params, t)
    x_new = rng.standard_normal((3, 4))
    W1_new = rng.standard_normal((4, 8))
    replayed = tape.replay({"x": x_new, "W1": W1_new})
    live = _mlp_loss(Variable(x_new), (Variable(W1_new), *params[1:]), t)
    out = replayed.outputs[0]
    assert replayed[out].tobytes() == live.data.tobytes()
    # the replayed tape can be differentiated too, at the new point
    W1 = Variable(W1_new)
    live = _mlp_loss(Variable(x_new), (W1, *params[1:]), t)
    live.backward()
    np.testing.assert_array_equal(replayed.backward()["W1"], W1.grad.data)
    # the original tape is untouched
    assert tape[tape.outputs[0]].tobytes() == loss.data.tobytes()


def _branchy(x):
    if F.sum(x) > 0:
        return x * 2.0
    return x * 3.0


def test_replay_through_the_same_branch_is_fine():
    with tapegrad.record() as tape:
        _branchy(Variable(np.array([1.0, 2.0]), name="x"))
    replayed = tape.replay({"x": np.array([5.0, -1.0])})
    np.testing.assert_array_equal(replayed[replayed.outputs[0]], [10.0, -2.0])


def test_replay_with_a_changed_branch_guard_raises():
    with tapegrad.record() as tape:
        _branchy(Variable(np.array([1.0, 2.0]), name="x"))
    assert "guard" in [r.op for r in tape.records]
    with pytest.raises(tapegrad.GuardError):
        tape.replay({"x": np.array([-5.0, -1.0])})


def test_replay_with_a_changed_branch_guard_warns_when_not_strict():
    with tapegrad.record() as tape:
        _branchy(Variable(np.array([1.0, 2.0]), name="x"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        replayed = tape.replay({"x": np.array([-5.0, -1.0])}, strict=False)
    assert caught, "expected a warning about the other branch"
    # the recorded path is still followed
    np.testing.assert_array_equal(replayed[replayed.outputs[0]], [-10.0, -2.0])


def test_create_graph_backward_is_recorded_on_the_active_tape():
    x = Variable(np.array(0.5), name="x")
    with tapegrad.record() as tape:
        y = F.tanh(x)
        n_forward = len(tape)
        y.backward(create_graph=True)
    assert len(tape) > n_forward
    gx = x.grad
    # the gradient is a value on the tape, so the tape can differentiate it again
    names = [r.outputs[0] for r in tape.records]
    assert any(tape[n].tobytes() == gx.data.tobytes() for n in names)


def test_first_order_backward_is_not_recorded():
    x = Variable(np.array(0.5), name="x")
    with tapegrad.record() as tape:
        y = F.tanh(x) * 2.0
        y.backward()
    assert [r.op for r in tape.records] == ["tanh", "mul"]


# -- where records go: threads, tasks, nesting, no_grad ----------------------------------------


def test_threads_recording_at_once_never_mix(rng):
    start = threading.Barrier(2)
    tapes: dict[str, tapegrad.Tape] = {}
    errors: list[BaseException] = []

    def work(name, fn, n):
        try:
            with tapegrad.record() as tape:
                start.wait()
                v = Variable(np.ones(3), name=name)
                for _ in range(n):
                    v = fn(v)
            tapes[name] = tape
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [
        threading.Thread(target=work, args=("a", F.sin, 400)),
        threading.Thread(target=work, args=("b", F.cos, 300)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(tapes["a"]) == 400 and {r.op for r in tapes["a"]} == {"sin"}
    assert len(tapes["b"]) == 300 and {r.op for r in tapes["b"]} == {"cos"}
    assert tapes["a"].inputs == ["a"] and tapes["b"].inputs == ["b"]


def test_thread_started_inside_a_block_does_not_record_into_it():
    done = []

    def other():
        F.exp(Variable(np.ones(2)))
        done.append(True)

    with tapegrad.record() as tape:
        F.sin(Variable(np.ones(2), name="x"))
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert done == [True]
    assert [r.op for r in tape.records] == ["sin"]


def test_asyncio_task_created_inside_the_block_records_into_it():
    async def job():
        await asyncio.sleep(0)
        return F.cos(Variable(np.ones(2), name="t"))

    async def main():
        with tapegrad.record() as tape:
            task = asyncio.create_task(job())
            F.sin(Variable(np.ones(2), name="x"))
            await task
        outside = asyncio.create_task(job())  # created after the block: not recorded
        await outside
        return tape

    tape = asyncio.run(main())
    assert sorted(r.op for r in tape.records) == ["cos", "sin"]


def test_nested_tapes_both_receive_inner_calls():
    x = Variable(np.array([0.5, 1.0]), name="x")
    with tapegrad.record() as outer:
        a = F.sin(x)
        with tapegrad.record() as inner:
            b = F.exp(a)
        c = F.sum(b)
    assert [r.op for r in outer.records] == ["sin", "exp", "sum"]
    assert [r.op for r in inner.records] == ["exp"]
    # for the inner tape, a (made before it started) is an input
    assert len(inner.inputs) == 1
    np.testing.assert_array_equal(inner[inner.inputs[0]], a.data)
    c.backward()
    np.testing.assert_array_equal(outer.backward()["x"], x.grad.data)


def test_calls_inside_no_grad_are_not_recorded():
    x = Variable(np.ones(2), name="x")
    with tapegrad.record() as tape:
        a = F.sin(x)
        with no_grad():
            F.cos(a)
            _ = a > 0
            bool(Variable(np.array([1.0])))
        F.exp(a)
    assert [r.op for r in tape.records] == ["sin", "exp"]


def test_tape_is_no_longer_active_after_the_block():
    with tapegrad.record() as tape:
        F.sin(Variable(np.ones(1)))
    F.cos(Variable(np.ones(1)))
    assert [r.op for r in tape.records] == ["sin"]


def test_tape_is_no_longer_active_after_an_exception():
    with pytest.raises(RuntimeError):
        with tapegrad.record() as tape:
            F.sin(Variable(np.ones(1)))
            raise RuntimeError
    F.cos(Variable(np.ones(1)))
    assert [r.op for r in tape.records] == ["sin"]
