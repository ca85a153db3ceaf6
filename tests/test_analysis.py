"""What a user asks of a tape (issue 4, library items 1, 3 and 4): vjp, jacobian and hvp against
numerical derivatives, the first non-finite value forward and backward, summary, stats, DOT text,
diff, the notebook HTML, and the gradient check (which must pass on correct tapes and fail on a
deliberately wrong op)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import tapegrad
import tapegrad.functions as F
from tapegrad import Function, Variable, register_op

SEED = 777


def rng(k: int = 0) -> np.random.Generator:
    return np.random.default_rng(SEED + k)


def roundtrip(tape: tapegrad.Tape, tmp_path, name: str = "t.tape") -> tapegrad.Tape:
    tape.save(tmp_path / name)
    return tapegrad.load(tmp_path / name)


def _mlp_tape(dtype=np.float64, act=F.tanh, loss="sce", source=False, meta=None):
    g = rng(1)
    x = g.standard_normal((6, 3)).astype(dtype)
    W1 = Variable((g.standard_normal((3, 5)) * 0.8).astype(dtype), name="W1")
    b1 = Variable((g.standard_normal(5) * 0.1).astype(dtype), name="b1")
    W2 = Variable((g.standard_normal((5, 4)) * 0.8).astype(dtype), name="W2")
    b2 = Variable((g.standard_normal(4) * 0.1).astype(dtype), name="b2")
    t = g.integers(0, 4, size=6)
    with tapegrad.record(source=source, meta=meta) as tape:
        y = F.linear(act(F.linear(x, W1, b1)), W2, b2)
        if loss == "sce":
            L = F.softmax_cross_entropy(y, t)
        else:
            L = F.mean_squared_error(y, g.standard_normal((6, 4)).astype(dtype))
    return tape, L, [W1, b1, W2, b2]


# -- vjp / jacobian / hvp ------------------------------------------------------------------------------


def _vector_fn(x, a):
    """A vector-valued function of x (3,), written in NumPy: the reference for the tape."""
    return np.stack([np.sin(x[0]) * x[1], np.tanh(x).sum() * a[0], np.exp(0.3 * x[2]) + x[0] ** 2])


def _record_vector(x0, a0):
    x = Variable(x0.copy(), name="x")
    a = Variable(a0.copy(), name="a")
    with tapegrad.record() as tape:
        y = F.stack([F.sin(x[0]) * x[1], F.sum(F.tanh(x)) * a[0], F.exp(0.3 * x[2]) + x[0] ** 2])
    return tape, y, x, a


def _central_jacobian(f, x, eps=1e-6):
    y0 = f(x)
    J = np.zeros(y0.shape + x.shape)
    for idx in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        J[(...,) + idx] = (f(x + e) - f(x - e)) / (2 * eps)
    return J


def test_jacobian_of_a_vector_output_matches_central_differences(tmp_path):
    x0, a0 = rng(2).standard_normal(3), np.array([1.7, -0.4])
    tape, y, _, _ = _record_vector(x0, a0)
    np.testing.assert_allclose(tape[tape.outputs[0]], _vector_fn(x0, a0), rtol=1e-15)
    for t in (tape, roundtrip(tape, tmp_path)):
        Jx = t.jacobian(wrt="x")
        Ja = t.jacobian(wrt="a")
        assert Jx.shape == (3, 3) and Ja.shape == (3, 2)
        np.testing.assert_allclose(
            Jx, _central_jacobian(lambda v: _vector_fn(v, a0), x0), atol=1e-8
        )
        np.testing.assert_allclose(
            Ja, _central_jacobian(lambda v: _vector_fn(x0, v), a0), atol=1e-8
        )
        assert not Ja[:, 1].any()  # a[1] is never used


def test_jacobian_of_a_matrix_output_has_shape_of_plus_wrt():
    W = Variable(rng(3).standard_normal((3, 4)), name="W")
    x = rng(4).standard_normal((2, 3))
    with tapegrad.record() as tape:
        F.tanh(F.matmul(x, W))
    J = tape.jacobian(wrt="W")
    assert J.shape == (2, 4, 3, 4)
    num = _central_jacobian(lambda w: np.tanh(x @ w), W.data)
    np.testing.assert_allclose(J, num, atol=1e-8)
    with pytest.raises(KeyError, match="nope"):
        tape.jacobian(wrt="nope")


def test_vjp_is_the_cotangent_times_the_jacobian():
    x0, a0 = rng(5).standard_normal(3), np.array([0.9, 2.0])
    tape, y, x, a = _record_vector(x0, a0)
    w = np.array([0.5, -1.0, 2.0])
    J = tape.jacobian(wrt="x")
    np.testing.assert_allclose(tape.vjp(grad=w, wrt="x"), w @ J, rtol=1e-12)
    both = tape.vjp(grad=w, wrt=["x", "a"])
    assert set(both) == {"x", "a"}
    every = tape.vjp(grad=w)
    assert set(every) == {"x", "a"}
    np.testing.assert_array_equal(every["a"], both["a"])
    # the live backward with the same cotangent gives the very same numbers
    y.grad = Variable(w)
    y.backward()
    np.testing.assert_array_equal(every["x"], x.grad.data)
    np.testing.assert_array_equal(every["a"], a.grad.data)
    with pytest.raises(KeyError, match="'q'"):
        tape.vjp(grad=w, wrt="q")


def _scalar_fn(x, W):
    return np.sum(np.tanh(x @ W) ** 2) + np.sum(np.sin(W) * W)


def _grad_numpy(x, W):
    h = np.tanh(x @ W)
    gh = 2 * h * (1 - h**2)
    return x.T @ gh + np.cos(W) * W + np.sin(W)


def test_hvp_matches_a_numerical_hessian_vector_product(tmp_path):
    g = rng(6)
    x = g.standard_normal((4, 3))
    W = Variable(g.standard_normal((3, 2)), name="W")
    with tapegrad.record() as tape:
        F.sum(F.tanh(F.matmul(x, W)) ** 2) + F.sum(F.sin(W) * W)
    np.testing.assert_allclose(tape[tape.outputs[0]], _scalar_fn(x, W.data), rtol=1e-14)
    np.testing.assert_allclose(tape.backward()["W"], _grad_numpy(x, W.data), rtol=1e-12)
    v = g.standard_normal((3, 2))
    eps = 1e-5
    num = (_grad_numpy(x, W.data + eps * v) - _grad_numpy(x, W.data - eps * v)) / (2 * eps)
    for t in (tape, roundtrip(tape, tmp_path)):
        hv = t.hvp(v=v)  # one input: v may be an array
        np.testing.assert_allclose(hv["W"], num, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(t.hvp(v={"W": v})["W"], hv["W"], rtol=1e-14)


def test_hvp_of_an_mlp_with_several_inputs(tmp_path):
    tape, L, params = _mlp_tape(loss="mse")
    loaded = roundtrip(tape, tmp_path)
    g = rng(7)
    v = {p.name: g.standard_normal(p.shape) for p in params}
    hv = loaded.hvp(v=v)
    assert set(hv) == set(loaded.inputs)
    eps = 1e-5
    plus = loaded.replay({n: loaded[n] + eps * v[n] for n in v}).backward()
    minus = loaded.replay({n: loaded[n] - eps * v[n] for n in v}).backward()
    for n in v:
        np.testing.assert_allclose(hv[n], (plus[n] - minus[n]) / (2 * eps), rtol=1e-5, atol=1e-8)
    # only some inputs in v: the others count as zeros
    part = loaded.hvp(v={"W2": v["W2"]})
    plus = loaded.replay({"W2": loaded["W2"] + eps * v["W2"]}).backward()
    minus = loaded.replay({"W2": loaded["W2"] - eps * v["W2"]}).backward()
    for n in v:
        np.testing.assert_allclose(part[n], (plus[n] - minus[n]) / (2 * eps), rtol=1e-5, atol=1e-8)


def test_hvp_needs_a_scalar_output():
    x0, a0 = rng(8).standard_normal(3), np.array([1.0, 1.0])
    tape, _, _, _ = _record_vector(x0, a0)
    with pytest.raises(ValueError, match="scalar"):
        tape.hvp(v={"x": np.ones(3)})


# -- non-finite values --------------------------------------------------------------------------------


def test_find_nonfinite_names_the_log_of_a_negative_number(tmp_path):
    x = Variable(np.array([1.0, 2.0, -3.0]), name="x")
    with np.errstate(all="ignore"), tapegrad.record(source=True) as tape:
        h = F.tanh(x) * 2.0
        y = F.sum(F.exp(F.log(x + 1.5)))  # log(-1.5) is NaN
    del h, y
    ops = [r.op for r in tape.records]
    k = ops.index("log")
    for t in (tape, roundtrip(tape, tmp_path)):
        r = t.find_nonfinite()
        f = r["forward"]
        assert f is not None and f["pass"] == "forward"
        assert f["record"] == k and f["op"] == "log"
        assert f["value"] == t.records[k].outputs[0]
        (name,) = f["inputs"]
        assert f["inputs"][name]["min"] == -1.5 and f["inputs"][name]["nan"] == 0
        assert "test_analysis.py:" in f["source"]
        assert "log(" in f["line"]
        assert r["inputs"] == []


def test_find_nonfinite_in_the_backward_pass_only(tmp_path):
    z = Variable(np.array([0.0, 1.0, 4.0]), name="z")
    with tapegrad.record() as tape:
        F.sum(F.sqrt(z) * 3.0)  # finite forward; d sqrt / dz at 0 is inf
    assert np.isfinite(tape[tape.outputs[0]])
    for t in (tape, roundtrip(tape, tmp_path)):
        r = t.find_nonfinite()
        assert r["forward"] is None
        b = r["backward"]
        assert b is not None and b["pass"] == "backward"
        assert b["op"] == "sqrt" and b["record"] == 0
        assert b["inputs"]["z"]["min"] == 0.0


def test_find_nonfinite_searches_the_backward_pass_of_every_output():
    z = Variable(np.array([0.0, 1.0, 4.0]), name="z")
    with tapegrad.record() as tape:
        F.sum(z * 2.0)  # fine
        F.sum(F.sqrt(z))  # an inf gradient
    assert len(tape.outputs) == 2
    b = tape.find_nonfinite()["backward"]
    assert b is not None and b["op"] == "sqrt" and b["record"] == 2
    assert b["of"] == tape.outputs[1]
    assert tape.find_nonfinite(of=tape.outputs[0])["backward"] is None


def test_find_nonfinite_on_a_finite_tape_finds_nothing():
    tape, _, _ = _mlp_tape()
    assert tape.find_nonfinite() == {"forward": None, "backward": None, "inputs": []}


def test_find_nonfinite_reports_non_finite_inputs():
    x = Variable(np.array([1.0, np.inf]), name="x")
    with tapegrad.record() as tape:
        F.sum(x * 0.5)
    r = tape.find_nonfinite()
    assert r["inputs"] == ["x"]


# -- summary, stats, listing, HTML ------------------------------------------------------------------


def test_summary_fields(tmp_path):
    tape, L, params = _mlp_tape(meta={"run": "exp-1", "lr": 0.1})
    L.backward()
    s = tape.summary()
    assert s["records"] == len(tape) == 4
    assert s["complete"] is True
    assert s["ops"] == {"linear": 2, "softmax_cross_entropy": 1, "tanh": 1}
    assert list(s["ops"]) == ["linear", "softmax_cross_entropy", "tanh"]  # most frequent first
    assert s["inputs"] == [
        {"name": "W1", "shape": [3, 5], "dtype": "float64"},
        {"name": "b1", "shape": [5], "dtype": "float64"},
        {"name": "W2", "shape": [5, 4], "dtype": "float64"},
        {"name": "b2", "shape": [4], "dtype": "float64"},
    ]
    assert s["outputs"] == [{"name": tape.outputs[0], "shape": [], "dtype": "float64"}]
    assert s["constants"] == 2  # the data and the labels
    f64 = sum(tape[n].nbytes for n in tape.value_names if tape[n].dtype == np.float64)
    assert s["bytes"] == {"float64": f64, "int64": 6 * 8}
    assert s["grads"] == ["W1", "W2", "b1", "b2"]
    assert s["meta"] == {"run": "exp-1", "lr": 0.1}

    loaded = roundtrip(tape, tmp_path)
    ls = loaded.summary()
    for k in ("records", "values", "complete", "ops", "inputs", "outputs", "bytes", "grads"):
        assert ls[k] == s[k], k
    assert ls["meta"] == s["meta"]
    assert ls["provenance"]["tapegrad"] == tapegrad.__version__
    assert ls["provenance"]["numpy"] == np.__version__


def test_summary_of_a_recovered_tape_says_so(tmp_path):
    x = Variable(np.ones(3), name="x")
    path = tmp_path / "s.tape"
    with tapegrad.record(path):
        h = x
        for _ in range(5):
            h = F.sin(h)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    t = tapegrad.load(path, recover=True)
    assert t.summary()["complete"] is False
    assert "recovered" in t._repr_html_()


def test_stats_count_nan_and_inf():
    x = Variable(np.array([1.0, -2.0, 0.0, 4.0]), name="x")
    with np.errstate(all="ignore"), tapegrad.record() as tape:
        y = F.log(x)  # log(-2) = nan, log(0) = -inf
        F.sum(y * 1.0)
    st = tape.stats()
    assert set(st) == set(tape.value_names)
    sx = st["x"]
    assert sx["nan"] == 0 and sx["inf"] == 0
    assert (sx["min"], sx["max"], sx["mean"]) == (-2.0, 4.0, 0.75)
    assert sx["std"] == pytest.approx(np.std([1.0, -2.0, 0.0, 4.0]))
    sy = st[tape.records[0].outputs[0]]
    assert sy["nan"] == 1 and sy["inf"] == 1
    assert sy["min"] == 0.0 and sy["max"] == pytest.approx(np.log(4.0))  # of the finite ones
    assert sy["shape"] == [4] and sy["dtype"] == "float64"
    out = st[tape.outputs[0]]
    assert out["nan"] == 1  # nan + (-inf) is nan


def test_repr_html_shows_the_summary():
    tape, _, _ = _mlp_tape()
    h = tape._repr_html_()
    assert h.lstrip().startswith("<") and "<table" in h
    for word in ("W1", "b2", "linear", "tanh", "softmax_cross_entropy", "float64", "records"):
        assert word in h
    assert re.search(r">\s*4\s*<", h)  # the record count
    # values that look like HTML are escaped
    x = Variable(np.ones(2), name="<b>x</b>")
    with tapegrad.record() as t2:
        F.sum(x * 2.0)
    assert "<b>x</b>" not in t2._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in t2._repr_html_()


# -- DOT ------------------------------------------------------------------------------------------------


def test_to_dot_mentions_every_op_and_value(tmp_path):
    tape, _, _ = _mlp_tape()
    for t in (tape, roundtrip(tape, tmp_path)):
        dot = t.to_dot()
        assert dot.startswith("digraph") and dot.rstrip().endswith("}")
        for r in t.records:
            assert f'"{r.op}' in dot
        for n in t.inputs:
            assert f'"{n}\\n' in dot
        assert dot.count("shape=box") == len(t)
        assert dot.count("shape=ellipse") == len(t.value_names)
        edges = sum(len(r.inputs) + len(r.outputs) for r in t.records)
        assert dot.count("->") == edges
        assert "f64[3,5]" in dot  # shapes and dtypes
        brief = t.to_dot(verbose=False)
        assert "f64[3,5]" not in brief and '"linear"' in brief


# -- diff --------------------------------------------------------------------------------------------------


def _chain(x0, W0, c=0.5, op=F.tanh):
    x = Variable(np.array(x0, copy=True), name="x")
    W = Variable(np.array(W0, copy=True), name="W")
    with tapegrad.record(source=True) as tape:
        h = F.sin(x)  # record 0: x only
        h = F.matmul(h, W)  # record 1: W enters here
        h = op(h + c)  # records 2, 3
        F.sum(h * h)  # records 4, 5
    return tape


def test_diff_of_equal_tapes_is_empty(tmp_path):
    x0, W0 = rng(10).standard_normal((2, 3)), rng(11).standard_normal((3, 3))
    a, b = _chain(x0, W0), _chain(x0, W0)
    d = tapegrad.diff(a, b, rtol=0, atol=0)
    assert d.same and bool(d) and d.structural == [] and d.first_value is None
    assert "same" in str(d)
    assert tapegrad.diff(a, roundtrip(b, tmp_path), rtol=0, atol=0).same


def test_diff_finds_the_first_record_whose_values_differ():
    x0, W0 = rng(12).standard_normal((2, 3)), rng(13).standard_normal((3, 3))
    W1 = W0.copy()
    W1[1, 2] += 1e-4
    a, b = _chain(x0, W0), _chain(x0, W1)
    d = tapegrad.diff(a, b)
    assert not d.same and not d and d.structural == []
    f = d.first_value
    assert f["value"] == "W"  # the first differing value ...
    assert f["record"] == 1 and f["op"] == "matmul"  # ... and the first record reading it
    assert tuple(f["index"]) == (1, 2)
    assert f["max_abs"] == pytest.approx(1e-4, rel=1e-6)
    assert f["a"] == W0[1, 2] and f["b"] == W1[1, 2]
    text = str(d)
    assert "W" in text and "record 1" in text and "matmul" in text

    # a difference in the middle of the tape: the inputs agree, a constant does not
    c, e = _chain(x0, W0, c=0.5), _chain(x0, W0, c=0.5 + 1e-6)
    f = tapegrad.diff(c, e).first_value
    assert f["record"] == 2 and f["op"] == "add"
    assert f["max_abs"] == pytest.approx(1e-6, rel=1e-6)


_OFFSET = [0.0]


@register_op("tganalysis.offset")
class Offset(Function):
    """x + an offset that is not an attribute: an op that computes differently in another run
    (another library version, another machine) while the tape's structure is the same."""

    def forward(self, x):
        return x + _OFFSET[0]

    def backward(self, gy):
        return gy


