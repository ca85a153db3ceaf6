"""Between Tapes and files: ``Tape.save``, ``tapegrad.load`` and streaming with ``record(path)``.

The codec (``tapegrad.fileformat``) knows bytes and neutral descriptions of values and records;
this module knows Tapes. A loaded tape reads its index at open and each value's bytes only when
the value is first used.
"""

from __future__ import annotations

import datetime
import os
import platform
import weakref
from typing import Any

import numpy as np

from .core import Constant, _out_refs
from .fileformat import RecordInfo, TapeWriter, ValueInfo, open_tape, save_tape
from .registry import _OPS
from .tape import CONST, INPUT, NOT_PLAIN, OP, Tape, function_attrs, function_opname

VALUE_MODES = ("all", "backward", "none")


def provenance() -> dict[str, str]:
    from . import __version__

    return {
        "tapegrad": __version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def record_info(tape: Tape, k: int) -> RecordInfo:
    _, op, attrs, ins, outs, src = tape._entry(k)
    return checked_record(k, op, attrs, tuple(ins), tuple(outs), src)


def checked_record(k: int, op: str, attrs: dict, ins: tuple, outs: tuple, src: Any) -> RecordInfo:
    """A record to save; refuses a registered op whose attributes could not be saved."""
    if attrs and op in _OPS:
        lost = [a for a, v in attrs.items() if isinstance(v, str) and v.startswith(NOT_PLAIN)]
        if lost:
            raise TypeError(
                f"record {k} ({op}): attribute {lost[0]!r} is {attrs[lost[0]][len(NOT_PLAIN) : -1]}, "
                f"not plain data, so a saved tape could not re-run this op; pass arrays to the "
                f"op as inputs instead of keeping them on the Function"
            )
    return RecordInfo(op, attrs, ins, outs, src)


def needed_for_backward(tape: Tape) -> set[int]:
    """The values an offline backward reads: inputs, outputs, constants, and whatever each
    record's rule reads (its inputs unless the op declares ``needs_x = False``; its output when
    ``needs_y``). Unknown ops keep everything they touch."""
    keep = {i for i, k in enumerate(tape._kinds) if k != OP}
    keep.update(tape._index_of(n) for n in tape.outputs)
    for k in range(len(tape._entries)):
        _, op, _, ins, outs, _ = tape._entry(k)
        cls = _OPS.get(op)
        if cls is None or cls.vjp is None or getattr(cls, "needs_x", True):
            keep.update(ins)
        if cls is None or cls.vjp is None or cls.needs_y:
            keep.update(outs)
    return keep


def save(tape: Tape, path: str | os.PathLike, values: str = "all") -> None:
    """Write the whole tape to ``path`` atomically (see ``Tape.save``)."""
    if values not in VALUE_MODES:
        raise ValueError(f"values must be one of {VALUE_MODES}, not {values!r}")
    keep = (
        range(len(tape._kinds))
        if values == "all"
        else needed_for_backward(tape)
        if values == "backward"
        else ()
    )
    keep = set(keep)
    names, kinds, arrays = tape._names, tape._kinds, tape._values
    vals = []
    for i, kind in enumerate(kinds):
        a = arrays[i]
        if a is None:  # still in the file of a loaded tape
            a = tape._value(i) if i in keep and tape._has_value(i) else None
            shape, dtype = tape._shape_dtype(i)
        else:
            shape, dtype = a.shape, a.dtype
            if i not in keep:
                a = None
        name = names[i]
        vals.append((ValueInfo(f"%{i}" if name is None else name, kind, dtype.str, shape), a))
    recs = [record_info(tape, k) for k in range(len(tape._entries))]
    prov = dict(tape.provenance) if tape.provenance else provenance()
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(2, "no such folder to save the tape in", os.fspath(path))
    save_tape(
        path,
        vals,
        recs,
        meta=dict(tape.meta),
        grads={k: np.asarray(v) for k, v in tape.grads.items()},
        provenance=prov,
    )


def load(path: str | os.PathLike, recover: bool = False) -> Tape:
    """Open a tape file: reads its index now, each value's bytes at first use."""
    f = open_tape(path, recover=recover)
    tape = Tape()
    attach(tape, f)
    return tape


def attach(tape: Tape, f: Any) -> None:
    """Make ``tape`` a view of the opened file ``f``."""
    n = len(f.values)
    tape._file = f
    tape._values = [None] * n
    tape._names = [v.name for v in f.values]
    tape._kinds = [v.kind for v in f.values]
    tape._entries = [(None, r.op, r.attrs, r.inputs, r.outputs, r.source) for r in f.records]
    if not f.complete:
        # A recovered prefix: values written for the call that was cut off (its new inputs and
        # any outputs) belong to no complete record; they come after every value the records use.
        used = max((max(e[3] + e[4], default=-1) for e in tape._entries), default=-1) + 1
        for lst in (tape._values, tape._names, tape._kinds):
            del lst[used:]
    tape._taken = {v.name for v in f.values if v.kind == INPUT}
    tape._complete = bool(f.complete)
    tape.meta = dict(f.meta)
    tape.provenance = dict(f.provenance)
    tape._saved_grads = {name: None for name in f.grad_names}
    tape._view = None


class Stream:
    """Writes each call of a recording tape to its file as it happens, keeping nothing in memory
    but the bookkeeping of values still alive (a long recording's memory stays flat)."""

    def __init__(self, tape: Tape, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.writer = TapeWriter(self.path, provenance=provenance(), meta=dict(tape.meta))
        self.serial = tape._serial
        self.nvalues = 0
        self.nrecords = 0
        self.wire: dict[int, int] = {}  # id -> index of values whose slot another tape owns
        self.leaf_names: dict[int, str] = {}
        tape.provenance = None

    def _wire(self, x: Any, i: int) -> None:
        if x._tt == self.serial:
            x._ti = i
        else:
            self.wire[id(x)] = i

    def _index(self, x: Any) -> int:
        return x._ti if x._tt == self.serial else self.wire[id(x)]

    def write(self, tape: Tape) -> None:
        """Write the pending calls: new values first, then the record naming them."""
        pending, ys, srcs = tape._pending, tape._pending_ys, tape._pending_src
        tape._pending, tape._pending_ys, tape._pending_src = [], [], []
        w = self.writer
        j = 0
        nodes = 0
        for item in pending:
            i = self.nvalues
            if type(item) is tuple:  # a new input or constant: (variable, copied value, version)
                x, d, ver = item
                self._wire(x, i)
                self.nvalues += 1
                if isinstance(x, Constant):
                    w.add_value(ValueInfo(f"%{i}", CONST, d.dtype.str, d.shape), d)
                    continue
                name = None if x.name is None else tape._leaf_name(str(x.name))
                name = f"%{i}" if name is None else name
                self.leaf_names[i] = name
                tape._leaves[i] = (weakref.ref(x), ver)
                w.add_value(ValueInfo(name, INPUT, d.dtype.str, d.shape), d)
                continue
            ins = tuple([self._index(x) for x in item._ins])
            outs = []
            for r in _out_refs(item._outs):
                i = self.nvalues
                self.nvalues += 1
                y = r()
                if y is not None:
                    self._wire(y, i)
                d = ys[j]
                j += 1
                w.add_value(ValueInfo(f"%{i}", OP, d.dtype.str, d.shape), d)
                outs.append(i)
            src = srcs[nodes] if srcs else None
            nodes += 1
            op = function_opname(item)
            w.add_record(
                checked_record(self.nrecords, op, function_attrs(item), ins, tuple(outs), src)
            )
            self.nrecords += 1

    def grads(self, tape: Tape) -> dict[str, np.ndarray]:
        out = {}
        for i, (ref, ver) in tape._leaves.items():
            v = ref()
            if v is not None and v._ver == ver and v.grad is not None and v.grad.data is not None:
                out[self.leaf_names[i]] = np.asarray(v.grad.data)
        return out

    def close(self, tape: Tape) -> None:
        self.writer.close(meta=dict(tape.meta), grads=self.grads(tape))
        self.wire.clear()
        attach(tape, open_tape(self.path))


def validate(path: str | os.PathLike) -> dict[str, Any]:
    """Check a whole file: its structure and schema at open, then every stored array's and every
    gradient's checksum. A cut-short file is reported (``complete: False``) with its valid prefix.
    Raises ``TapeFormatError`` at the first problem."""
    from .errors import TapeTruncatedError

    try:
        f = open_tape(path)
    except TapeTruncatedError:
        f = open_tape(path, recover=True)
    try:
        arrays = checked = 0
        for i in range(len(f.values)):
            if f.has_array(i):
                checked += f.array(i).nbytes
                arrays += 1
        for name in f.grad_names:
            checked += f.grad(name).nbytes
        return {
            "file": os.fspath(path),
            "complete": bool(f.complete),
            "format": f.provenance.get("format", "?"),
            "records": len(f.records),
            "values": len(f.values),
            "arrays": arrays,
            "grads": list(f.grad_names),
            "bytes": checked,
        }
    finally:
        f.close()
