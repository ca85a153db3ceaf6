"""``tapegrad demo``: record a small MLP training step, save it, replay its gradients from the file."""

from __future__ import annotations

import numpy as np

from . import functions as F
from .core import Variable
from .tape import record


def spiral(n_per_class: int = 30, n_classes: int = 3, seed: int = 0):
    """DeZero's spiral data set: points on interleaved arms, labelled by arm."""
    rng = np.random.default_rng(seed)
    n = n_per_class * n_classes
    x = np.zeros((n, 2))
    t = np.zeros(n, dtype=np.int64)
    for j in range(n_classes):
        for i in range(n_per_class):
            rate = i / n_per_class
            radius = 1.0 * rate
            theta = j * 4.0 + 4.0 * rate + rng.standard_normal() * 0.2
            ix = n_per_class * j + i
            x[ix] = np.array([radius * np.sin(theta), radius * np.cos(theta)]).flatten()
            t[ix] = j
    return x, t


def mlp_step(hidden: int = 10, seed: int = 0):
    """One forward and backward pass of a 2-hidden-3 MLP on the spiral data, recorded."""
    rng = np.random.default_rng(seed)
    x, t = spiral()
    W1 = Variable(rng.standard_normal((2, hidden)) * 0.5, name="W1")
    b1 = Variable(np.zeros(hidden), name="b1")
    W2 = Variable(rng.standard_normal((hidden, 3)) * 0.5, name="W2")
    b2 = Variable(np.zeros(3), name="b2")
    params = [W1, b1, W2, b2]
    with record(meta={"model": f"mlp 2-{hidden}-3", "data": "spiral"}) as tape:
        h = F.sigmoid(F.linear(x, W1, b1))
        y = F.linear(h, W2, b2)
        loss = F.softmax_cross_entropy(y, t)
        loss.backward()
    return tape, loss, params


def run(path: str = "demo.tape", out=print) -> int:
    from . import load
    from .analysis import format_summary

    tape, loss, params = mlp_step()
    tape.save(path)
    out(f"recorded one training step (loss {float(loss.data):.6f}) and saved it to {path}\n")
    loaded = load(path)
    out(format_summary(loaded.summary()))
    out("\nlisting:")
    lines = str(loaded).splitlines()
    out("\n".join(lines[:12] + (["  ..."] if len(lines) > 12 else [])))
    grads = loaded.backward()
    out(f"\ngradients replayed from {path} vs. the live backward:")
    same = True
    for p in params:
        g = grads[p.name]
        eq = np.array_equal(g, p.grad.data)
        same = same and eq
        out(f"  {p.name:3} {str(g.shape):8} |grad| = {np.linalg.norm(g):.6f}  equal: {eq}")
    out("all equal, bit for bit" if same else "MISMATCH between replayed and live gradients")
    return 0 if same else 1
