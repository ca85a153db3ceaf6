"""Writing tape files: checking what the caller gives (rows or columns), encoding it as frames,
and putting the frames on disk: ``TapeWriter`` (streaming, a frame per call) and ``save_tape``
(a whole tape, atomically).

The byte layout is in ``layout.py`` (specified in ``schema/FORMAT.md``). A tape of 100,000 small
records must save in well under a second, so the work is done a column at a time wherever it can
be: ``save_tape`` checks a whole column with a set of its types and the min and max of its
lengths, and the records' use of values a frame at a time with NumPy; values alike in dtype and
shape are written a frame at a time. What a column check cannot clear goes through the checks one
value or record at a time, which name the first culprit: each error is the one they would raise
alone.

Invariants:
- A writer writes each frame with one system call; ``save_tape`` replaces its target atomically.
- ``save_tape`` writes the same bytes for the same tape whether given rows or columns.
- Bad input raises TypeError or ValueError naming the value or record, before its frame is
  written.
- What a writer writes, the reader accepts: the header and footer bodies are decoded and
  validated with the reader's own functions before they are written (the one import of
  ``reader``, which imports nothing from here).
"""

from __future__ import annotations

import errno
import functools
import itertools
import operator
import os
import secrets
import stat
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import msgpack
import numpy as np
from pydantic import BaseModel, ValidationError

from .._gc import gc_paused
from ..errors import TapeFormatError
from .layout import (
    _INTERN,
    _KIND_NAMES,
    _KIND_STATE,
    _NP_DTYPES,
    _TRAILER,
    _U32,
    _ZEROS,
    ALIGN,
    FILE_HEAD_LEN,
    FOOTER,
    FRAME_HEAD_LEN,
    GRADS,
    HEADER,
    RECORDS,
    TRAILER_MAGIC,
    VALUES,
    RecordColumns,
    RecordInfo,
    ValueColumns,
    ValueInfo,
    _align,
    _check_plain,
    _crc32,
    _file_head,
    _frame_head,
    _frame_parts,
    _Ledger,
    _nbytes,
    _PlainError,
    _short,
)
from .models import (
    MAX_ARITY,
    MAX_BODY_LEN,
    MAX_INDEX,
    MAX_NAME_LEN,
    MAX_NDIM,
    MAX_PATH_LEN,
    VALUE_KINDS,
    FooterBody,
    HeaderBody,
    Provenance,
)
from .reader import _pydantic_problem, _unpackb, _validate_model

__all__ = [
    "TapeWriter",
    "save_tape",
]

TEMP_MARK = ".tapegrad-tmp-"  # save_tape's temporaries: ".<target name>.tapegrad-tmp-<pid>-<hex>"
_DTYPE_WORDS = "bool, int8..int64, uint8..uint64, float16/32/64, complex64/128"

# save_tape's batching: small payloads share a frame (and its checksum); big ones get a frame of
# their own and, from _THREAD_MIN on, their checksum computed on another thread while they are
# written (zlib releases the GIL).
_OWN_FRAME_MIN = 256 * 1024
_THREAD_MIN = 8 * 1024 * 1024
_BATCH_AREA = 1024 * 1024
_BATCH_ROWS = 8192
_SINK_BUFFER = 1024 * 1024
# A save that ends with an fsync asks the kernel to start writing each _WRITEBACK_CHUNK to disk
# as soon as it is written, so the disk works while the rest is copied and the final fsync has
# little left to wait for (on Linux, POSIX_FADV_DONTNEED starts writeback of dirty pages; the
# pages stay cached while they are being written).
_WRITEBACK_CHUNK = 8 * 1024 * 1024
_START_WRITEBACK = getattr(os, "POSIX_FADV_DONTNEED", None) if sys.platform == "linux" else None
# The file a save replaces is released (its blocks and cached pages freed, tens of ms per 100 MB)
# on another thread from this size on, after the new file is in place.
_RELEASE_LATER_MIN = 16 * 1024 * 1024


# -- encoding: checking what the caller gives --------------------------------------------------

_DTYPE_CACHE: dict[Any, str] = {}
_SHAPE_CACHE: dict[tuple, dict[str, int]] = {}  # shape -> {dtype: nbytes}, for checked shapes


def _name_problem(name: Any, limit: int = MAX_NAME_LEN) -> str | None:
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a str"
    if not 0 < len(name) <= limit:
        return f"must have 1 to {limit} characters, not {len(name)}"
    return None


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
        replaced = _hold_replaced(self.path)  # freed on another thread (see save_tape)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            _release(replaced)
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

    def __init__(self, fd: int, writeback: bool = False):
        self.fd = fd
        self.pos = 0  # bytes written or buffered
        self.buf = bytearray()
        # where writeback was last started, or None when the caller will not fsync
        self.synced = 0 if writeback and _START_WRITEBACK is not None else None

    def write(self, data: Any) -> None:
        n = len(data)
        if n >= _OWN_FRAME_MIN:
            self.flush()
            _write_all(self.fd, [data])
            self.pos += n
            self._writeback()
        else:
            self.buf += data
            self.pos += n
            if len(self.buf) >= _SINK_BUFFER:
                self.flush()

    def flush(self) -> None:
        if self.buf:
            _write_all(self.fd, [self.buf])
            self.buf = bytearray()
            self._writeback()

    def _writeback(self) -> None:
        start = self.synced
        if start is not None and self.pos - start >= _WRITEBACK_CHUNK:
            try:
                os.posix_fadvise(self.fd, start, self.pos - start, _START_WRITEBACK)
            except OSError:  # a hint only: the fsync at the end is what makes the file durable
                self.synced = None
                return
            self.synced = self.pos


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
                _write_tape(fd, values, records, meta, grads, provenance, fsync)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        replaced = _hold_replaced(target)
        try:
            os.replace(temp, target)
        finally:
            _release(replaced)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    if fsync:
        _fsync_dir(folder)


def _hold_replaced(target: str) -> int | None:
    """A descriptor of the big regular file that ``target`` names, or None. Holding it open
    across the rename leaves freeing that file's blocks and cached pages to ``_release``
    instead of ``os.replace``."""
    if os.name != "posix":  # Windows refuses to replace a file that is open
        return None
    try:
        st = os.stat(target)
        if not stat.S_ISREG(st.st_mode) or st.st_size < _RELEASE_LATER_MIN:
            return None
        # O_NONBLOCK: should the name have become a FIFO since the stat, opening it must not wait
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    return fd


def _release(fd: int | None) -> None:
    """Close ``fd`` on another thread: when it held the last reference to a replaced file, the
    close frees it, and the save need not wait for that."""
    if fd is None:
        return
    try:
        threading.Thread(target=os.close, args=(fd,), name="tapegrad-release", daemon=True).start()
    except RuntimeError:  # no new threads (the interpreter is shutting down)
        os.close(fd)


def _write_tape(
    fd: int, values: Any, records: Any, meta: Any, grads: Any, provenance: Any, fsync: bool
):
    packer = _packer()
    sink = _Sink(fd, writeback=fsync)
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
