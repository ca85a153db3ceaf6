"""The bench harness: cases, the gradient check, and the worker that serves the runner.

A *case* is one workload prepared for one library: named phases to time (run in this order on every
run), the values it computed (output and gradients) and the reference they must match. The worker
checks a case once, before anything is timed, and refuses to time a case whose numbers are wrong.

Invariants:
- The reference of every compute workload is the hand-written NumPy forward and backward, in
  float64; a float32 case is compared with it at a float32 tolerance.
- Inputs are made from fixed seeds, so every worker builds the same numbers on its own.
- A worker talks one JSON object per line; anything a library prints goes to stderr.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# Row names, in the order the tables list them.
LIBS = ("numpy-fwd", "numpy", "tapegrad", "tapegrad-notape", "dezero", "torch", "autograd")
LABELS = {
    "numpy-fwd": "numpy forward only (floor)",
    "numpy": "numpy fwd+bwd by hand (floor)",
    "tapegrad": "tapegrad, on a tape",
    "tapegrad-notape": "tapegrad, no tape",
    "dezero": "DeZero 0.0.13",
    "torch": "PyTorch CPU",
    "autograd": "HIPS autograd",
}
# What each --libs name selects.
LIB_GROUPS = {
    "numpy": ("numpy-fwd", "numpy"),
    "tapegrad": ("tapegrad", "tapegrad-notape"),
    "dezero": ("dezero",),
    "torch": ("torch",),
    "pytorch": ("torch",),
    "autograd": ("autograd",),
}
_PIP = {"dezero": "dezero==0.0.13 matplotlib", "torch": "torch==2.13.0", "autograd": "autograd"}

RTOL = {"float64": 1e-9, "float32": 1e-4}
SEED = 20240611


class Unavailable(Exception):
    """The library, or the feature of it that a case needs, is not installed or not importable."""


@dataclass
class Case:
    """One workload prepared for one library."""

    phases: dict[str, Callable[[], Any]]  # timed, in order, on every run
    result: Callable[[], dict[str, Any]]  # what the last run computed: output and gradients
    reference: Callable[[], dict[str, Any]]  # what it must equal
    rtol: float  # allowed max|got - ref| / max|ref|, per value; 0 means bit for bit
    calls: int = 1  # recorded calls per run (for per-call numbers)
    partial: bool = False  # a forward-only floor: checks only the keys it has
    reset: Callable[[], None] | None = None  # untimed, before each run
    cleanup: Callable[[], None] | None = None  # on drop
    info: dict[str, Any] = field(default_factory=dict)  # facts reported with the results
    facts: Callable[[], dict[str, Any]] | None = None  # more facts, gathered after the check run


_BUILDERS: dict[tuple[str, str], Callable[[str, dict], Case]] = {}


def builder(workload: str, *libs: str) -> Callable:
    """Register ``fn(lib, params) -> Case`` for ``workload`` on each of ``libs``."""

    def deco(fn: Callable[[str, dict], Case]) -> Callable[[str, dict], Case]:
        for lib in libs:
            _BUILDERS[(workload, lib)] = fn
        return fn

    return deco


def has_case(workload: str, lib: str) -> bool:
    return (workload, lib) in _BUILDERS


def build(workload: str, lib: str, params: dict) -> Case:
    return _BUILDERS[(workload, lib)](lib, params)


# -- libraries ----------------------------------------------------------------------------------


def import_lib(lib: str) -> Any:
    """Import what row ``lib`` runs on; ``Unavailable`` if it is not installed."""
    try:
        if lib.startswith("numpy"):
            return np
        if lib.startswith("tapegrad"):
            return importlib.import_module("tapegrad")
        if lib == "dezero":
            if not hasattr(np, "int"):
                np.int = int  # DeZero 0.0.13 uses np.int, removed in NumPy 2
            os.environ.setdefault("MPLBACKEND", "Agg")  # it imports matplotlib
            return importlib.import_module("dezero")
        if lib == "torch":
            return importlib.import_module("torch")
        if lib == "autograd":
            return importlib.import_module("autograd")
    except ImportError as e:
        raise Unavailable(f"not installed ({e}); pip install {_PIP.get(lib, lib)}") from None
    raise ValueError(f"unknown library {lib!r}; rows are {', '.join(LIBS)}")


def lib_info(lib: str) -> dict[str, Any]:
    """Version and settings of a row's library (``available: False`` with the reason if absent)."""
    try:
        mod = import_lib(lib)
    except Unavailable as e:
        return {"lib": lib, "available": False, "reason": str(e)}
    version = getattr(mod, "__version__", None) or _dist_version(lib)
    info: dict[str, Any] = {"lib": lib, "available": True, "version": version}
    if lib == "torch":
        info["threads"] = mod.get_num_threads()
        blas = re.search(r"BLAS_INFO=(\w+)", mod.__config__.show())
        info["blas"] = blas.group(1) if blas else "?"
    return info


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


