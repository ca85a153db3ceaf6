"""Big elementwise calls split across threads (``tapegrad.parallel``): the same numbers as one
NumPy call, bit for bit, through the ops' forwards and rules and the backward's accumulation."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tapegrad
import tapegrad.functions as F
from tapegrad import parallel as par
from tapegrad.registry import _OPS


@pytest.fixture
def threaded(monkeypatch):
    """Every array of 64 elements or more takes the threaded path, on 3 threads."""
    old = par.get_num_threads()
    monkeypatch.setattr(par, "BIG", 64)
    par.set_num_threads(3)
    yield
    par.set_num_threads(old)


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


rng = np.random.default_rng(7)
A = rng.standard_normal((37, 29))
CASES = [
    ("2-d", np.multiply, (A, A[::-1])),
    ("float32", np.sin, (A.astype(np.float32),)),
    ("complex", np.exp, (A + 1j * A.T[:29, :37].T,)),
    ("int", np.add, (np.arange(500), 7)),
    ("python float", np.subtract, (1, A)),
    ("numpy scalar promotes", np.multiply, (A.astype(np.float32), np.float64(0.1))),
    ("rows broadcast", np.true_divide, (A, A[:1])),
    ("columns broadcast", np.add, (A[:, :1], A[:1, :])),
    ("vector against matrix", np.multiply, (A, A[0])),
    ("one row: flat split", np.tanh, (A.reshape(1, -1),)),
    ("transposed", np.cos, (A.T,)),
    ("strided", np.square, (A[:, ::2],)),
    ("comparison", np.greater, (A, 0)),
    ("0-d against big", np.maximum, (A, np.array(0.0))),
]


@pytest.mark.parametrize("name,ufunc,args", CASES, ids=[c[0] for c in CASES])
def test_ew_is_the_plain_call_bit_for_bit(threaded, name, ufunc, args):
    with np.errstate(all="ignore"):
        assert same(par.ew(ufunc, *args), ufunc(*args))


def test_big_calls_really_run_in_slices_on_the_pool(threaded, monkeypatch):
    import threading

    seen = []
    real = par._slice

    def spy(ufunc, args, out):
        seen.append((threading.current_thread().name, out.shape))
        real(ufunc, args, out)

    monkeypatch.setattr(par, "_slice", spy)
    assert same(par.ew(np.sin, A), np.sin(A))
    assert sorted(rows for _, (rows, _cols) in seen) == [12, 12, 13]  # 37 rows in 3 slices
    assert sum(name.startswith("tapegrad-ew") for name, _ in seen) == 2
    seen.clear()
    two_rows = rng.standard_normal((2, 100))  # fewer rows than threads: cut in the flat order
    assert same(par.ew(np.sin, two_rows), np.sin(two_rows))
    assert sorted(shape for _, shape in seen) == [(66,), (67,), (67,)]
    seen.clear()
    par.ew(np.sin, np.ones(10))  # under BIG: one plain call
    assert seen == []


def test_ew_keeps_numpy_s_errors_and_the_caller_s_errstate(threaded):
    x = np.ones(1000)
    x[-1] = 0.0  # the zero is in the last slice, computed on a worker thread
    with np.errstate(divide="raise"):
        with pytest.raises(FloatingPointError):
            par.ew(np.true_divide, 1.0, x)
    with np.errstate(divide="ignore"):
        assert par.ew(np.true_divide, 1.0, x)[-1] == np.inf
    with pytest.raises(ValueError, match="broadcast"):
        par.ew(np.add, np.ones((100, 3)), np.ones((100, 4)))


def test_into_is_used_only_when_it_changes_nothing(threaded):
    t = A.copy()
    r = par.ew(np.multiply, t, 2.0, into=t)
    assert r is t and same(t, A * 2.0)
    f32 = A.astype(np.float32)
    r = par.ew(np.multiply, f32, np.float64(2.0), into=f32)  # the result is float64
    assert r is not f32 and r.dtype == np.float64
    small = A[:1].copy()
    r = par.ew(np.add, A, small, into=small)  # the result is bigger
    assert r is not small and same(r, A + A[:1])
    view = A.copy()[:10]
    assert par.ew(np.negative, view, into=view) is not view  # a view may share memory: no


def test_the_output_is_laid_out_as_numpy_lays_it_out(threaded):
    f = np.asfortranarray(A)
    for args in [(f,), (A,)]:
        r = par.ew(np.sin, *args)
        assert same(r, np.sin(*args)) and r.strides == np.sin(*args).strides
    t = np.cos(f)  # a Fortran-ordered temporary, reused
    r = par.ew(np.multiply, f, t, into=t)
    assert same(r, f * np.cos(f))
    two = np.ascontiguousarray(A[:2])  # fewer rows than threads: cut in the flat order
    t = np.asfortranarray(np.cos(two))
    r = par.ew(np.negative, two, into=t)
    assert same(r, -two)


def test_subclasses_and_odd_arguments_get_the_plain_call(threaded):
    m = np.ma.masked_array(A, mask=A > 1)
    assert isinstance(par.ew(np.sin, m), np.ma.MaskedArray)
    assert par.ew(np.add, 1, 2) == 3


def test_set_num_threads():
    old = par.get_num_threads()
    try:
        tapegrad.set_num_threads(1)
        assert tapegrad.get_num_threads() == 1
        assert same(par.ew(np.sin, np.ones(par.BIG)), np.sin(np.ones(par.BIG)))
    finally:
        tapegrad.set_num_threads(old)
    for bad, err in [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)]:
        with pytest.raises(err, match="set_num_threads"):
            tapegrad.set_num_threads(bad)


def test_callers_on_several_threads_share_the_pool(threaded):
    import threading

    inputs = [rng.standard_normal((60, 50)) for _ in range(6)]
    results: dict = {}

    def work(i):
        with np.errstate(all="ignore"):
            results[i] = [par.ew(np.log, np.abs(inputs[i])) for _ in range(20)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, got in results.items():
        with np.errstate(all="ignore"):
            want = np.log(np.abs(inputs[i]))
        assert all(same(g, want) for g in got)


def test_a_pool_shut_down_meanwhile_leaves_the_work_to_the_caller(threaded):
    pool = par._workers()
    pool.shutdown()  # as set_num_threads in another thread, between _workers() and submit
    try:
        assert same(par._run(np.sin, *par._plan(np.sin, (A,), None)), np.sin(A))
    finally:
        par.set_num_threads(3)


@pytest.mark.parametrize(
    "env,expected", [({"TAPEGRAD_NUM_THREADS": "3"}, "3"), ({"OMP_NUM_THREADS": "2"}, "2")]
)
def test_the_default_comes_from_the_environment(env, expected):
    code = "import tapegrad; print(tapegrad.get_num_threads())"
    clean = {
        k: v for k, v in os.environ.items() if k not in ("TAPEGRAD_NUM_THREADS", "OMP_NUM_THREADS")
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.stdout.strip() == expected, out.stderr
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        env={**clean, "TAPEGRAD_NUM_THREADS": "many"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "TAPEGRAD_NUM_THREADS='many'" in out.stderr
    assert int(out.stdout) >= 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_computes_with_threads_of_its_own():
    code = textwrap.dedent(
        """
        import os, numpy as np
        from tapegrad import parallel as par
        par.set_num_threads(2)
        x = np.linspace(0, 1, par.BIG)
        par.ew(np.sin, x)  # the parent's pool exists now
        pid = os.fork()
        if pid == 0:
            ok = par.ew(np.sin, x).tobytes() == np.sin(x).tobytes()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "0", out.stderr


