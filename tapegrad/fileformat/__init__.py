"""The tape file format: pydantic models of the metadata (``models``), the byte layout and the
neutral descriptions of values and records shared by both sides (``layout``), and the code that
turns those descriptions plus raw arrays into bytes (``writer``) and back (``reader``).

The byte layout is specified in ``schema/FORMAT.md``; ``schema/tape.schema.json`` is generated from
the models by ``tools/gen_schema.py`` (``schema_json()`` returns the same text).
"""

from .layout import RecordColumns, RecordInfo, ValueColumns, ValueInfo
from .models import ALLOWED_DTYPES, FORMAT_VERSION, schema_json
from .reader import TapeFile, open_tape
from .writer import TapeWriter, save_tape

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
