"""W5 memory: bytes per recorded call of a W1 chain kept alive, and RSS while streaming a long
recording to a file. Each measurement runs in a fresh process of its own (see ``main``).

Peak RSS is read from ``VmHWM`` in /proc/self/status after resetting it (``clear_refs``), so the
peak is that of the measured part alone; where the reset is refused, ``ru_maxrss`` stands in and
the result says so. The baseline is the RSS after a small warm-up chain (code paths imported,
allocator pools made) and a ``gc.collect()``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import sys
import time
from typing import Any, Callable

import numpy as np

from . import chain
from .harness import RTOL, Unavailable, compare, import_lib

STREAM_SEGMENT = 1000  # chain steps per segment; each segment's graph is freed after it


def rss() -> dict[str, int]:
    """Current (``rss``) and peak (``hwm``) resident set size in bytes."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key = "rss" if line.startswith("VmRSS") else "hwm"
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    if "hwm" not in out:
        out["hwm"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.setdefault("rss", out["hwm"])
    return out


def reset_peak() -> bool:
    """Reset the kernel's peak RSS of this process (Linux ``clear_refs``); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- a chain of `steps` kept alive, per library: build(steps) -> (keep, finish) -----------------
# `keep` holds the graph (and tape); `finish()` runs the backward and returns what W1 checks.


def _tapegrad(tape: bool) -> Callable:
    def build(steps: int):
        tg = import_lib("tapegrad")
        import tapegrad.functions as F

        x, a, b = chain.tapegrad_leaves()
        tanh = F.tanh
        with tg.record() if tape else contextlib.nullcontext() as t:
            y = x
            for _ in range(steps):
                y = tanh(y * a + b)

        def finish():
            y.backward()
            return {"y": y.data, "grad:x": x.grad, "grad:a": a.grad, "grad:b": b.grad}

        return (t, y), finish

    return build


def _dezero(steps: int):
    dz = import_lib("dezero")
    x, a, b = (dz.Variable(np.array(v)) for v in (chain.X0, chain.A0, chain.B0))
    tanh = dz.functions.tanh
    y = x
    for _ in range(steps):
        y = tanh(y * a + b)

    def finish():
        y.backward()
        return {"y": y.data, "grad:x": x.grad, "grad:a": a.grad, "grad:b": b.grad}

    return y, finish


def _torch(steps: int):
    torch = import_lib("torch")
    x, a, b = (
        torch.tensor(v, dtype=torch.float64, requires_grad=True)
        for v in (chain.X0, chain.A0, chain.B0)
    )
    y = x
    for _ in range(steps):
        y = torch.tanh(y * a + b)

    def finish():
        y.backward()
        return {"y": y.detach(), "grad:x": x.grad, "grad:a": a.grad, "grad:b": b.grad}

    return y, finish


def _autograd(steps: int):
    """autograd keeps its graph only inside the call: its peak is forward and backward."""
    y, (gx, ga, gb) = chain.autograd_chain(steps)(
        np.array(chain.X0), np.array(chain.A0), np.array(chain.B0)
    )
    return None, lambda: {"y": y, "grad:x": gx, "grad:a": ga, "grad:b": gb}


def _numpy(steps: int):
    a = np.array(chain.A0)
    ys = chain.hand_forward(np.array(chain.X0), a, np.array(chain.B0), steps)

    def finish():
        gx, ga, gb = chain.hand_backward(ys, a)
        return {"y": ys[-1], "grad:x": gx, "grad:a": ga, "grad:b": gb}

    return ys, finish


KEPT = {
    "numpy": _numpy,
    "tapegrad": _tapegrad(True),
    "tapegrad-notape": _tapegrad(False),
    "dezero": _dezero,
    "torch": _torch,
    "autograd": _autograd,
}
NOTES = {
    "autograd": "peak inside value_and_grad (its graph lives only there)",
    "numpy": "the list of y values the hand-written backward reads",
}


def kept(lib: str, calls: int) -> dict[str, Any]:
    """Bytes per recorded call of a chain of about ``calls`` calls, kept alive."""
    build = KEPT[lib]
    steps = calls // chain.CALLS_PER_STEP
    keep, finish = build(100)  # warm-up: import and run every code path once
    finish()
    del keep, finish
    gc.collect()
    base = rss()["rss"]
    exact = reset_peak()
    t0 = time.perf_counter()
    keep, finish = build(steps)
    seconds = time.perf_counter() - t0
    now = rss()
    peak = now["hwm"] if exact else max(now["hwm"], now["rss"])
    n = steps * chain.CALLS_PER_STEP
    chk = compare(finish(), chain.reference(steps), RTOL["float64"])
    del keep, finish
    return {
        "lib": lib,
        "status": "ok" if chk["ok"] else "wrong",
        "check": chk,
        "calls": n,
        "baseline_bytes": base,
        "peak_bytes": peak,
        "kept_bytes": now["rss"] - base,
        "bytes_per_call": (peak - base) / n,
        "build_seconds": seconds,
        "peak_exact": exact,
        "note": NOTES.get(lib, ""),
    }


def stream(calls: int, to_file: bool) -> dict[str, Any]:
    """RSS growth while recording about ``calls`` calls with ``record(path)`` (``to_file``), or
    with no tape at all (the same loop's own growth, for comparison)."""
    import tempfile

    tg = import_lib("tapegrad")
    import tapegrad.functions as F

    x, a, b = chain.tapegrad_leaves()
    tanh = F.tanh
    steps = calls // chain.CALLS_PER_STEP
    d = tempfile.mkdtemp(prefix="tapegrad-bench-")
    path = os.path.join(d, "stream.tape")
    try:

        def run(n_steps: int, path: str | None) -> int:
            top = 0
            with tg.record(path) if path else contextlib.nullcontext():
                done = 0
                while done < n_steps:
                    y = x
                    k = min(STREAM_SEGMENT, n_steps - done)
                    for _ in range(k):
                        y = tanh(y * a + b)
                    done += k
                    del y
                    top = max(top, rss()["rss"])
                top = max(top, rss()["hwm"])
            return top

        run(100, os.path.join(d, "warm.tape") if to_file else None)
        gc.collect()
        base = rss()["rss"]
        exact = reset_peak()
        t0 = time.perf_counter()
        top = run(steps, path if to_file else None)
        seconds = time.perf_counter() - t0
        after = rss()["rss"]
        n = steps * chain.CALLS_PER_STEP
        out: dict[str, Any] = {
            "mode": "file" if to_file else "no tape",
            "calls": n,
            "baseline_bytes": base,
            "growth_bytes": top - base,
            "after_close_bytes": after - base,
            "seconds": seconds,
            "calls_per_second": n / seconds,
            "peak_exact": exact,
            "status": "ok",
        }
        if to_file:
            out["file_bytes"] = os.path.getsize(path)
            got = len(tg.load(path))
            if got != n:
                out["status"] = "wrong"
                out["check"] = {"detail": f"the file holds {got} records, {n} were made"}
        return out
    finally:
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def main(spec: str) -> None:
    """Run one measurement described by JSON ``spec`` and print its result as one JSON line."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    req = json.loads(spec)
    try:
        if req["what"] == "kept":
            out = kept(req["lib"], req["calls"])
        else:
            out = stream(req["calls"], req["to_file"])
    except (Unavailable, ImportError) as e:
        status = "not installed" if str(e).startswith("not installed") else "unavailable"
        out = {"status": status, "detail": str(e)}
    except Exception as e:  # reported in the table
        out = {"status": "error", "detail": f"{type(e).__name__}: {e}"}
    proto.write(json.dumps(out) + "\n")
    proto.flush()
    sys.stdout.flush()
