"""Tape files: neutral descriptions of values and records plus raw arrays <-> bytes on disk.

The layout is specified byte by byte in ``schema/FORMAT.md``; the metadata models are in
``models.py``. This module knows nothing of ``Tape``: it writes and reads ``ValueInfo`` and
``RecordInfo`` descriptions, or the same as columns (``ValueColumns``, ``RecordColumns``), and
NumPy arrays.

A tape of 100,000 small records must save and load in well under a second, so the work is done a
column at a time wherever it can be: ``save_tape`` checks a whole column with a set of its types
and the min and max of its lengths, and the records' use of values a frame at a time with NumPy;
values alike in dtype and shape are written a frame at a time. The reader keeps the frames' tables
as columns (no ValueInfo or RecordInfo per row), and hands out the arrays of a payload area of such
values with one NumPy call. What a column check cannot clear goes through the checks one value or
record at a time, which name the first culprit: each error is the one they would raise alone.

Invariants:
- Every byte of a file is covered by a CRC-32: the file header, each frame header, each frame body
  with its padding, each payload area, the trailer. Opening checks everything but the payload
  areas; a payload area is checked at the first access to a value in it.
- A reader checks every length, count, offset and shape against the file's real size before it
  allocates anything; it imports, evaluates and unpickles nothing.
- The only exception that bad content makes ``open_tape`` or ``TapeFile.array`` (``grad``,
  ``arrays_around``) raise is
  ``TapeFormatError`` (subclasses: truncated, corrupt, unsupported version). Messages name the
  problem and its byte offset or field, and are at most ``MAX_MESSAGE`` characters.
- A writer writes each frame with one system call; ``save_tape`` replaces its target atomically.
- ``save_tape`` writes the same bytes for the same tape whether given rows or columns.
"""

from __future__ import annotations

import errno
import functools
import itertools
import math
import mmap
import operator
import os
import secrets
import stat
import struct
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

import msgpack
import numpy as np
from pydantic import BaseModel, ValidationError

try:  # the same CRC-32 as zlib's, 3-5x faster (vectorised): an optional accelerator
    from zlib_ng.zlib_ng import crc32 as _crc32
except ImportError:  # pragma: no cover - depends on what is installed
    from zlib import crc32 as _crc32

from .._gc import gc_paused
from ..errors import TapeCorruptError, TapeFormatError, TapeTruncatedError, UnsupportedVersionError
from .models import (
    ALLOWED_DTYPES,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    INT_MAX,
    INT_MIN,
    MAX_ARITY,
    MAX_BODY_LEN,
    MAX_DEPTH,
    MAX_INDEX,
    MAX_NAME_LEN,
    MAX_NDIM,
    MAX_PATH_LEN,
    VALUE_KINDS,
    FooterBody,
    GradsBody,
    HeaderBody,
    Provenance,
    RecordsBody,
    ValuesBody,
)

__all__ = [
    "RecordColumns",
    "RecordInfo",
    "TapeFile",
    "TapeWriter",
    "ValueColumns",
    "ValueInfo",
    "open_tape",
    "save_tape",
]

# -- layout (schema/FORMAT.md) -------------------------------------------------------------------

FILE_MAGIC = b"\x89TGD\r\n\x1a\n"
FRAME_MAGIC = b"TGFR"
TRAILER_MAGIC = b"TGND"
ALIGN = 64  # payload areas start, and every payload within one starts, at a multiple of this
TEMP_MARK = ".tapegrad-tmp-"  # save_tape's temporaries: ".<target name>.tapegrad-tmp-<pid>-<hex>"
MAX_MESSAGE = 400  # characters of an error message

_FILE_HEAD = struct.Struct("<8sHHI")  # magic, major, minor, crc32 of bytes 0..11
# magic, kind, reserved, seq, body_len, payload_len, body_crc, payload_crc, crc32 of bytes 0..31
_FRAME_HEAD = struct.Struct("<4sB3sIIQIII")
_TRAILER = struct.Struct("<Q4sI")  # footer offset, magic, crc32 of bytes 0..11
_U32 = struct.Struct("<I")
FILE_HEAD_LEN = _FILE_HEAD.size  # 16
FRAME_HEAD_LEN = _FRAME_HEAD.size  # 36
TRAILER_LEN = _TRAILER.size  # 16

HEADER, VALUES, RECORDS, GRADS, FOOTER = b"HVRGF"
_KIND_NAMES = {HEADER: "header", VALUES: "values", RECORDS: "records", GRADS: "grads"}
_KIND_NAMES[FOOTER] = "footer"

_ZEROS = bytes(ALIGN)
_NP_DTYPES = {s: np.dtype(s) for s in ALLOWED_DTYPES}
_INTERN = {s: s for s in ALLOWED_DTYPES + VALUE_KINDS}  # one str object per dtype and kind
_CONTAINERS = (dict, tuple, list)
_DTYPE_WORDS = "bool, int8..int64, uint8..uint64, float16/32/64, complex64/128"

# save_tape's batching: small payloads share a frame (and its checksum); big ones get a frame of
# their own and, from _THREAD_MIN on, their checksum computed on another thread while they are
# written (zlib releases the GIL).
_OWN_FRAME_MIN = 256 * 1024
_THREAD_MIN = 8 * 1024 * 1024
_BATCH_AREA = 1024 * 1024
_BATCH_ROWS = 8192
_SINK_BUFFER = 1024 * 1024
_MAX_CANDIDATES = 65536  # frame magics tried when telling a torn tail from damage


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _short(obj: Any, limit: int = 60) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


# -- neutral descriptions ------------------------------------------------------------------------


class ValueInfo(NamedTuple):
    """A value on the tape: its unique name, kind (``"input"``, ``"const"`` or ``"op"``: made by a
    record), NumPy ``dtype.str`` and shape. Values are numbered in the order they are added.

    (Named tuples, not frozen dataclasses: a tape of 100,000 records builds 200,000 of these, and
    a frozen dataclass's __init__ costs several times a tuple's.)"""

    name: str
    kind: str
    dtype: str
    shape: tuple[int, ...]


class RecordInfo(NamedTuple):
    """A record: op name, plain-data ``attrs``, input and output value indices, and optionally
    the ``(file, line, function)`` where user code made the call."""

    op: str
    attrs: dict
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    source: tuple[str, int, str] | None = None


class ValueColumns(NamedTuple):
    """The values of a tape as columns: position ``i`` of each describes value ``i``.

    The form in which ``save_tape`` checks and writes values fastest (a check per column, not a
    dozen attribute reads per value), and in which ``TapeFile.value_columns`` keeps what it read.
    ``dtypes`` holds NumPy dtypes or ``dtype.str`` strings (a file's: the stored strings);
    ``arrays`` an ndarray per value, or None for shape and dtype only. A file's columns have
    ``arrays`` None: its arrays are read with ``TapeFile.array``."""

    names: Sequence[str]
    kinds: Sequence[str]
    dtypes: Sequence[Any]
    shapes: Sequence[tuple[int, ...]]
    arrays: Sequence[np.ndarray | None] | None = None


class RecordColumns(NamedTuple):
    """The records of a tape as columns (see ``ValueColumns``); ``sources`` None: no record has
    a source."""

    ops: Sequence[str]
    attrs: Sequence[dict]
    inputs: Sequence[tuple[int, ...]]
    outputs: Sequence[tuple[int, ...]]
    sources: Sequence[tuple[str, int, str] | None] | None = None


# -- checks shared by writers and the reader -----------------------------------------------------