def _with_offset(x0, offset):
    x = Variable(np.array(x0, copy=True), name="x")
    _OFFSET[0] = offset
    try:
        with tapegrad.record() as tape:
            h = F.tanh(x)  # record 0
            h = Offset()(h * 2.0)  # records 1, 2
            F.sum(F.exp(h))  # records 3, 4
    finally:
        _OFFSET[0] = 0.0
    return tape


def test_diff_finds_the_first_differing_record_output():
    x0 = rng(14).standard_normal((2, 3))
    a, b = _with_offset(x0, 0.0), _with_offset(x0, 1e-3)
    d = tapegrad.diff(a, b)
    assert not d.same and d.structural == []
    f = d.first_value
    assert f["record"] == 2 and f["op"] == "tganalysis.offset"
    assert f["value"] == a.records[2].outputs[0]
    assert f["where"] == "output of record 2 (tganalysis.offset)"
    assert f["max_abs"] == pytest.approx(1e-3, rel=1e-6)
    text = str(d)
    assert "record 2" in text and "tganalysis.offset" in text
    assert tapegrad.diff(a, b, rtol=1e-2, atol=2e-3).same


def test_diff_respects_rtol_and_atol():
    x0, W0 = rng(16).standard_normal((2, 3)), rng(17).standard_normal((3, 3))
    W1 = W0 * (1 + 1e-6)
    a, b = _chain(x0, W0), _chain(x0, W1)
    assert not tapegrad.diff(a, b, rtol=1e-9)
    assert not tapegrad.diff(a, b)  # default rtol 1e-7
    assert tapegrad.diff(a, b, rtol=1e-4)
    assert tapegrad.diff(a, b, rtol=0, atol=1e-3)
    assert not tapegrad.diff(a, b, rtol=0, atol=1e-12)


