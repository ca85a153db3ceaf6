"""The printed report of tools/bench.py: environment header, one table per workload, W5's
memory table, and issue 5's targets judged from the results.

Ratios between rows are medians of per-round ratios: the rows of one round ran close together in
time, so drift on a shared machine cancels out of them.
"""

from __future__ import annotations

import statistics
from typing import Any

from .harness import LABELS
from .specs import MB, SPECS, Spec


def format_environment(env: dict[str, Any], cfg: Any) -> str:
    lines = [
        f"tapegrad benchmark ({'quick' if cfg.quick else 'full'} run), {env['date']}",
        f"command: {env['command']}",
        f"machine: {env['cpu']}, {env['cores']} cores ({env['usable_cores']} usable), "
        f"{env['system']}, load average at start {' '.join(f'{x:.2f}' for x in env['loadavg'] or [])}",
        f"python {env['python']}, numpy {env['numpy']}",
    ]
    if isinstance(env["blas"], list):
        for b in env["blas"]:
            lines.append(
                f"numpy BLAS: {b['internal_api']} {b['version']}, kernel {b['architecture']}, "
                f"{b['num_threads']} threads"
            )
    else:
        lines.append(f"numpy BLAS: {env['blas']}")
    lines.append(
        "environment (as found, not changed): "
        + ", ".join(f"{k}={v if v is not None else 'unset'}" for k, v in env["env"].items())
    )
    libs = []
    for lib in ("tapegrad", "dezero", "torch", "autograd"):
        info = env["libs"].get(lib)
        if info is None:
            continue
        if not info.get("available"):
            libs.append(f"{lib}: not installed")
            continue
        extra = f" ({info['threads']} threads, BLAS {info['blas']})" if lib == "torch" else ""
        where = f" at {env['git']}" if lib == "tapegrad" else ""
        libs.append(f"{lib} {info['version']}{where}{extra}")
    lines.append("libraries: " + "; ".join(libs))
    lines.append(
        f"method: a worker process per row, gradients checked first, {cfg.rounds} interleaved "
        f"rounds, samples of ~{cfg.sample * 1e3:.0f} ms, gc on; median / min / spread "
        "(max-min)/median"
    )
    return "\n".join(lines)


# -- tables ------------------------------------------------------------------------------------


