"""Offline backward and forward replay of tapes (issue 4, library items 1 and 2).

Gradients replayed from a saved tape equal the live ones bit for bit (MLPs, dropout, a chosen
output with a given cotangent, recovered prefixes of cut-short files); ``replay`` with new inputs
equals a live run there, reuses recorded dropout masks, names the record whose shapes no longer
fit, and enforces branch guards; a loaded tape works in a fresh process that never saw the script,
and an op unknown to that process still loads but refuses to run.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import tapegrad
import tapegrad.functions as F
from tapegrad import Variable

SEED = 4242


def live_grads(params) -> dict[str, np.ndarray]:
    return {p.name: p.grad.data for p in params}


def assert_bitwise(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(actual) == set(expected)
    for k, e in expected.items():
        a = actual[k]
        assert a.dtype == e.dtype, (k, a.dtype, e.dtype)
        assert a.shape == e.shape, (k, a.shape, e.shape)
        assert np.array_equal(a, e, equal_nan=True), (k, np.max(np.abs(a - e)))


# -- MLPs -----------------------------------------------------------------------------------------

ACTS = {"tanh": F.tanh, "sigmoid": F.sigmoid, "relu": F.relu}


def make_params(dtype=np.float64, seed=SEED, sizes=(4, 6, 3)):
    rng = np.random.default_rng(seed)
    n_in, n_hid, n_out = sizes
    return [
        Variable((rng.standard_normal((n_in, n_hid)) * 0.7).astype(dtype), name="W1"),
        Variable((rng.standard_normal(n_hid) * 0.1).astype(dtype), name="b1"),
        Variable((rng.standard_normal((n_hid, n_out)) * 0.7).astype(dtype), name="W2"),
        Variable((rng.standard_normal(n_out) * 0.1).astype(dtype), name="b2"),
    ]


def make_data(dtype=np.float64, seed=SEED + 1, n=8, sizes=(4, 6, 3)):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, sizes[0])).astype(dtype)
    labels = rng.integers(0, sizes[2], size=n)
    target = rng.standard_normal((n, sizes[2])).astype(dtype)
    return x, labels, target


def mlp_loss(params, x, labels, target, act="tanh", loss="softmax_cross_entropy"):
    W1, b1, W2, b2 = params
    h = ACTS[act](F.linear(x, W1, b1))
    y = F.linear(h, W2, b2)
    if loss == "softmax_cross_entropy":
        return F.softmax_cross_entropy(y, labels)
    return F.mean_squared_error(y, target)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mean_squared_error"])
@pytest.mark.parametrize("act", ["tanh", "sigmoid", "relu"])
def test_offline_gradients_of_a_saved_mlp_equal_live_bit_for_bit(tmp_path, act, loss, dtype):
    params = make_params(dtype)
    x, labels, target = make_data(dtype)
    with tapegrad.record() as tape:
        L = mlp_loss(params, x, labels, target, act, loss)
    L.backward()
    live = live_grads(params)
    assert_bitwise(tape.backward(), live)  # the recorded tape

    path = tmp_path / "mlp.tape"
    tape.save(path)
    loaded = tapegrad.load(path)
    assert loaded.inputs == ["W1", "b1", "W2", "b2"]
    assert loaded.outputs == tape.outputs
    assert_bitwise(loaded.backward(), live)  # replayed from the file alone
    assert_bitwise(loaded.grads, live)  # the gradients saved with it
    assert loaded[loaded.outputs[0]].dtype == dtype


def test_offline_gradients_with_dropout_equal_live(tmp_path, np_seed):
    params = make_params()
    x, labels, _ = make_data()
    W1, b1, W2, b2 = params
    with tapegrad.record() as tape:
        h = F.dropout(F.relu(F.linear(x, W1, b1)), 0.4)
        L = F.softmax_cross_entropy(F.linear(h, W2, b2), labels)
    L.backward()
    assert "dropout" in [r.op for r in tape.records]
    tape.save(tmp_path / "drop.tape")
    loaded = tapegrad.load(tmp_path / "drop.tape")
    assert_bitwise(loaded.backward(), live_grads(params))


def _two_output_run(params, x):
    W1, b1, W2, b2 = params
    h = F.tanh(F.linear(x, W1, b1))
    feats = F.linear(h, W2, b2)  # (n, 3): a vector-valued output
    penalty = F.sum(h * h)  # a scalar output
    return feats, penalty


def test_offline_gradient_of_a_chosen_output_with_a_cotangent(tmp_path):
    params = make_params()
    x, _, _ = make_data()
    with tapegrad.record() as tape:
        feats, penalty = _two_output_run(params, x)
    tape.save(tmp_path / "two.tape")
    loaded = tapegrad.load(tmp_path / "two.tape")
    assert len(loaded.outputs) == 2
    by_shape = {loaded[n].shape: n for n in loaded.outputs}
    of_feats, of_pen = by_shape[feats.shape], by_shape[()]
    with pytest.raises(ValueError, match="of="):  # two outputs: which one?
        loaded.backward()

    w = np.random.default_rng(1).standard_normal(feats.shape)
    feats.grad = Variable(w)
    feats.backward()
    live = live_grads(params)
    assert_bitwise(loaded.backward(of=of_feats, grad=w), live)
    assert_bitwise(loaded.backward(of=of_feats, grad=Variable(w)), live)
    with pytest.raises(ValueError, match="shape"):
        loaded.backward(of=of_feats, grad=np.ones(3))

    for p in params:
        p.cleargrad()
    penalty.backward()
    pen = {p.name: p.grad.data if p.grad is not None else np.zeros_like(p.data) for p in params}
    got = loaded.backward(of=of_pen)
    assert_bitwise({k: got[k] for k in ("W1", "b1")}, {k: pen[k] for k in ("W1", "b1")})
    assert not got["W2"].any() and not got["b2"].any()  # not on the penalty's path


# -- recovered prefixes ------------------------------------------------------------------------------

KILL_SCRIPT = """
import os, signal, sys
import numpy as np
import tapegrad, tapegrad.functions as F
from tapegrad import Variable

