"""Big elementwise NumPy calls split across threads.

NumPy runs a ufunc on one core. Its loops release the GIL, so a big elementwise call can be cut
into slices along the first axis (or, for contiguous arrays, along the flat order) and the slices
computed on several threads at once, each writing its part of one output array. Every element is
computed by the same loop as in the single call, so the result is the same bit for bit; only the
time changes. PyTorch does the same (intra-op parallelism); its default, like ours, is one thread
per usable core.

``ew(ufunc, *args)`` is the one entry point. It returns exactly what ``ufunc(*args)`` returns (same
dtype and shape, same broadcasting and casting), and falls back to that plain call for anything
small, odd or ambiguous. The threads see the caller's ``np.errstate``: each slice runs in a copy
of the caller's context.

``set_num_threads(n)`` / ``get_num_threads()`` choose the number of threads (1 turns this off); the
default is ``TAPEGRAD_NUM_THREADS``, else ``OMP_NUM_THREADS``, else the usable cores (at most 8).
"""

from __future__ import annotations

import contextvars
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# Calls whose output has fewer elements than this run as one plain call: below it, handing work
# to a thread costs more than it saves (a float64 multiply of 2**18 elements takes ~0.3 ms).
BIG = 1 << 18

_DEFAULT_MAX = 8
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _default_threads() -> int:
    for var in ("TAPEGRAD_NUM_THREADS", "OMP_NUM_THREADS"):
        text = os.environ.get(var, "").strip()
        if text:
            try:
                n = int(text)
            except ValueError:
                n = 0
            if n >= 1:
                return n
            warnings.warn(
                f"{var}={text!r} is not a number of threads (a whole number >= 1); ignored",
                RuntimeWarning,
                stacklevel=2,
            )
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, _DEFAULT_MAX))


_threads = _default_threads()


def get_num_threads() -> int:
    """How many threads a big elementwise op is split across (1: none)."""
    return _threads


def set_num_threads(n: int) -> None:
    """Split big elementwise ops across ``n`` threads (``n=1`` computes them on the caller's
    thread only). Results do not depend on ``n``."""
    global _threads, _pool
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads takes a whole number, not {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads({n}): the number of threads must be at least 1")
    with _lock:
        old, _pool, _threads = _pool, None, int(n)
    if old is not None:
        old.shutdown(wait=False)


def _workers() -> ThreadPoolExecutor:
    global _pool
    pool = _pool
    if pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(_threads - 1, thread_name_prefix="tapegrad-ew")
            pool = _pool
    return pool


def _forget_pool() -> None:  # in a forked child: the parent's threads do not exist there
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def ew(ufunc: np.ufunc, *args: Any, into: np.ndarray | None = None) -> Any:
    """``ufunc(*args)``, computed in slices on several threads when an argument is big.

    ``into``: a temporary array the caller owns and no longer needs, either one of ``args`` or
    sharing no memory with them; the result is written into it when it has the result's shape and
    dtype (the caller uses the returned array either way).
    """
    if _threads > 1:
        for a in args:
            if type(a) is np.ndarray and a.size >= BIG:
                plan = _plan(ufunc, args, into)
                if plan is not None:
                    return _run(ufunc, *plan)
                break
    if into is not None and _fits(into, *_result_of(ufunc, args)):
        return ufunc(*args, out=into)
    return ufunc(*args)


def _fits(into: np.ndarray, shape: tuple | None, dtype: np.dtype | None) -> bool:
    """Whether a result of ``shape`` and ``dtype`` may be written into ``into`` (changing nothing
    but where it lives)."""
    return (
        into.shape == shape and into.dtype == dtype and into.base is None and into.flags.writeable
    )


def _result_of(ufunc: np.ufunc, args: tuple) -> tuple[tuple | None, np.dtype | None]:
    """(shape, dtype) of ``ufunc(*args)``, the dtype found by computing one element; Nones when
    the call would fail (the real call then raises the real error)."""
    try:
        shape = np.broadcast_shapes(*(np.shape(a) for a in args))
        probe = [a.reshape(-1)[:1] if isinstance(a, np.ndarray) else a for a in args]
        with np.errstate(all="ignore"):
            return shape, ufunc(*probe).dtype
    except Exception:
        return None, None


def _plan(ufunc: np.ufunc, args: tuple, into: np.ndarray | None):
    """(the arguments and output of each thread's slice, the whole output), or None for a plain
    call."""
    for a in args:
        if isinstance(a, np.ndarray):
            if type(a) is not np.ndarray:  # subclasses keep their own ufunc behaviour
                return None
        elif not isinstance(a, (int, float, complex, np.generic)):
            return None
    if ufunc.nout != 1:
        return None
    shape, dtype = _result_of(ufunc, args)
    if shape is None or math.prod(shape) < BIG or dtype.kind not in "biufc":
        return None
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    if into is not None and _fits(into, shape, dtype):
        out = into
    else:  # laid out as NumPy would (order="K": like the first argument of the full shape)
        like = next((a for a in arrays if a.shape == shape), None)
        out = np.empty(shape, dtype) if like is None else np.empty_like(like, dtype)
    n, whole = _threads, out
    if shape[0] >= n:  # slices of the first axis; inputs that broadcast along it pass whole
        cut = [isinstance(a, np.ndarray) and a.ndim == len(shape) and a.shape[0] != 1 for a in args]
        length = shape[0]
    elif out.flags.c_contiguous and all(a.shape == shape and a.flags.c_contiguous for a in arrays):
        args = tuple(a.reshape(-1) if isinstance(a, np.ndarray) else a for a in args)
        cut = [isinstance(a, np.ndarray) for a in args]
        out = out.reshape(-1)  # a view (C order): the slices write into the whole output
        length = out.size
    else:
        return None
    cuts = [length * i // n for i in range(n + 1)]
    jobs = [
        (tuple(a[lo:hi] if c else a for a, c in zip(args, cut)), out[lo:hi])
        for lo, hi in zip(cuts, cuts[1:])
    ]
    return jobs, whole


def _run(ufunc: np.ufunc, jobs: list, out: np.ndarray) -> np.ndarray:
    pool = _workers()
    futures, here = [], [jobs[0]]
    for job_args, job_out in jobs[1:]:
        try:
            futures.append(
                pool.submit(contextvars.copy_context().run, _slice, ufunc, job_args, job_out)
            )
        except RuntimeError:  # set_num_threads shut this pool down meanwhile: compute it here
            here.append((job_args, job_out))
    error: BaseException | None = None
    try:
        for job_args, job_out in here:
            _slice(ufunc, job_args, job_out)
    except BaseException as e:  # wait for the other slices before raising: they write into out
        error = e
    for f in futures:
        try:
            f.result()
        except BaseException as e:
            error = error or e
    if error is not None:
        raise error
    return out


def _slice(ufunc: np.ufunc, args: tuple, out: np.ndarray) -> None:
    ufunc(*args, out=out)
