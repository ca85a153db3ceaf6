"""W2 MLP step: batch 64, 784-128-10, tanh, squared error (DeZero's mean_squared_error: the sum
of squares over the batch size), backward, and an in-place SGD update of the four parameters.

Each library is written the way its users write it: tapegrad and DeZero with ``F.linear`` and
``F.mean_squared_error``, PyTorch with ``addmm`` and ``mse_loss``, autograd with ``dot``. The
input ``x`` and target ``t`` are data, not parameters.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .harness import RTOL, Case, builder, import_lib, rng

BATCH, SIZES, LR = 64, (784, 128, 10), 1e-3
PARAMS = ("W1", "b1", "W2", "b2")


def inputs(dtype: str) -> dict[str, np.ndarray]:
    """x, t and the initial parameters, the same numbers in every process."""
    g = rng(2)
    n_in, n_hid, n_out = SIZES
    d = {
        "x": g.standard_normal((BATCH, n_in)),
        "t": g.standard_normal((BATCH, n_out)) * 0.5,
        "W1": g.standard_normal((n_in, n_hid)) / np.sqrt(n_in),
        "b1": g.standard_normal(n_hid) * 0.1,
        "W2": g.standard_normal((n_hid, n_out)) / np.sqrt(n_hid),
        "b2": g.standard_normal(n_out) * 0.1,
    }
    return {k: v.astype(dtype) for k, v in d.items()}


def hand(x, t, W1, b1, W2, b2) -> tuple:
    """Loss and (gW1, gb1, gW2, gb2), forward and backward by hand."""
    n = len(x)
    h = np.tanh(x @ W1 + b1)
    y = h @ W2 + b2
    d = y - t
    loss = (d * d).sum() / n
    gy = d * (2.0 / n)
    gW2 = h.T @ gy
    gb2 = gy.sum(axis=0)
    gz = (gy @ W2.T) * (1 - h * h)
    gW1 = x.T @ gz
    gb1 = gz.sum(axis=0)
    return loss, (gW1, gb1, gW2, gb2)


def reference(dtype: str) -> dict:
    d = {k: v.astype(np.float64) for k, v in inputs(dtype).items()}
    loss, grads = hand(d["x"], d["t"], *(d[k] for k in PARAMS))
    return {"loss": loss, **{f"grad:{k}": g for k, g in zip(PARAMS, grads)}}


def _case(p: dict, step, result, **kw) -> Case:
    dtype = p["dtype"]
    return Case({"step": step}, result, lambda: reference(dtype), RTOL[dtype], **kw)


def _grads(params) -> dict:
    return {f"grad:{k}": v.grad for k, v in zip(PARAMS, params)}


@builder("W2", "numpy-fwd")
def _numpy_forward(lib: str, p: dict) -> Case:
    d, out = inputs(p["dtype"]), {}
    x, t, W1, b1, W2, b2 = (d[k] for k in ("x", "t", *PARAMS))

    def step():
        y = np.tanh(x @ W1 + b1) @ W2 + b2
        diff = y - t
        out["loss"] = (diff * diff).sum() / len(x)

    return _case(p, step, lambda: dict(out), partial=True)


@builder("W2", "numpy")
def _numpy(lib: str, p: dict) -> Case:
    d, out = inputs(p["dtype"]), {}
    x, t = d["x"], d["t"]
    params = [d[k] for k in PARAMS]

    def step():
        loss, grads = hand(x, t, *params)
        for w, g in zip(params, grads):
            w -= LR * g
        out.update({"loss": loss, **{f"grad:{k}": g for k, g in zip(PARAMS, grads)}})

    return _case(p, step, lambda: dict(out))


@builder("W2", "tapegrad", "tapegrad-notape")
def _tapegrad(lib: str, p: dict) -> Case:
    tg = import_lib(lib)
    import tapegrad.functions as F

    d, out = inputs(p["dtype"]), {}
    x, t = d["x"], d["t"]
    params = [tg.Parameter(d[k], name=k) for k in PARAMS]
    W1, b1, W2, b2 = params
    recording = tg.record if lib == "tapegrad" else contextlib.nullcontext

    def step():
        for w in params:
            w.cleargrad()
        with recording():
            h = F.tanh(F.linear(x, W1, b1))
            loss = F.mean_squared_error(F.linear(h, W2, b2), t)
            loss.backward()
        for w in params:
            w.data -= LR * w.grad.data
        out["loss"] = loss.data

    return _case(p, step, lambda: {"loss": out["loss"], **_grads(params)})


@builder("W2", "dezero")
def _dezero(lib: str, p: dict) -> Case:
    dz = import_lib(lib)
    F = dz.functions
    d, out = inputs(p["dtype"]), {}
    x, t = d["x"], d["t"]
    params = [dz.Parameter(d[k], name=k) for k in PARAMS]
    W1, b1, W2, b2 = params

    def step():
        for w in params:
            w.cleargrad()
        h = F.tanh(F.linear(x, W1, b1))
        loss = F.mean_squared_error(F.linear(h, W2, b2), t)
        loss.backward()
        for w in params:
            w.data -= LR * w.grad.data
        out["loss"] = loss.data

    return _case(p, step, lambda: {"loss": out["loss"], **_grads(params)})


@builder("W2", "torch")
def _torch(lib: str, p: dict) -> Case:
    torch = import_lib(lib)
    mse = torch.nn.functional.mse_loss
    d, out = inputs(p["dtype"]), {}
    x, t = torch.from_numpy(d["x"]), torch.from_numpy(d["t"])
    params = [torch.from_numpy(d[k]).requires_grad_() for k in PARAMS]
    W1, b1, W2, b2 = params
    n = len(x)

    def step():
        for w in params:
            w.grad = None
        h = torch.tanh(torch.addmm(b1, x, W1))
        loss = mse(torch.addmm(b2, h, W2), t, reduction="sum") / n
        loss.backward()
        with torch.no_grad():
            for w in params:
                w.sub_(w.grad, alpha=LR)
        out["loss"] = loss.detach()

    return _case(p, step, lambda: {"loss": out["loss"], **_grads(params)})


@builder("W2", "autograd")
def _autograd(lib: str, p: dict) -> Case:
    import_lib(lib)
    import autograd
    import autograd.numpy as anp

    d, out = inputs(p["dtype"]), {}
    x, t = d["x"], d["t"]
    params = [d[k] for k in PARAMS]

    def loss_fn(params, x, t):
        W1, b1, W2, b2 = params
        h = anp.tanh(anp.dot(x, W1) + b1)
        diff = anp.dot(h, W2) + b2 - t
        return anp.sum(diff**2) / len(x)

    vg = autograd.value_and_grad(loss_fn)

    def step():
        loss, grads = vg(params, x, t)
        for w, g in zip(params, grads):
            w -= LR * g
        out.update({"loss": loss, **{f"grad:{k}": g for k, g in zip(PARAMS, grads)}})

    return _case(p, step, lambda: dict(out))
