"""What a user asks of a tape: summary, statistics, the first non-finite value, a gradient check,
Jacobians and Hessian-vector products, a DOT drawing, and the difference between two runs.

Every function here takes a Tape (recorded or loaded) and returns plain data or a small result
object with a readable ``str``; the ``tapegrad`` command only formats these.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import interpret
from .tape import CONST, INPUT, Tape, _short_dtype


def _where(src: Any) -> str | None:
    return f"{src[0]}:{src[1]} in {src[2]}" if src else None


def _sig(tape: Tape, i: int) -> dict[str, Any]:
    shape, dtype = tape._shape_dtype(i)
    return {"name": tape.name_of(i), "shape": list(shape), "dtype": dtype.name}


# -- summary ----------------------------------------------------------------------------------


def summary(tape: Tape) -> dict[str, Any]:
    """Records, op histogram, inputs/outputs with shapes and dtypes, bytes by dtype, provenance."""
    ops = Counter(tape._entry(k)[1] for k in range(len(tape._entries)))
    nbytes: Counter = Counter()
    for i in range(len(tape._kinds)):
        shape, dtype = tape._shape_dtype(i)
        nbytes[dtype.name] += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return {
        "records": len(tape._entries),
        "values": len(tape._kinds),
        "complete": tape.complete,
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "inputs": [_sig(tape, tape._index_of(n)) for n in tape.inputs],
        "outputs": [_sig(tape, tape._index_of(n)) for n in tape.outputs],
        "constants": sum(1 for k in tape._kinds if k == CONST),
        "bytes": dict(sorted(nbytes.items())),
        "grads": sorted(tape.grads),
        "meta": dict(tape.meta),
        "provenance": dict(getattr(tape, "provenance", {}) or {}),
    }


def format_summary(s: dict[str, Any]) -> str:
    def sig(v):
        return f"{v['name']}: {v['dtype']}{v['shape']}"

    lines = [
        f"records   {s['records']}"
        + ("" if s["complete"] else "  (recovered: the file was cut short)"),
        f"values    {s['values']} ({s['constants']} constants)",
        "inputs    " + (", ".join(sig(v) for v in s["inputs"]) or "-"),
        "outputs   " + (", ".join(sig(v) for v in s["outputs"]) or "-"),
        "ops       " + ", ".join(f"{op} x{n}" for op, n in s["ops"].items()),
        "bytes     " + ", ".join(f"{dt} {_human(n)}" for dt, n in s["bytes"].items()),
    ]
    if s["grads"]:
        lines.append("grads     " + ", ".join(s["grads"]))
    for k, v in s["meta"].items():
        lines.append(f"meta      {k} = {v!r}")
    for k, v in s["provenance"].items():
        lines.append(f"{k:<9} {v}")
    return "\n".join(lines)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def repr_html(tape: Tape) -> str:
    s = summary(tape)
    rows = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
        f"{html.escape(v)}</td></tr>"
        for k, v in (
            ("records", str(s["records"]) + ("" if s["complete"] else " (recovered)")),
            ("inputs", ", ".join(f"{v['name']}: {v['dtype']}{v['shape']}" for v in s["inputs"])),
            ("outputs", ", ".join(f"{v['name']}: {v['dtype']}{v['shape']}" for v in s["outputs"])),
            ("ops", ", ".join(f"{op} ×{n}" for op, n in s["ops"].items())),
            ("bytes", ", ".join(f"{dt} {_human(n)}" for dt, n in s["bytes"].items())),
        )
    )
    head = "".join(
        f"<tr><td style='text-align:left;font-family:monospace'>{html.escape(tape.format_record(k))}</td></tr>"
        for k in range(min(len(tape._entries), 20))
    )
    more = len(tape._entries) - 20
    tail = f"<tr><td>… {more} more records</td></tr>" if more > 0 else ""
    return (
        f"<div><b>tapegrad Tape</b><table>{rows}</table>"
        f"<details><summary>records</summary><table>{head}{tail}</table></details></div>"
    )


# -- statistics ---------------------------------------------------------------------------------


def value_stats(a: np.ndarray) -> dict[str, Any]:
    a = np.asarray(a)
    out: dict[str, Any] = {"shape": list(a.shape), "dtype": a.dtype.name, "size": int(a.size)}
    if a.size == 0 or a.dtype.kind not in "biufc":
        return out
    if a.dtype.kind == "c":
        a = np.abs(a)
    if a.dtype.kind in "fc":
        finite = np.isfinite(a)
        out["nan"] = int(np.isnan(a).sum())
        out["inf"] = int(np.isinf(a).sum())
        f = a[finite]
    else:
        out["nan"] = out["inf"] = 0
        f = a.astype(np.float64)
    if f.size:
        out.update(min=float(f.min()), max=float(f.max()), mean=float(f.mean()), std=float(f.std()))
    return out


def stats(tape: Tape) -> dict[str, dict[str, Any]]:
    """Per stored value: shape, dtype, min, max, mean, std (of finite entries), NaN and Inf counts."""
    return {
        tape.name_of(i): value_stats(tape._value(i))
        for i in range(len(tape._kinds))
        if tape._has_value(i)
    }


# -- non-finite values ----------------------------------------------------------------------------


def _nonfinite(a: Any) -> bool:
    a = np.asarray(a)
    return a.dtype.kind in "fc" and not np.isfinite(a).all()


def _record_report(tape: Tape, k: int, value_name: str | None, pass_: str) -> dict[str, Any]:
    _, op, attrs, ins, outs, src = tape._entry(k)
    return {
        "pass": pass_,
        "record": k,
        "op": op,
        "attrs": attrs,
        "value": value_name,
        "inputs": {
            tape.name_of(i): value_stats(tape._value(i)) if tape._has_value(i) else None
            for i in ins
        },
        "source": _where(src),
        "line": tape.format_record(k),
    }


def find_nonfinite(tape: Tape, of: str | None = None) -> dict[str, Any]:
    """The first record whose output is NaN/Inf in the forward pass, and the first record whose
    gradient is in the backward pass (replayed from ``of``, or from each output in turn), each with
    its op, attributes and its inputs' statistics. ``{"forward": None, "backward": None}`` when
    everything is finite."""
    result: dict[str, Any] = {"forward": None, "backward": None, "inputs": []}
    for i, kind in enumerate(tape._kinds):
        if kind in (INPUT, CONST) and tape._has_value(i) and _nonfinite(tape._value(i)):
            result["inputs"].append(tape.name_of(i))
    for k in range(len(tape._entries)):
        outs = tape._entry(k)[4]
        bad = [i for i in outs if tape._has_value(i) and _nonfinite(tape._value(i))]
        if bad:
            result["forward"] = _record_report(tape, k, tape.name_of(bad[0]), "forward")
            break
    if result["forward"] is None:
        # the backward pass of ``of``, or of each output in turn when none is named
        for target in [of] if of is not None else tape.outputs:
            found: list[int] = []

            def visit(k: int, gxs: Any, found: list[int] = found) -> None:
                if not found and any(g is not None and _nonfinite(g) for g in gxs):
                    found.append(k)

            with np.errstate(all="ignore"):  # non-finite values are what we are looking for
                interpret.backward(tape, target, visit=visit)
            if found:
                result["backward"] = _record_report(tape, found[0], None, "backward")
                result["backward"]["of"] = tape.name_of(interpret._resolve_output(tape, target))
                break
    return result


def format_nonfinite(r: dict[str, Any]) -> str:
    if r["forward"] is None and r["backward"] is None and not r["inputs"]:
        return "all values and gradients are finite"
    lines = []
    if r["inputs"]:
        lines.append("non-finite inputs or constants: " + ", ".join(r["inputs"]))
    for key in ("forward", "backward"):
        f = r[key]
        if f is None:
            continue
        what = f"output {f['value']}" if key == "forward" else "gradient"
        of = f", differentiating {f['of']}" if f.get("of") else ""
        lines.append(f"{key}: first non-finite {what} at record {f['record']} ({f['op']}){of}")
        lines.append(f"  {f['line']}")
        if f["source"]:
            lines.append(f"  at {f['source']}")
        for name, st in f["inputs"].items():
            lines.append(f"  input {name}: {_fmt_stats(st)}")
    return "\n".join(lines)


def _fmt_stats(st: dict[str, Any] | None) -> str:
    if st is None:
        return "(not stored)"
    if "min" not in st:
        return f"{st['dtype']}{st['shape']}"
    return (
        f"{st['dtype']}{st['shape']} min={st['min']:.4g} max={st['max']:.4g} "
        f"mean={st['mean']:.4g} nan={st['nan']} inf={st['inf']}"
    )


# -- derivatives ------------------------------------------------------------------------------------


def vjp(tape: Tape, of: str | None = None, grad: Any = None, wrt: Any = None):
    """Vector-Jacobian product: ``grad`` (default ones) times d(of)/d(inputs).

    ``wrt`` a name gives that input's array; a list of names gives a dict; None gives all inputs.
    """
    g = interpret.backward(tape, of, grad)
    if wrt is None:
        return g
    if isinstance(wrt, str):
        return _pick(g, wrt, tape)
    return {n: _pick(g, n, tape) for n in wrt}


def _pick(g: dict, name: str, tape: Tape) -> np.ndarray:
    if name not in g:
        raise KeyError(f"{name!r} is not an input of this tape; inputs are {tape.inputs}")
    return g[name]


def jacobian(tape: Tape, of: str | None = None, wrt: str | None = None) -> np.ndarray:
    """d(of)/d(wrt) as an array of shape ``of.shape + wrt.shape`` (one backward per output element)."""
    o = interpret._resolve_output(tape, of)
    if wrt is None:
        if len(tape.inputs) != 1:
            raise ValueError(f"this tape has inputs {tape.inputs}; name one with wrt=...")
        wrt = tape.inputs[0]
    y = tape._value(o)
    x_shape, _ = tape._shape_dtype(tape._index_of(wrt))
    J = np.zeros(y.shape + tuple(x_shape), dtype=np.result_type(y.dtype, np.float32))
    for idx in np.ndindex(*y.shape):
        e = np.zeros_like(y)
        e[idx] = 1
        J[idx] = interpret.backward(tape, tape.name_of(o), e)[wrt]
    return J


def hvp(tape: Tape, of: str | None = None, v: Any = None) -> dict[str, np.ndarray]:
    """Hessian-vector product of a scalar output: d/dx <d(of)/dx, v>, by replaying backward twice.

    ``v`` is a dict of input name -> array (a missing input counts as zeros), or an array when the
    tape has one input.
    """
    o = interpret._resolve_output(tape, of)
    name = tape.name_of(o)
    if int(np.prod(tape._shape_dtype(o)[0])) != 1:
        raise ValueError(f"hvp needs a scalar output; {name!r} has shape {tape._shape_dtype(o)[0]}")
    if not isinstance(v, dict):
        if len(tape.inputs) != 1:
            raise ValueError(f"pass v as a dict of input name -> array; inputs are {tape.inputs}")
        v = {tape.inputs[0]: v}
    live = interpret.rebuild(tape)
    xs = [live[n] for n in tape.inputs]
    y = live[name]
    y.backward(create_graph=True)
    total = None
    for x in xs:
        if x.name in v and x.grad is not None:
            term = (x.grad * np.asarray(v[x.name], dtype=x.dtype)).sum()
            total = term if total is None else total + term
    for x in xs:
        x.cleargrad()
    if total is not None:
        total.backward()
    return {
        x.name: (x.grad.data if x.grad is not None else np.zeros_like(x.data)).copy() for x in xs
    }


# -- gradient check ---------------------------------------------------------------------------------


@dataclass
class GradcheckResult:
    ok: bool
    errors: dict[str, float]  # worst relative error per input
    rtol: float
    output: str
    skipped: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        lines = [
            f"gradient check of {self.output}: {'ok' if self.ok else 'FAILED'} (rtol {self.rtol:g})"
        ]
        for n, e in self.errors.items():
            lines.append(
                f"  {n:<12} worst relative error {e:.3e}  {'ok' if e <= self.rtol else 'FAIL'}"
            )
        for n in self.skipped:
            lines.append(f"  {n:<12} skipped (not floating point)")
        return "\n".join(lines)


def gradcheck(
    tape: Tape,
    of: str | None = None,
    directions: int = 3,
    eps: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    progress: Any = None,
) -> GradcheckResult:
    """Compare replayed gradients with central differences computed by forward replay.

    For each input and each of ``directions`` random directions d, with a random output cotangent
    w, compare <grad, d> with (<w, f(x + eps d)> - <w, f(x - eps d)>) / (2 eps). Random directions,
    because a check of the summed output cannot fail for softmax, whose rows always sum to one.
    """
    o = interpret._resolve_output(tape, of)
    out_name = tape.name_of(o)
    rng = np.random.default_rng(seed)
    y0 = tape._value(o)
    w = rng.standard_normal(y0.shape).astype(y0.dtype)
    with np.errstate(all="ignore"):  # a non-finite gradient or value is reported as a failure
        grads = interpret.backward(tape, out_name, w)
    errors: dict[str, float] = {}
    skipped = []
    lowp = False
    for name in tape.inputs:
        x = tape._value(tape._index_of(name))
        if x.dtype.kind != "f":
            skipped.append(name)
            continue
        lowp = lowp or x.dtype.itemsize < 8
        h = eps if eps is not None else (1e-6 if x.dtype.itemsize >= 8 else 1e-2)
        errs = [0.0]
        for _ in range(directions):
            d = rng.standard_normal(x.shape)
            d /= max(np.linalg.norm(d), 1e-300)
            with np.errstate(all="ignore"):
                fp = interpret.replay(tape, {name: x + h * d}, strict=False)[out_name]
                fm = interpret.replay(tape, {name: x - h * d}, strict=False)[out_name]
            num = float(np.sum(w.astype(np.float64) * (fp.astype(np.float64) - fm)) / (2 * h))
            ana = float(np.sum(grads[name].astype(np.float64) * d))
            err = abs(num - ana) / max(abs(num), abs(ana), 1e-8)
            errs.append(err if np.isfinite(err) else float("nan"))  # a NaN gradient fails
            if progress is not None:
                progress()
        errors[name] = float(np.max(errs))  # NaN if any direction gave NaN
    tol = rtol if rtol is not None else (5e-2 if lowp else 1e-4)
    return GradcheckResult(all(e <= tol for e in errors.values()), errors, tol, out_name, skipped)


# -- drawing ------------------------------------------------------------------------------------------


def to_dot(tape: Tape, verbose: bool = True) -> str:
    """Graphviz DOT text of the tape, drawn like DeZero's plot_dot_graph: values as ellipses
    (inputs orange, constants grey), ops as blue boxes."""

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    def label(i: int) -> str:
        shape, dtype = tape._shape_dtype(i)
        text = tape.name_of(i)
        if verbose:
            text += f"\n{_short_dtype(dtype)}[{','.join(map(str, shape))}]"
        return text

    colors = {INPUT: "orange", CONST: "lightgrey"}
    lines = ["digraph tape {", "  rankdir=TB;"]
    for i, kind in enumerate(tape._kinds):
        color = colors.get(kind, "white")
        lines.append(
            f"  v{i} [label={q(label(i))}, shape=ellipse, style=filled, fillcolor={color}];"
        )
    for k in range(len(tape._entries)):
        _, op, attrs, ins, outs, _ = tape._entry(k)
        text = op
        if verbose and attrs:
            text += "\n" + ", ".join(f"{a}={v!r}" for a, v in attrs.items() if a != "index")
        lines.append(f"  f{k} [label={q(text)}, shape=box, style=filled, fillcolor=lightblue];")
        for i in ins:
            lines.append(f"  v{i} -> f{k};")
        for i in outs:
            lines.append(f"  f{k} -> v{i};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- diff ---------------------------------------------------------------------------------------------


@dataclass
class DiffResult:
    same: bool
    structural: list[str]
    first_value: dict[str, Any] | None

    def __bool__(self) -> bool:
        return self.same

    def __str__(self) -> str:
        if self.same:
            return "the tapes are the same (within tolerance)"
        lines = []
        if self.structural:
            lines.append("structure differs:")
            lines.extend(f"  {s}" for s in self.structural)
        if self.first_value is not None:
            f = self.first_value
            lines.append(
                f"first differing value: {f['value']} ({f['where']}), largest error "
                f"abs {f['max_abs']:.3e}, rel {f['max_rel']:.3e} at index {tuple(f['index'])}"
            )
            if f.get("line"):
                lines.append(f"  {f['line']}")
            if f.get("source"):
                lines.append(f"  at {f['source']}")
        return "\n".join(lines)


_MAX_STRUCTURAL = 20


def diff(a: Tape, b: Tape, rtol: float = 1e-7, atol: float = 0.0) -> DiffResult:
    """Structural differences first (ops, attributes, wiring, shapes, dtypes), then the first value
    whose numbers differ beyond ``|a - b| <= atol + rtol * |b|``, with the largest error."""
    structural: list[str] = []
    if a.inputs != b.inputs:
        structural.append(f"inputs: {a.inputs} vs {b.inputs}")
    na, nb = len(a._entries), len(b._entries)
    if na != nb:
        structural.append(f"record count: {na} vs {nb}")
    for k in range(min(na, nb)):
        _, opa, at_a, ia, oa, _ = a._entry(k)
        _, opb, at_b, ib, ob, _ = b._entry(k)
        if (opa, at_a, ia, oa) != (opb, at_b, ib, ob):
            structural.append(f"record {k}: {a.format_record(k)}  vs  {b.format_record(k)}")
        else:
            for i in ia + oa:
                if a._shape_dtype(i) != b._shape_dtype(i):
                    structural.append(
                        f"record {k}: value {a.name_of(i)} is {_sigtext(a, i)} vs {_sigtext(b, i)}"
                    )
                    break
        if len(structural) >= _MAX_STRUCTURAL:
            structural.append("... (more differences not listed)")
            break
    first = None
    if not structural:
        first = _first_value_diff(a, b, rtol, atol)
    return DiffResult(not structural and first is None, structural, first)


def _sigtext(t: Tape, i: int) -> str:
    shape, dtype = t._shape_dtype(i)
    return f"{dtype.name}{list(shape)}"


def _first_value_diff(a: Tape, b: Tape, rtol: float, atol: float) -> dict[str, Any] | None:
    def compare(i: int, where: str, k: int | None) -> dict[str, Any] | None:
        if not (a._has_value(i) and b._has_value(i)):
            return None
        x, y = a._value(i), b._value(i)
        if x.dtype.kind in "fc":
            same_nan = np.isnan(x) & np.isnan(y)
            bad = ~(np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True) | same_nan)
        else:
            bad = x != y
        if not np.any(bad):
            return None
        err = np.abs(x.astype(np.complex128 if x.dtype.kind == "c" else np.float64) - y)
        err = np.where(bad, np.nan_to_num(err, nan=np.inf), 0)
        idx = np.unravel_index(int(np.argmax(err)), err.shape) if err.ndim else ()
        rel = float(err[idx] / max(abs(float(np.abs(y[idx]))), 1e-300))
        out = {
            "value": a.name_of(i),
            "where": where,
            "record": k,
            "max_abs": float(err[idx]),
            "max_rel": rel,
            "index": [int(j) for j in idx],
            "a": _scalar(x[idx]),
            "b": _scalar(y[idx]),
        }
        if k is not None:
            _, op, _, _, _, src = a._entry(k)
            out["op"] = op
            out["line"] = a.format_record(k)
            out["source"] = _where(src)
        return out

    for i, kind in enumerate(a._kinds):
        if kind in (INPUT, CONST):
            # an input or constant that differs: named with the first record that reads it
            k = next((k for k in range(len(a._entries)) if i in a._entry(k)[3]), None)
            r = compare(i, f"{kind} value" + ("" if k is None else f" read by record {k}"), k)
            if r:
                return r
    for k in range(len(a._entries)):
        for i in a._entry(k)[4]:
            r = compare(i, f"output of record {k} ({a._entry(k)[1]})", k)
            if r:
                return r
    return None


def _scalar(v: Any) -> Any:
    v = np.asarray(v).item()
    return v if not isinstance(v, complex) else str(v)
