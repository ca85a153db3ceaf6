"""Gradient checking against central differences, projected on random output directions.

A case is ``fn(*args) -> Variable`` with the arguments at positions ``wrt`` passed as Variables
(the others, such as targets or index arrays, as given). The checks compare the vector-Jacobian
product ``d<w, fn(x)>/dx`` for a random ``w`` (not the gradient of a summed output, which cannot
see a broken softmax backward: its rows sum to one), and for second order the Hessian-vector
product ``d<v, d<w, fn>/dx>/dx`` from ``backward(create_graph=True)`` against central
differences of the first derivative.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

import tapegrad
from tapegrad import Variable


def as_vars(args: Sequence[Any], wrt: Sequence[int]) -> list[Any]:
    """``args`` with the positions ``wrt`` wrapped in fresh named Variables (copies)."""
    out = list(args)
    for i in wrt:
        out[i] = Variable(np.array(args[i], copy=True), name=f"x{i}")
    return out


def forward_value(fn: Callable, args: Sequence[Any], wrt: Sequence[int]) -> np.ndarray:
    """``fn``'s value (no graph)."""
    with tapegrad.no_grad():
        return np.asarray(fn(*as_vars(args, wrt)).data)


def live_vjp(
    fn: Callable, args: Sequence[Any], wrt: Sequence[int], w: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """(value, [d<w, fn>/d args[i] for i in wrt]) from ``Variable.backward`` seeded with ``w``."""
    vs = as_vars(args, wrt)
    y = fn(*vs)
    y.grad = Variable(np.asarray(w, dtype=y.dtype))
    y.backward()
    return y.data, [None if vs[i].grad is None else vs[i].grad.data for i in wrt]


def numerical_vjp(
    fn: Callable, args: Sequence[Any], wrt: Sequence[int], w: np.ndarray, eps: float = 1e-6
) -> list[np.ndarray]:
    """Central differences of ``<w, fn(args)>`` with respect to each ``args[i]``, ``i in wrt``."""
    args = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]

    def scalar(a: Sequence[Any]) -> float:
        return float(np.sum(w * forward_value(fn, a, wrt)))

    return _central_differences(scalar, args, wrt, eps)


def first_grads(
    fn: Callable, args: Sequence[Any], wrt: Sequence[int], w: np.ndarray
) -> list[np.ndarray]:
    """First-order gradients, with zeros for inputs that got none."""
    _, gs = live_vjp(fn, args, wrt, w)
    return [np.zeros(np.shape(args[i])) if g is None else g for i, g in zip(wrt, gs)]


def live_hvp(
    fn: Callable,
    args: Sequence[Any],
    wrt: Sequence[int],
    w: np.ndarray,
    vs_dir: Sequence[np.ndarray],
) -> list[np.ndarray]:
    """d/dx of sum_i <v_i, d<w, fn>/dx_i>, through ``backward(create_graph=True)``."""
    vs = as_vars(args, wrt)
    y = fn(*vs)
    y.grad = Variable(np.asarray(w, dtype=y.dtype))
    y.backward(create_graph=True)
    s = None
    for i, v in zip(wrt, vs_dir):
        g = vs[i].grad
        assert g is not None, f"no first-order gradient for argument {i}"
        term = tapegrad.functions.sum(g * v)
        s = term if s is None else s + term
    for i in wrt:
        vs[i].cleargrad()
    s.backward()
    return [np.zeros(np.shape(args[i])) if vs[i].grad is None else vs[i].grad.data for i in wrt]


def numerical_hvp(
    fn: Callable,
    args: Sequence[Any],
    wrt: Sequence[int],
    w: np.ndarray,
    vs_dir: Sequence[np.ndarray],
    eps: float = 1e-6,
) -> list[np.ndarray]:
    """Central differences of sum_i <v_i, first-order gradient_i> (the gradient from backward)."""
    args = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]

    def scalar(a: Sequence[Any]) -> float:
        return float(sum(np.sum(v * g) for v, g in zip(vs_dir, first_grads(fn, a, wrt, w))))

    return _central_differences(scalar, args, wrt, eps)


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float, what: str):
    """``assert_allclose`` with the tolerance scaled by the size of the expected values."""
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)


def _central_differences(scalar, args: list, wrt: Sequence[int], eps: float) -> list[np.ndarray]:
    """d scalar(args) / d args[i] for i in wrt, one central difference per element (in place)."""
    out = []
    for i in wrt:
        x = args[i]
        g = np.zeros(x.shape, dtype=np.float64)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + eps
            fp = scalar(args)
            x[idx] = old - eps
            fm = scalar(args)
            x[idx] = old
            g[idx] = (fp - fm) / (2 * eps)
        out.append(g)
    return out
