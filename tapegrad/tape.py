"""The tape: every Function call made inside ``with record():``, in call order.

A tape is a table of values and a list of records. Values are numbered in order of first
appearance; each is an *input* (a leaf Variable the user made, or a value made before recording
started), a *const* (a number or ndarray turned into a Variable on the way into an op) or an *op*
output. A record names its op, its plain-data attributes and its input and output value numbers.

Invariants:
- Records are in call order, which is a topological order: offline backward walks them in reverse.
- A value is stored as it was when recorded. Inputs and consts are copied at first use (a training
  loop that updates a parameter in place must not change the tape), unless nothing but their
  Variable refers to the array: then the tape keeps the array itself and ``Variable.data`` hands
  out a copy while the tape lives (see ``Tape._external``). Op outputs are fresh arrays that no op
  writes to, so they are kept without copying.
- The per-call cost is a few list appends: names, attributes and listings are derived lazily.
"""

from __future__ import annotations

import itertools
import operator
import os
import sys
import threading
import weakref
from collections.abc import Sequence
from contextlib import ContextDecorator
from typing import Any, Iterator

import numpy as np

from ._gc import gc_paused
from ._pool import _EXACT_REFCOUNTS, pool
from .config import _state
from .core import (
    _SCALARS,
    Constant,
    Variable,
    _as_array,
    _give_back,
    _lend,
    _out_refs,
    _ScalarConstant,
)

_serials = itertools.count(1)
_SLOT_LOCK = threading.Lock()
# Serials of the tapes inside their with-block. A Variable's slot (_tt) that names a tape not in
# here (its block is over) is free: the next tape to record the Variable claims it.
_recording: set[int] = set()
_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

INPUT, CONST, OP = "input", "const", "op"


class _FileEntries(Sequence):
    """The records of a loaded tape as ``Tape._entries`` gives them, ``(None, op, attrs, inputs,
    outputs, source)``, made on demand from the file's columns (a ``RecordColumns``): a tape of
    100,000 records opens without a tuple per record, and ``_record_columns`` hands the
    columns on as they are."""

    __slots__ = ("columns", "count")

    def __init__(self, columns: Any):
        self.columns = columns
        self.count = len(columns[0])

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple]:
        ops, attrs, inputs, outputs, sources = self.columns
        nones = itertools.repeat(None)
        return zip(nones, ops, attrs, inputs, outputs, nones if sources is None else sources)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(self.count))]
        if k < 0:
            k += self.count
        if not 0 <= k < self.count:
            raise IndexError("record index out of range")
        ops, attrs, inputs, outputs, sources = self.columns
        source = None if sources is None else sources[k]
        return (None, ops[k], attrs[k], inputs[k], outputs[k], source)


class Record(tuple):
    """One recorded call: ``op`` name, ``attrs`` (plain data), ``inputs``/``outputs`` (value
    names), ``source`` ((file, line, function), or None).

    Immutable: a tuple underneath, so that listing a tape of 100,000 records makes them with
    C-level ``tuple.__new__`` calls (``_make_records``), not a Python ``__init__`` each. Records
    compare equal when all but ``source`` are."""

    __slots__ = ()

    def __new__(cls, op: str, attrs: dict, inputs: tuple, outputs: tuple, source: Any = None):
        return tuple.__new__(cls, (op, attrs, inputs, outputs, source))

    op = property(operator.itemgetter(0), doc="the registered op name")
    attrs = property(operator.itemgetter(1), doc="plain-data attributes")
    inputs = property(operator.itemgetter(2), doc="names of the values read")
    outputs = property(operator.itemgetter(3), doc="names of the values made")
    source = property(operator.itemgetter(4), doc="(file, line, function) of the call, or None")

    def __getnewargs__(self) -> tuple:  # copy and pickle through __new__
        return tuple(self)

    def __repr__(self) -> str:
        return (
            f"Record(op={self.op!r}, attrs={self.attrs!r}, inputs={self.inputs!r}, "
            f"outputs={self.outputs!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):  # a plain tuple is no record, either way round
            return False if isinstance(other, tuple) else NotImplemented
        return self[:4] == other[:4]

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # type: ignore[assignment]  (attrs is a dict)


def _make_records(rows: Iterator[tuple]) -> list[Record]:
    """Records from (op, attrs, inputs, outputs, source) tuples, without running Python code
    per record."""
    return list(map(tuple.__new__, itertools.repeat(Record), rows))


def _plain(value: Any, where: str) -> Any:
    """Attribute values as plain data: numbers, strings, None, and tuples/dicts of those."""
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()  # before the next test: np.float64 is a float subclass
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v, where) for v in value)
    if isinstance(value, dict):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if isinstance(value, np.dtype):
        return value.str
    raise TypeError(
        f"{where} is a {type(value).__name__}; op attributes must be plain data "
        f"(numbers, strings, None, tuples, dicts). Pass arrays to the op as inputs instead"
    )