class _PlainError(Exception):
    """Not plain data; ``path`` says where inside the checked object."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem
        self.path: list[str] = []

    def where(self) -> str:
        return "".join(self.path)


_PLAIN_SCALARS = frozenset((type(None), bool, float, str, bytes))


def _check_plain(obj: Any, depth: int = 0) -> None:
    """Raise ``_PlainError`` unless ``obj`` is plain data nested at most ``MAX_DEPTH`` deep.

    Plain data: None, bool, int (64-bit), float, str, bytes, list/tuple, dict with str keys; NumPy
    bool/int/float scalars are accepted when writing (they are stored as Python numbers).
    """
    t = type(obj)
    if t in _PLAIN_SCALARS:
        return
    if t is int or (isinstance(obj, int) and t is not bool):
        if not INT_MIN <= obj <= INT_MAX:
            raise _PlainError(f"integer {_short(obj)} does not fit in 64 bits")
        return
    if isinstance(obj, _CONTAINERS):
        if depth >= MAX_DEPTH:
            raise _PlainError(f"containers nest deeper than {MAX_DEPTH} levels")
        is_dict = isinstance(obj, dict)
        for key, item in obj.items() if is_dict else enumerate(obj):
            if is_dict and not isinstance(key, str):
                raise _PlainError(f"dict key {_short(key)} is not a str")
            if type(item) in _PLAIN_SCALARS:
                continue
            try:
                _check_plain(item, depth + 1)
            except _PlainError as e:
                e.path.insert(0, f"[{_short(key, 30)}]")
                raise
        return
    if isinstance(obj, (float, str, bytes)):
        return
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return
    raise _PlainError(
        f"a {type(obj).__name__} is not plain data (None, bool, int, float, str, bytes, "
        "list, tuple, dict with str keys)"
    )


def _check_attrs_column(column: Any) -> tuple[int, _PlainError] | None:
    """(row, problem) of the first attrs dict that is not plain data nested within the limit."""
    if not any(column):  # every one empty (most ops have no attributes)
        return None
    for row, attrs in enumerate(column):
        if attrs and (
            type(attrs) is not dict or any(isinstance(v, _CONTAINERS) for v in attrs.values())
        ):
            try:
                _check_plain(attrs)
            except _PlainError as e:
                return row, e
    return None


def _name_problem(name: Any, limit: int = MAX_NAME_LEN) -> str | None:
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a str"
    if not 0 < len(name) <= limit:
        return f"must have 1 to {limit} characters, not {len(name)}"
    return None


_UNMADE, _MADE = 1, 2  # ledger states of an op value; inputs and consts are 0
_BULK_RECORDS = 64  # from this many records on, the ledger checks them all at once
_KIND_STATE = {"input": 0, "const": 0, "op": _UNMADE}


class _Ledger:
    """Names of the values so far and the state of each (0: input or const; 1: an op value no
    record has produced yet; 2: produced): the rules that tie records to values, enforced alike
    when writing and when reading."""

    __slots__ = ("names", "state", "auto")

    def __init__(self, compact: bool = False) -> None:
        self.names: dict[str, int] = {}
        self.state = bytearray()
        # compact (a streaming writer): a value named "%<its own index>" is not put in `names`;
        # auto[i] = 1 says value i has such a name. A long recording names almost every value
        # that way, and the dict would otherwise grow by about 100 bytes a value.
        self.auto: bytearray | None = bytearray() if compact else None

    def __len__(self) -> int:
        return len(self.state)

    def taken(self, name: str) -> bool:
        """Is ``name`` the name of an earlier value?"""
        if name in self.names:
            return True
        auto = self.auto
        if auto is None or name[:1] != "%" or not name[1:].isdigit():
            return False
        j = int(name[1:])
        return j < len(auto) and auto[j] == 1 and name == f"%{j}"

    def index_of(self, name: str) -> int:
        """The index of an earlier value named ``name`` (it must be taken)."""
        return self.names[name] if name in self.names else int(name[1:])

    def add_values(self, names: Sequence[str], kinds: Sequence[str]) -> None:
        n = len(self.state)
        auto = self.auto
        if auto is None:
            self.names.update(zip(names, range(n, n + len(names))))
        else:
            for i, name in enumerate(names, n):
                if name == f"%{i}":
                    auto.append(1)
                else:
                    self.names[name] = i
                    auto.append(0)
        self.state.extend(map(_KIND_STATE.__getitem__, kinds))

    def record_problem(self, inputs: tuple, outputs: tuple) -> str | None:
        """What is wrong with a record that reads ``inputs`` and produces ``outputs`` next."""
        state, n = self.state, len(self.state)
        for i in inputs:
            if type(i) is not int or not 0 <= i < n:
                return f"input {_short(i)} is not the index of an earlier value ({_among(n)})"
            if state[i] == _UNMADE:
                return f"input {i} is an op value that no earlier record produced"
        for o in outputs:
            if type(o) is not int or not 0 <= o < n:
                return f"output {_short(o)} is not the index of an earlier value ({_among(n)})"
            if state[o] == 0:
                return f"output {o} is an input or const value; outputs have kind 'op'"
            if state[o] == _MADE:
                return f"output {o} is already produced by an earlier record"
        if len(outputs) > 1 and len(set(outputs)) != len(outputs):
            return f"outputs {_short(outputs)} name a value twice"
        return None

    def add_records(self, inputs: Sequence[tuple], outputs: Sequence[tuple]) -> tuple | None:
        """Take records in order; stop at the first bad one: (its position, the problem).
        Indices must be ints (the caller checked)."""
        if len(inputs) >= _BULK_RECORDS and self._add_all(inputs, outputs):
            return None
        state, n = self.state, len(self.state)
        for k, (ins, outs) in enumerate(zip(inputs, outputs)):
            for i in ins:
                if not 0 <= i < n or state[i] == _UNMADE:
                    break
            else:
                for o in outs:
                    if not 0 <= o < n or state[o] != _UNMADE:
                        break
                else:
                    if len(outs) == 1 or len(set(outs)) == len(outs):
                        for o in outs:
                            state[o] = _MADE
                        continue
            return k, self.record_problem(ins, outs)
        return None

    def _add_all(self, inputs: Sequence[tuple], outputs: Sequence[tuple]) -> bool:
        """Take every record at once, with a few NumPy calls over all their indices, when every
        one of them is fine (a frame of thousands: the common case); False, with nothing
        changed, when one is not, for the loop to find it and say what is wrong.

        The loop's rules, for the whole batch: each output is an op value no earlier record
        produced (its state is _UNMADE now, and no other output of the batch names it); each
        input is an earlier value, and if it is an op value not yet produced, an earlier record
        of the batch produces it."""
        try:
            n_in = np.fromiter(map(len, inputs), np.intp, len(inputs))
            n_out = np.fromiter(map(len, outputs), np.intp, len(outputs))
            ins = np.fromiter(itertools.chain.from_iterable(inputs), np.int64, int(n_in.sum()))
            outs = np.fromiter(itertools.chain.from_iterable(outputs), np.int64, int(n_out.sum()))
        except (TypeError, ValueError, OverflowError):
            return False
        n = len(self.state)
        if not n or (ins.size and not 0 <= ins.min() <= ins.max() < n):
            return False
        if outs.size and not 0 <= outs.min() <= outs.max() < n:
            return False
        state = np.frombuffer(self.state, np.uint8)  # shares the bytearray: freed below
        try:
            order = np.argsort(outs, kind="stable")
            made = outs[order]
            if (state[outs] != _UNMADE).any() or (made[1:] == made[:-1]).any():
                return False
            pending = state[ins] == _UNMADE
            if pending.any():
                wanted = ins[pending]
                at = np.minimum(np.searchsorted(made, wanted), max(len(made) - 1, 0))
                if not len(made) or (made[at] != wanted).any():
                    return False
                producer = np.repeat(np.arange(len(outputs)), n_out)[order][at]
                reader = np.repeat(np.arange(len(inputs)), n_in)[pending]
                if (producer >= reader).any():
                    return False
            state[outs] = _MADE
            return True
        finally:
            state = None  # let the bytearray grow again (a NumPy view would pin its size)


def _among(n: int) -> str:
    return f"0..{n - 1}" if n else "there are none yet"


def _nbytes(shape: tuple[int, ...], itemsize: int) -> int | None:
    """``prod(shape) * itemsize``, or None when NumPy could not make such an array (the product
    of the nonzero dimensions times the itemsize must fit in a signed 64-bit int)."""
    bound = itemsize
    for d in shape:
        if d:
            bound *= d
            if bound > MAX_INDEX:
                return None
    return math.prod(shape) * itemsize


# -- encoding: checking what the caller gives --------------------------------------------------

_DTYPE_CACHE: dict[Any, str] = {}
_SHAPE_CACHE: dict[tuple, dict[str, int]] = {}  # shape -> {dtype: nbytes}, for checked shapes


def _storage_dtype(dtype: Any, where: str) -> str:
    """The stored (little-endian) ``dtype.str`` for ``dtype``; TypeError if it is not storable."""
    try:
        return _DTYPE_CACHE[dtype]
    except (KeyError, TypeError):
        pass
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {_short(dtype)} is not a NumPy dtype") from None
    canon = dt.newbyteorder("<").str if dt.byteorder != "|" else dt.str
    if canon not in _NP_DTYPES or dt.fields is not None or dt.subdtype is not None:
        raise TypeError(f"{where}: dtype {dt} cannot be stored in a tape (allowed: {_DTYPE_WORDS})")
    canon = _INTERN[canon]
    try:
        if len(_DTYPE_CACHE) < 1024:
            _DTYPE_CACHE[dtype] = canon
    except TypeError:
        pass
    return canon


def _int_tuple(shape: Any) -> bool:
    return type(shape) is tuple and all(type(d) is int for d in shape)


def _storage_shape(shape: Any, dtype: str, where: str) -> tuple[tuple[int, ...], int]:
    """(shape as a tuple of ints, its byte count for ``dtype``); checks it."""
    if _int_tuple(shape):  # the cache also matches (16.0,) or (True,): equal, hashed alike
        try:
            return shape, _SHAPE_CACHE[shape][dtype]
        except KeyError:
            pass
    try:
        out = tuple(int(d) if isinstance(d, (int, np.integer)) else d for d in shape)
    except TypeError:
        raise TypeError(f"{where}: shape {_short(shape)} is not a tuple of ints") from None
    if not all(type(d) is int and 0 <= d <= MAX_INDEX for d in out):
        raise ValueError(f"{where}: shape {_short(shape)} must hold non-negative ints")
    if len(out) > MAX_NDIM:
        raise ValueError(f"{where}: {len(out)} dimensions; at most {MAX_NDIM}")
    nbytes = _nbytes(out, _NP_DTYPES[dtype].itemsize)
    if nbytes is None:
        raise ValueError(f"{where}: shape {out} of {dtype} is too big for any array")
    if len(_SHAPE_CACHE) < 4096:
        _SHAPE_CACHE.setdefault(out, {})[dtype] = nbytes
    return out, nbytes


def _storage_array(array: Any, dtype: str, shape: tuple, where: str) -> np.ndarray | None:
    """``array`` as a C-contiguous little-endian ndarray of the declared dtype and shape."""
    if array is None:
        return None
    if type(array) is np.ndarray and array.dtype.str == dtype and array.flags.c_contiguous:
        if array.shape != shape:
            raise ValueError(
                f"{where}: the array's shape {array.shape} is not the declared {shape}"
            )
        return array
    if not isinstance(array, (np.ndarray, np.generic)):
        raise TypeError(f"{where}: expected an ndarray or None, got a {type(array).__name__}")
    array = np.asarray(array)  # a NumPy scalar, or a subclass (matrix, masked array)
    if _storage_dtype(array.dtype, where) != dtype:
        raise ValueError(f"{where}: the array's dtype {array.dtype} is not the declared {dtype}")
    if array.shape != shape:
        raise ValueError(f"{where}: the array's shape {array.shape} is not the declared {shape}")
    if array.dtype.str != dtype:
        array = array.astype(dtype)  # a byte swap
    return np.ascontiguousarray(array)


def _byte_view(array: np.ndarray) -> memoryview:
    return memoryview(array.reshape(-1).view(np.uint8))


def _value_problem(info: ValueInfo, ledger: _Ledger) -> None:
    """Raise the error that describes what is wrong with a value's name or kind."""
    name, kind, index = info.name, info.kind, len(ledger)
    problem = _name_problem(name)
    if problem:
        kind_of = TypeError if "not a str" in problem else ValueError
        raise kind_of(f"value {index}: name {problem}")
    where = f"value {index} ({_short(name, 40)})"
    if ledger.taken(name):
        raise ValueError(f"{where}: the name is already value {ledger.index_of(name)}")
    raise ValueError(f"{where}: kind {_short(kind)} is not one of {VALUE_KINDS}")


def _encode_value(info: Any, array: Any, ledger: _Ledger) -> tuple:
    """(name, kind, dtype, shape, array to store or None, byte count), all checked."""
    if type(info) is not ValueInfo:
        raise TypeError(f"expected a ValueInfo, got a {type(info).__name__}")
    name, kind, shape = info.name, info.kind, info.shape
    if (
        type(name) is not str
        or not 0 < len(name) <= MAX_NAME_LEN
        or ledger.taken(name)
        or kind not in VALUE_KINDS
    ):
        _value_problem(info, ledger)
    try:  # checked before: the common case (the cache matches (16.0,) too: ints only)
        dtype = _DTYPE_CACHE[info.dtype]
        nbytes = _SHAPE_CACHE[shape][dtype]
        known = _int_tuple(shape)
    except (KeyError, TypeError):
        known = False
    if not known:
        where = f"value {len(ledger)} ({_short(name, 40)})"
        dtype = _storage_dtype(info.dtype, where)
        shape, nbytes = _storage_shape(shape, dtype, where)
    if array is not None and not (
        type(array) is np.ndarray
        and array.shape == shape
        and array.dtype.str == dtype
        and array.flags.c_contiguous
    ):
        array = _storage_array(array, dtype, shape, f"value {len(ledger)} ({_short(name, 40)})")
    return name, _INTERN[kind], dtype, shape, array, nbytes