# -- the ops: the threaded path is the plain path, bit for bit -----------------------------------

UNARY = ["neg", "square", "sqrt", "exp", "log", "sin", "cos", "tanh", "sigmoid", "relu", "abs"]
BINARY = ["add", "sub", "mul", "div", "maximum", "minimum"]
POWERS = [2, 3, 0.5, -1, 1, 1.5, -2.5, 0, 2.0, np.float64(0.5), np.float64(2), np.int64(3)]


def _inputs(op: str, dtype) -> np.ndarray:
    x = rng.uniform(0.2, 2.0, (40, 30)) if op in ("sqrt", "log") else rng.standard_normal((40, 30))
    return x.astype(dtype)


def _forward_and_rule(fn, xs):
    y = fn.forward(*xs)
    gy = np.full_like(y, 0.7) * np.linspace(-1, 1, y.size, dtype=y.dtype).reshape(y.shape)
    return y, fn.vjp(gy, xs, y)


def _both_paths(monkeypatch, make, xs):
    monkeypatch.setattr(par, "BIG", 10**12)
    plain = _forward_and_rule(make(), xs)
    monkeypatch.setattr(par, "BIG", 64)
    threaded = _forward_and_rule(make(), xs)
    return plain, threaded


def _assert_same(plain, threaded):
    (y0, g0), (y1, g1) = plain, threaded
    assert same(y0, y1)
    assert len(g0) == len(g1)
    for a, b in zip(g0, g1):
        assert (a is None and b is None) or same(a, b)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("op", UNARY)
def test_unary_ops_agree_on_both_paths(threaded, monkeypatch, op, dtype):
    _assert_same(*_both_paths(monkeypatch, _OPS[op], (_inputs(op, dtype),)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape1", [(40, 30), (1, 30), (30,)], ids=["same", "row", "vector"])
@pytest.mark.parametrize("op", BINARY)
def test_binary_ops_agree_on_both_paths(threaded, monkeypatch, op, shape1, dtype):
    x0 = _inputs(op, dtype)
    x1 = rng.uniform(0.5, 2.0, shape1).astype(dtype)
    _assert_same(*_both_paths(monkeypatch, _OPS[op], (x0, x1)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("c", POWERS)
def test_pow_agrees_on_both_paths(threaded, monkeypatch, c, dtype):
    x = rng.uniform(0.2, 2.0, (40, 30)).astype(dtype)
    _assert_same(*_both_paths(monkeypatch, lambda: _OPS["pow"](c), (x,)))


def test_big_gradients_accumulate_to_the_same_numbers(threaded, monkeypatch):
    x0 = rng.standard_normal((50, 40))

    def grads():
        x = tapegrad.Variable(x0.copy())
        h = F.tanh(x)
        y = h * h + F.sin(h) + x + x  # h and x each get several gradients to add up
        z = F.sum(y * 3.0)
        z.backward(retain_grad=True)
        return x.grad.data, h.grad.data

    big = grads()
    monkeypatch.setattr(par, "BIG", 10**12)
    plain = grads()
    assert all(same(a, b) for a, b in zip(big, plain))
    h = np.tanh(x0)
    expected_h = 3.0 * (2 * h + np.cos(h))
    np.testing.assert_allclose(big[1], expected_h, rtol=1e-12)
    np.testing.assert_allclose(big[0], expected_h * (1 - h * h) + 6.0, rtol=1e-12)
