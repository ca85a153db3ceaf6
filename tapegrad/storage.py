"""Between Tapes and files: ``Tape.save``, ``tapegrad.load`` and streaming with ``record(path)``.

The codec (``tapegrad.fileformat``) knows bytes and neutral descriptions of values and records;
this module knows Tapes. A loaded tape reads its index at open and each value's bytes only when
the value is first used.
"""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any

import numpy as np

from .fileformat import RecordInfo, TapeWriter, ValueInfo, open_tape, save_tape
from .registry import _OPS
from .tape import INPUT, NOT_PLAIN, OP, Tape

VALUE_MODES = ("all", "backward", "none")


def provenance() -> dict[str, str]:
    from . import __version__

    return {
        "tapegrad": __version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def value_info(tape: Tape, i: int) -> ValueInfo:
    shape, dtype = tape._shape_dtype(i)
    return ValueInfo(tape.name_of(i), tape._kinds[i], dtype.str, tuple(int(s) for s in shape))


def record_info(tape: Tape, k: int) -> RecordInfo:
    _, op, attrs, ins, outs, src = tape._entry(k)
    cls = _OPS.get(op)
    if cls is not None:
        lost = [a for a, v in attrs.items() if isinstance(v, str) and v.startswith(NOT_PLAIN)]
        if lost:
            raise TypeError(
                f"record {k} ({op}): attribute {lost[0]!r} is {attrs[lost[0]][len(NOT_PLAIN) : -1]}, "
                f"not plain data, so a saved tape could not re-run this op; pass arrays to the "
                f"op as inputs instead of keeping them on the Function"
            )
    return RecordInfo(op, attrs, tuple(ins), tuple(outs), src)


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
    vals = []
    for i in range(len(tape._kinds)):
        arr = tape._value(i) if i in keep and tape._has_value(i) else None
        vals.append((value_info(tape, i), arr))
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
    tape._entries = [
        (None, r.op, dict(r.attrs), tuple(r.inputs), tuple(r.outputs), r.source) for r in f.records
    ]
    if not f.complete:
        # A recovered prefix: values written for the call that was cut off (its new inputs and
        # any outputs) belong to no complete record; they come after every value the records use.
        used = max((max(e[3] + e[4], default=-1) for e in tape._entries), default=-1) + 1
        for lst in (tape._values, tape._names, tape._kinds):
            del lst[used:]
    tape._taken = {v.name for v in f.values if v.kind == INPUT}
    tape._complete = bool(f.complete)
    tape._stream_info.clear()
    tape.meta = dict(f.meta)
    tape.provenance = dict(f.provenance)
    tape._saved_grads = {name: None for name in f.grad_names}
    tape._view = None


class Stream:
    """Writes each record of a recording tape to its file as it happens."""

    def __init__(self, tape: Tape, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.writer = TapeWriter(self.path, provenance=provenance(), meta=dict(tape.meta))
        self.done = 0  # values already written
        tape.provenance = None

    def write(self, tape: Tape, k: int) -> None:
        """Write the values made since the last record, then record ``k``; release their arrays
        so that a long recording's memory stays flat."""
        w = self.writer
        for i in range(self.done, len(tape._kinds)):
            a = tape._values[i]
            w.add_value(value_info(tape, i), a)
            tape._stream_info[i] = (a.shape, a.dtype)
            tape._values[i] = None
        self.done = len(tape._kinds)
        rec = record_info(tape, k)
        w.add_record(rec)
        tape._entries[k] = (None, rec.op, rec.attrs, rec.inputs, rec.outputs, rec.source)

    def close(self, tape: Tape) -> None:
        self.writer.close(meta=dict(tape.meta), grads=dict(tape.grads))
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
