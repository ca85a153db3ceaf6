"""W1 scalar chain: ``y = tanh(y * a + b)`` repeated on 0-d float64, forward and backward.

Three recorded calls per step (mul, add, tanh), so the time per call is the recorder's own cost:
every array here is one number. W5 and W6 reuse the chain and its hand-written reference.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .harness import RTOL, Case, builder, import_lib

X0, A0, B0 = 0.5, 0.9, 0.1
CALLS_PER_STEP = 3


def hand_forward(x, a, b, steps: int) -> list:
    """The chain by hand, keeping every y (the backward needs them)."""
    tanh = np.tanh
    ys = [x]
    y = x
    for _ in range(steps):
        y = tanh(y * a + b)
        ys.append(y)
    return ys


def hand_backward(ys: list, a) -> tuple:
    """(gx, ga, gb) of the last y."""
    gy, ga, gb = 1.0, 0.0, 0.0
    for i in range(len(ys) - 1, 0, -1):
        y = ys[i]
        gz = gy * (1.0 - y * y)
        ga += gz * ys[i - 1]
        gb += gz
        gy = gz * a
    return gy, ga, gb


def reference(steps: int) -> dict:
    x, a, b = np.array(X0), np.array(A0), np.array(B0)
    ys = hand_forward(x, a, b, steps)
    gx, ga, gb = hand_backward(ys, a)
    return {"y": ys[-1], "grad:x": gx, "grad:a": ga, "grad:b": gb}


def _case(steps: int, step, result, **kw) -> Case:
    return Case(
        {"step": step},
        result,
        lambda: reference(steps),
        RTOL["float64"],
        calls=CALLS_PER_STEP * steps,
        **kw,
    )


@builder("W1", "numpy-fwd")
def _numpy_forward(lib: str, p: dict) -> Case:
    x, a, b, n, out = np.array(X0), np.array(A0), np.array(B0), p["steps"], {}
    tanh = np.tanh

    def step():
        y = x
        for _ in range(n):
            y = tanh(y * a + b)
        out["y"] = y

    return _case(n, step, lambda: dict(out), partial=True)


@builder("W1", "numpy")
def _numpy(lib: str, p: dict) -> Case:
    x, a, b, n, out = np.array(X0), np.array(A0), np.array(B0), p["steps"], {}

    def step():
        ys = hand_forward(x, a, b, n)
        gx, ga, gb = hand_backward(ys, a)
        out.update({"y": ys[-1], "grad:x": gx, "grad:a": ga, "grad:b": gb})

    return _case(n, step, lambda: dict(out))


def tapegrad_leaves():
    tg = import_lib("tapegrad")
    return tuple(tg.Variable(np.array(v), name=k) for k, v in (("x", X0), ("a", A0), ("b", B0)))


@builder("W1", "tapegrad", "tapegrad-notape")
def _tapegrad(lib: str, p: dict) -> Case:
    tg = import_lib(lib)
    import tapegrad.functions as F

    x, a, b = tapegrad_leaves()
    n, out = p["steps"], {}
    tanh = F.tanh
    recording = tg.record if lib == "tapegrad" else contextlib.nullcontext

    def step():
        x.cleargrad()
        a.cleargrad()
        b.cleargrad()
        with recording():
            y = x
            for _ in range(n):
                y = tanh(y * a + b)
            y.backward()
        out["y"] = y.data

    def result():
        return {"y": out["y"], "grad:x": x.grad, "grad:a": a.grad, "grad:b": b.grad}

    return _case(n, step, result)


@builder("W1", "dezero")
def _dezero(lib: str, p: dict) -> Case:
    dz = import_lib(lib)
    x, a, b = (dz.Variable(np.array(v)) for v in (X0, A0, B0))
    n, out = p["steps"], {}
    tanh = dz.functions.tanh

    def step():
        x.cleargrad()
        a.cleargrad()
        b.cleargrad()
        y = x
        for _ in range(n):
            y = tanh(y * a + b)
        y.backward()
        out["y"] = y.data

    def result():
        return {"y": out["y"], "grad:x": x.grad, "grad:a": a.grad, "grad:b": b.grad}

    return _case(n, step, result)


@builder("W1", "torch")
def _torch(lib: str, p: dict) -> Case:
    torch = import_lib(lib)
    x, a, b = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (X0, A0, B0))
    n, out = p["steps"], {}
    tanh = torch.tanh

    def step():
        x.grad = a.grad = b.grad = None
        y = x
        for _ in range(n):
            y = tanh(y * a + b)
        y.backward()
        out["y"] = y.detach()

    def result():
        return {"y": out["y"], "grad:x": x.grad, "grad:a": a.grad, "grad:b": b.grad}

    return _case(n, step, result)


def autograd_chain(steps: int):
    """value_and_grad of the chain with respect to (x, a, b)."""
    import_lib("autograd")
    import autograd
    import autograd.numpy as anp

    tanh = anp.tanh

    def chain(x, a, b):
        y = x
        for _ in range(steps):
            y = tanh(y * a + b)
        return y

    return autograd.value_and_grad(chain, argnum=(0, 1, 2))


@builder("W1", "autograd")
def _autograd(lib: str, p: dict) -> Case:
    x, a, b, n, out = np.array(X0), np.array(A0), np.array(B0), p["steps"], {}
    vg = autograd_chain(n)

    def step():
        y, (gx, ga, gb) = vg(x, a, b)
        out.update({"y": y, "grad:x": gx, "grad:a": ga, "grad:b": gb})

    return _case(n, step, lambda: dict(out))