def _encode_grad(name: Any, array: Any, taken: set) -> tuple:
    """(name, dtype, shape, array, byte count), all checked."""
    where = f"gradient {_short(name, 40)}"
    problem = _name_problem(name)
    if problem:
        raise (TypeError if "not a str" in problem else ValueError)(f"{where}: name {problem}")
    if name in taken:
        raise ValueError(f"{where}: given twice")
    if not isinstance(array, (np.ndarray, np.generic)):
        raise TypeError(f"{where}: expected an ndarray, got a {type(array).__name__}")
    array = np.asarray(array)
    dtype = _storage_dtype(array.dtype, where)
    shape, nbytes = _storage_shape(array.shape, dtype, where)
    return name, dtype, shape, _storage_array(array, dtype, shape, where), nbytes


def _index_tuple(seq: Any, where: Any, label: str) -> tuple:
    """``seq`` as a tuple of ints (``where()`` names the record in errors)."""
    if type(seq) is not tuple:
        try:
            seq = tuple(seq)
        except TypeError:
            raise TypeError(f"{where()}: {label} {_short(seq)} is not a sequence of ints") from None
    for i in seq:
        if type(i) is not int:
            if not all(isinstance(i, (int, np.integer)) and type(i) is not bool for i in seq):
                raise TypeError(f"{where()}: {label} {_short(seq)} is not a sequence of ints")
            seq = tuple(map(int, seq))
            break
    if len(seq) > MAX_ARITY:
        raise ValueError(f"{where()}: {len(seq)} {label}; at most {MAX_ARITY}")
    if seq and min(seq) < 0:  # the ledger's state[i] would read a negative index from the end
        raise ValueError(f"{where()}: {label[:-1]} {min(seq)} is not the index of an earlier value")
    return seq


def _encode_record(rec: Any, index: int) -> tuple:
    """(op, attrs, inputs, outputs, source), checked but for how they use the values (that is
    the ledger's job)."""
    if type(rec) is not RecordInfo:
        raise TypeError(f"expected a RecordInfo, got a {type(rec).__name__}")
    op, attrs, source = rec.op, rec.attrs, rec.source

    def where() -> str:
        return f"record {index} ({_short(op, 40)})"

    if type(op) is not str or not 0 < len(op) <= MAX_NAME_LEN:
        problem = _name_problem(op) or ""
        kind_of = TypeError if "not a str" in problem else ValueError
        raise kind_of(f"record {index}: op name {problem}")
    if type(attrs) is not dict and not isinstance(attrs, dict):
        raise TypeError(f"{where()}: attrs is a {type(attrs).__name__}, not a dict")
    if attrs:
        try:
            _check_plain(attrs)
        except _PlainError as e:
            raise TypeError(f"{where()}: attrs{e.where()}: {e.problem}") from None
    inputs = _index_tuple(rec.inputs, where, "inputs")
    outputs = _index_tuple(rec.outputs, where, "outputs")
    if source is not None:
        ok = (
            isinstance(source, (tuple, list))
            and len(source) == 3
            and isinstance(source[0], str)
            and len(source[0]) <= MAX_PATH_LEN
            and isinstance(source[1], (int, np.integer))
            and 0 <= source[1] <= MAX_INDEX
            and isinstance(source[2], str)
            and len(source[2]) <= MAX_NAME_LEN
        )
        if not ok:
            raise ValueError(f"{where()}: source {_short(source)} is not (file, line, function)")
        source = (str(source[0]), int(source[1]), str(source[2]))
    return op, attrs, inputs, outputs, source


def _record_problem(ledger: _Ledger, row: tuple, index: int) -> None:
    problem = ledger.record_problem(row[2], row[3])
    if problem:
        raise ValueError(f"record {index} ({_short(row[0], 40)}): {problem}")


# Checking a whole column at once: a set of the types in it, the min and max of its lengths, one
# dict of its names. What passes is exactly what the checks one value or record at a time accept
# unchanged; anything else (a culprit, or something they would convert, such as a list for a
# tuple) goes to those checks, which name the first culprit.

_KIND_SET = frozenset(VALUE_KINDS)
_DTYPE_OF = operator.attrgetter("dtype")
_SHAPE_OF = operator.attrgetter("shape")


def _fast_values(cols: ValueColumns, ledger: _Ledger) -> tuple[list, list, dict] | None:
    """(stored dtype, byte count, name -> index) of every value when every name, kind, dtype and
    shape is plainly fine; None when one needs the checks value by value."""
    names, kinds, dtypes, shapes, _ = cols
    base = len(ledger)
    if not names:
        return [], [], {}
    try:
        if set(map(type, names)) != {str} or not _KIND_SET.issuperset(kinds):
            return None
        lengths = list(map(len, names))
        if min(lengths) == 0 or max(lengths) > MAX_NAME_LEN or ledger.auto is not None:
            return None
        fresh = dict(zip(names, range(base, base + len(names))))
        if len(fresh) != len(names) or not ledger.names.keys().isdisjoint(fresh):
            return None
        if set(map(type, shapes)) != {tuple}:
            return None
        if not {int}.issuperset(map(type, itertools.chain.from_iterable(shapes))):
            return None
        canon = {d: _storage_dtype(d, "") for d in set(dtypes)}
        stored = list(map(canon.__getitem__, dtypes))
        if len(set(canon.values())) == 1 and len(set(shapes)) == 1:  # all alike
            nbytes = [_storage_shape(shapes[0], stored[0], "")[1]] * len(stored)
        else:
            sizes = {key: _storage_shape(*key, "")[1] for key in set(zip(shapes, stored))}
            nbytes = list(map(sizes.__getitem__, zip(shapes, stored)))
    except (TypeError, ValueError):
        return None
    return stored, nbytes, fresh


def _plain_source(s: Any) -> bool:
    return (
        type(s) is tuple
        and len(s) == 3
        and type(s[0]) is str
        and len(s[0]) <= MAX_PATH_LEN
        and type(s[1]) is int
        and 0 <= s[1] <= MAX_INDEX
        and type(s[2]) is str
        and len(s[2]) <= MAX_NAME_LEN
    )


def _fast_records(cols: RecordColumns) -> bool:
    """Whether every record is plainly fine but for how it uses the values (the ledger checks
    that a frame at a time); False when one needs the checks record by record."""
    ops, attrs, inputs, outputs, sources = cols
    if not ops:
        return True
    try:
        if set(map(type, ops)) != {str} or set(map(type, attrs)) != {dict}:
            return False
        lengths = list(map(len, ops))
        if min(lengths) == 0 or max(lengths) > MAX_NAME_LEN:
            return False
        for column in (inputs, outputs):
            if set(map(type, column)) != {tuple} or max(map(len, column)) > MAX_ARITY:
                return False
            flat = list(itertools.chain.from_iterable(column))
            if flat and (set(map(type, flat)) != {int} or min(flat) < 0):
                return False
        for a in attrs:
            if a:
                _check_plain(a)
    except _PlainError:
        return False
    return sources is None or all(s is None or _plain_source(s) for s in sources)


def _as_columns(cols: Any, kind: type, what: str) -> Any:
    """``cols`` (a ValueColumns or RecordColumns) with every column a list, all of one length
    (the last column may be None)."""
    lists: list[list | None] = []
    for field, c in zip(kind._fields, cols):
        if c is None and field == kind._fields[-1]:
            lists.append(None)
            continue
        try:
            lists.append(list(c))
        except TypeError:
            raise TypeError(f"{what}.{field} is not a sequence") from None
    lengths = {len(c) for c in lists if c is not None}
    if len(lengths) > 1:
        raise ValueError(f"{what}: the columns differ in length {sorted(lengths)}")
    return kind(*lists)


def _value_columns(values: Any) -> tuple[ValueColumns, Exception | None]:
    """``values`` as columns of lists (``arrays`` never None), and the error of the first row
    that is not a (ValueInfo, array) pair (the caller raises it once the rows before it are
    checked: the first culprit is named)."""
    if type(values) is ValueColumns:
        cols = _as_columns(values, ValueColumns, "values")
        if cols.arrays is None:
            cols = cols._replace(arrays=[None] * len(cols.names))
        return cols, None
    infos: list = []
    arrays: list = []
    problem = None
    for item in values:
        try:
            info, array = item
        except (TypeError, ValueError):
            problem = TypeError(f"values[{len(infos)}] is not a (ValueInfo, array) pair")
            break
        if type(info) is not ValueInfo:
            problem = TypeError(f"expected a ValueInfo, got a {type(info).__name__}")
            break
        infos.append(info)
        arrays.append(array)
    columns = [list(c) for c in zip(*infos)] if infos else [[], [], [], []]
    return ValueColumns(*columns, arrays), problem


def _record_columns(records: Any) -> tuple[RecordColumns, Exception | None]:
    """``records`` as columns of lists, and the error of the first row that is not a RecordInfo
    (see ``_value_columns``)."""
    if type(records) is RecordColumns:
        return _as_columns(records, RecordColumns, "records"), None
    rows: list = []
    problem = None
    for rec in records:
        if type(rec) is not RecordInfo:
            problem = TypeError(f"expected a RecordInfo, got a {type(rec).__name__}")
            break
        rows.append(rec)
    if not rows:
        return RecordColumns([], [], [], [], None), problem
    ops, attrs, inputs, outputs, sources = map(list, zip(*rows))
    if sources.count(None) == len(sources):
        sources = None
    return RecordColumns(ops, attrs, inputs, outputs, sources), problem


# -- encoding: bytes -----------------------------------------------------------------------------


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    raise TypeError(f"cannot store a {type(obj).__name__}")


def _packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, datetime=False, default=_to_plain)


def _pack(packer: msgpack.Packer, obj: Any, where: str, limit: int = MAX_BODY_LEN) -> bytes:
    try:
        data = packer.pack(obj)
    except (TypeError, ValueError, OverflowError) as e:  # ValueError: a str not encodable as UTF-8
        packer.reset()
        raise ValueError(f"{where}: cannot be encoded ({type(e).__name__}: {e})") from None
    if len(data) > limit:
        raise ValueError(
            f"{where}: encodes to {len(data)} bytes; one frame body holds at most {MAX_BODY_LEN} "
            "(store big data as values, not in attrs or meta)"
        )
    return data


def _values_body(rows: list[tuple]) -> dict:
    """Columns of a values frame from rows (name, kind, dtype, shape, data)."""
    names, kinds, dtypes, shapes, data = zip(*rows)
    return {"name": names, "kind": kinds, "dtype": dtypes, "shape": shapes, "data": data}