def test_diff_treats_matching_nans_as_equal():
    x0 = np.array([[1.0, -1.0, 2.0]])
    W0 = np.eye(3)
    with np.errstate(all="ignore"):
        a, b = _chain(x0, W0, op=F.log), _chain(x0, W0, op=F.log)
    assert np.isnan(a[a.outputs[0]])
    assert tapegrad.diff(a, b, rtol=0, atol=0).same


def test_diff_reports_structural_differences_first():
    x0, W0 = rng(18).standard_normal((2, 3)), rng(19).standard_normal((3, 3))
    a, b = _chain(x0, W0), _chain(x0, W0 + 1.0, op=F.sigmoid)
    d = tapegrad.diff(a, b)
    assert not d.same
    assert len(d.structural) == 1 and "record 3" in d.structural[0]
    assert "tanh" in d.structural[0] and "sigmoid" in d.structural[0]
    assert d.first_value is None  # values are compared only when the structures agree

    # shapes that differ
    c = _chain(rng(18).standard_normal((5, 3)), W0)
    d = tapegrad.diff(a, c)
    assert d.structural and "record 0" in d.structural[0]
    assert "[2, 3]" in d.structural[0] and "[5, 3]" in d.structural[0]

    # a shorter tape
    x = Variable(x0, name="x")
    W = Variable(W0, name="W")
    with tapegrad.record() as short:
        F.matmul(F.sin(x), W)
    d = tapegrad.diff(a, short)
    assert any("record count: 6 vs 2" in s for s in d.structural)