rng = np.random.default_rng({seed})
x = Variable(rng.standard_normal((4, 3)), name="x")
W = Variable(rng.standard_normal((3, 3)) * 0.5, name="W")
with tapegrad.record(sys.argv[1]):
    h = x
    for i in range(1000):
        h = F.tanh(F.matmul(h, W))
        if i == {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def _kill_inputs(seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((4, 3)), rng.standard_normal((3, 3)) * 0.5


def _live_prefix(steps, n_records, values, seed_grad=None):
    """Run the first ``n_records`` steps live; the gradients of their last output."""
    vs = {n: Variable(np.array(v, copy=True), name=n) for n, v in values.items()}
    h = None
    for step in steps[:n_records]:
        h = step(vs, h)
    h.grad = Variable(np.ones_like(h.data) if seed_grad is None else seed_grad)
    h.backward()
    return {n: v.grad.data if v.grad is not None else np.zeros_like(v.data) for n, v in vs.items()}


KILL_STEPS = [
    lambda vs, h: F.matmul(vs["x"] if h is None else h, vs["W"]),
    lambda vs, h: F.tanh(h),
] * 1000


@pytest.fixture(scope="module")
def killed_tape(tmp_path_factory):
    """A tape streamed by a process that died (SIGKILL) after 6 loop iterations."""
    d = tmp_path_factory.mktemp("killed")
    script = d / "train.py"
    script.write_text(KILL_SCRIPT.format(seed=SEED, kill_after=5))
    path = d / "killed.tape"
    r = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    return path


def test_a_killed_recording_is_recovered_and_its_prefix_differentiates_like_live(killed_tape):
    with pytest.raises(tapegrad.TapeTruncatedError):
        tapegrad.load(killed_tape)
    tape = tapegrad.load(killed_tape, recover=True)
    assert not tape.complete
    assert len(tape) == 12  # every record completed before the kill: 6 x (matmul, tanh)
    assert [r.op for r in tape.records] == ["matmul", "tanh"] * 6
    assert tape.inputs == ["x", "W"]
    last = tape.records[-1].outputs[0]
    assert tape.outputs == [last]
    x0, W0 = _kill_inputs(SEED)
    np.testing.assert_array_equal(tape["x"], x0)
    live = _live_prefix(KILL_STEPS, len(tape), {"x": x0, "W": W0})
    assert_bitwise(tape.backward(), live)
    assert_bitwise(tape.backward(of=last), live)

    # and the derived tools work on the prefix
    w = np.random.default_rng(2).standard_normal((4, 3))
    assert_bitwise(tape.vjp(of=last, grad=w), _live_prefix(KILL_STEPS, 12, {"x": x0, "W": W0}, w))
    J = tape.jacobian(of=last, wrt="W")
    assert J.shape == (4, 3, 3, 3)
    np.testing.assert_allclose(
        np.einsum("ij,ijkl->kl", w, J), tape.vjp(of=last, grad=w, wrt="W"), rtol=1e-12
    )
    replayed = tape.replay({"x": x0 * 0.5})
    assert len(replayed) == 12
    h = x0 * 0.5
    for _ in range(6):
        h = np.tanh(h @ W0)
    np.testing.assert_allclose(replayed[last], h, rtol=1e-14)


STREAM_STEPS = [
    lambda vs, h: F.matmul(vs["x"] if h is None else h, vs["W"]),
    lambda vs, h: h + 0.25,  # a constant on the way
    lambda vs, h: F.tanh(h),
] * 4


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    rng = np.random.default_rng(SEED + 7)
    values = {"x": rng.standard_normal((3, 3)), "W": rng.standard_normal((3, 3)) * 0.6}
    path = tmp_path_factory.mktemp("stream") / "run.tape"
    vs = {n: Variable(v.copy(), name=n) for n, v in values.items()}
    with tapegrad.record(path) as tape:
        h = None
        for step in STREAM_STEPS:
            h = step(vs, h)
    return path, tape, values


def _cuts(data: bytes) -> list[int]:
    return list(range(0, len(data), 37)) + [len(data) - 1]


def test_every_cut_of_a_streamed_tape_recovers_its_complete_records(tmp_path, streamed):
    path, full, values = streamed
    data = path.read_bytes()
    full_records = full.records
    seen = set()
    for cut in _cuts(data):
        p = tmp_path / "cut.tape"
        p.write_bytes(data[:cut])
        with pytest.raises(tapegrad.TapeFormatError):
            tapegrad.load(p)
        try:
            tape = tapegrad.load(p, recover=True)
        except tapegrad.TapeTruncatedError:
            continue  # cut inside the header: nothing to recover
        assert not tape.complete
        n = len(tape)
        assert tape.records == full_records[:n], cut
        seen.add(n)
        if n == 0:
            continue
        last = tape.records[-1].outputs[0]
        got = tape.backward(of=last)
        live = _live_prefix(STREAM_STEPS, n, values)
        assert_bitwise({k: got[k] for k in got}, {k: live[k] for k in got})
    assert len(seen) >= 8  # the cuts hit many different prefixes


def test_recovered_outputs_are_only_those_of_complete_records(tmp_path, streamed):
    path, _, _ = streamed
    data = path.read_bytes()
    bad = []
    for cut in _cuts(data):
        p = tmp_path / "cut.tape"
        p.write_bytes(data[:cut])
        try:
            tape = tapegrad.load(p, recover=True)
        except tapegrad.TapeTruncatedError:
            continue
        produced = {o for r in tape.records for o in r.outputs}
        if not set(tape.outputs) <= produced:
            bad.append((cut, len(tape), tape.outputs))
    assert not bad, bad[:3]


# -- forward replay --------------------------------------------------------------------------------


def test_replay_with_new_inputs_equals_a_live_run(tmp_path):
    params = make_params()
    x, labels, target = make_data()
    with tapegrad.record() as tape:
        mlp_loss(params, x, labels, target, "tanh", "mean_squared_error")
    tape.save(tmp_path / "a.tape")
    loaded = tapegrad.load(tmp_path / "a.tape")

    new_params = make_params(seed=99)
    new = {p.name: p.data for p in new_params}
    with tapegrad.record() as live_tape:
        L2 = mlp_loss(new_params, x, labels, target, "tanh", "mean_squared_error")
    L2.backward()
    for source in (tape, loaded):
        replayed = source.replay(new)
        assert isinstance(replayed, tapegrad.Tape)
        assert replayed.records == live_tape.records
        d = tapegrad.diff(replayed, live_tape, rtol=0, atol=0)
        assert d.same, str(d)
        assert replayed[replayed.outputs[0]] == L2.data
        assert_bitwise(replayed.backward(), live_grads(new_params))
        # the replayed tape is a tape like any other: it saves and loads
        replayed.save(tmp_path / "r.tape")
        again = tapegrad.load(tmp_path / "r.tape")
        assert tapegrad.diff(again, live_tape, rtol=0, atol=0).same
    # the original is untouched
    np.testing.assert_array_equal(loaded["W1"], params[0].data)


def test_replay_changes_only_the_named_inputs():
    params = make_params()
    x, labels, target = make_data()
    with tapegrad.record() as tape:
        mlp_loss(params, x, labels, target)
    new_W2 = np.full_like(params[2].data, 0.1)
    r = tape.replay({"W2": new_W2})
    np.testing.assert_array_equal(r["W2"], new_W2)
    np.testing.assert_array_equal(r["W1"], params[0].data)
    for c in tape.constants:
        np.testing.assert_array_equal(r[c], tape[c])


def test_replay_at_the_same_inputs_reproduces_a_dropout_tape_bit_for_bit(tmp_path, np_seed):
    params = make_params()
    x, labels, _ = make_data()
    W1, b1, W2, b2 = params
    with tapegrad.record() as tape:
        h = F.dropout(F.tanh(F.linear(x, W1, b1)), 0.5)
        F.softmax_cross_entropy(F.linear(h, W2, b2), labels)
    tape.save(tmp_path / "d.tape")
    loaded = tapegrad.load(tmp_path / "d.tape")
    state = np.random.get_state()
    for source in (tape, loaded):
        for inputs in ({}, {p.name: p.data for p in params}):
            r = source.replay(inputs)
            assert tapegrad.diff(r, tape, rtol=0, atol=0).same
            assert r.value_names == tape.value_names
            for n in tape.value_names:
                a, b = r[n], tape[n]
                assert a.dtype == b.dtype and np.array_equal(a, b), n
    # replaying never draws new random numbers
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state()[1:3], state[1:3]))


