"""The ``tapegrad`` command: what a user does with a saved tape, without the script that made it.

Each subcommand parses its arguments and calls one library function; the output is text, or JSON
with ``--json``. Exit status: 0 fine; 1 a check found a problem (``check`` failed, ``nan`` found
one, ``diff`` found a difference); 2 bad usage, or a missing, damaged or unreadable file, with one
line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from typing import Any, Callable

import numpy as np

from .errors import GuardError, TapeFormatError, TapeTruncatedError, UnknownOpError


class UsageError(Exception):
    """Bad arguments: exit status 2."""


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _warn(text: str) -> None:
    sys.stderr.write(f"tapegrad: warning: {text}\n")


def _json(obj: Any) -> None:
    _out(json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False))


def _finite(o: Any) -> Any:
    """Standard JSON has no NaN or Infinity: write them as the strings "NaN", "Infinity"."""
    if isinstance(o, float) and not np.isfinite(o):
        return "NaN" if o != o else ("Infinity" if o > 0 else "-Infinity")
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    if isinstance(o, np.generic):
        return _finite(o.item())
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (bytes, bytearray)):
        return o.hex()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def _progress(total: int, desc: str) -> Callable[[], None] | None:
    """A progress bar on stderr when it is a terminal (tqdm, when installed), else nothing."""
    if total < 2 or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, delay=0.5)
    return lambda: bar.update(1)


def _open(path: str, *, allow_recovered: bool = False):
    """Load a tape. A cut-short file is an error, or (where reading it makes sense) a warning."""
    from . import load

    try:
        return load(path)
    except TapeTruncatedError:
        if not allow_recovered:
            raise
        tape = load(path, recover=True)
        _warn(f"{path} was cut short; showing the {len(tape)} records completed before the cut")
        return tape


def _import_modules(names: list[str] | None) -> None:
    """``--import MODULE``: the user names modules that register their ops. As with
    ``python -m``, modules in the current directory can be named."""
    if names and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    for name in names or ():
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UsageError(f"--import {name}: {e}") from None


# -- subcommands --------------------------------------------------------------------------------


def cmd_inspect(a: argparse.Namespace) -> int:
    from .analysis import format_summary

    tape = _open(a.file, allow_recovered=True)
    s = tape.summary()
    if a.json:
        _json(s)
    else:
        _out(format_summary(s))
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    tape = _open(a.file, allow_recovered=True)
    ks = [k for k in range(len(tape)) if a.op is None or tape._entry(k)[1] == a.op]
    if a.limit is not None:
        ks = ks[: a.limit]
    if a.json:
        recs = tape.records
        _json(
            [
                {
                    "index": k,
                    "op": recs[k].op,
                    "attrs": recs[k].attrs,
                    "inputs": [_sig(tape, n) for n in recs[k].inputs],
                    "outputs": [_sig(tape, n) for n in recs[k].outputs],
                    "source": list(recs[k].source) if recs[k].source else None,
                }
                for k in ks
            ]
        )
        return 0
    width = len(str(max(len(tape) - 1, 0)))
    for k in ks:
        _out(tape.format_record(k, width))
    shown = len(ks)
    total = len(tape)
    if shown < total:
        _out(f"({shown} of {total} records shown)")
    return 0


def _sig(tape, name: str) -> dict[str, Any]:
    shape, dtype = tape._shape_dtype(tape._index_of(name))
    return {"name": name, "shape": list(shape), "dtype": dtype.name}


def cmd_grad(a: argparse.Namespace) -> int:
    _import_modules(a.import_)
    tape = _open(a.file)
    grads = tape.backward(of=a.of, progress=_progress(len(tape), "backward"))
    if a.output:
        _save_npz(a.output, grads)
    if a.json:
        _json(
            {
                k: {"shape": list(v.shape), "dtype": v.dtype.name, "values": v}
                for k, v in grads.items()
            }
        )
    elif not a.output:
        for k, v in grads.items():
            _out(f"{k}: {v.dtype.name}{list(v.shape)}  |grad| = {np.linalg.norm(v):.6g}")
            _out("  " + np.array2string(v, threshold=20, precision=6).replace("\n", "\n  "))
    else:
        _out(f"wrote gradients of {', '.join(grads)} to {a.output}")
    return 0


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (a temporary file, then a rename); errors name ``path``, not the temporary."""
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OSError(e.errno, e.strerror, path) from None


