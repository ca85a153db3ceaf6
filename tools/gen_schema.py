"""Write schema/tape.schema.json, the JSON Schema of the tape file metadata, from the pydantic
models in tapegrad/fileformat/models.py.

    python tools/gen_schema.py          # (re)write the file
    python tools/gen_schema.py --check  # exit 1 if the file and the models differ

The text comes from ``tapegrad.fileformat.schema_json()`` (which ``tapegrad schema`` prints too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tapegrad.fileformat import schema_json

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema" / "tape.schema.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--output", type=Path, default=SCHEMA_PATH)
    args = parser.parse_args(argv)
    text = schema_json()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(
                f"{args.output} differs from the models; run tools/gen_schema.py", file=sys.stderr
            )
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