def _grads_body(rows: list[tuple]) -> dict:
    """Columns of a grads frame from rows (name, dtype, shape, data)."""
    names, dtypes, shapes, data = zip(*rows)
    return {"name": names, "dtype": dtypes, "shape": shapes, "data": data}


def _records_body(rows: list[tuple]) -> dict:
    """Columns of a records frame from rows (op, attrs, inputs, outputs, source)."""
    ops, attrs, inputs, outputs, sources = zip(*rows)
    body = {"op": ops, "attrs": attrs, "inputs": inputs, "outputs": outputs}
    if sources.count(None) != len(sources):
        body["source"] = sources
    return body


@functools.lru_cache(maxsize=1)
def _tapegrad_version() -> str:
    try:
        from importlib.metadata import version

        return version("tapegrad")
    except Exception:  # not installed: the provenance still says something
        return "unknown"


def _default_provenance() -> dict[str, str]:
    return {
        "tapegrad": _tapegrad_version(),
        "numpy": np.__version__,
        "python": ".".join(map(str, sys.version_info[:3])),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _provenance(given: Mapping | None) -> dict[str, str]:
    """Defaults for what ``given`` leaves out; ``format`` (which the reader adds) is dropped."""
    prov = _default_provenance()
    if given:
        if not isinstance(given, Mapping):
            raise TypeError(f"provenance must be a dict, not a {type(given).__name__}")
        prov.update({k: v for k, v in given.items() if k != "format"})
    try:
        return Provenance.model_validate(prov).model_dump()
    except ValidationError as e:
        raise ValueError(f"provenance: {_pydantic_problem(e)[1]}") from None


def _check_meta(meta: Any, where: str) -> dict:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise TypeError(f"{where} must be a dict, not a {type(meta).__name__}")
    try:
        _check_plain(meta)
    except _PlainError as e:
        raise TypeError(f"{where}{e.where()}: {e.problem}") from None
    return meta


def _frame_head(
    kind: int, seq: int, body_len: int, payload_len: int, body_crc: int, payload_crc: int
) -> bytes:
    head = _FRAME_HEAD.pack(
        FRAME_MAGIC, kind, b"\0\0\0", seq, body_len, payload_len, body_crc, payload_crc, 0
    )[:-4]
    return head + _U32.pack(_crc32(head))


def _frame_parts(pos: int, kind: int, seq: int, body: bytes, area: Any = b"") -> list:
    """The pieces of a frame starting at file offset ``pos``: header, body, padding, payload
    area (``area``'s length is a multiple of ALIGN; empty: no payload)."""
    if not len(area):
        return [_frame_head(kind, seq, len(body), 0, _crc32(body), 0), body]
    body_end = pos + FRAME_HEAD_LEN + len(body)
    pad = _ZEROS[: _align(body_end) - body_end]
    body_crc = _crc32(pad, _crc32(body))
    head = _frame_head(kind, seq, len(body), len(area), body_crc, _crc32(area))
    return [head, body, pad, area]


def _file_head() -> bytes:
    head = _FILE_HEAD.pack(FILE_MAGIC, FORMAT_MAJOR, FORMAT_MINOR, 0)[:-4]
    return head + _U32.pack(_crc32(head))


def _header_bytes(packer: msgpack.Packer, provenance: Mapping | None, meta: Any) -> bytes:
    """File header plus the header frame (frame 0)."""
    header = {"format": "tapegrad", "provenance": _provenance(provenance)}
    header["meta"] = _check_meta(meta, "meta")
    body = _pack(packer, header, "meta")
    _self_check(HeaderBody, body, "meta")
    return _file_head() + b"".join(_frame_parts(FILE_HEAD_LEN, HEADER, 0, body))


def _footer_bytes(packer: msgpack.Packer, pos: int, seq: int, counts: dict, meta: Any) -> bytes:
    """Footer frame at ``pos`` plus the trailer."""
    footer = dict(counts, frames=seq)
    if meta is not None:
        footer["meta"] = _check_meta(meta, "meta")
    body = _pack(packer, footer, "meta")
    _self_check(FooterBody, body, "meta")
    trailer = _TRAILER.pack(pos, TRAILER_MAGIC, 0)[:-4]
    frame = b"".join(_frame_parts(pos, FOOTER, seq, body))
    return frame + trailer + _U32.pack(_crc32(trailer))


def _self_check(model: type[BaseModel], body: bytes, where: str) -> None:
    """What a writer writes, the reader accepts: decode and validate it as the reader will."""
    try:
        _validate_model(model, _unpackb(memoryview(body), True), 0)
    except TapeFormatError as e:
        raise ValueError(f"{where}: {e}") from None


def _write_all(fd: int, parts: list) -> None:
    """Write ``parts`` with one system call (writev; one joined write where there is no writev);
    continue after a short write (a signal, or more than 2 GiB)."""
    total = sum(map(len, parts))
    if hasattr(os, "writev"):
        done = os.writev(fd, parts)
    else:  # pragma: no cover - Windows
        parts = [b"".join(parts)]
        done = os.write(fd, parts[0])
    if done == total:
        return
    for part in parts:
        view = memoryview(part)
        if done >= len(view):
            done -= len(view)
            continue
        view = view[done:]
        done = 0
        while len(view):
            view = view[os.write(fd, view) :]


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder
        pass
    finally:
        os.close(fd)


def _padded(array: np.ndarray, nbytes: int) -> list:
    view = _byte_view(array)
    tail = _align(nbytes) - nbytes
    return [view, _ZEROS[:tail]] if tail else [view]


# -- streaming -----------------------------------------------------------------------------------


class TapeWriter:
    """Streams a tape to ``path`` as it is recorded.

    Each ``add_value``/``add_record`` writes one self-delimiting frame with a single ``writev`` on
    an unbuffered descriptor: when it returns, the frame is in the operating system, so a process
    killed at any moment leaves a file whose complete frames ``open_tape(path, recover=True)``
    reads. ``close`` writes the gradients, the footer and the trailer and fsyncs; call it (or
    leave the ``with`` block) even after an exception. An existing file at ``path`` is unlinked
    first, so that readers that have it open keep their copy. A lock keeps threads' frames apart.
    """

    def __init__(self, path: str | os.PathLike, *, provenance: dict, meta: dict | None = None):
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._packer = _packer()
        self._ledger = _Ledger(compact=True)
        self._records = 0
        self._seq = 1
        self._broken = False
        self._closed = True
        head = _header_bytes(self._packer, provenance, meta)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o666)
        try:
            _write_all(self._fd, [head])
        except BaseException:
            os.close(self._fd)
            raise
        self._pos = len(head)
        self._closed = False

    def __enter__(self) -> TapeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<TapeWriter {self.path!r}: {len(self._ledger)} values, {self._records} records, "
            f"{state}>"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"TapeWriter for {self.path} is closed")
        if self._broken:
            raise OSError(f"TapeWriter for {self.path} failed to write earlier; it is unusable")

    def _write(self, parts: list) -> None:
        try:
            _write_all(self._fd, parts)
        except BaseException:
            try:  # cut the partial frame off, so that the file stays a valid prefix (O_APPEND:
                os.ftruncate(self._fd, self._pos)  # the next write goes to the new end)
            except OSError:
                self._broken = True
            raise
        self._pos += sum(map(len, parts))
        self._seq += 1

    def _array_frame(self, kind: int, body: dict, array: np.ndarray | None, nbytes: int) -> list:
        packed = _pack(self._packer, body, f"{_KIND_NAMES[kind]} frame {self._seq}")
        if array is None or nbytes == 0:
            return _frame_parts(self._pos, kind, self._seq, packed)
        payload = _padded(array, nbytes)
        body_end = self._pos + FRAME_HEAD_LEN + len(packed)
        pad = _ZEROS[: _align(body_end) - body_end]
        crc = 0
        for part in payload:
            crc = _crc32(part, crc)
        body_crc = _crc32(pad, _crc32(packed))
        head = _frame_head(kind, self._seq, len(packed), _align(nbytes), body_crc, crc)
        return [head, packed, pad, *payload]

    def add_value(self, info: ValueInfo, array: np.ndarray | None) -> int:
        """Write one value (``array`` None: shape and dtype only); returns its index."""
        with self._lock:
            self._check_open()
            name, kind, dtype, shape, array, nbytes = _encode_value(info, array, self._ledger)
            data = None if array is None else (0, nbytes)
            body = _values_body([(name, kind, dtype, shape, data)])
            self._write(self._array_frame(VALUES, body, array, nbytes))
            self._ledger.add_values((name,), (kind,))
            return len(self._ledger) - 1

    def add_record(self, rec: RecordInfo) -> None:
        """Write one record; it may name only values already added."""
        with self._lock:
            self._check_open()
            row = _encode_record(rec, self._records)
            _record_problem(self._ledger, row, self._records)
            where = f"record {self._records} ({_short(rec.op, 40)})"
            packed = _pack(self._packer, _records_body([row]), where)
            self._write(_frame_parts(self._pos, RECORDS, self._seq, packed))
            self._ledger.add_records((row[2],), (row[3],))
            self._records += 1

    def close(
        self, *, meta: dict | None = None, grads: dict[str, np.ndarray] | None = None
    ) -> None:
        """Write ``grads``, the footer (with ``meta``, if given, as the final metadata) and the
        trailer; fsync. Does nothing when already closed. Bad ``meta`` or ``grads`` raise before
        anything is written, and the writer stays open."""
        with self._lock:
            if self._closed:
                return
            if grads is not None and not isinstance(grads, Mapping):
                raise TypeError(f"grads must be a dict, not a {type(grads).__name__}")
            rows: list[tuple] = []
            taken: set = set()
            for name, array in (grads or {}).items():
                rows.append(_encode_grad(name, array, taken))
                taken.add(name)
            if meta is not None:
                _pack(self._packer, _check_meta(meta, "meta"), "meta")  # raises while still open
            counts = {"values": len(self._ledger), "records": self._records}
            counts["grads"] = len(rows)
            try:
                if not self._broken:
                    for name, dtype, shape, array, nbytes in rows:
                        body = _grads_body([(name, dtype, shape, (0, nbytes))])
                        self._write(self._array_frame(GRADS, body, array, nbytes))
                    footer = _footer_bytes(self._packer, self._pos, self._seq, counts, meta)
                    self._write([footer])
                    os.fsync(self._fd)
            finally:
                self._closed = True
                os.close(self._fd)
            _fsync_dir(os.path.dirname(self.path))


# -- saving a whole tape -------------------------------------------------------------------------