def test_replay_at_new_inputs_reuses_the_recorded_dropout_mask(np_seed):
    x = Variable(np.random.default_rng(3).standard_normal((5, 7)), name="x")
    with tapegrad.record() as tape:
        F.sum(F.dropout(x, 0.3) * 2.0)
    (mask_name,) = [r.inputs[1] for r in tape.records if r.op == "dropout"]
    mask = tape[mask_name]
    assert mask.dtype == np.bool_ and 0 < mask.sum() < mask.size
    x_new = np.random.default_rng(4).standard_normal((5, 7))
    r = tape.replay({"x": x_new})
    np.testing.assert_allclose(r[r.outputs[0]], np.sum(x_new * mask / 0.7 * 2.0), rtol=1e-13)

    # the same as a live run that drew the same mask
    np.random.seed(np_seed)
    with tapegrad.record() as live:
        F.sum(F.dropout(Variable(x_new, name="x"), 0.3) * 2.0)
    assert tapegrad.diff(r, live, rtol=0, atol=0).same


def test_replay_of_a_float32_tape_keeps_float32():
    params = make_params(np.float32)
    x, labels, _ = make_data(np.float32)
    with tapegrad.record() as tape:
        mlp_loss(params, x, labels, None)
    r = tape.replay({"W1": params[0].data.astype(np.float64) * 2})
    assert r["W1"].dtype == np.float32
    assert r[r.outputs[0]].dtype == np.float32
    assert all(g.dtype == np.float32 for g in r.backward().values())


