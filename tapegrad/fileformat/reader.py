"""Reading tape files: ``open_tape`` checks a file's structure and every checksum but the
payload areas', and returns a ``TapeFile`` that keeps the file's index and maps its arrays.

The byte layout is in ``layout.py`` (specified in ``schema/FORMAT.md``). A tape of 100,000 small
records must load in well under a second: the reader keeps the frames' tables as columns (no
ValueInfo or RecordInfo per row), validates each frame body with one pydantic call, and hands out
the arrays of a payload area of values alike in dtype and shape with one NumPy call.

Invariants:
- Opening checks every CRC-32 but the payload areas'; a payload area is checked at the first
  access to a value in it.
- A reader checks every length, count, offset and shape against the file's real size before it
  allocates anything; it imports, evaluates and unpickles nothing.
- The only exception that bad content makes ``open_tape`` or ``TapeFile.array`` (``grad``,
  ``arrays_around``) raise is
  ``TapeFormatError`` (subclasses: truncated, corrupt, unsupported version). Messages name the
  problem and its byte offset or field, and are at most ``MAX_MESSAGE`` characters.
- This module imports nothing from ``writer`` (the writer uses its decoding to check what it
  writes).
"""

from __future__ import annotations

import errno
import itertools
import mmap
import operator
import os
import stat
import struct
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np
from pydantic import BaseModel, ValidationError

from .._gc import gc_paused
from ..errors import TapeCorruptError, TapeFormatError, TapeTruncatedError, UnsupportedVersionError
from .layout import (
    _CONTAINERS,
    _FILE_HEAD,
    _FRAME_HEAD,
    _INTERN,
    _KIND_NAMES,
    _NP_DTYPES,
    _TRAILER,
    _U32,
    _ZEROS,
    ALIGN,
    FILE_HEAD_LEN,
    FILE_MAGIC,
    FRAME_HEAD_LEN,
    FRAME_MAGIC,
    GRADS,
    HEADER,
    RECORDS,
    TRAILER_LEN,
    TRAILER_MAGIC,
    VALUES,
    RecordColumns,
    RecordInfo,
    ValueColumns,
    ValueInfo,
    _align,
    _bounded,
    _check_plain,
    _clip,
    _crc32,
    _Ledger,
    _nbytes,
    _PlainError,
    _short,
)
from .models import (
    FORMAT_MAJOR,
    FORMAT_MINOR,
    MAX_BODY_LEN,
    FooterBody,
    GradsBody,
    HeaderBody,
    RecordsBody,
    ValuesBody,
)

__all__ = [
    "TapeFile",
    "open_tape",
]

_MAX_CANDIDATES = 65536  # frame magics tried when telling a torn tail from damage


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
