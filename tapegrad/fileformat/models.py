"""The metadata of a tape file, as pydantic models: the one source of ``schema/tape.schema.json``.

A tape file is a stream of frames (``schema/FORMAT.md``); each frame's body is one msgpack
document, and these models say what each kind of body holds. Array payloads are raw bytes outside
these models: they never pass through pydantic.

Value, record and gradient frames hold tables (one array per field) rather than arrays of maps:
decoding and checking a column costs a fraction of a map per row, which is what lets a tape of
100,000 records open in a fraction of a second.

Every model is strict (no coercion: a string is not a number, a list is not a tuple) and forbids
fields it does not name. The constants below are part of the format: the allowed dtypes and the
limits a reader enforces.

Which checks run where: a reader validates every frame body with these models, one pydantic call
per frame (a frame holds up to thousands of records), then checks what a schema cannot say (indices
that point at earlier values, unique names, byte offsets) by hand in ``reader.py``. A writer checks
values and records by hand, a column at a time, and one by one where that finds a problem (so
that its error names the culprit), and validates the header and footer with these models;
``tests/test_fileformat.py`` checks that whatever the writer accepts, the models accept.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeAliasType

FORMAT_MAJOR = 1
FORMAT_MINOR = 0
FORMAT_VERSION = (FORMAT_MAJOR, FORMAT_MINOR)

#: numpy ``dtype.str`` of every storable dtype, as stored (little-endian): bool, int8..int64,
#: uint8..uint64, float16/32/64, complex64/128.
ALLOWED_DTYPES = (
    "|b1",
    "|i1",
    "<i2",
    "<i4",
    "<i8",
    "|u1",
    "<u2",
    "<u4",
    "<u8",
    "<f2",
    "<f4",
    "<f8",
    "<c8",
    "<c16",
)
VALUE_KINDS = ("input", "const", "op")

MAX_BODY_LEN = 4 * 1024 * 1024  # bytes of one frame body (msgpack); the header's meta included
MAX_NAME_LEN = 1024  # characters of a value, gradient or op name, or a source function
MAX_PATH_LEN = 4096  # characters of a source file name
MAX_PROVENANCE_LEN = 256  # characters of each provenance string
MAX_NDIM = 64  # dimensions of a shape (NumPy's own limit)
MAX_DEPTH = 32  # nesting of containers in attrs and meta, the outermost dict included
MAX_ARITY = 65536  # inputs, and outputs, of one record
MAX_INDEX = 2**63 - 1  # value indices, dimensions, byte counts and offsets
INT_MIN = -(2**63)  # plain-data integers are msgpack's: int64 or uint64
INT_MAX = 2**64 - 1

_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)

PlainData = TypeAliasType(
    "PlainData",
    Annotated[
        Union[
            None,
            bool,
            Annotated[int, Field(ge=INT_MIN, le=INT_MAX)],
            float,
            str,
            bytes,
            list["PlainData"],
            dict[str, "PlainData"],
        ],
        Field(description="JSON-like data; msgpack arrays decode as lists (user metadata)."),
    ],
)
AttrData = TypeAliasType(
    "AttrData",
    Annotated[
        Union[
            None,
            bool,
            Annotated[int, Field(ge=INT_MIN, le=INT_MAX)],
            float,
            str,
            bytes,
            tuple["AttrData", ...],
            dict[str, "AttrData"],
        ],
        Field(description="Plain data of op attributes; msgpack arrays decode as tuples."),
    ],
)

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LEN)]
Index = Annotated[int, Field(ge=0, le=MAX_INDEX)]
Dtype = Literal[ALLOWED_DTYPES]  # type: ignore[valid-type]
Shape = Annotated[tuple[Index, ...], Field(max_length=MAX_NDIM)]
DataRef = Annotated[
    tuple[Index, Index],
    Field(
        description="(offset, nbytes): where the value's raw bytes start, relative to the frame's "
        "payload area (a multiple of 64), and how many bytes they are (prod(shape) * itemsize)."
    ),
]
ProvenanceText = Annotated[str, Field(max_length=MAX_PROVENANCE_LEN)]


class Provenance(BaseModel):
    """Who wrote the tape and when. The reader adds ``format`` (``"major.minor"``) from the file
    header; it is not stored here."""

    model_config = _STRICT

    tapegrad: ProvenanceText = Field(description="tapegrad version that recorded the tape")
    numpy: ProvenanceText = Field(description="NumPy version")
    python: ProvenanceText = Field(description="Python version")
    created: ProvenanceText = Field(description="creation time, ISO 8601 with UTC offset")


class HeaderBody(BaseModel):
    """Body of the header frame (kind ``H``, always frame 0)."""

    model_config = _STRICT

    format: Literal["tapegrad"]
    provenance: Provenance
    meta: dict[str, PlainData] = Field(description="user metadata as of the start of the tape")


def _column(item: object, description: str) -> object:
    return Annotated[tuple[item, ...], Field(min_length=1, description=description)]


class _Columns(BaseModel):
    """A frame body that is a table: one array per field, all of one length, at least 1 (the
    codec checks the equal lengths, which JSON Schema cannot express)."""

    model_config = _STRICT


Source = tuple[
    Annotated[str, Field(max_length=MAX_PATH_LEN)],
    Index,
    Annotated[str, Field(max_length=MAX_NAME_LEN)],
]


class ValuesBody(_Columns):
    """Body of a values frame (kind ``V``): a table of values, column ``i`` of each array
    describing the same value. Values are numbered from 0 in the order they appear in the file;
    names are unique within the tape."""

    name: _column(Name, "unique within the tape")  # type: ignore[valid-type]
    kind: _column(Literal[VALUE_KINDS], "op: made by a record")  # type: ignore[valid-type]
    dtype: _column(Dtype, "NumPy dtype.str, little-endian")  # type: ignore[valid-type]
    shape: _column(Shape, "dimensions")  # type: ignore[valid-type]
    data: _column(Optional[DataRef], "null: only shape and dtype were saved")  # type: ignore[valid-type]


class RecordsBody(_Columns):
    """Body of a records frame (kind ``R``): a table of records. A record names only values that
    appear earlier in the file; its outputs are values of kind ``op`` that no earlier record
    produced; an input of kind ``op`` was produced by an earlier record."""

    op: _column(Name, "registered op name")  # type: ignore[valid-type]
    attrs: _column(dict[str, AttrData], "plain-data attributes")  # type: ignore[valid-type]
    inputs: _column(  # type: ignore[valid-type]
        Annotated[tuple[Index, ...], Field(max_length=MAX_ARITY)], "value indices"
    )
    outputs: _column(  # type: ignore[valid-type]
        Annotated[tuple[Index, ...], Field(max_length=MAX_ARITY)], "value indices"
    )
    source: Optional[_column(Optional[Source], "(file, line, function) or null")] = Field(  # type: ignore[valid-type]
        default=None, description="absent when no record of the frame has a source"
    )


class GradsBody(_Columns):
    """Body of a gradients frame (kind ``G``): a table of saved gradients (names unique)."""

    name: _column(Name, "usually an input's name")  # type: ignore[valid-type]
    dtype: _column(Dtype, "NumPy dtype.str, little-endian")  # type: ignore[valid-type]
    shape: _column(Shape, "dimensions")  # type: ignore[valid-type]
    data: _column(DataRef, "where the bytes are")  # type: ignore[valid-type]


class FooterBody(BaseModel):
    """Body of the footer frame (kind ``F``, always the last frame): what the reader must have
    found before it, and the final metadata."""

    model_config = _STRICT

    frames: Index = Field(description="number of frames before the footer")
    values: Index
    records: Index
    grads: Index
    meta: Optional[dict[str, PlainData]] = Field(
        default=None, description="final user metadata; absent: the header's meta stands"
    )


class FrameBodies(BaseModel):
    """Not a document found in a file: the msgpack body of each kind of frame, for the schema."""

    model_config = _STRICT

    header: HeaderBody = Field(description="frame kind H")
    values: ValuesBody = Field(description="frame kind V")
    records: RecordsBody = Field(description="frame kind R")
    grads: GradsBody = Field(description="frame kind G")
    footer: FooterBody = Field(description="frame kind F")


def schema_json() -> str:
    """The JSON Schema of every frame body, as written to ``schema/tape.schema.json``."""
    schema = FrameBodies.model_json_schema()
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"tapegrad tape metadata, format {FORMAT_MAJOR}.{FORMAT_MINOR}",
        **{k: v for k, v in schema.items() if k != "title"},
    }
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
