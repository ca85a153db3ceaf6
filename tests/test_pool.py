"""Buffers reused from step to step (``tapegrad._pool``): never handed out while anything refers to
them, bounded, let go when free, and holding the same bits NumPy would give."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import tapegrad
import tapegrad.functions as F
from tapegrad import _pool
from tapegrad._pool import pool

BIG = (128, 128)  # 64 KiB in float32, 128 KiB in float64: big enough for the pool


def same(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def held_buffers() -> int:
    return pool.held()[0]


@pytest.fixture(autouse=True)
def empty_pool():
    pool.trim()
    yield
    pool.trim()


def test_a_buffer_is_reused_only_when_nothing_refers_to_it():
    a = pool.empty(BIG, np.dtype(np.float64))
    a[...] = 1.0
    b = pool.empty(BIG, np.dtype(np.float64))
    assert not np.shares_memory(a, b)  # a is alive: another buffer
    view = a[3:5]
    mem = memoryview(b)
    first = {id(a.base), id(b.base)}  # the pool holds both buffers: their ids stay theirs
    del a, b
    c = pool.empty(BIG, np.dtype(np.float64))  # a view and a memoryview keep both in use
    assert id(c.base) not in first
    del view, mem, c
    d = pool.empty(BIG, np.dtype(np.float64))
    assert id(d.base) in first  # free again
    assert held_buffers() == 3


def test_small_arrays_do_not_come_from_the_pool():
    before = pool.held()
    a = pool.empty((4, 4), np.dtype(np.float64))
    assert a.base is None and pool.held() == before


def test_trim_lets_go_of_free_buffers_only():
    kept = pool.empty(BIG, np.dtype(np.float32))
    gone = pool.empty(BIG, np.dtype(np.float64))
    del gone
    assert held_buffers() == 2
    pool.trim()
    assert pool.held() == (1, kept.nbytes)


def test_the_pool_holds_at_most_its_limit(monkeypatch):
    monkeypatch.setattr(_pool, "MAX_BYTES", 3 * 128 * 128 * 8)
    arrays = [pool.empty(BIG, np.dtype(np.float64)) for _ in range(5)]
    assert held_buffers() == 3
    assert len({a.base.ctypes.data for a in arrays}) == 5  # every array has its own memory


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128, np.int32])
@pytest.mark.parametrize("order", ["C", "F", "strided"])
def test_a_copy_has_numpys_bits_and_order(dtype, order, rng):
    a = (rng.standard_normal((160, 120)) * 100).astype(dtype)
    if order == "F":
        a = np.asfortranarray(a)
    elif order == "strided":
        a = a[::2, ::-1]
    if dtype == np.float64:
        a[0, 0] = np.frombuffer(np.uint64(0x7FF8DEADBEEF0001).tobytes(), np.float64)[
            0
        ]  # a NaN payload
    c = pool.copy(a)
    assert same(c, np.array(a, copy=True)) and not np.shares_memory(c, a)
    assert c.flags.f_contiguous == (order == "F")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_products_are_numpys_bit_for_bit(dtype, rng):
    x = rng.standard_normal((200, 70)).astype(dtype)
    W = rng.standard_normal((70, 90)).astype(dtype)
    assert same(pool.product(np.dot, x, W), x.dot(W))
    assert same(pool.product(np.matmul, x, W), x @ W)
    assert same(pool.product(np.matmul, W.T, x.T), W.T @ x.T)
    assert same(pool.product(np.matmul, np.asfortranarray(x), W), x @ W)
    assert same(pool.product(np.matmul, x, W.astype(np.float64)), x @ W.astype(np.float64))
    v = rng.standard_normal(70).astype(dtype)
    assert same(pool.product(np.matmul, x, v), x @ v)  # not 2-D: NumPy's own


def test_threads_never_share_a_buffer():
    errors = []

    def work(k: int) -> None:
        for _ in range(200):
            a = pool.empty(BIG, np.dtype(np.float64))
            a.fill(k)
            b = pool.copy(a)
            if not (a == k).all() or not (b == k).all():
                errors.append(k)
            del a, b
            pool.trim()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_child_forked_while_a_thread_held_the_pool_uses_it():
    code = textwrap.dedent(
        """
        import os, numpy as np
        from tapegrad._pool import pool
        with pool._lock:  # as if another thread were inside the pool at the fork
            pid = os.fork()
            if pid == 0:
                a = pool.empty((128, 128), np.dtype(np.float64))
                a.fill(2.0)
                os._exit(0 if a.base is not None and (a == 2.0).all() else 1)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "0", out.stderr


def step(params, x, t):
    W1, b1, W2, b2 = params
    for w in params:
        w.cleargrad()
    with tapegrad.record() as tape:
        h = F.tanh(F.linear(x, W1, b1))
        loss = F.mean_squared_error(F.linear(h, W2, b2), t)
        loss.backward()
    for w in params:
        w.data -= 0.01 * w.grad.data
    return tape, loss


def test_a_training_loop_reuses_its_buffers_and_kept_tapes_keep_their_values(rng):
    x = rng.standard_normal((64, 200))
    t = rng.standard_normal((64, 10))
    shapes = [(200, 128), (128,), (128, 10), (10,)]
    params = [tapegrad.Parameter(rng.standard_normal(s) * 0.1) for s in shapes]
    step(params, x, t)
    step(params, x, t)
    steady = pool.held()
    for _ in range(5):
        step(params, x, t)
    assert pool.held() == steady  # each step takes what the last one left
    kept, loss = step(params, x, t)
    x0 = x.copy()
    x += 1.0  # the script changes its batch in place
    later, _ = step(params, x, t)
    xname = kept.constants[0]
    assert same(kept[xname], x0)
    assert not np.shares_memory(kept[xname], later[later.constants[0]])
    np.testing.assert_array_equal(kept.replay({})[kept.outputs[0]], loss.data)
    offline = kept.backward()
    assert sorted(offline) == sorted(kept.inputs) and np.isfinite(offline[kept.inputs[0]]).all()


def test_a_tape_with_pooled_values_saves_and_loads_them(tmp_path, rng):
    x = rng.standard_normal((64, 300))
    W = tapegrad.Parameter(rng.standard_normal((300, 100)), name="W")
    with tapegrad.record() as tape:
        y = F.sum(F.tanh(F.matmul(x, W)))
        y.backward()
    assert tape._values[0].base is not None  # the copy of x came from the pool
    tape.save(tmp_path / "t.tape")
    loaded = tapegrad.load(tmp_path / "t.tape")
    assert loaded.value_names == tape.value_names
    for name in tape.value_names:
        assert same(np.asarray(loaded[name]), np.asarray(tape[name])), name