_FUNCTION_STATE = {"inputs", "outputs", "generation"}


NOT_PLAIN = "<not plain data: "


def function_attrs(fn: Any) -> dict[str, Any]:
    """The plain-data attributes of a recorded Function, as saved with its record.

    An attribute that is not plain data (an ndarray a user's forward kept on ``self``) is shown
    and saved as a ``"<not plain data: ...>"`` marker: the live Function still has it, but an
    offline replay of that record refuses to run without it."""
    names = getattr(type(fn), "attr_names", None)
    if names is not None:  # a built-in op: its attributes are declared
        if not names:
            return {}
        raw = {k: getattr(fn, k) for k in names}
    else:  # a user Function: its instance attributes, minus graph links and private state
        raw = {
            k: v for k, v in vars(fn).items() if k not in _FUNCTION_STATE and not k.startswith("_")
        }
    out = {}
    for k, v in raw.items():
        try:
            out[k] = _plain(v, k)
        except TypeError:
            desc = type(v).__name__
            if isinstance(v, np.ndarray):
                desc = f"ndarray {v.dtype.name}{list(v.shape)}"
            out[k] = f"{NOT_PLAIN}{desc}>"
    return out


def function_opname(fn: Any) -> str:
    if fn.op is not None and type(fn)._registered:
        return fn.op
    cls = type(fn)
    return f"{cls.__module__}.{cls.__qualname__}"


def _op_traits(fn: Any) -> tuple[str | None, bool]:
    """(op name, whether it has no attributes) true of every call of ``type(fn)``; the name is
    None when each call must be asked. It is the class's when instances have no ``__dict__``
    (built-in ops keep their state in slots) and attribute lookup is the ordinary one."""
    cls = type(fn)
    same_name = (
        cls.__dictoffset__ == 0
        and cls.__getattribute__ is object.__getattribute__
        and isinstance(getattr(cls, "op", None), (str, type(None)))
    )
    return (function_opname(fn) if same_name else None), getattr(cls, "attr_names", None) == ()


def _ops_and_attrs(fns: list) -> tuple[list[str], list[dict]]:
    """``function_opname`` and ``function_attrs`` of each Function, asking each class once what
    holds for all its calls (a tape of 100,000 calls has a handful of classes)."""
    classes = list(map(type, fns))
    traits = {cls: _op_traits(fn) for cls, fn in dict(zip(classes, fns)).items()}
    ops = list(map({cls: name for cls, (name, _) in traits.items()}.__getitem__, classes))
    if any(name is None for name, _ in traits.values()):
        ops = [function_opname(fn) if op is None else op for op, fn in zip(ops, fns)]
    bare = {cls: b for cls, (_, b) in traits.items()}
    if all(bare.values()):
        return ops, [{} for _ in fns]
    return ops, [{} if bare[cls] else function_attrs(fn) for cls, fn in zip(classes, fns)]