def test_replay_with_integer_values_for_a_float_input_stays_float():
    x = Variable(np.array([0.5, 1.5, 2.5]), name="x")
    with tapegrad.record() as tape:
        F.sum(x * x)
    r = tape.replay({"x": np.array([1, 2, 3])})
    assert r["x"].dtype == np.float64
    assert r.outputs == tape.outputs  # still a floating-point output
    assert r[r.outputs[0]] == 14.0


def test_replay_with_an_incompatible_shape_names_the_record_and_both_shapes():
    x = Variable(np.ones((4, 3)), name="x")
    W = Variable(np.ones((3, 2)), name="W")
    with tapegrad.record() as tape:
        h = F.tanh(x)
        F.sum(F.matmul(h, W))
    with pytest.raises(ValueError) as e:
        tape.replay({"x": np.ones((4, 5))})
    msg = str(e.value)
    assert "record 1" in msg and "matmul" in msg
    assert "(4, 5)" in msg and "(3, 2)" in msg  # the shapes it got
    assert "(4, 3)" in msg  # and the shape recorded there

    # a batch of another size still fits: that is not an error
    r = tape.replay({"x": np.ones((7, 3))})
    assert r[r.outputs[0]] == pytest.approx(7 * 2 * 3 * np.tanh(1.0))