def cmd_eval(a: argparse.Namespace) -> int:
    _import_modules(a.import_)
    tape = _open(a.file)
    try:
        with np.load(a.inputs, allow_pickle=False) as z:
            inputs = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read inputs from {a.inputs}: {e}") from None
    new = tape.replay(inputs, strict=not a.no_strict, progress=_progress(len(tape), "replay"))
    new.save(a.output)
    outs = ", ".join(f"{n} = {_brief(new[n])}" for n in new.outputs)
    _out(f"replayed {len(new)} records with {', '.join(inputs) or 'no'} replaced; wrote {a.output}")
    if outs:
        _out(f"outputs: {outs}")
    return 0


def _brief(v: np.ndarray) -> str:
    return (
        np.array2string(v, threshold=6, precision=6)
        if v.size <= 6
        else f"{v.dtype.name}{list(v.shape)}"
    )


def cmd_check(a: argparse.Namespace) -> int:
    _import_modules(a.import_)
    tape = _open(a.file)
    n = len([x for x in tape.inputs]) * a.directions
    r = tape.gradcheck(
        of=a.of, directions=a.directions, rtol=a.rtol, eps=a.eps, progress=_progress(n, "gradcheck")
    )
    if a.json:
        _json(
            {
                "ok": r.ok,
                "output": r.output,
                "rtol": r.rtol,
                "errors": r.errors,
                "skipped": r.skipped,
            }
        )
    else:
        _out(str(r))
    return 0 if r.ok else 1


def cmd_nan(a: argparse.Namespace) -> int:
    from .analysis import format_nonfinite

    _import_modules(a.import_)
    tape = _open(a.file, allow_recovered=True)
    r = tape.find_nonfinite(of=a.of)
    if a.json:
        _json(r)
    else:
        _out(format_nonfinite(r))
    found = r["forward"] is not None or r["backward"] is not None or bool(r["inputs"])
    return 1 if found else 0


def cmd_diff(a: argparse.Namespace) -> int:
    from .analysis import diff

    ta, tb = _open(a.a), _open(a.b)
    r = diff(ta, tb, rtol=a.rtol, atol=a.atol)
    if a.json:
        _json({"same": r.same, "structural": r.structural, "first_value": r.first_value})
    else:
        _out(str(r))
    return 0 if r.same else 1


def cmd_dot(a: argparse.Namespace) -> int:
    tape = _open(a.file, allow_recovered=True)
    text = tape.to_dot(verbose=not a.brief)
    if a.output is None:
        sys.stdout.write(text)
        return 0
    if a.output.endswith(".svg"):
        exe = shutil.which("dot")
        if exe is None:
            raise UsageError(
                "writing SVG needs Graphviz's 'dot' program, which is not installed "
                "(e.g. apt-get install graphviz); write DOT text with -o FILE.dot instead"
            )
        r = subprocess.run([exe, "-Tsvg", "-o", a.output], input=text.encode(), capture_output=True)
        if r.returncode != 0:
            raise UsageError(f"dot failed: {r.stderr.decode(errors='replace').strip()}")
    else:
        with open(a.output, "w", encoding="utf-8") as f:
            f.write(text)
    _out(f"wrote {a.output}")
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    from .storage import validate

    report = validate(a.file)
    if report["complete"] is False:
        _warn(f"{a.file} was cut short; its {report['records']} complete records are valid")
    if a.json:
        _json(report)
    else:
        _out(
            f"{a.file}: valid; format {report['format']}, {report['records']} records, "
            f"{report['values']} values ({report['arrays']} stored, {report['bytes']} bytes checked)"
        )
    return 0


def cmd_schema(a: argparse.Namespace) -> int:
    from .fileformat import schema_json

    sys.stdout.write(schema_json())
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run

    return run(a.output)