class _Sink:
    """Sequential writes to a descriptor: small pieces are gathered, big ones are written
    straight from the caller's memory (no copy)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.pos = 0
        self.buf = bytearray()

    def write(self, data: Any) -> None:
        n = len(data)
        if n >= _OWN_FRAME_MIN:
            self.flush()
            _write_all(self.fd, [data])
        else:
            self.buf += data
            if len(self.buf) >= _SINK_BUFFER:
                self.flush()
        self.pos += n

    def flush(self) -> None:
        if self.buf:
            _write_all(self.fd, [self.buf])
            self.buf = bytearray()


class _Batcher:
    """Gathers rows of one frame kind into frames written to a ``_Sink``. Small payloads share
    a frame's payload area; a big one gets a frame of its own. Records are checked against the
    ledger a frame at a time. A frame whose body would pass ``MAX_BODY_LEN`` is split."""

    def __init__(self, sink: _Sink, packer: msgpack.Packer, ledger: _Ledger):
        self.sink, self.packer, self.ledger = sink, packer, ledger
        self.seq = 1
        self.kind = VALUES
        self.rows: list[tuple] = []
        self.area = bytearray()
        self.records = 0  # records written so far

    def add(self, row: tuple, array: np.ndarray | None, nbytes: int) -> None:
        """Add a value or gradient ``row`` (all fields but ``data``)."""
        if array is None:
            self.rows.append(row + (None,))
        elif nbytes >= _OWN_FRAME_MIN:
            self.flush()
            self.big(row + ((0, nbytes),), array, nbytes)
            return
        else:
            if len(self.area) + nbytes > _BATCH_AREA:
                self.flush()
            area = self.area
            self.rows.append(row + ((len(area), nbytes),))
            if nbytes:
                area += array.tobytes() if nbytes < 4096 else _byte_view(array)
                if nbytes % ALIGN:
                    area += _ZEROS[: ALIGN - nbytes % ALIGN]
        if len(self.rows) >= _BATCH_ROWS:
            self.flush()

    def add_record(self, row: tuple) -> None:
        self.rows.append(row)
        if len(self.rows) >= _BATCH_ROWS:
            self.flush()

    def add_values(self, cols: ValueColumns) -> None:
        """Check and add every value of ``cols`` (lists): the frames ``add`` makes value by
        value, with the checks done a column at a time when the columns are plainly fine (see
        ``_fast_values``) and only the bytes copied value by value."""
        ledger = self.ledger
        checked = _fast_values(cols, ledger)
        if checked is None:
            for name, kind, dtype, shape, array in zip(*cols):
                info = ValueInfo(name, kind, dtype, shape)
                name, kind, dtype, shape, array, nbytes = _encode_value(info, array, ledger)
                self.add((name, kind, dtype, shape), array, nbytes)
                ledger.add_values((name,), (kind,))
            return
        names, kinds, _, shapes, arrays = cols
        dtypes, sizes, fresh = checked
        base = len(ledger)
        ledger.names.update(fresh)
        ledger.state.extend(map(_KIND_STATE.__getitem__, kinds))
        if self._add_alike(names, kinds, dtypes, shapes, arrays, sizes):
            return
        rows, start, data = self.rows, 0, []  # values start.. are not in rows yet; their refs

        def take(end: int) -> None:
            nonlocal start
            rows.extend(
                zip(names[start:end], kinds[start:end], dtypes[start:end], shapes[start:end], data)
            )
            data.clear()
            start = end

        ndarray, np_dtypes, area = np.ndarray, _NP_DTYPES, self.area
        for k, array in enumerate(arrays):
            if array is None:
                data.append(None)
            else:
                nbytes = sizes[k]
                if not (
                    type(array) is ndarray
                    and array.dtype is np_dtypes[dtypes[k]]
                    and array.shape == shapes[k]
                ):  # another layout of the same numbers, or a culprit
                    where = f"value {base + k} ({_short(names[k], 40)})"
                    array = _storage_array(array, dtypes[k], shapes[k], where)
                if nbytes >= _OWN_FRAME_MIN:
                    take(k)
                    self.flush()
                    self.big((names[k], kinds[k], dtypes[k], shapes[k], (0, nbytes)), array, nbytes)
                    start = k + 1
                    rows, area = self.rows, self.area
                    continue
                if len(area) + nbytes > _BATCH_AREA:
                    take(k)
                    self.flush()
                    rows, area = self.rows, self.area
                data.append((len(area), nbytes))
                if nbytes:
                    area += array.tobytes() if nbytes < 4096 else _byte_view(array)
                    if nbytes % ALIGN:
                        area += _ZEROS[: ALIGN - nbytes % ALIGN]
            if len(rows) + k + 1 - start >= _BATCH_ROWS:
                take(k + 1)
                self.flush()
                rows, area = self.rows, self.area
        take(len(arrays))

    def _add_alike(
        self, names: list, kinds: list, dtypes: list, shapes: list, arrays: list, sizes: list
    ) -> bool:
        """Add the values a whole frame at a time when they are alike: every array present and
        plainly of its declared dtype and shape, all of one byte count below _OWN_FRAME_MIN (a
        tape of many small values). The frames are those of the loop in ``add_values``, cut by
        arithmetic, each payload area made by one join. False, having added nothing, otherwise.
        """
        n = len(arrays)
        nbytes = sizes[0] if n else 0
        if not 0 < nbytes < _OWN_FRAME_MIN or self.rows or sizes.count(nbytes) != n:
            return False
        if set(map(type, arrays)) != {np.ndarray}:  # None (no bytes) is a NoneType
            return False
        if not all(map(operator.is_, map(_DTYPE_OF, arrays), map(_NP_DTYPES.get, dtypes))):
            return False
        if list(map(_SHAPE_OF, arrays)) != shapes:
            return False
        slot = _align(nbytes)
        pad = _ZEROS[: slot - nbytes]
        per_frame = min(_BATCH_ROWS, (_BATCH_AREA - nbytes) // slot + 1)
        refs = list(zip(range(0, per_frame * slot, slot), itertools.repeat(nbytes)))
        for lo in range(0, n, per_frame):
            hi = min(lo + per_frame, n)
            chunk = arrays[lo:hi]
            try:
                area = pad.join([*chunk, b""])  # each array's bytes, then its padding
            except TypeError:  # a view that is not C-contiguous has no plain buffer
                area = pad.join([a.tobytes() for a in chunk] + [b""])
            self.rows.extend(zip(names[lo:hi], kinds[lo:hi], dtypes[lo:hi], shapes[lo:hi], refs))
            self.area = area
            self.flush()
        return True

    def add_records(self, cols: RecordColumns) -> None:
        """Check and add every record of ``cols`` (lists), as ``add_record`` one by one would;
        the checks a column at a time when the columns are plainly fine (see ``_fast_records``).
        Full frames are written (their records checked against the ledger); the rest wait for
        ``flush``."""
        if not _fast_records(cols):
            for row in zip(*cols[:4], cols.sources or itertools.repeat(None)):
                self.add_record(_encode_record(RecordInfo(*row), self.records + len(self.rows)))
            return
        ops, attrs, inputs, outputs, sources = cols
        sources = sources or itertools.repeat(None, len(ops))
        rows = zip(ops, attrs, inputs, outputs, sources)
        while True:
            room = _BATCH_ROWS - len(self.rows)
            before = len(self.rows)
            self.rows.extend(itertools.islice(rows, room))
            if len(self.rows) - before < room:
                return
            self.flush()

    def flush(self) -> None:
        rows, area = self.rows, self.area
        self.rows, self.area = [], bytearray()
        if not rows:
            return
        if self.kind == RECORDS:
            _, _, inputs, outputs, _ = zip(*rows)
            bad = self.ledger.add_records(inputs, outputs)
            if bad:
                k, problem = bad
                op = _short(rows[k][0], 40)
                raise ValueError(f"record {self.records + k} ({op}): {problem}")
            self.records += len(rows)
        self.write(rows, area)

    def body(self, rows: list[tuple]) -> dict:
        if self.kind == VALUES:
            return _values_body(rows)
        return _records_body(rows) if self.kind == RECORDS else _grads_body(rows)

    def write(self, rows: list[tuple], area: bytearray) -> None:
        where = f"{_KIND_NAMES[self.kind]} frame {self.seq}"
        packed = _pack(self.packer, self.body(rows), where, sys.maxsize)
        if len(packed) > MAX_BODY_LEN:  # many long names, or big attrs: split the frame
            if len(rows) == 1:
                _pack(self.packer, self.body(rows), f"{where} ({_short(rows[0][0], 40)})")
            half = len(rows) // 2
            second = rows[half:]
            if self.kind == RECORDS:
                cut = 0
            else:  # the second half's payloads move to the start of their own area
                cut = next((r[-1][0] for r in second if r[-1] is not None), len(area))
                second = [
                    r if r[-1] is None else r[:-1] + ((r[-1][0] - cut, r[-1][1]),) for r in second
                ]
            self.write(rows[:half], area[:cut])
            self.write(second, area[cut:])
            return
        for part in _frame_parts(self.sink.pos, self.kind, self.seq, packed, area):
            self.sink.write(part)
        self.seq += 1

    def big(self, row: tuple, array: np.ndarray, nbytes: int) -> None:
        """One array in a frame of its own, written straight from the array's memory."""
        sink = self.sink
        packed = _pack(self.packer, self.body([row]), f"{_KIND_NAMES[self.kind]} frame")
        pos = sink.pos
        body_end = pos + FRAME_HEAD_LEN + len(packed)
        pad = _ZEROS[: _align(body_end) - body_end]
        payload, tail = _byte_view(array), _ZEROS[: _align(nbytes) - nbytes]
        body_crc = _crc32(pad, _crc32(packed))
        if nbytes < _THREAD_MIN:
            crc = _crc32(tail, _crc32(payload))
            sink.write(_frame_head(self.kind, self.seq, len(packed), _align(nbytes), body_crc, crc))
            sink.write(packed + pad)
            sink.write(payload)
            sink.write(tail)
        else:  # the checksum on another thread while the bytes are written; the header after
            sink.write(bytes(FRAME_HEAD_LEN))
            sink.write(packed + pad)
            sink.flush()
            result: list[int] = []
            worker = threading.Thread(target=lambda: result.append(_crc32(payload)))
            worker.start()
            try:
                sink.write(payload)
                sink.write(tail)
            finally:
                worker.join()
            sink.flush()
            crc = _crc32(tail, result[0])
            head = _frame_head(self.kind, self.seq, len(packed), _align(nbytes), body_crc, crc)
            _write_at(sink.fd, head, pos)
        self.seq += 1


def _write_at(fd: int, data: bytes, pos: int) -> None:
    if hasattr(os, "pwrite"):
        written = os.pwrite(fd, data, pos)
    else:  # pragma: no cover - Windows
        end = os.lseek(fd, 0, os.SEEK_CUR)
        os.lseek(fd, pos, os.SEEK_SET)
        written = os.write(fd, data)
        os.lseek(fd, end, os.SEEK_SET)
    if written != len(data):
        raise OSError(errno.EIO, "short write of a frame header")


