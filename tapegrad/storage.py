"""Between Tapes and files: ``Tape.save``, ``tapegrad.load`` and streaming with ``record(path)``.

The codec (``tapegrad.fileformat``) knows bytes and neutral descriptions of values and records;
this module knows Tapes. They meet in columns (``ValueColumns``, ``RecordColumns``): a save hands
the codec the tape's tables as lists built in one pass each, and a loaded tape keeps the file's
columns as its tables (its records a view of them). A loaded tape reads its index at open and
each value's bytes only when the value is first used, with the values sharing its payload area.
"""

from __future__ import annotations

import datetime
import itertools
import operator
import os
import platform
import weakref
from typing import Any

import numpy as np

from ._gc import gc_paused
from .core import Constant, _as_array, _out_refs
from .fileformat import (
    RecordColumns,
    RecordInfo,
    TapeWriter,
    ValueColumns,
    ValueInfo,
    open_tape,
    save_tape,
)
from .registry import _OPS
from .tape import (
    CONST,
    INPUT,
    NOT_PLAIN,
    OP,
    Tape,
    _FileEntries,
    function_attrs,
    function_opname,
)

VALUE_MODES = ("all", "backward", "none")


def provenance() -> dict[str, str]:
    from . import __version__

    return {
        "tapegrad": __version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


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


def needed_for_backward(tape: Tape, records: tuple | None = None) -> set[int]:
    """The values an offline backward reads: inputs, outputs, constants, and whatever each
    record's rule reads (its inputs unless the op declares ``needs_x = False``; its output when
    ``needs_y``). Unknown ops keep everything they touch. ``records``: the tape's
    ``_record_columns()``, if the caller has them."""
    keep = {i for i, k in enumerate(tape._kinds) if k != OP}
    keep.update(tape._index_of(n) for n in tape.outputs)
    ops, _, inputs, outputs, _ = records or tape._record_columns()
    for op, ins, outs in zip(ops, inputs, outputs):
        cls = _OPS.get(op)
        if cls is None or cls.vjp is None or getattr(cls, "needs_x", True):
            keep.update(ins)
        if cls is None or cls.vjp is None or cls.needs_y:
            keep.update(outs)
    return keep


def save(tape: Tape, path: str | os.PathLike, values: str = "all") -> None:
    """Write the whole tape to ``path`` atomically (see ``Tape.save``).

    The tape goes to the codec as columns (``ValueColumns``, ``RecordColumns``), built in one
    pass each: saving 100,000 small records costs a few list operations per record."""
    if values not in VALUE_MODES:
        raise ValueError(f"values must be one of {VALUE_MODES}, not {values!r}")
    with gc_paused():
        records = tape._record_columns()
        check_attrs(records[0], records[1])
        columns = value_columns(tape, values, records)
    prov = dict(tape.provenance) if tape.provenance else provenance()
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(2, "no such folder to save the tape in", os.fspath(path))
    sources = None if records[4].count(None) == len(records[4]) else records[4]
    save_tape(
        path,
        columns,
        RecordColumns(*records[:4], sources),
        meta=dict(tape.meta),
        grads={k: np.asarray(v) for k, v in tape.grads.items()},
        provenance=prov,
    )


def check_attrs(ops: list[str], attrs: list[dict]) -> None:
    """``checked_record``'s refusal, for every record at once (most have no attributes)."""
    for k in itertools.compress(range(len(attrs)), attrs):
        if ops[k] in _OPS:
            checked_record(k, ops[k], attrs[k], (), (), None)


def value_columns(tape: Tape, values: str, records: tuple) -> ValueColumns:
    """The tape's values as columns, with the arrays that ``values`` says to store."""
    names, kinds, arrays = tape.value_names, tape._kinds, tape._values
    if values == "all" and not any(map(operator.is_, arrays, itertools.repeat(None))):
        # a recorded tape: every array in memory
        dtypes = list(map(operator.attrgetter("dtype"), arrays))
        shapes = list(map(operator.attrgetter("shape"), arrays))
        return ValueColumns(names, kinds, dtypes, shapes, list(arrays))
    keep = needed_for_backward(tape, records) if values == "backward" else None
    dtypes, shapes, stored = [], [], []
    for i, a in enumerate(arrays):
        wanted = values == "all" or (keep is not None and i in keep)
        if a is None:  # still in the file of a loaded tape, or not saved with it
            a = tape._value(i) if wanted and tape._has_value(i) else None
            shape, dtype = tape._shape_dtype(i) if a is None else (a.shape, a.dtype)
        else:
            shape, dtype = a.shape, a.dtype
        dtypes.append(dtype)
        shapes.append(shape)
        stored.append(a if wanted else None)
    return ValueColumns(names, kinds, dtypes, shapes, stored)


def load(path: str | os.PathLike, recover: bool = False) -> Tape:
    """Open a tape file: reads its index now, each value's bytes at first use."""
    f = open_tape(path, recover=recover)
    tape = Tape()
    attach(tape, f)
    return tape


def attach(tape: Tape, f: Any) -> None:
    """Make ``tape`` a view of the opened file ``f``: its columns as the tape's tables (a few
    list copies, nothing per value), its name index as the tape's."""
    names, kinds = f.value_columns.names, f.value_columns.kinds
    tape._file = f
    tape._values = [None] * len(names)
    tape._names = list(names)
    tape._kinds = list(kinds)
    tape._entries = _FileEntries(f.record_columns)
    if f.complete:
        tape._names_cache = (len(tape._n), tape._n, f.name_index)
    else:
        # A recovered prefix: values written for the call that was cut off (its new inputs and
        # any outputs) belong to no complete record; they come after every value the records use.
        used = max((max(e[3] + e[4], default=-1) for e in tape._entries), default=-1) + 1
        for lst in (tape._values, tape._names, tape._kinds):
            del lst[used:]
    tape._taken = {name for name, kind in zip(names, kinds) if kind == INPUT}
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
                d = _as_array(ys[j])  # a 0-d result may be kept as a NumPy scalar
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
        count = len(f.value_columns.names)
        for i in range(count):
            if f.has_array(i):
                checked += f.array(i).nbytes
                arrays += 1
        for name in f.grad_names:
            checked += f.grad(name).nbytes
        return {
            "file": os.fspath(path),
            "complete": bool(f.complete),
            "format": f.provenance.get("format", "?"),
            "records": len(f.record_columns.ops),
            "values": count,
            "arrays": arrays,
            "grads": list(f.grad_names),
            "bytes": checked,
        }
    finally:
        f.close()