# -- gradcheck --------------------------------------------------------------------------------------------


@register_op("tganalysis.bad_cube")
class BadCube(Function):
    """x**3 with a deliberately wrong derivative (2 x**2 instead of 3 x**2)."""

    def forward(self, x):
        return x**3

    def backward(self, gy):
        (x,) = self.inputs
        return gy * 2.0 * x * x


@register_op("tganalysis.cube")
class Cube(Function):
    def forward(self, x):
        return x**3

    def backward(self, gy):
        (x,) = self.inputs
        return gy * 3.0 * x * x


@register_op("tganalysis.rowsoftmax_nograd_shift")
class ShiftedSoftmax(Function):
    """softmax with a wrong backward that is only wrong off the all-ones direction: a check of the
    summed output (always 1 per row) cannot see the mistake, a random cotangent can."""

    def forward(self, x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def backward(self, gy):
        y = self.outputs[0]()
        return gy * y  # misses the - y * sum(gy * y) term


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("act", [F.tanh, F.sigmoid, F.relu])
def test_gradcheck_passes_on_correct_tapes(tmp_path, dtype, act):
    tape, _, _ = _mlp_tape(dtype, act)
    for t in (tape, roundtrip(tape, tmp_path)):
        r = t.gradcheck()
        assert r.ok and bool(r), str(r)
        assert set(r.errors) == {"W1", "b1", "W2", "b2"}
        assert r.rtol == (1e-4 if dtype == np.float64 else 5e-2)
        assert "ok" in str(r) and "FAIL" not in str(r)


def test_gradcheck_passes_on_softmax_and_a_correct_user_op(tmp_path):
    x = Variable(rng(20).standard_normal((3, 4)), name="x")
    with tapegrad.record() as tape:
        F.softmax(Cube()(x) * 0.3)
    r = roundtrip(tape, tmp_path).gradcheck()
    assert r.ok, str(r)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gradcheck_fails_on_a_wrong_user_op(tmp_path, dtype):
    x = Variable(rng(21).standard_normal((2, 3)).astype(dtype), name="x")
    W = Variable(rng(22).standard_normal((3, 3)).astype(dtype), name="W")
    with tapegrad.record() as tape:
        F.sum(F.tanh(F.matmul(BadCube()(x), W)))
    for t in (tape, roundtrip(tape, tmp_path)):
        r = t.gradcheck()
        assert not r.ok and not bool(r)
        assert r.errors["x"] > 0.1  # the wrong op's input
        assert r.errors["W"] <= r.rtol  # the rest of the tape is fine
        text = str(r)
        assert "FAILED" in text and re.search(r"x\s+worst relative error .* FAIL", text)


def test_gradcheck_in_random_directions_catches_a_wrong_softmax_backward():
    x = Variable(rng(23).standard_normal((3, 4)), name="x")
    with tapegrad.record() as tape:
        ShiftedSoftmax()(x)
    assert not tape.gradcheck().ok


def test_gradcheck_fails_on_a_nan_gradient():
    x = Variable(np.array([1.0, -1.0]), name="x")
    with np.errstate(all="ignore"), tapegrad.record() as tape:
        F.sum(F.exp(F.log(x)))
    r = tape.gradcheck()
    assert not r.ok
    assert np.isnan(r.errors["x"]) or r.errors["x"] > r.rtol


def test_gradcheck_skips_integer_inputs():
    x = Variable(np.array([1.0, 2.0]), name="x")
    n = Variable(np.array([3, 4]), name="n")
    with tapegrad.record() as tape:
        F.sum(x * n)
    r = tape.gradcheck()
    assert r.ok and r.skipped == ["n"] and set(r.errors) == {"x"}