def test_replay_with_an_index_out_of_range_names_the_record():
    x = Variable(np.arange(6.0).reshape(2, 3), name="x")
    with tapegrad.record() as tape:
        F.sum(x[1] * 2.0)
    with pytest.raises((ValueError, IndexError)) as e:
        tape.replay({"x": np.ones((1, 3))})
    msg = str(e.value)
    assert "record 0" in msg and "get_item" in msg and "(1, 3)" in msg


def test_replay_with_an_unknown_input_name_says_which_inputs_exist():
    x = Variable(np.ones(2), name="x")
    with tapegrad.record() as tape:
        F.sum(x * 2.0)
    with pytest.raises(KeyError, match="'x'") as e:
        tape.replay({"y": np.ones(2)})
    assert "y" in str(e.value)


# -- branch guards ---------------------------------------------------------------------------------


def branchy(x):
    if x > 0:  # the recorded branch guard
        return x * x
    return -x


GUARD_LINE = inspect.getsourcelines(branchy)[1] + 1
THIS_FILE = os.path.basename(__file__)


def _record_branchy(value, source):
    x = Variable(np.array(value), name="x")
    with tapegrad.record(source=source) as tape:
        y = branchy(x)
    return tape, y


def test_an_if_on_a_value_is_recorded_as_a_guard():
    tape, _ = _record_branchy(2.0, source=False)
    assert [r.op for r in tape.records] == ["greater", "guard", "mul"]
    assert tape.outputs == [tape.records[-1].outputs[0]]  # guard results are not outputs
    r = tape.replay({"x": np.array(3.0)})  # the same branch: fine
    assert r[r.outputs[0]] == 9.0


@pytest.mark.parametrize("saved", [False, True])
def test_replay_that_flips_a_branch_raises_naming_the_record_and_source_line(tmp_path, saved):
    tape, _ = _record_branchy(2.0, source=True)
    if saved:
        tape.save(tmp_path / "g.tape")
        tape = tapegrad.load(tmp_path / "g.tape")
    with pytest.raises(tapegrad.GuardError) as e:
        tape.replay({"x": np.array(-1.0)})
    msg = str(e.value)
    assert "record 0" in msg and "greater" in msg
    assert f"{THIS_FILE}:{GUARD_LINE}" in msg
    assert "True" in msg and "False" in msg  # both results


