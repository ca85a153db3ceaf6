"""W3 big elementwise: ten elementwise ops and a sum on two 2000x2000 float64 arrays, forward and
backward with respect to both. Bandwidth-bound: what an autodiff library adds here is copies,
temporaries and the values it keeps.

The ten ops, written once and run with each library's functions::

    h1 = x * w; h2 = h1 + x; h3 = tanh(h2); h4 = h3 - w; h5 = exp(h4)
    h6 = h5 * h3; h7 = sin(h6); h8 = h7 / h5; h9 = h8 ** 2; h10 = cos(h9); s = sum(h10)
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np

from .harness import RTOL, Case, builder, import_lib, rng

CALLS = 11


def inputs(n: int) -> tuple[np.ndarray, np.ndarray]:
    g = rng(3)
    return g.uniform(-1, 1, (n, n)), g.uniform(-1, 1, (n, n))


def ten_ops(x, w, m):
    """The workload's forward; ``m`` holds the library's tanh, exp, sin, cos and sum."""
    h3 = m.tanh(x * w + x)
    h5 = m.exp(h3 - w)
    h8 = m.sin(h5 * h3) / h5
    return m.sum(m.cos(h8**2))


def hand(x, w) -> tuple:
    """(s, gx, gw), forward and backward by hand."""
    h1 = x * w
    h2 = h1 + x
    h3 = np.tanh(h2)
    h4 = h3 - w
    h5 = np.exp(h4)
    h6 = h5 * h3
    h7 = np.sin(h6)
    h8 = h7 / h5
    h9 = h8**2
    h10 = np.cos(h9)
    s = h10.sum()
    g9 = -np.sin(h9)
    g8 = g9 * 2 * h8
    g7 = g8 / h5
    g6 = g7 * np.cos(h6)
    g5 = g6 * h3 - g8 * h8 / h5
    g3 = g6 * h5 + g5 * h5
    gw = -(g5 * h5)
    g2 = g3 * (1 - h3 * h3)
    gx = g2 + g2 * w
    gw += g2 * x
    return s, gx, gw


def reference(n: int) -> dict:
    s, gx, gw = hand(*inputs(n))
    return {"y": s, "grad:x": gx, "grad:w": gw}


def _case(p: dict, step, result, **kw) -> Case:
    n = p["n"]
    return Case({"step": step}, result, lambda: reference(n), RTOL["float64"], calls=CALLS, **kw)


NUMPY = SimpleNamespace(tanh=np.tanh, exp=np.exp, sin=np.sin, cos=np.cos, sum=np.sum)


@builder("W3", "numpy-fwd")
def _numpy_forward(lib: str, p: dict) -> Case:
    (x, w), out = inputs(p["n"]), {}

    def step():
        out["y"] = ten_ops(x, w, NUMPY)

    return _case(p, step, lambda: dict(out), partial=True)


@builder("W3", "numpy")
def _numpy(lib: str, p: dict) -> Case:
    (x, w), out = inputs(p["n"]), {}

    def step():
        s, gx, gw = hand(x, w)
        out.update({"y": s, "grad:x": gx, "grad:w": gw})

    return _case(p, step, lambda: dict(out))


def _fns(F) -> SimpleNamespace:
    return SimpleNamespace(tanh=F.tanh, exp=F.exp, sin=F.sin, cos=F.cos, sum=F.sum)


@builder("W3", "tapegrad", "tapegrad-notape")
def _tapegrad(lib: str, p: dict) -> Case:
    tg = import_lib(lib)
    import tapegrad.functions as F

    m, out = _fns(F), {}
    x, w = (tg.Variable(v, name=k) for k, v in zip("xw", inputs(p["n"])))
    recording = tg.record if lib == "tapegrad" else contextlib.nullcontext

    def step():
        x.cleargrad()
        w.cleargrad()
        with recording():
            s = ten_ops(x, w, m)
            s.backward()
        out["y"] = s.data

    return _case(p, step, lambda: {"y": out["y"], "grad:x": x.grad, "grad:w": w.grad})


@builder("W3", "dezero")
def _dezero(lib: str, p: dict) -> Case:
    dz = import_lib(lib)
    m, out = _fns(dz.functions), {}
    x, w = (dz.Variable(v) for v in inputs(p["n"]))

    def step():
        x.cleargrad()
        w.cleargrad()
        s = ten_ops(x, w, m)
        s.backward()
        out["y"] = s.data

    return _case(p, step, lambda: {"y": out["y"], "grad:x": x.grad, "grad:w": w.grad})


@builder("W3", "torch")
def _torch(lib: str, p: dict) -> Case:
    torch = import_lib(lib)
    m, out = _fns(torch), {}
    x, w = (torch.from_numpy(v).requires_grad_() for v in inputs(p["n"]))

    def step():
        x.grad = w.grad = None
        s = ten_ops(x, w, m)
        s.backward()
        out["y"] = s.detach()

    return _case(p, step, lambda: {"y": out["y"], "grad:x": x.grad, "grad:w": w.grad})


@builder("W3", "autograd")
def _autograd(lib: str, p: dict) -> Case:
    import_lib(lib)
    import autograd
    import autograd.numpy as anp

    m, out = _fns(anp), {}
    x, w = inputs(p["n"])
    vg = autograd.value_and_grad(lambda x, w: ten_ops(x, w, m), argnum=(0, 1))

    def step():
        s, (gx, gw) = vg(x, w)
        out.update({"y": s, "grad:x": gx, "grad:w": gw})

    return _case(p, step, lambda: dict(out))