# -- checking -----------------------------------------------------------------------------------


def to_numpy(v: Any) -> np.ndarray:
    """An output or gradient of any library as an ndarray."""
    if hasattr(v, "detach"):  # torch
        v = v.detach().cpu().numpy()
    elif hasattr(v, "data") and isinstance(getattr(v, "data", None), np.ndarray):  # Variables
        v = v.data
    return np.asarray(v)


def compare(got: dict, ref: dict, rtol: float, partial: bool = False) -> dict[str, Any]:
    """``ok`` when every reference value is matched within ``rtol`` (relative to its largest
    magnitude); ``worst`` names the value furthest off and ``max_err`` its error."""
    worst, max_err, problems = None, 0.0, []
    for key, r in ref.items():
        if key not in got:
            if not partial:
                problems.append(f"{key} missing")
            continue
        g, r = to_numpy(got[key]), np.asarray(r)
        if g.shape != r.shape:
            problems.append(f"{key} has shape {g.shape}, expected {r.shape}")
            continue
        if rtol == 0:
            err = 0.0 if np.array_equal(g, r) else float("inf")
        else:
            scale = float(np.max(np.abs(r))) if r.size else 0.0
            diff = float(np.max(np.abs(g.astype(np.float64) - r))) if r.size else 0.0
            err = diff / scale if scale > 0 else diff
            if not np.isfinite(err):
                err = float("inf")
        if err > max_err or worst is None:
            worst, max_err = key, max(err, max_err)
        if not err <= rtol:
            problems.append(f"{key} off by {err:.2g} (tolerance {rtol:.0e})")
    ok = not problems
    return {
        "ok": ok,
        "max_err": max_err,
        "worst": worst,
        "detail": "matches the reference" if ok else "; ".join(problems),
    }


def check(case: Case) -> dict[str, Any]:
    """Run the case once and compare what it computed with its reference."""
    run_once(case)
    return compare(case.result(), case.reference(), case.rtol, case.partial)


# -- timing ------------------------------------------------------------------------------------


def run_once(case: Case) -> dict[str, float]:
    if case.reset is not None:
        case.reset()
    times = {}
    clock = time.perf_counter
    for name, fn in case.phases.items():
        t0 = clock()
        fn()
        times[name] = clock() - t0
    return times


def sample(case: Case, inner: int) -> dict[str, float]:
    """Seconds per run of each phase, averaged over ``inner`` runs (gc stays on)."""
    total = dict.fromkeys(case.phases, 0.0)
    for _ in range(inner):
        for name, t in run_once(case).items():
            total[name] += t
    return {name: t / inner for name, t in total.items()}