class Tape:
    """A recorded computation: values, records, and what can be done with them."""

    def __init__(self, *, source: bool = False, meta: dict | None = None):
        self._serial = next(_serials)
        # The value table and the records, built from the pending calls on first use.
        self._v: list[Any] = []  # ndarray, or None while it lives only in the file
        self._n: list[str | None] = []  # None: a generated name "%<index>"
        self._k: list[str] = []  # INPUT, CONST or OP
        self._e: list[tuple] = []  # (fn, ins, outs, source) or (None, op, attrs, ins, outs, source)
        # Recording appends here only; _materialize() turns it into the table above.
        self._pending: list[Any] = []  # Functions, and (variable, value) for new inputs/constants
        self._pending_ys: list[np.ndarray] = []  # the output arrays of the pending Functions
        self._pending_src: list[Any] = []  # with source=True: (file, line, function) per call
        self._wire: dict[int, int] = {}  # id(Variable) -> value index, while materializing
        self._closed = False
        # Variables whose slot (_tt) names another tape: id -> version, pinned so ids stay unique.
        self._ids: dict[int, int] = {}
        self._pins: list[Variable] = []
        self._ext: dict[int, np.ndarray] = {}  # buffers of inputs and constants, by id
        self._taken: set[str] = set()
        self._source = source
        self._file: Any = None  # a fileformat.TapeFile when loaded
        self._writer: Any = None  # a storage.Stream while streaming to a file
        # True while calls may be recorded by the inlined path in Function.__call__ (no source
        # lines to take, no stream to write): see Tape._record for the general one
        self._direct = not source
        self._leaves: dict[int, Any] = {}  # input index -> (weakref to its Variable, version)
        self._saved_grads: dict[str, Any] = {}  # name -> array (None: still in the file)
        self._complete = True
        self._view: tuple | None = None  # cached derived data: (sizes, records)
        self._names_cache: tuple | None = None  # (count, names list, name -> index)
        self.meta: dict[str, Any] = dict(meta or {})
        self.provenance: dict[str, Any] | None = None

    # -- recording (hot path) ----------------------------------------------------------------
    def _record(self, fn: Any, inputs: Any, outputs: Any) -> None:
        """Called by every Function call while this tape records: kept to a few appends."""
        serial = self._serial
        for x in inputs:
            if x._tt != serial and self._ids.get(id(x), -1) != x._ver:
                self._external(x)
        ext = self._ext
        ys = self._pending_ys
        fresh = fn.fresh
        for y in outputs:
            d = y._data
            if ext and not fresh:
                d = self._unshared(d)
            if y._tt == 0:  # a fresh output: no other thread can see it yet
                y._tt = serial
            else:  # its slot belongs to an enclosing tape
                self._ids[id(y)] = y._ver
                self._pins.append(y)
            ys.append(d)
        self._pending.append(fn)
        if self._source:
            self._pending_src.append(_caller())
        if self._writer is not None:
            self._writer.write(self)

    def _unshared(self, d: np.ndarray) -> np.ndarray:
        """An op output as the tape keeps it: copied when it is an input's or a constant's
        buffer or a view of one (the user may update those in place)."""
        ext = self._ext
        b = d.base
        if (b is not None and id(b) in ext) or id(d) in ext:
            return d.copy()
        return d

    def _external(self, x: Variable) -> None:
        """A value made outside this tape, or changed in place since its last use: an input (a
        leaf) or a constant.

        Its array is stored as a copy, and its buffer remembered so that outputs viewing it are
        copied too: the user may change it in place later. Except when nothing but ``x`` refers
        to the array (a parameter, typically): then the tape keeps the array itself, and
        ``x.data`` gives ``x`` a copy of its own before anyone can reach the array to change it,
        if this tape is still alive then (see ``core._give_back``). A training step whose tape is
        gone before the update copies nothing, this step's and every later step's (the slot
        of a tape whose block is over is free again)."""
        with _SLOT_LOCK:  # a parameter shared by tapes in several threads: one owner of the slot
            slot = x._tt
            claimed = slot == 0 or (slot != self._serial and slot not in _recording)
            if claimed:
                if x._ti < 0:  # the array is lent to the slot's last tape: it keeps it, if alive
                    _give_back(x)
                x._tt = self._serial
            elif x._tt != self._serial:
                self._ids[id(x)] = x._ver
                self._pins.append(x)
            d = x._data
            if d.__class__ in _SCALARS:  # a 0-d result kept as a NumPy scalar: its array now
                d = x._data = np.asarray(d)
            if isinstance(x, _ScalarConstant):
                pass
            elif (
                claimed
                and _EXACT_REFCOUNTS
                and self._writer is None
                and d.base is None
                and sys.getrefcount(d) <= 3  # x's slot, d, and getrefcount's argument
            ):
                x._ti = -1
                _lend(self)
            else:
                owner = d if d.base is None else d.base
                self._ext[id(owner)] = owner
                d = pool.copy(d)
        self._pending.append((x, d, x._ver))

    def _materialize(self) -> None:
        """Turn the pending calls into value table entries and records (in call order)."""
        pending = self._pending
        if not pending:
            return
        ys, srcs = self._pending_ys, self._pending_src
        self._pending, self._pending_ys, self._pending_src = [], [], []
        values, names, kinds, entries, wire = self._v, self._n, self._k, self._e, self._wire
        j = 0
        for item in pending:
            if type(item) is tuple:  # a new input or constant: (variable, copied value, version)
                x, d, ver = item
                i = len(values)
                wire[id(x)] = i
                values.append(d)
                if isinstance(x, Constant):
                    names.append(None)
                    kinds.append(CONST)
                else:
                    self._leaves[i] = (weakref.ref(x), ver)
                    names.append(None if x.name is None else self._leaf_name(str(x.name)))
                    kinds.append(INPUT)
                continue
            ins = tuple([wire[id(x)] for x in item._ins])
            n = len(values)
            outs = []
            for r in _out_refs(item._outs):
                y = r()
                if y is not None:
                    wire[id(y)] = len(values)
                outs.append(len(values))
                values.append(_as_array(ys[j]))  # a 0-d result may be a NumPy scalar
                names.append(None)
                kinds.append(OP)
                j += 1
            entries.append((item, ins, (n,) if len(outs) == 1 else tuple(outs), None))
        if self._closed:
            wire.clear()  # no more calls will come to be wired
        if srcs:
            first = len(entries) - len(srcs)
            for k, src in enumerate(srcs):
                e = entries[first + k]
                entries[first + k] = (e[0], e[1], e[2], src)

    def _not_streaming(self) -> None:
        if self._writer is not None:
            raise RuntimeError(
                f"this tape is streaming to {self._writer.path}: its records are on disk, and "
                f"the tape reads them back when the with-block ends"
            )

    @property
    def _entries(self) -> list[tuple]:
        self._not_streaming()
        if self._pending:
            self._materialize()
        return self._e

    @_entries.setter
    def _entries(self, value: list[tuple]) -> None:
        self._materialize()
        self._e = value

    @property
    def _values(self) -> list[Any]:
        self._not_streaming()
        if self._pending:
            self._materialize()
        return self._v

    @_values.setter
    def _values(self, value: list[Any]) -> None:
        self._materialize()
        self._v = value

    @property
    def _names(self) -> list[str | None]:
        self._not_streaming()
        if self._pending:
            self._materialize()
        return self._n

    @_names.setter
    def _names(self, value: list[str | None]) -> None:
        self._materialize()
        self._n = value

    @property
    def _kinds(self) -> list[str]:
        self._not_streaming()
        if self._pending:
            self._materialize()
        return self._k

    @_kinds.setter
    def _kinds(self, value: list[str]) -> None:
        self._materialize()
        self._k = value

    def _leaf_name(self, nm: str) -> str | None:
        """``nm`` if free; a leaf updated in place and used again becomes ``nm@2``, ``nm@3``..."""
        if nm.startswith("%"):
            return None
        cand, k = nm, 1
        while cand in self._taken:
            k += 1
            cand = f"{nm}@{k}"
        self._taken.add(cand)
        return cand

    # -- values ------------------------------------------------------------------------------
    def name_of(self, i: int) -> str:
        """The name of value number ``i``."""
        if self._pending or self._writer is not None:
            self._names  # noqa: B018 (materializes, or refuses while streaming)
        n = self._n[i]
        return n if n is not None else f"%{i}"

    def _value(self, i: int) -> np.ndarray:
        if self._pending or self._writer is not None:
            self._values  # noqa: B018 (materializes, or refuses while streaming)
        a = self._v[i]
        if a is None:
            if self._file is None or not self._file.has_array(i):
                raise KeyError(
                    f"value {self.name_of(i)!r} was not saved with this tape (it was saved with "
                    f"values='backward' or 'none')"
                )
            self._read_around(i)
            a = self._v[i]
        return a

    def _read_around(self, i: int) -> None:
        """Take value ``i`` from the file, and with it the neighbours the file gives at no extra
        cost (a whole payload area of small values: see ``TapeFile.arrays_around``), so that
        reading every value of a loaded tape costs a list lookup per value, not a file access."""
        first, arrays = self._file.arrays_around(i)
        v = self._v
        end = min(first + len(arrays), len(v))  # a recovered tape holds fewer values
        if all(a is None for a in v[first:end]):
            v[first:end] = arrays[: end - first]
        else:  # keep the arrays already handed out
            for j in range(first, end):
                if v[j] is None:
                    v[j] = arrays[j - first]

    def _has_value(self, i: int) -> bool:
        if self._pending or self._writer is not None:
            self._values  # noqa: B018 (materializes, or refuses while streaming)
        return self._v[i] is not None or (self._file is not None and self._file.has_array(i))

    def _shape_dtype(self, i: int) -> tuple[tuple[int, ...], np.dtype]:
        if self._pending or self._writer is not None:
            self._values  # noqa: B018 (materializes, or refuses while streaming)
        a = self._v[i]
        if a is not None:
            return a.shape, a.dtype
        return self._file.shape_dtype(i)

    def _name_index(self) -> dict[str, int]:
        """name -> value number, rebuilt only when values were added."""
        if self._pending:
            self._materialize()
        cached = self._names_cache
        if cached is None or cached[0] != len(self._n) or cached[1] is not self._n:
            names = self._n
            cached = (
                len(names),
                names,
                {(n if n is not None else f"%{i}"): i for i, n in enumerate(names)},
            )
            self._names_cache = cached
        return cached[2]

    def _index_of(self, name: str) -> int:
        index = self._name_index()
        try:
            return index[name]
        except KeyError:
            raise KeyError(
                f"no value named {name!r} on this tape; inputs are {self.inputs}, "
                f"outputs are {self.outputs}"
            ) from None

    def __getitem__(self, name: str) -> np.ndarray:
        """The value named ``name``, bit for bit as recorded (a read-only array)."""
        try:
            i = self._name_index()[name]
        except KeyError:
            i = self._index_of(name)  # raises, saying what the tape holds
        a = self._v[i] if self._writer is None else None
        if a is None:
            a = self._value(i)
        if a.flags.writeable:
            a = a.view()
            a.flags.writeable = False
        return a

    def __contains__(self, name: object) -> bool:
        return name in self._name_index()

    @property
    def value_names(self) -> list[str]:
        index = self._name_index()
        if len(index) == len(self._n):  # names are unique: the index lists them in order
            return list(index)
        return [self.name_of(i) for i in range(len(self._n))]

    # -- records -----------------------------------------------------------------------------
    def _entry(self, k: int) -> tuple[Any, str, dict, tuple, tuple, Any]:
        """(fn or None, op, attrs, input indices, output indices, source) of record ``k``."""
        e = self._entries[k]
        if len(e) == 4:
            fn, ins, outs, src = e
            return fn, function_opname(fn), function_attrs(fn), ins, outs, src
        return e

    def _record_columns(self) -> tuple[list, list, list, list, list]:
        """(ops, attrs, input indices, output indices, sources) of every record: what ``_entry``
        gives record by record, in one pass (saving and listing a tape want every record). A
        loaded tape's are the file's own lists: read them, do not change them."""
        entries = self._entries
        if type(entries) is _FileEntries:  # loaded: the file's columns
            ops, attrs, ins, outs, srcs = entries.columns
            return ops, attrs, ins, outs, srcs or [None] * len(ops)
        shapes = set(map(len, entries))
        with gc_paused():
            if shapes == {6}:  # replayed: kept as they are given
                _, ops, attrs, ins, outs, srcs = map(list, zip(*entries))
            elif shapes == {4}:  # recorded
                fns, ins, outs, srcs = map(list, zip(*entries))
                ops, attrs = _ops_and_attrs(fns)
            elif entries:
                rows = [self._entry(k)[1:] for k in range(len(entries))]
                ops, attrs, ins, outs, srcs = map(list, zip(*rows))
            else:
                ops, attrs, ins, outs, srcs = [], [], [], [], []
        return ops, attrs, ins, outs, srcs

    def _derived(self) -> tuple:
        n = len(self._entries)
        nv = len(self._names)
        if self._view is None or self._view[0] != (n, nv):
            ops, attrs, ins, outs, srcs = self._record_columns()
            names = self.value_names

            def named(column: list) -> list:
                return [
                    alone[t[0]] if len(t) == 1 else tuple([names[i] for i in t]) for t in column
                ]

            with gc_paused():
                # Most calls read or make one value: each value's 1-tuple of its name, made once
                # and shared by the records that name it alone.
                alone = [(name,) for name in names]
                records = _make_records(zip(ops, attrs, named(ins), named(outs), srcs))
            self._view = ((n, nv), records)
        return self._view

    @property
    def records(self) -> list[Record]:
        return list(self._derived()[1])

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    @property
    def inputs(self) -> list[str]:
        """Names of the leaf values the user made, in first-use order."""
        return list(itertools.compress(self.value_names, [k == INPUT for k in self._kinds]))

    @property
    def constants(self) -> list[str]:
        return list(itertools.compress(self.value_names, [k == CONST for k in self._kinds]))

    @property
    def outputs(self) -> list[str]:
        """Names of the floating-point op outputs that no record consumes."""
        entries = self._entries
        if type(entries) is _FileEntries:
            inputs = entries.columns[2]
        else:  # (fn, ins, outs, src) or (None, op, attrs, ins, outs, src): ins third from last
            inputs = map(operator.itemgetter(-3), entries)
        used = set(itertools.chain.from_iterable(inputs))
        out = []
        for i, k in enumerate(self._kinds):
            if k == OP and i not in used and self._shape_dtype(i)[1].kind in "fc":
                out.append(self.name_of(i))
        return out

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Gradients of the inputs: those saved with a loaded tape, or for a recorded tape the
        ``.grad`` its input Variables hold now (after ``loss.backward()``)."""
        if self._file is not None:
            out = {}
            for name, g in self._saved_grads.items():
                if g is None:
                    g = self._saved_grads[name] = self._file.grad(name)
                out[name] = g
            return out
        out = {}
        for i, (ref, ver) in self._leaves.items():
            v = ref()
            if v is not None and v._ver == ver and v.grad is not None and v.grad.data is not None:
                out[self.name_of(i)] = v.grad.data
        return out

    @property
    def complete(self) -> bool:
        """False for a tape recovered from a file cut short."""
        return self._complete

    # -- listing -----------------------------------------------------------------------------
    def _fmt_value(self, i: int) -> str:
        shape, dtype = self._shape_dtype(i)
        return f"{self.name_of(i)}:{_short_dtype(dtype)}[{','.join(map(str, shape))}]"

    def __str__(self) -> str:
        lines = [
            f"tape: {len(self._entries)} records, inputs ({', '.join(self._fmt_value(i) for i, k in enumerate(self._kinds) if k == INPUT)})"
        ]
        width = len(str(max(len(self._entries) - 1, 0)))
        for k in range(len(self._entries)):
            lines.append(self.format_record(k, width))
        outs = self.outputs
        lines.append(f"outputs ({', '.join(self._fmt_value(self._index_of(n)) for n in outs)})")
        return "\n".join(lines)

    def format_record(self, k: int, width: int = 0) -> str:
        """Record ``k`` as one line: ``k  outs = op(ins) attrs``."""
        _, op, attrs, ins, outs, src = self._entry(k)
        args = ", ".join(self._fmt_value(i) for i in ins)
        res = ", ".join(self._fmt_value(i) for i in outs)
        at = "".join(f" {a}={_fmt_attr(v)}" for a, v in attrs.items())
        where = f"  # {os.path.basename(src[0])}:{src[1]}" if src else ""
        return f"{k:>{width}}  {res} = {op}({args}){at}{where}"

    def __repr__(self) -> str:
        state = "" if self._complete else ", recovered"
        return (
            f"<Tape {len(self._entries)} records, inputs={self.inputs}, "
            f"outputs={self.outputs}{state}>"
        )

    # -- offline computation -------------------------------------------------------------------
    def backward(
        self, of: str | None = None, grad: Any = None, progress: Any = None
    ) -> dict[str, np.ndarray]:
        """Gradients of every input, replayed from the tape alone (see ``tapegrad.interpret``).

        ``of`` names the output (default: the only one), ``grad`` is its cotangent (default
        ones); ``progress``, if given, is called once per record."""
        from .interpret import backward

        return backward(self, of, grad, progress=progress)

    def replay(self, inputs: dict[str, Any], strict: bool = True, progress: Any = None) -> "Tape":
        """Re-run every record with new input values; returns the new tape.

        A recorded branch guard that changes raises ``GuardError`` (``strict=False``: warns)."""
        from .interpret import replay

        return replay(self, inputs, strict=strict, progress=progress)

    # -- analysis (see tapegrad.analysis) ----------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Records, op histogram, inputs/outputs, bytes by dtype, completeness, provenance."""
        from .analysis import summary

        return summary(self)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per value: shape, dtype, min, max, mean, std, NaN and Inf counts."""
        from .analysis import stats

        return stats(self)

    def find_nonfinite(self, of: str | None = None) -> dict[str, Any]:
        """The first record producing NaN/Inf, forward and backward."""
        from .analysis import find_nonfinite

        return find_nonfinite(self, of)

    def to_dot(self, verbose: bool = True) -> str:
        """Graphviz DOT text of the tape."""
        from .analysis import to_dot

        return to_dot(self, verbose)

    def gradcheck(self, of: str | None = None, **kwargs: Any):
        """Replayed gradients vs central differences in random directions, per input."""
        from .analysis import gradcheck

        return gradcheck(self, of, **kwargs)

    def vjp(self, of: str | None = None, grad: Any = None, wrt: Any = None):
        """``grad`` times the Jacobian of ``of`` (all inputs, or those named by ``wrt``)."""
        from .analysis import vjp

        return vjp(self, of, grad, wrt)

    def jacobian(self, of: str | None = None, wrt: str | None = None) -> np.ndarray:
        """d(of)/d(wrt), of shape ``of.shape + wrt.shape``."""
        from .analysis import jacobian

        return jacobian(self, of, wrt)

    def hvp(self, of: str | None = None, v: Any = None) -> dict[str, np.ndarray]:
        """Hessian-vector product of a scalar output with ``v`` (dict input name -> array)."""
        from .analysis import hvp

        return hvp(self, of, v)

    def _repr_html_(self) -> str:
        from .analysis import repr_html

        return repr_html(self)

    # -- files (see tapegrad.storage) ------------------------------------------------------------
    def save(self, path: str | os.PathLike, values: str = "all") -> None:
        """Write the tape to ``path`` atomically: a crash mid-save leaves any older file intact.

        ``values="backward"`` stores only the values an offline backward reads (inputs, outputs,
        constants, and what each op's rule needs); ``"none"`` stores the structure, shapes and
        dtypes only. The inputs' current gradients, ``meta`` and provenance are saved too.
        """
        from .storage import save

        save(self, path, values)

    # -- the with-block --------------------------------------------------------------------------
    def _start_stream(self, path: str | os.PathLike) -> None:
        from .storage import Stream

        self._writer = Stream(self, path)
        self._direct = False

    def _close(self) -> None:
        # The pending calls are turned into records only when first needed (never, for a tape
        # that only served a live backward); they hold their Variables, so ids stay unique.
        self._closed = True
        _recording.discard(self._serial)
        self._ids.clear()
        self._pins.clear()
        self._ext.clear()
        pool.trim()
        if self._writer is not None:
            w, self._writer = self._writer, None
            w.close(self)


_DTYPE_SHORT = {"f": "f", "i": "i", "u": "u", "c": "c", "b": "bool"}


def _short_dtype(dt: np.dtype) -> str:
    if dt.kind == "b":
        return "bool"
    return f"{_DTYPE_SHORT.get(dt.kind, dt.kind)}{dt.itemsize * 8}"


def _fmt_attr(v: Any) -> str:
    if isinstance(v, tuple) and v and isinstance(v[0], tuple):  # an encoded index
        return "[" + ", ".join(_fmt_index_part(p) for p in v) + "]"
    return repr(v)


def _fmt_index_part(p: tuple) -> str:
    kind = p[0]
    if kind == "int":
        return str(p[1])
    if kind == "slice":
        s = ":".join("" if v is None else str(v) for v in p[1:3])
        return s + (f":{p[3]}" if p[3] is not None else "")
    if kind == "array":
        return f"<array {p[1]}>"
    return {"none": "None", "ellipsis": "..."}.get(kind, repr(p))


def _caller() -> tuple[str, int, str] | None:
    """(file, line, function) of the first frame outside tapegrad."""
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(_PKG_DIR):
        f = f.f_back
    if f is None:
        return None
    return (f.f_code.co_filename, f.f_lineno, f.f_code.co_name)


def record(
    path: str | os.PathLike | None = None, *, source: bool = False, meta: dict | None = None
) -> "_Recording":
    """Record every Function call made in the block onto a new Tape (and every enclosing one).

    With ``path``, each record is also streamed to that file as it happens; the file holds every
    record completed before a crash, and gets its footer when the block exits, even by an
    exception. ``source=True`` stores, per record, the file, line and function of the caller.
    """
    return _Recording(path, source, meta)


class _Recording(ContextDecorator):
    """The context manager ``record`` returns (a class, not a generator: a training loop enters
    one per step). As a decorator, each call of the function records onto a tape of its own."""

    __slots__ = ("_args", "_tape")

    def __init__(self, path: Any, source: bool, meta: dict | None):
        self._args = (path, source, meta)
        self._tape: Tape | None = None

    def _recreate_cm(self) -> "_Recording":
        return _Recording(*self._args)

    def __enter__(self) -> Tape:
        if self._tape is not None:
            raise RuntimeError("this record() block is already in use; call record() again")
        path, source, meta = self._args
        tape = self._tape = Tape(source=source, meta=meta)
        if path is not None:
            tape._start_stream(path)
        _recording.add(tape._serial)
        st = _state.get()
        _state.set(st.with_tapes(st.tapes + (tape,)))
        return tape

    def __exit__(self, *exc: Any) -> None:
        tape = self._tape
        # Take only this tape off (a Config setting made inside the block stays, as in DeZero).
        st = _state.get()
        try:
            tapes = st.tapes
            last = tapes and tapes[-1] is tape
            _state.set(
                st.with_tapes(tapes[:-1] if last else tuple(t for t in tapes if t is not tape))
            )
        finally:
            tape._close()