def _is_stale_temporary(name: str, prefix: str) -> bool:
    """Whether ``name`` is a temporary of ``save_tape`` for this target whose process is gone.
    (Where processes cannot be probed without harm, on Windows, none is.)"""
    if not name.startswith(prefix) or os.name != "posix":
        return False
    pid = name[len(prefix) :].partition("-")[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return False


def save_tape(
    path: str | os.PathLike,
    values: Sequence[tuple[ValueInfo, np.ndarray | None]] | ValueColumns,
    records: Sequence[RecordInfo] | RecordColumns,
    *,
    meta: dict,
    grads: dict[str, np.ndarray],
    provenance: dict,
    fsync: bool = True,
) -> None:
    """Write a whole tape to ``path`` atomically.

    ``values`` are (ValueInfo, array or None) pairs or a ``ValueColumns``, ``records`` are
    RecordInfos or a ``RecordColumns``: the same checks and the same bytes either way, the
    columns at a fraction of the cost per value for a tape of many small values.

    The bytes go to ``.<name>.tapegrad-tmp-<pid>-<random>`` in the same folder, which is fsynced
    and renamed over ``path`` (then the folder is fsynced): a crash at any moment leaves either
    the old file or the new one. Temporaries that killed saves left for the same target are
    removed first. ``fsync=False`` skips the fsyncs (the replace is still atomic for processes,
    not for power loss). Bad input raises TypeError/ValueError naming the value or record, and
    leaves ``path`` alone.
    """
    target = os.fspath(path)
    folder, base = os.path.split(target)
    prefix = f".{base}{TEMP_MARK}"
    try:
        stale = [e.name for e in os.scandir(folder or ".") if _is_stale_temporary(e.name, prefix)]
    except OSError:
        stale = []
    for name in stale:
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            pass
    temp = os.path.join(folder, f"{prefix}{os.getpid()}-{secrets.token_hex(4)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(temp, flags, 0o666)
    try:
        try:
            with gc_paused():
                _write_tape(fd, values, records, meta, grads, provenance)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    if fsync:
        _fsync_dir(folder)


def _write_tape(fd: int, values: Any, records: Any, meta: Any, grads: Any, provenance: Any):
    packer = _packer()
    sink = _Sink(fd)
    sink.write(_header_bytes(packer, provenance, meta))
    ledger = _Ledger()
    batch = _Batcher(sink, packer, ledger)
    columns, problem = _value_columns(values)
    batch.add_values(columns)
    if problem:  # after the rows before it: the first culprit is the one named
        raise problem
    batch.flush()
    batch.kind = RECORDS
    columns, problem = _record_columns(records)
    batch.add_records(columns)
    if problem:
        raise problem
    batch.flush()
    batch.kind = GRADS
    if grads is not None and not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict, not a {type(grads).__name__}")
    taken: set = set()
    for name, array in (grads or {}).items():
        name, dtype, shape, array, nbytes = _encode_grad(name, array, taken)
        batch.add((name, dtype, shape), array, nbytes)
        taken.add(name)
    batch.flush()
    counts = {"values": len(ledger), "records": batch.records, "grads": len(taken)}
    sink.write(_footer_bytes(packer, sink.pos, batch.seq, counts, None))
    sink.flush()


# -- reading -------------------------------------------------------------------------------------


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _unpackb(view: memoryview, use_list: bool) -> Any:
    """Decode one msgpack document with every count bounded by its size; ext types refused.
    Raises TapeCorruptError (without offset: the caller adds it)."""
    n = len(view)
    try:
        return msgpack.unpackb(
            view,
            raw=False,
            use_list=use_list,
            strict_map_key=True,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n // 2,
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        detail = str(e) or "malformed"
        raise TapeCorruptError(
            f"not valid msgpack ({type(e).__name__}: {_short(detail, 100)})"
        ) from None


def _pydantic_problem(e: ValidationError, row: str = "", base: int = 0) -> tuple[str, str]:
    """(error type, message) of the first error; a row index in a table body is numbered from
    ``base`` and called ``row``."""
    errors = e.errors(include_url=False, include_input=False)
    first = errors[0] if errors else {"type": "?", "loc": (), "msg": str(e)}
    loc = list(first["loc"])
    where = ""
    if row and len(loc) >= 2 and type(loc[1]) is int:
        where = f"{row} {base + loc[1]}, "
        del loc[1]
    field = ".".join(str(p) for p in loc) or "(the body)"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    message = f"{where}field {_clip(field, 80)}: {_clip(first['msg'], 150)}{more}"
    return first["type"], message


def _validate_model(
    model: type[BaseModel], obj: Any, minor: int, row: str = "", base: int = 0
) -> BaseModel:
    """Validate a decoded body; TapeCorruptError, or UnsupportedVersionError for what a newer
    minor version may have added (a field, a value of an enumeration such as a dtype code)."""
    if isinstance(obj, dict) and isinstance(obj.get("meta"), dict):
        try:  # nesting is bounded before pydantic walks it
            _check_plain(obj["meta"])
        except _PlainError as e:
            raise TapeCorruptError(f"field meta{e.where()}: {e.problem}") from None
    try:
        return model.__pydantic_validator__.validate_python(obj)
    except ValidationError as e:
        kind, problem = _pydantic_problem(e, row, base)
        if minor > FORMAT_MINOR and kind in ("extra_forbidden", "literal_error"):
            raise UnsupportedVersionError(
                f"{problem}: the file is format {FORMAT_MAJOR}.{minor}, newer than this "
                f"reader's {FORMAT_MAJOR}.{FORMAT_MINOR}: upgrade tapegrad"
            ) from None
        raise TapeCorruptError(problem) from None


class _Damage(Exception):
    """A frame that does not check out where the file may simply have been cut short.
    ``search_from``: where to look for a valid frame after it (None: the file ends inside it)."""

    def __init__(self, message: str, search_from: int | None):
        super().__init__(message)
        self.message = message
        self.search_from = search_from


class _Reader:
    """One pass over a mapped file: checks every frame and builds the index of its values."""

    def __init__(self, mm: mmap.mmap | None, size: int, path: str):
        self.mm = mm
        self.mv = memoryview(mm) if mm is not None else memoryview(b"")
        self.size = size
        self.path = path
        self.label = path if len(path) <= 160 else "..." + path[-157:]
        self.major = self.minor = 0
        self.seq = 0
        self.ledger = _Ledger()
        # The values and records as columns (what the file's tables hold), never as a tuple per
        # row: a tape of 100,000 records opens without building 200,000 objects.
        self.values = ValueColumns([], [], [], [])
        self.locs: list[tuple | None] = []  # per value (offset, nbytes, area), (area,) or None
        self.records = RecordColumns([], [], [], [], [])
        self.has_sources = False
        self.grads: dict[str, tuple[str, tuple[int, ...], tuple[int, int, int]]] = {}
        self.areas: list[tuple[int, int, int]] = []  # payload areas: (start, length, crc)
        # area id -> (first value, count, slot, nbytes): values of one dtype and shape filling
        # it, slot after slot; their locs are (area id,), one tuple shared by all of them
        self.tiles: dict[int, tuple[int, int, int, int]] = {}
        self.header: HeaderBody | None = None
        self.header_meta: dict = {}
        self.footer_meta: dict | None = None
        self.ops: dict[str, str] = {}  # one str object per op name
        self.shape_of: dict[tuple, tuple] = {}  # one tuple object per shape
        self.pos, self.kind = 0, ""  # the frame being read

    def release(self) -> None:
        self.mv.release()
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:  # a view is still referenced (by a traceback); the GC closes it
                pass

    # errors
    def error(self, cls: type[TapeFormatError], message: str) -> TapeFormatError:
        return cls(_bounded(f"{self.label}: {message}"))

    def corrupt(self, message: str) -> TapeFormatError:
        return self.error(TapeCorruptError, message)

    def unknown(self, message: str) -> TapeFormatError:
        """A feature this reader lacks: from a newer minor version, or damage."""
        if self.minor > FORMAT_MINOR:
            return self.error(
                UnsupportedVersionError,
                f"{message}; the file is format {self.major}.{self.minor}, newer than this "
                f"reader's {FORMAT_MAJOR}.{FORMAT_MINOR}: upgrade tapegrad",
            )
        return self.corrupt(message)

    def here(self) -> str:
        """The frame being read, for messages."""
        kind = f"{self.kind} " if self.kind else ""
        return f"{kind}frame {self.seq} (offset {self.pos})"

    # the walk over the frames
    def read(self, recover: bool) -> TapeFile:
        self.file_header()
        complete = self.trailer_found()
        pos = FILE_HEAD_LEN
        while True:
            try:
                if pos == self.size:
                    raise _Damage(f"the file ends at offset {pos}, before the footer", None)
                pos, done = self.frame(pos)
                if done:
                    return self.result(True)
            except _Damage as damage:
                return self.damaged(damage, complete, recover)

    def damaged(self, damage: _Damage, complete: bool, recover: bool) -> TapeFile:
        """A torn tail (TapeTruncatedError, or the prefix with ``recover``) or corruption."""
        if complete:
            raise self.corrupt(f"{damage.message} (the file's trailer says it was complete)")
        if damage.search_from is not None:
            follow = self.next_frame(damage.search_from, damage.message)
            if follow is not None:
                raise self.corrupt(
                    f"{damage.message}, yet a valid frame follows at offset {follow}: "
                    "the file is damaged, not cut short"
                )
        n = len(self.records.ops)
        if self.header is None:
            message = f"{self.label}: tape cut short: {damage.message}; it holds no header"
            raise TapeTruncatedError(_bounded(message), 0)
        if recover:
            return self.result(False)
        message = (
            f"{self.label}: tape cut short: {damage.message}; it holds {n} complete records "
            "(open it with recover=True to read them)"
        )
        raise TapeTruncatedError(_bounded(message), n)

    def file_header(self) -> None:
        size, mv = self.size, self.mv
        if size < FILE_HEAD_LEN:
            start = bytes(mv[:size])
            if FILE_MAGIC.startswith(start[:8]):
                what = "is empty" if size == 0 else f"ends after {size} bytes"
                message = f"{self.label}: tape cut short: the file {what}, inside its header"
                raise TapeTruncatedError(_bounded(message), 0)
            raise self.error(TapeFormatError, f"not a tapegrad tape (it starts with {start!r})")
        magic, major, minor, crc = _FILE_HEAD.unpack_from(mv, 0)
        if magic != FILE_MAGIC:
            raise self.error(
                TapeFormatError,
                f"not a tapegrad tape: it starts with {magic!r}, a tape with {FILE_MAGIC!r}",
            )
        if _crc32(mv[:12]) != crc:
            raise self.corrupt("the file header (bytes 0-15) fails its checksum")
        self.major, self.minor = major, minor
        if major > FORMAT_MAJOR:
            raise self.error(
                UnsupportedVersionError,
                f"written in tape format {major}.{minor}, but this tapegrad reads formats up to "
                f"{FORMAT_MAJOR}.{FORMAT_MINOR}: upgrade tapegrad to read it",
            )
        if major < 1:
            raise self.corrupt(f"format version {major}.{minor} does not exist (bytes 8-11)")

    def trailer_found(self) -> bool:
        """Whether the file ends with a valid trailer: then it was written completely, and any
        damage found is corruption rather than a cut."""
        size = self.size
        if size < FILE_HEAD_LEN + FRAME_HEAD_LEN + TRAILER_LEN:
            return False
        offset, magic, crc = _TRAILER.unpack_from(self.mv, size - TRAILER_LEN)
        return (
            magic == TRAILER_MAGIC
            and _crc32(self.mv[size - TRAILER_LEN : size - 4]) == crc
            and FILE_HEAD_LEN <= offset <= size - TRAILER_LEN - FRAME_HEAD_LEN
        )

    def next_frame(self, start: int, damage: str) -> int | None:
        """Offset of the first valid frame header at or after ``start``, if any. After
        ``_MAX_CANDIDATES`` false starts (a hostile file) it gives up: the damage then counts as
        corruption, the safe answer."""
        mm, mv, pos = self.mm, self.mv, start
        for _ in range(_MAX_CANDIDATES):
            pos = mm.find(FRAME_MAGIC, pos) if mm is not None else -1
            if pos < 0 or pos + FRAME_HEAD_LEN > self.size:
                return None
            if _crc32(mv[pos : pos + 32]) == _U32.unpack_from(mv, pos + 32)[0]:
                return pos
            pos += 1
        raise self.corrupt(f"{damage}, followed by too many false frame starts to tell a cut")

    def frame(self, pos: int) -> tuple[int, bool]:
        """Check and decode the frame at ``pos``: (where the next one starts, whether this was
        the footer)."""
        size, mv, seq = self.size, self.mv, self.seq
        if pos + FRAME_HEAD_LEN > size:
            raise _Damage(
                f"the file ends at offset {size}, inside frame {seq} (offset {pos})", None
            )
        magic, kind, reserved, fseq, body_len, payload_len, body_crc, payload_crc, head_crc = (
            _FRAME_HEAD.unpack_from(mv, pos)
        )
        if magic != FRAME_MAGIC or _crc32(mv[pos : pos + 32]) != head_crc:
            raise _Damage(f"the header of frame {seq} (offset {pos}) is damaged", pos + 1)
        self.pos, self.kind = pos, ""
        where = self.here
        if fseq != seq:
            raise self.corrupt(f"{where()} is numbered {fseq}: frames are missing or out of order")
        if kind not in _KIND_NAMES:
            raise self.unknown(f"{where()} has unknown kind {kind}")
        if reserved != b"\0\0\0":
            raise self.unknown(f"{where()} has nonzero reserved bytes {reserved!r}")
        if body_len > MAX_BODY_LEN:
            raise self.corrupt(f"{where()} declares a {body_len}-byte body; at most {MAX_BODY_LEN}")
        if payload_len % ALIGN:
            raise self.corrupt(
                f"{where()} declares a {payload_len}-byte payload, not a multiple of {ALIGN}"
            )
        start = pos + FRAME_HEAD_LEN
        body_end = start + body_len
        area = _align(body_end) if payload_len else body_end
        end = area + payload_len
        if end > size:
            raise _Damage(
                f"{where()} declares {end - pos} bytes but the file ends at offset {size}", None
            )
        if _crc32(mv[start:area]) != body_crc:
            raise _Damage(f"the body of {where()} fails its checksum", end)
        if area > body_end and mv[body_end:area] != _ZEROS[: area - body_end]:
            raise self.corrupt(f"{where()}: the padding after the body is not zero")
        name = self.kind = _KIND_NAMES[kind]
        if (seq == 0) != (kind == HEADER):
            raise self.corrupt(f"{where()} is a {name} frame; the header frame comes first, once")
        if payload_len and kind not in (VALUES, GRADS):
            raise self.corrupt(f"{where()}: a {name} frame carries no payload")
        if kind == VALUES:
            self.read_values(start, body_end, (area, payload_len, payload_crc))
        elif kind == RECORDS:
            self.read_records(start, body_end)
        elif kind == GRADS:
            self.read_grads(start, body_end, (area, payload_len, payload_crc))
        elif kind == HEADER:
            self.read_header(start, body_end)
        else:
            self.read_footer(start, body_end)
            self.check_trailer(pos, end)
            return end, True
        self.seq += 1
        return end, False

    def check_trailer(self, footer_pos: int, end: int) -> None:
        remaining = self.size - end
        if remaining < TRAILER_LEN:
            raise _Damage(f"the file ends at offset {self.size}, inside the trailer", None)
        offset, magic, crc = _TRAILER.unpack_from(self.mv, end)
        if magic != TRAILER_MAGIC or _crc32(self.mv[end : end + 12]) != crc:
            raise self.corrupt(f"the trailer at offset {end} is damaged")
        if offset != footer_pos:
            raise self.corrupt(f"the trailer at offset {end} points to {offset}, not the footer")
        if remaining > TRAILER_LEN:
            extra, at = remaining - TRAILER_LEN, end + TRAILER_LEN
            raise self.corrupt(f"{extra} unexpected bytes after the end of the tape (offset {at})")

    # frame bodies
    def body(self, start: int, end: int, model: type[BaseModel], row: str = "") -> Any:
        """Decode and validate a frame body: (the decoded body, the model). Tables decode arrays
        as tuples, the header and footer as lists (JSON-like metadata)."""
        where = self.here
        try:
            obj = _unpackb(self.mv[start:end], not row)
        except TapeCorruptError as e:
            raise self.corrupt(f"the body of {where()} is {e}") from None
        if row == "record" and isinstance(obj, dict) and type(obj.get("attrs")) is tuple:
            problem = _check_attrs_column(obj["attrs"])
            if problem is not None:  # bounded nesting before pydantic walks it
                k, e = problem
                n = len(self.records.ops) + k
                raise self.corrupt(f"{where()}: record {n}, field attrs{e.where()}: {e.problem}")
        if row and isinstance(obj, dict):
            lengths = {len(v) for v in obj.values() if type(v) is tuple}
            if len(lengths) > 1:
                raise self.corrupt(f"{where()}: the columns differ in length {sorted(lengths)}")
        base = len(self.records.ops) if row == "record" else len(self.values.names)
        if row == "gradient":
            base = len(self.grads)
        try:
            return obj, _validate_model(model, obj, self.minor, row, base)
        except TapeFormatError as e:
            raise self.error(type(e), f"{where()}: {e}") from None

    def read_header(self, start: int, end: int) -> None:
        obj, self.header = self.body(start, end, HeaderBody)
        self.header_meta = obj["meta"]

    def read_footer(self, start: int, end: int) -> None:
        where = self.here
        obj, _ = self.body(start, end, FooterBody)
        found = {
            "frames": self.seq,
            "values": len(self.values.names),
            "records": len(self.records.ops),
            "grads": len(self.grads),
        }
        for key, n in found.items():
            if obj[key] != n:
                raise self.corrupt(f"{where()} counts {obj[key]} {key}; the file holds {n}")
        self.footer_meta = obj.get("meta")

    def place(self, obj: dict, area: tuple, row: str, base: int) -> list[tuple | None]:
        """Locations (offset, nbytes, area id) of a table's arrays, checked: every shape is one
        NumPy can make, the byte counts agree with dtype and shape, and the arrays tile the
        payload area in order."""
        dtypes, shapes, data = obj["dtype"], obj["shape"], obj["data"]
        start, length, _ = area
        area_id = len(self.areas)
        where = self.here
        if len(data) == 1:  # a streamed value: one row
            nbytes = _nbytes(shapes[0], _NP_DTYPES[dtypes[0]].itemsize)
            ref = data[0]
            if nbytes is not None and (ref is None and length == 0 or ref == (0, nbytes)):
                if length == _align(nbytes) or ref is None:
                    self.areas.append(area)
                    return [None if ref is None else (start, nbytes, area_id)]
        sizes = {}
        for dtype, shape in set(zip(dtypes, shapes)):
            sizes[dtype, shape] = nbytes = _nbytes(shape, _NP_DTYPES[dtype].itemsize)
            if nbytes is None:
                k = list(zip(dtypes, shapes)).index((dtype, shape))
                raise self.corrupt(f"{where()}: {row} {base + k}: shape {_short(shape)} is too big")
        if len(sizes) == 1 and row == "value" and None not in data:  # slots of one size
            (nbytes,) = sizes.values()
            n, slot = len(data), _align(nbytes)
            refs = zip(range(0, n * slot, slot), itertools.repeat(nbytes, n))
            if nbytes and n * slot == length and all(map(operator.eq, data, refs)):
                self.areas.append(area)
                self.tiles[area_id] = (base, n, slot, nbytes)
                return [(area_id,)] * n  # "in tile area_id": the place follows from the index
        nbytes = list(map(sizes.__getitem__, zip(dtypes, shapes)))
        if None in data:  # some values without bytes
            stored = [n for n, ref in zip(nbytes, data) if ref is not None]
        else:
            stored = nbytes
        ends = list(itertools.accumulate(map(_align, stored)))
        offsets = [0, *ends[:-1]]
        if [ref for ref in data if ref is not None] != list(zip(offsets, stored)):
            offset = 0
            for k, (ref, n) in enumerate(zip(data, nbytes)):
                if ref is not None and ref != (offset, n):
                    raise self.corrupt(
                        f"{where()}: {row} {base + k}, field data: {_short(ref)} should be "
                        f"({offset}, {n}) for its place, dtype and shape"
                    )
                offset += 0 if ref is None else _align(n)
        if (ends[-1] if ends else 0) != length:
            used = ends[-1] if ends else 0
            raise self.corrupt(f"{where()}: the arrays use {used} of its {length} payload bytes")
        self.areas.append(area)
        found = zip(map(start.__add__, offsets), stored, itertools.repeat(area_id))
        if stored is nbytes:
            return list(found)
        found = iter(found)
        return [None if ref is None else next(found) for ref in data]

    def read_values(self, start: int, end: int, area: tuple) -> None:
        where = self.here
        obj, _ = self.body(start, end, ValuesBody, "value")
        names = obj["name"]
        base, known = len(self.values.names), self.ledger.names
        if len(set(names)) != len(names) or not known.keys().isdisjoint(names):
            seen = set(known)
            for k, name in enumerate(names):
                if name in seen:
                    raise self.corrupt(f"{where()}: value {base + k}: name {_short(name)} is taken")
                seen.add(name)
        locs = self.place(obj, area, "value", base)
        kinds = list(map(_INTERN.__getitem__, obj["kind"]))
        self.ledger.add_values(names, kinds)
        values = self.values
        values.names.extend(names)
        values.kinds.extend(kinds)
        values.dtypes.extend(map(_INTERN.__getitem__, obj["dtype"]))
        values.shapes.extend(map(self.shape_of.setdefault, obj["shape"], obj["shape"]))
        self.locs.extend(locs)

    def read_grads(self, start: int, end: int, area: tuple) -> None:
        where = self.here
        obj, _ = self.body(start, end, GradsBody, "gradient")
        names, base = obj["name"], len(self.grads)
        for k, name in enumerate(names):
            if name in self.grads or name in names[:k]:
                raise self.corrupt(f"{where()}: gradient {base + k}: {_short(name)} appears twice")
        locs = self.place(obj, area, "gradient", base)
        for name, dtype, shape, loc in zip(names, obj["dtype"], obj["shape"], locs):
            self.grads[name] = (_INTERN[dtype], shape, loc)

    def read_records(self, start: int, end: int) -> None:
        where = self.here
        obj, _ = self.body(start, end, RecordsBody, "record")
        inputs, outputs = obj["inputs"], obj["outputs"]
        bad = self.ledger.add_records(inputs, outputs)
        if bad:
            k, problem = bad
            raise self.corrupt(f"{where()}: record {len(self.records.ops) + k}: {problem}")
        records = self.records
        records.ops.extend(map(self.ops.setdefault, obj["op"], obj["op"]))
        records.attrs.extend(obj["attrs"])
        records.inputs.extend(inputs)
        records.outputs.extend(outputs)
        sources = obj.get("source")
        if sources is None:
            records.sources.extend(itertools.repeat(None, len(inputs)))
        else:
            records.sources.extend(sources)
            self.has_sources = True

    def result(self, complete: bool) -> TapeFile:
        header = self.header
        assert header is not None
        meta = self.footer_meta if self.footer_meta is not None else self.header_meta
        provenance = {"format": f"{self.major}.{self.minor}", **header.provenance.model_dump()}
        return TapeFile(self, meta, provenance, complete)


class TapeFile:
    """An opened tape file: its index in memory, its arrays mapped from the file.

    ``value_columns`` and ``record_columns`` (lists, as read), ``values`` and ``records`` (the
    same as ValueInfo and RecordInfo lists, built at first use), ``meta``, ``provenance`` (with
    ``format``, the file's format version), ``grad_names``; ``complete`` is False for a cut-short
    file opened with ``recover=True``. ``array(i)``, ``arrays_around(i)`` and ``grad(name)``
    return read-only arrays that share the file's memory map; a payload area's checksum is
    checked at the first access to it. Arrays handed out stay valid after ``close()``.
    """

    def __init__(self, reader: _Reader, meta: dict, provenance: dict, complete: bool):
        self.path = reader.path
        self.value_columns: ValueColumns = reader.values
        sources = reader.records.sources if reader.has_sources else None
        self.record_columns: RecordColumns = reader.records._replace(sources=sources)
        self.meta: dict = meta
        self.provenance: dict = provenance
        self.complete = complete
        self.grad_names: list[str] = list(reader.grads)
        self._grads = reader.grads
        self._locs = reader.locs
        self._areas = reader.areas
        self._tiles = reader.tiles
        self._checked = bytearray(len(reader.areas))
        self._reader = reader
        # The array every value's array is a view of. Its buffer export of the map (which NumPy
        # views keep through their base) is what makes the map's close() refuse, BufferError,
        # while an array handed out lives; close() drops it. (An ndarray made over the map or a
        # memoryview of it directly would keep the map object, not an export: closing it would
        # pull the memory from under the array.)
        self._buffer = np.frombuffer(reader.mm, np.uint8) if reader.mm is not None else None
        self._index: dict[str, int] = reader.ledger.names  # every value's name -> its index
        self._values: list[ValueInfo] | None = None
        self._records: list[RecordInfo] | None = None
        self._closed = False

    @property
    def values(self) -> list[ValueInfo]:
        if self._values is None:
            with gc_paused():
                self._values = list(map(ValueInfo, *self.value_columns[:4]))
        return self._values

    @property
    def records(self) -> list[RecordInfo]:
        if self._records is None:
            ops, attrs, inputs, outputs, sources = self.record_columns
            with gc_paused():
                self._records = list(
                    map(RecordInfo, ops, attrs, inputs, outputs, sources or itertools.repeat(None))
                )
        return self._records

    def __repr__(self) -> str:
        state = "complete" if self.complete else "cut short"
        return (
            f"<TapeFile {self.path!r}: {len(self.value_columns.names)} values, "
            f"{len(self.record_columns.ops)} records, {len(self.grad_names)} gradients, {state}>"
        )

    def __enter__(self) -> TapeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def index_of(self, name: str) -> int:
        """The index of the value called ``name`` (KeyError if there is none)."""
        return self._index[name]

    @property
    def name_index(self) -> Mapping[str, int]:
        """Every value's name -> its index: the file's own dict, shared, not to be changed."""
        return self._index

    def has_array(self, index: int) -> bool:
        """Whether value ``index`` was saved with its bytes."""
        return self._locs[index] is not None

    def shape_dtype(self, index: int) -> tuple[tuple[int, ...], np.dtype]:
        """The shape and dtype of value ``index`` (read at open: no payload is touched)."""
        cols = self.value_columns
        return cols.shapes[index], _NP_DTYPES[cols.dtypes[index]]

    def array(self, index: int) -> np.ndarray:
        """Value ``index`` as a read-only array over the file (no copy). IndexError for a bad
        index, ValueError if it was saved without its bytes, TapeCorruptError if its bytes fail
        their checksum."""
        loc = self._locs[index]
        cols = self.value_columns
        if loc is None:
            name = _short(cols.names[index])
            raise ValueError(f"value {index} ({name}) was saved without its bytes")
        if len(loc) == 1:  # in a tile: the slot of its place in the area
            first, _, slot, nbytes = self._tiles[loc[0]]
            loc = (self._areas[loc[0]][0] + (index - first) * slot, nbytes, loc[0])
        return self._array(cols.dtypes[index], cols.shapes[index], loc, self._what(index))

    def arrays_around(self, index: int) -> tuple[int, list[np.ndarray]]:
        """``(first, arrays)``: value ``index`` and, when it costs no more, its neighbours:
        ``arrays[j]`` is value ``first + j``. When the values of one dtype and shape fill the
        payload area holding ``index`` (a tape of many small values), one array over the area
        gives them all, at a tenth of the cost of each alone; otherwise just value ``index``.
        Errors as ``array``."""
        loc = self._locs[index]
        cols = self.value_columns
        if loc is None or len(loc) != 1 or not cols.shapes[index]:  # 0-d: a row is a scalar
            return index, [self.array(index)]
        self._verify(loc[0], self._what(index))
        first, count, slot, _ = self._tiles[loc[0]]
        shape, dt = cols.shapes[index], _NP_DTYPES[cols.dtypes[index]]
        strides = [dt.itemsize]
        for d in reversed(shape[1:]):
            strides.append(strides[-1] * d)
        start = self._areas[loc[0]][0]
        block = np.ndarray((count, *shape), dt, self._buffer, start, (slot, *strides[::-1]))
        return first, list(block)

    def _what(self, index: int) -> Any:
        """Names value ``index`` in an error: the text built only when there is one."""
        return lambda: f"value {index} ({_short(self.value_columns.names[index])})"

    def grad(self, name: str) -> np.ndarray:
        """The saved gradient ``name`` (KeyError if there is none), like ``array``."""
        dtype, shape, loc = self._grads[name]
        return self._array(dtype, shape, loc, lambda: f"gradient {_short(name)}")

    def verify(self) -> None:
        """Check every payload checksum now (opening checked everything else)."""
        for area_id in range(len(self._areas)):
            self._verify(area_id, lambda a=area_id: f"payload area {a}")

    def _verify(self, area_id: int, what: Any) -> None:
        """``what()`` names the checked thing in an error (built only when there is one)."""
        if self._closed:
            raise ValueError(f"{self.path}: the tape file is closed")
        if self._checked[area_id]:
            return
        start, length, crc = self._areas[area_id]
        if _crc32(self._reader.mv[start : start + length]) != crc:
            raise TapeCorruptError(
                _bounded(
                    f"{self._reader.label}: the bytes of {what()} (offsets {start} to "
                    f"{start + length}) fail their checksum"
                )
            )
        self._checked[area_id] = 1

    def _array(self, dtype: str, shape: tuple[int, ...], loc: tuple, what: Any) -> np.ndarray:
        offset, nbytes, area_id = loc
        self._verify(area_id, what)
        dt = _NP_DTYPES[dtype]
        if nbytes == 0:
            out = np.empty(shape, dt)
            out.flags.writeable = False
            return out
        return np.ndarray(shape, dt, self._buffer, offset)  # read-only: the map is

    def close(self) -> None:
        """Release the file. Arrays already returned keep the mapping alive until they go."""
        if not self._closed:
            self._closed = True
            self._buffer = None  # the arrays handed out hold it, and so keep the map
            self._reader.release()


def open_tape(path: str | os.PathLike, recover: bool = False) -> TapeFile:
    """Open a tape file: checks its structure and every checksum but the payloads', reads its
    index, maps its payloads. ``OSError`` for a missing or unreadable path; ``TapeFormatError``
    (subclasses ``TapeTruncatedError``, ``TapeCorruptError``, ``UnsupportedVersionError``) for
    bad content. A cut-short file raises ``TapeTruncatedError`` unless ``recover=True``, which
    returns its complete records (``TapeFile.complete`` is then False)."""
    name = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(name, flags)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name)
        if not stat.S_ISREG(st.st_mode):
            raise TapeFormatError(_bounded(f"{name}: not a regular file"))
        size = st.st_size
        mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None
    finally:
        os.close(fd)
    reader = _Reader(mm, size, name)
    try:
        with gc_paused():
            return reader.read(recover)
    except TapeFormatError:
        reader.release()
        raise
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        struct.error,
        OverflowError,
        RecursionError,
    ) as e:
        # A safety net that the checks above make unreachable (the fuzz tests check that it is
        # never reached): bad content must not escape as another exception.
        reader.release()
        message = f"{reader.label}: unexpected decoding failure in frame {reader.seq} ({type(e).__name__})"
        raise TapeCorruptError(_bounded(message)) from None