def warm_up(case: Case, seconds: float, sample_seconds: float) -> int:
    """Run the case for ``seconds`` (at least once); return the runs per sample that make one
    sample last about ``sample_seconds`` (judged by the median run, so one stall does not
    shrink every sample)."""
    runs: list[float] = []
    while not runs or sum(runs) < seconds:
        runs.append(sum(run_once(case).values()))
    runs.sort()
    per_run = runs[len(runs) // 2]
    return max(1, round(sample_seconds / per_run)) if per_run > 0 else 1


def quiesce(limit: float = 2.0, interval: float = 0.005) -> float:
    """Wait until this process's threads stop using the CPU; return the seconds waited.

    BLAS and OpenMP thread pools spin for a while after a call (OpenBLAS here: about 0.13 s).
    Workers take turns on a machine with few cores, so a worker answers only once its pools
    have gone to sleep: otherwise they would slow down the next worker's sample.
    """
    t0 = time.monotonic()
    last = time.process_time()  # CPU time of every thread of this process
    while time.monotonic() - t0 < limit:
        time.sleep(interval)
        now = time.process_time()
        if now - last < interval * 0.2:
            break
        last = now
    return time.monotonic() - t0


# -- the worker --------------------------------------------------------------------------------


class Worker:
    """Serves one row: prepares and checks a case, warms it up, times samples on request."""

    def __init__(self, lib: str, settle: bool = True):
        self.lib = lib
        self.settle = settle  # wait for this process's thread pools to sleep before answering
        self.case: Case | None = None
        self.inner = 1
        self.refused: dict[str, Any] | None = None

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        reply = self._handle(msg)
        if self.settle and msg["cmd"] in ("prepare", "warmup", "sample"):
            quiesce()
        return reply

    def _handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        cmd = msg["cmd"]
        try:
            if cmd == "hello":
                return lib_info(self.lib)
            if cmd == "prepare":
                return self._prepare(msg["workload"], msg.get("params", {}))
            if cmd == "warmup":
                if self.case is None:
                    return self._refusal()
                self.inner = warm_up(self.case, msg["seconds"], msg["sample_seconds"])
                return {"status": "ok", "inner": self.inner}
            if cmd == "sample":
                if self.case is None:
                    return self._refusal()
                return {"status": "ok", "times": sample(self.case, self.inner), "inner": self.inner}
            if cmd == "drop":
                self._drop()
                return {"status": "ok"}
        except Exception as e:  # reported to the runner, which shows it in the table
            self._drop()
            self.refused = {"status": "error", "detail": f"{type(e).__name__}: {e}"}
            return dict(self.refused)
        return {"status": "error", "detail": f"unknown command {cmd!r}"}

    def _prepare(self, workload: str, params: dict) -> dict[str, Any]:
        self._drop()
        if not has_case(workload, self.lib):
            return {"status": "n/a"}
        try:
            case = build(workload, self.lib, params)
        except Unavailable as e:
            return {"status": "unavailable", "detail": str(e)}
        try:
            chk = check(case)
            if chk["ok"] and case.facts is not None:
                case.info.update(case.facts())
        except BaseException:
            if case.cleanup is not None:
                case.cleanup()
            raise
        reply = {
            "calls": case.calls,
            "phase_names": list(case.phases),
            "check": chk,
            "info": case.info,
        }
        if not chk["ok"]:
            if case.cleanup is not None:
                case.cleanup()
            self.refused = {"status": "wrong", "detail": chk["detail"]}
            return {"status": "wrong", **reply}
        self.case, self.refused = case, None
        return {"status": "ok", **reply}

    def _refusal(self) -> dict[str, Any]:
        r = self.refused or {"status": "error", "detail": "no case prepared"}
        return {**r, "status": "refused", "why": r["status"]}

    def _drop(self) -> None:
        case, self.case = self.case, None
        if case is not None and case.cleanup is not None:
            case.cleanup()
        del case
        gc.collect()


def serve(lib: str) -> None:
    """The worker process: JSON requests on stdin, JSON replies on the original stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the protocol
    worker = Worker(lib)
    try:
        for line in sys.stdin:
            msg = json.loads(line)
            if msg["cmd"] == "exit":
                break
            proto.write(json.dumps(worker.handle(msg), default=_jsonable) + "\n")
    finally:  # also when the runner is gone (end of input): remove the case's files
        worker._drop()


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def rng(offset: int = 0) -> np.random.Generator:
    return np.random.default_rng(SEED + offset)