# -- parser -------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line on stderr, exit 2
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _add(sub, name: str, func, help: str, example: str, description: str | None = None):
    p = sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def _add_import(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--import",
        dest="import_",
        action="append",
        metavar="MODULE",
        help="import MODULE first (it registers ops the tape uses)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tapegrad",
        description="Inspect, replay and differentiate NumPy computations saved as tapes.",
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = _add(
        sub,
        "inspect",
        cmd_inspect,
        "summary of a tape",
        "tapegrad inspect run.tape",
        "Records, op histogram, inputs and outputs with shapes and dtypes, bytes by dtype, "
        "provenance. A cut-short tape is shown with a warning.",
    )
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="print JSON")

    s = _add(
        sub,
        "list",
        cmd_list,
        "one line per record",
        "tapegrad list run.tape --op matmul --limit 20",
    )
    s.add_argument("file")
    s.add_argument("--limit", type=_count, help="show at most N records")
    s.add_argument("--op", help="only records of this op")
    s.add_argument("--json", action="store_true", help="print JSON")

    s = _add(
        sub,
        "grad",
        cmd_grad,
        "gradients replayed from the tape, offline",
        "tapegrad grad run.tape --of loss -o grads.npz",
    )
    s.add_argument("file")
    s.add_argument("--of", help="the output to differentiate (default: the only output)")
    s.add_argument("-o", "--output", help="save the gradients to an .npz, keyed by input name")
    s.add_argument("--json", action="store_true", help="print JSON")
    _add_import(s)

    s = _add(
        sub,
        "eval",
        cmd_eval,
        "replay the tape with some inputs replaced",
        "tapegrad eval run.tape --inputs new.npz -o new.tape",
    )
    s.add_argument("file")
    s.add_argument("--inputs", required=True, help=".npz of arrays keyed by input name")
    s.add_argument("-o", "--output", required=True, help="where to write the replayed tape")
    s.add_argument(
        "--no-strict",
        action="store_true",
        help="warn instead of failing when a recorded branch guard changes",
    )
    _add_import(s)

    s = _add(
        sub,
        "check",
        cmd_check,
        "gradient check against central differences (exit 1 on failure)",
        "tapegrad check run.tape --directions 5",
    )
    s.add_argument("file")
    s.add_argument("--of", help="the output to check (default: the only output)")
    s.add_argument("--directions", type=_count, default=3, help="random directions per input (3)")
    s.add_argument("--rtol", type=float, help="tolerance on the relative error")
    s.add_argument("--eps", type=float, help="finite-difference step")
    s.add_argument("--json", action="store_true", help="print JSON")
    _add_import(s)

    s = _add(
        sub,
        "nan",
        cmd_nan,
        "first non-finite value, forward and backward (exit 1 if found)",
        "tapegrad nan run.tape",
    )
    s.add_argument("file")
    s.add_argument("--of", help="the output whose backward pass to search")
    s.add_argument("--json", action="store_true", help="print JSON")
    _add_import(s)

    s = _add(
        sub,
        "diff",
        cmd_diff,
        "first difference between two tapes (exit 1 if they differ)",
        "tapegrad diff a.tape b.tape --rtol 1e-6",
    )
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--rtol", type=float, default=1e-7, help="relative tolerance (1e-7)")
    s.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (0)")
    s.add_argument("--json", action="store_true", help="print JSON")

    s = _add(
        sub,
        "dot",
        cmd_dot,
        "Graphviz drawing of the tape (DOT text, or SVG)",
        "tapegrad dot run.tape -o run.svg",
    )
    s.add_argument("file")
    s.add_argument("-o", "--output", help="OUT.dot, or OUT.svg (needs Graphviz's dot)")
    s.add_argument("--brief", action="store_true", help="names only, no shapes or attributes")

    s = _add(
        sub,
        "validate",
        cmd_validate,
        "check every checksum and the schema",
        "tapegrad validate run.tape",
    )
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="print JSON")

    _add(sub, "schema", cmd_schema, "print the JSON Schema of the file metadata", "tapegrad schema")

    s = _add(
        sub,
        "demo",
        cmd_demo,
        "record an MLP training step, save it, replay its gradients",
        "tapegrad demo",
        "Record one training step of a small MLP on DeZero's spiral data set, save it as "
        "demo.tape, print its summary and the head of its listing, and show that gradients "
        "replayed from the file equal the live ones.",
    )
    s.add_argument("-o", "--output", default="demo.tape", help="where to save the tape (demo.tape)")
    return p


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {text!r}")
    return n


def _version() -> str:
    from . import __version__

    return f"tapegrad {__version__}"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _warn(" ".join(str(message).split()))  # one line, without Python's file:line noise


def main(argv: list[str] | None = None) -> int:
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return _main(argv)
    finally:
        warnings.showwarning = shown


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "func", None):
            build_parser().print_help()
            raise UsageError("no command given (see 'tapegrad --help')")
        return args.func(args)
    except UsageError as e:
        sys.stderr.write(f"tapegrad: error: {e}\n")
    except UnknownOpError as e:
        sys.stderr.write(f"tapegrad: error: {_one_line(e)} (with --import MODULE)\n")
    except (OSError, TapeFormatError, GuardError) as e:
        sys.stderr.write(f"tapegrad: error: {_one_line(e)}\n")
    except (ValueError, KeyError, TypeError) as e:
        sys.stderr.write(f"tapegrad: error: {_one_line(e)}\n")
    except KeyboardInterrupt:
        sys.stderr.write("tapegrad: interrupted\n")
        return 130
    return 2


def _one_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:397] + "..."


if __name__ == "__main__":
    sys.exit(main())