def num(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def times(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def check_text(row: dict[str, Any]) -> str:
    st = row.get("status")
    chk = row.get("check") or {}
    if st == "ok":
        if chk.get("max_err", 0) == 0:
            return "ok (exact)"
        return f"ok (err {chk['max_err']:.0e})"
    if st == "wrong" or row.get("why") == "wrong":
        return f"WRONG, not timed: {chk.get('detail') or row.get('detail')}"
    if st == "not installed":
        return "not installed"
    if st == "unavailable":
        return f"unavailable: {row.get('detail')}"
    return f"{str(st).upper()}: {row.get('detail')}"


def median_of(result: dict, lib: str, phase: str, spec: Spec) -> float | None:
    row = result["rows"].get(lib) or {}
    ph = (row.get("phases") or {}).get(phase)
    if ph is None:
        return None
    return spec.show(ph["median"], row.get("calls") or 1)


def relative(result: dict, lib: str, ref: str, phase: str, spec: Spec) -> float | None:
    """Row ``lib`` over row ``ref``: the median of the per-round ratios (rows of one round ran
    close together in time, so drift cancels), or the ratio of medians if rounds are missing."""
    rows = result["rows"]
    a = ((rows.get(lib) or {}).get("phases") or {}).get(phase)
    b = ((rows.get(ref) or {}).get("phases") or {}).get(phase)
    if a is None or b is None:
        return None
    ca, cb = rows[lib].get("calls") or 1, rows[ref].get("calls") or 1
    if len(a["samples"]) == len(b["samples"]):
        pairs = zip(a["samples"], b["samples"])
        return statistics.median(spec.show(x, ca) / spec.show(y, cb) for x, y in pairs)
    return spec.show(a["median"], ca) / spec.show(b["median"], cb)


def format_timed(spec: Spec, result: dict[str, Any]) -> str:
    unit = f"{spec.unit}/call" if spec.per_call else f"{spec.unit}/run"
    head = spec.title
    p = result["params"]
    calls = next((r.get("calls") for r in result["rows"].values() if r.get("calls")), None)
    if spec.per_call and calls:
        head += f", {calls} recorded calls"
    if "n" in p:
        head += f", {p['n']}x{p['n']}"
    if "mb" in p:
        head += f", {p['mb']} MB"
    if "records" in p:
        head += f", {p['records']:,} records"
    cols = ["library", unit, "min", "spread"]
    if spec.rate:
        cols.append(spec.rate[1])
    if spec.floor:
        cols.append(f"x {spec.floor}")
    if spec.vs_torch:
        cols.append("x torch")
    cols.append("check")
    table = [cols]
    for lib, row in result["rows"].items():
        label = LABELS.get(lib, lib)
        if spec.key.startswith("W4") and lib == "numpy":
            label = "np.save / np.load (floor)"
        phases = row.get("phases")
        if not phases:
            if row.get("status") != "n/a":
                table.append([label, "-", "-", "-"] + ["-"] * (len(cols) - 5) + [check_text(row)])
            continue
        for ph, st in phases.items():
            name = label if len(phases) == 1 else f"{label}: {ph}"
            c = row.get("calls") or 1
            med = spec.show(st["median"], c)
            line = [name, num(med), num(spec.show(st["min"], c)), f"{st['spread'] * 100:.0f}%"]
            if spec.rate:
                amount = (row.get("info") or {}).get(spec.rate[0])
                scale = MB if spec.rate[1] == "MB/s" else 1
                line.append(num(amount / scale / st["median"]) if amount else "-")
            if spec.floor:
                line.append(times(relative(result, lib, spec.floor, ph, spec)))
            if spec.vs_torch:
                line.append(times(relative(result, lib, "torch", ph, spec)))
            line.append(check_text(row))
            table.append(line)
    return head + "\n" + render(table)


def format_memory(mem: dict[str, Any]) -> str:
    out = [f"W5 memory: a W1 chain of {mem['kept_calls']:,} calls kept alive (peak RSS growth)"]
    cols = ["library", "bytes/call", "peak MB", "x numpy", "x torch", "check"]
    table = [cols]
    kept = mem["kept"]

    def bpc(lib):
        r = kept.get(lib) or {}
        return r.get("bytes_per_call") if r.get("status") == "ok" else None

    for lib, r in kept.items():
        if r.get("status") == "ok":
            note = f" ({r['note']})" if r.get("note") else ""
            table.append(
                [
                    LABELS.get(lib, lib),
                    num(r["bytes_per_call"]),
                    num((r["peak_bytes"] - r["baseline_bytes"]) / MB),
                    ratio(r["bytes_per_call"], bpc("numpy")),
                    ratio(r["bytes_per_call"], bpc("torch")),
                    f"ok{note}",
                ]
            )
        else:
            table.append([LABELS.get(lib, lib), "-", "-", "-", "-", check_text(r)])
    out.append(render(table))
    for key, what in (("stream", "tapegrad.record(path)"), ("stream_no_tape", "no tape")):
        s = mem.get(key)
        if s is None:
            continue
        if s.get("status") != "ok":
            out.append(f"W5 streaming with {what}: {check_text(s)}")
            continue
        extra = f", file {s['file_bytes'] / MB:.1f} MB" if "file_bytes" in s else ""
        out.append(
            f"W5 streaming {s['calls']:,} calls with {what}: RSS growth "
            f"{s['growth_bytes'] / MB:.1f} MB while recording, "
            f"{s['after_close_bytes'] / MB:.1f} MB after the block, "
            f"{s['calls_per_second']:,.0f} calls/s{extra}"
        )
    return "\n".join(out)


def render(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    lines = []
    for r in table:
        cells = [
            r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i]) for i in range(len(widths))
        ]
        lines.append("  " + "  ".join(cells) + "  " + r[-1])
    return "\n".join(lines)


# -- targets -------------------------------------------------------------------------------------


def judge_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's targets for tapegrad on a tape, from this run's medians."""
    out = []

    def add(name, value, limit, kind, text, unit=""):
        if value is None:
            out.append({"target": name, "status": "not judged", "measured": text})
            return
        met = value <= limit if kind == "max" else value >= limit
        if kind == "max":
            by = (value / limit - 1) * 100
            how = f"{abs(by):.0f}% {'under' if met else 'over'} the limit"
        else:
            by = (value / limit - 1) * 100
            how = f"{abs(by):.0f}% {'above' if met else 'below'} the floor"
        out.append(
            {
                "target": name,
                "status": "met" if met else "MISSED",
                "value": value,
                "limit": limit,
                "measured": f"{text} ({how})",
            }
        )

    def med(key, lib, phase="step"):
        r = results.get(key)
        if r is None:
            return None
        spec = next(s for s in SPECS if s.key == key)
        return median_of(r, lib, phase, spec)

    def rel(key, lib, ref, phase="step"):
        spec = next(s for s in SPECS if s.key == key)
        return relative(results[key], lib, ref, phase, spec)

    if "W1" in results:
        tg, pt = med("W1", "tapegrad"), med("W1", "torch")
        v = rel("W1", "tapegrad", "torch")
        add(
            "W1 per call on a tape <= 0.75x PyTorch",
            v,
            0.75,
            "max",
            f"{num(tg)} us vs PyTorch {num(pt)} us = {v:.2f}x"
            if v
            else _why(results["W1"]["rows"], "tapegrad", "torch"),
        )
    if "W2-f64" in results:
        tg, fl = med("W2-f64", "tapegrad"), med("W2-f64", "numpy")
        v = rel("W2-f64", "tapegrad", "numpy")
        add(
            "W2 MLP step float64 <= 1.1x hand-written NumPy",
            v,
            1.1,
            "max",
            f"{num(tg)} us vs {num(fl)} us = {v:.2f}x"
            if v
            else _why(results["W2-f64"]["rows"], "tapegrad", "numpy"),
        )
    if "W3" in results:
        tg, fl = med("W3", "tapegrad"), med("W3", "numpy-fwd")
        hand = rel("W3", "numpy", "numpy-fwd")
        v = rel("W3", "tapegrad", "numpy-fwd")
        note = f"; the hand-written fwd+bwd floor itself is {hand:.2f}x" if hand else ""
        n = results["W3"]["params"]["n"]
        add(
            f"W3 {n}x{n} chain <= 1.6x NumPy forward",
            v,
            1.6,
            "max",
            f"{num(tg)} ms vs {num(fl)} ms = {v:.2f}x{note}"
            if v
            else _why(results["W3"]["rows"], "tapegrad", "numpy-fwd"),
        )
    if "W4-big" in results:
        r = results["W4-big"]["rows"]
        tg, fl = med("W4-big", "tapegrad", "save"), med("W4-big", "numpy", "save")
        v = rel("W4-big", "numpy", "tapegrad", "save")
        mb = results["W4-big"]["params"]["mb"]
        add(
            f"W4 save {mb} MB >= 0.7x np.save throughput",
            v,
            0.7,
            "min",
            f"{num(tg)} ms vs np.save {num(fl)} ms = {v:.2f}x its throughput"
            if v
            else _why(r, "tapegrad", "numpy"),
        )
        fs = med("W4-big", "numpy", "save+fsync")
        if v and fs:
            out.append(
                {
                    "target": f"W4 save {mb} MB against np.save with an fsync (no target; the "
                    f"durability tapegrad's save gives)",
                    "status": "info",
                    "measured": f"{num(tg)} ms vs {num(fs)} ms = {fs / tg:.2f}x its throughput",
                }
            )
        tl, fll = med("W4-big", "tapegrad", "load"), med("W4-big", "numpy", "load")
        vl = rel("W4-big", "numpy", "tapegrad", "load")
        if vl:
            out.append(
                {
                    "target": f"W4 load {mb} MB (no target; np.load for scale)",
                    "status": "info",
                    "measured": f"{num(tl)} ms vs np.load {num(fll)} ms = {vl:.2f}x its throughput",
                }
            )
        info = (r.get("tapegrad") or {}).get("info") or {}
        read = info.get("open_read_bytes")
        payload = info.get("payload_bytes")
        if read is not None and payload:
            out.append(
                {
                    "target": "W4 open without reading the payload",
                    "status": "met" if read < 0.01 * payload else "MISSED",
                    "measured": f"tapegrad.load read {read:,} bytes of a {payload / MB:.0f} MB payload",
                }
            )
        else:
            out.append(
                {
                    "target": "W4 open without reading the payload",
                    "status": "not judged",
                    "measured": _why(r, "tapegrad"),
                }
            )
    if "W4-small" in results:
        r = results["W4-small"]["rows"]
        n = results["W4-small"]["params"]["records"]
        for phase in ("save", "load"):
            ms = med("W4-small", "tapegrad", phase)
            v = n / (ms / 1e3) if ms else None
            add(
                f"W4 {n:,} small records: {phase} >= 200,000 records/s",
                v,
                200_000,
                "min",
                f"{v:,.0f} records/s" if v else _why(r, "tapegrad"),
            )
    mem = results.get("W5")
    if mem:
        k = mem["kept"].get("tapegrad") or {}
        v = k.get("bytes_per_call") if k.get("status") == "ok" else None
        add(
            "W5 bytes per kept call <= 400",
            v,
            400,
            "max",
            f"{v:.0f} bytes/call" if v else check_text(k) if k else "not run",
        )
        s = mem.get("stream") or {}
        v = s.get("growth_bytes") / MB if s.get("status") == "ok" else None
        add(
            f"W5 streaming {mem['stream_calls']:,} calls: RSS growth < 100 MB",
            v,
            100,
            "max",
            f"{v:.1f} MB" if v is not None else check_text(s) if s else "not run",
        )
    return out


def _why(rows: dict, *libs: str) -> str:
    """Why a comparison of ``libs`` could not be made: the first row that is missing or bad."""
    for lib in libs:
        row = rows.get(lib)
        if row is None:
            return f"{LABELS.get(lib, lib)}: not run (see --libs)"
        if row.get("status") != "ok" or not row.get("phases"):
            return f"{LABELS.get(lib, lib)}: {check_text(row)}"
    return "no comparable samples"


def format_targets(targets: list[dict[str, Any]]) -> str:
    lines = ["Targets of issue 5 (tapegrad on a tape):"]
    for t in targets:
        lines.append(f"  [{t['status']}] {t['target']}: {t['measured']}")
    return "\n".join(lines)
