"""The byte layout of tape files, shared by the writer (``writer.py``) and the reader
(``reader.py``): magics, structs, alignment, the frame kinds, the stored dtypes, the frame heads
and padding, the neutral descriptions of values and records, and the rules both sides enforce.

The layout is specified byte by byte in ``schema/FORMAT.md``; the metadata models are in
``models.py``. The format knows nothing of ``Tape``: it writes and reads ``ValueInfo`` and
``RecordInfo`` descriptions, or the same as columns (``ValueColumns``, ``RecordColumns``), and
NumPy arrays.

Invariants:
- Every byte of a file is covered by a CRC-32: the file header, each frame header, each frame body
  with its padding, each payload area, the trailer.
- Payload areas start, and every payload within one starts, at a multiple of ``ALIGN``; padding is
  zero bytes.
- What ties records to values (``_Ledger``) and what counts as plain data (``_check_plain``) are
  one set of rules, enforced alike when writing and when reading.
- Error messages are at most ``MAX_MESSAGE`` characters (``_bounded``).
- This module imports neither ``writer`` nor ``reader``.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

try:  # the same CRC-32 as zlib's, 3-5x faster (vectorised): an optional accelerator
    from zlib_ng.zlib_ng import crc32 as _crc32
except ImportError:  # pragma: no cover - depends on what is installed
    from zlib import crc32 as _crc32

from .models import (
    ALLOWED_DTYPES,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    MAX_INDEX,
    VALUE_KINDS,
)

__all__ = [
    "RecordColumns",
    "RecordInfo",
    "ValueColumns",
    "ValueInfo",
]

# -- layout (schema/FORMAT.md) -------------------------------------------------------------------

FILE_MAGIC = b"\x89TGD\r\n\x1a\n"
FRAME_MAGIC = b"TGFR"
TRAILER_MAGIC = b"TGND"
ALIGN = 64  # payload areas start, and every payload within one starts, at a multiple of this
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


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _short(obj: Any, limit: int = 60) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


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
