"""The tape file format: pydantic models of the metadata (``models``) and the codec that turns
neutral descriptions of values and records plus raw arrays into bytes and back (``codec``).

The byte layout is specified in ``schema/FORMAT.md``; ``schema/tape.schema.json`` is generated from
the models by ``tools/gen_schema.py`` (``schema_json()`` returns the same text).
"""

from .codec import (
    RecordColumns,
    RecordInfo,
    TapeFile,
    TapeWriter,
    ValueColumns,
    ValueInfo,
    open_tape,
    save_tape,
)
from .models import ALLOWED_DTYPES, FORMAT_VERSION, schema_json

__all__ = [
    "ALLOWED_DTYPES",
    "FORMAT_VERSION",
    "RecordColumns",
    "RecordInfo",
    "TapeFile",
    "TapeWriter",
    "ValueColumns",
    "ValueInfo",
    "open_tape",
    "save_tape",
    "schema_json",
]