def test_guard_error_without_source_still_names_the_record():
    tape, _ = _record_branchy(-2.0, source=False)
    assert [r.op for r in tape.records] == ["greater", "guard", "neg"]
    with pytest.raises(tapegrad.GuardError, match=r"record 0 \(greater\)"):
        tape.replay({"x": np.array(5.0)})


def test_a_non_strict_replay_warns_and_runs_the_recorded_path():
    tape, _ = _record_branchy(2.0, source=True)
    with pytest.warns(RuntimeWarning) as caught:
        r = tape.replay({"x": np.array(-3.0)}, strict=False)
    msgs = [str(w.message) for w in caught]
    assert "record 0 (greater) at " in msgs[0] and f"{THIS_FILE}:{GUARD_LINE}" in msgs[0]
    assert "record 1 (guard)" in msgs[1]
    assert all(os.path.basename(w.filename) == THIS_FILE for w in caught)  # the caller's line
    assert r[r.outputs[0]] == 9.0  # the recorded branch, x * x, evaluated at the new x


def test_bool_guard_alone_is_checked():
    x = Variable(np.array([1.5]), name="x")
    with tapegrad.record() as tape:
        flag = x > 1.0
        if flag:  # bool() of an already-computed comparison
            y = F.sum(x * 2.0)
    ops = [r.op for r in tape.records]
    assert ops[:2] == ["greater", "guard"]
    with pytest.raises(tapegrad.GuardError):
        tape.replay({"x": np.array([0.5])})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        tape.replay({"x": np.array([0.5])}, strict=False)
    msgs = [str(m.message) for m in w if issubclass(m.category, RuntimeWarning)]
    assert any("guard" in m for m in msgs), msgs
    del y


# -- a fresh process that never saw the script ----------------------------------------------------

USER_OPS = '''
"""User ops for the tests: a correct one and one whose backward is deliberately wrong."""
import numpy as np
import tapegrad


@tapegrad.register_op("tgreplay.scaled_square")
class ScaledSquare(tapegrad.Function):
    def __init__(self, scale=1.0):
        self.scale = scale

    def forward(self, x):
        return self.scale * x * x

    def backward(self, gy):
        (x,) = self.inputs
        return gy * x * (2.0 * self.scale)


@tapegrad.register_op("tgreplay.bad_square")
class BadSquare(tapegrad.Function):
    def forward(self, x):
        return x * x

    def backward(self, gy):
        (x,) = self.inputs
        return gy * x  # wrong: misses the factor 2
'''

