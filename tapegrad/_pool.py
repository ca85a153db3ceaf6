"""Buffers for the big arrays a training step makes again every step, reused from step to step.

A training step makes the same big arrays each time: the tape's copy of the batch ``x``, the
products of a linear layer and their gradients (``gW`` is as big as ``W``). Each is freed a step
later (the tape goes, ``cleargrad`` drops the gradient), and the C allocator hands memory of that
size back to the system and takes it again, so every page of each new array faults on first
touch: about a microsecond per 4 KiB here, more than computing into it. Arrays of ``MIN_BYTES``
or more made here come from a buffer that an earlier array left, when one of the same size is
free; else from a new buffer that the pool keeps.

Invariants:
- A buffer is handed out only when nothing but the pool refers to it: every array made from it
  (and every view of those, and every memoryview) holds a reference to it, so
  ``sys.getrefcount`` tells. Where reference counts are not exact (a free-threaded build) the pool
  is off and arrays come from NumPy as usual.
- What is kept is bounded: ``MAX_BYTES`` in all, in use or not, and the buffers nothing refers
  to are let go at the end of every backward and every ``record`` block (by then the next step
  has taken what it reuses).
- Arrays from the pool are ordinary ndarrays (their ``base`` is the buffer) holding the same bits
  NumPy would have given.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np

# sys.getrefcount counts every reference (CPython with its GIL): an array nothing else refers to
# may then be reused, kept or overwritten instead of copied (see _Pool, Tape._external and
# core._accumulate)
_EXACT_REFCOUNTS = (
    sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)()
)

MIN_BYTES = 1 << 16
MAX_BYTES = 1 << 26


def _refs_when_free() -> int:
    """What ``sys.getrefcount`` gives, in ``_Pool``'s loops, for a buffer only the pool holds."""
    held = [np.empty(1, np.uint8)]
    for b in held:
        return sys.getrefcount(b)
    raise AssertionError("unreachable")


_FREE = _refs_when_free()


class _Pool:
    def __init__(self) -> None:
        self._bufs: dict[int, list[np.ndarray]] = {}  # nbytes -> 1-D uint8 buffers
        self._bytes = 0
        # Taken around each search: a buffer seen free is held (by the taker's local name) before
        # another thread can look at it.
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """``np.empty(shape, dtype)``, C order."""
        n = dtype.itemsize
        for s in shape:
            n *= s
        if n < MIN_BYTES or not _EXACT_REFCOUNTS or dtype.hasobject:
            return np.empty(shape, dtype)
        return self._buffer(n).view(dtype).reshape(shape)

    def copy(self, a: np.ndarray) -> np.ndarray:
        """``np.array(a, copy=True)``: the same bits, in C order or (for a Fortran-ordered ``a``)
        Fortran order."""
        n = a.nbytes
        if n < MIN_BYTES or not _EXACT_REFCOUNTS or a.dtype.hasobject:
            return np.array(a, copy=True)
        fortran = a.flags.f_contiguous and not a.flags.c_contiguous
        out = self._buffer(n).view(a.dtype).reshape(a.shape, order="F" if fortran else "C")
        np.copyto(out, a, casting="no")
        return out

    def product(self, f: np.ufunc, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``f(a, b)`` for ``f`` ``np.matmul`` or ``np.dot`` and 2-D ndarrays ``a``, ``b``, into a
        buffer of the pool when big (the same call, given ``out=``)."""
        if a.ndim != 2 or b.ndim != 2:
            return f(a, b)
        shape = (a.shape[0], b.shape[1])
        if shape[0] * shape[1] * max(a.itemsize, b.itemsize) < MIN_BYTES:
            return f(a, b)  # small (a promoted dtype may be wider: then it is not pooled)
        return f(a, b, out=self.empty(shape, np.result_type(a, b)))

    def _buffer(self, n: int) -> np.ndarray:
        with self._lock:
            bufs = self._bufs.get(n)
            if bufs is None:
                bufs = self._bufs[n] = []
            for buf in bufs:
                if sys.getrefcount(buf) <= _FREE:
                    return buf
            buf = np.empty(n, np.uint8)
            if self._bytes + n <= MAX_BYTES:
                bufs.append(buf)
                self._bytes += n
            return buf

    def trim(self) -> None:
        """Let go of every buffer nothing else refers to."""
        if not self._bytes:
            return
        with self._lock:
            for n, bufs in list(self._bufs.items()):
                keep = [b for b in bufs if sys.getrefcount(b) > _FREE]
                self._bytes -= n * (len(bufs) - len(keep))
                if keep:
                    self._bufs[n] = keep
                else:
                    del self._bufs[n]

    def held(self) -> tuple[int, int]:
        """(buffers, bytes) the pool holds."""
        with self._lock:
            return sum(map(len, self._bufs.values())), self._bytes

    def _after_fork(self) -> None:
        """In a forked child: another thread of the parent may have held the lock at the fork."""
        self._lock = threading.Lock()


pool = _Pool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=pool._after_fork)