FRESH = """
import json, sys
import numpy as np
import tapegrad

mlp, user, bad, out = sys.argv[1:5]
res = {"preloaded": sorted(m for m in sys.modules if m.startswith(("tgreplay", "test_")))}

t = tapegrad.load(user)  # its op is not registered here yet
res["listing"] = str(t)
res["ops"] = [r.op for r in t.records]
res["summary_records"] = t.summary()["records"]
for what, call in (("backward", t.backward), ("replay", lambda: t.replay({}))):
    try:
        call()
        res[what] = "no error"
    except tapegrad.UnknownOpError as e:
        res[what] = "UnknownOpError: " + str(e)

import tgreplay_ops  # noqa: E402  (the module registering the user ops)

arrays = {}
m = tapegrad.load(mlp)
for k, v in m.backward().items():
    arrays["mlp/" + k] = v
new = {n: m[n] * 0.5 for n in m.inputs}
r = m.replay(new)
arrays["mlp/replayed_loss"] = r[r.outputs[0]]
for k, v in r.backward().items():
    arrays["mlp/replayed/" + k] = v
for k, v in t.backward().items():
    arrays["user/" + k] = v
res["gradcheck_mlp"] = bool(m.gradcheck())
res["gradcheck_user"] = bool(t.gradcheck())
gb = tapegrad.load(bad).gradcheck()
res["gradcheck_bad"] = bool(gb)
res["gradcheck_bad_errors"] = gb.errors
np.savez(out, **arrays)
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def user_ops(tmp_path_factory):
    d = tmp_path_factory.mktemp("userops")
    (d / "tgreplay_ops.py").write_text(textwrap.dedent(USER_OPS))
    sys.path.insert(0, str(d))
    try:
        import tgreplay_ops  # noqa: F401
    finally:
        sys.path.remove(str(d))
    return sys.modules["tgreplay_ops"], d


def test_a_loaded_tape_works_in_a_fresh_process(tmp_path, user_ops):
    mod, mod_dir = user_ops
    params = make_params()
    x, labels, _ = make_data()
    with tapegrad.record() as tape:
        L = mlp_loss(params, x, labels, None, "sigmoid")
    L.backward()
    tape.save(tmp_path / "mlp.tape")
    live = live_grads(params)
    new_params = [Variable(p.data * 0.5, name=p.name) for p in params]
    L2 = mlp_loss(new_params, x, labels, None, "sigmoid")
    L2.backward()

    u = Variable(np.array([0.5, -1.0, 2.0]), name="u")
    with tapegrad.record() as t_user:
        yu = F.sum(F.tanh(mod.ScaledSquare(1.5)(u)))
    yu.backward()
    t_user.save(tmp_path / "user.tape")
    v = Variable(np.array([0.3, 1.1]), name="v")
    with tapegrad.record() as t_bad:
        F.sum(mod.BadSquare()(v))
    t_bad.save(tmp_path / "bad.tape")

    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    env = dict(os.environ, PYTHONPATH=str(mod_dir))
    args = [str(tmp_path / n) for n in ("mlp.tape", "user.tape", "bad.tape", "out.npz")]
    r = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["preloaded"] == []  # neither the tests nor the user module were imported

    # an unknown op still loads and lists, but will not run
    assert res["ops"] == ["tgreplay.scaled_square", "tanh", "sum"]
    assert "tgreplay.scaled_square" in res["listing"]
    assert res["summary_records"] == 3
    for what in ("backward", "replay"):
        assert res[what].startswith("UnknownOpError"), res[what]
        assert "tgreplay.scaled_square" in res[what]

    out = np.load(tmp_path / "out.npz")
    assert_bitwise({k: out["mlp/" + k] for k in live}, live)
    assert out["mlp/replayed_loss"] == L2.data
    assert_bitwise({k: out["mlp/replayed/" + k] for k in live}, live_grads(new_params))
    np.testing.assert_array_equal(out["user/u"], u.grad.data)
    assert res["gradcheck_mlp"] and res["gradcheck_user"]
    assert res["gradcheck_bad"] is False and res["gradcheck_bad_errors"]["v"] > 0.1


def test_unknown_op_in_this_process_loads_lists_and_refuses_to_run(tmp_path, user_ops):
    mod, _ = user_ops
    u = Variable(np.array([1.0, 2.0]), name="u")
    with tapegrad.record() as t:
        F.sum(mod.ScaledSquare(3.0)(u))
    t.save(tmp_path / "u.tape")
    # this process forgets the op for a moment, as a process that never imported it
    from tapegrad import registry

    cls = registry._OPS.pop("tgreplay.scaled_square")
    try:
        loaded = tapegrad.load(tmp_path / "u.tape")
        assert "tgreplay.scaled_square" in str(loaded)
        assert loaded.summary()["ops"]["tgreplay.scaled_square"] == 1
        assert loaded.records[0].attrs == {"scale": 3.0}
        with pytest.raises(tapegrad.UnknownOpError, match="tgreplay.scaled_square"):
            loaded.backward()
        with pytest.raises(tapegrad.UnknownOpError, match="tgreplay.scaled_square"):
            loaded.replay({"u": np.ones(2)})
        with pytest.raises(tapegrad.UnknownOpError, match="tgreplay.scaled_square"):
            loaded.gradcheck()
    finally:
        registry._OPS["tgreplay.scaled_square"] = cls
    assert loaded.backward()["u"].tolist() == [6.0, 12.0]
