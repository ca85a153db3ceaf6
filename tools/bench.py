#!/usr/bin/env python
"""Benchmark tapegrad against DeZero 0.0.13, PyTorch (CPU), HIPS autograd and two NumPy floors.

    python tools/bench.py                   # the full run (several minutes)
    python tools/bench.py --quick           # a smoke run for CI: small sizes, < 60 s
    python tools/bench.py --only W1,W2 --libs tapegrad,torch,numpy --json out.json

Workloads and targets are those of issue 5 (W1 scalar chain, W2 MLP step, W3 big elementwise,
W4 tape files, W5 memory, W6 the whole life of a tape); the workloads live in
``tools/bench_workloads``. Peers that are not installed are skipped and shown as such; install
them with ``pip install -e ".[bench]"``.

Method, because these machines are shared and noisy: every row runs in a worker process of its
own (this script with ``--worker ROW``, talking JSON lines over stdin/stdout); each case is
checked against the hand-written NumPy gradients first and a row whose numbers are wrong is not
timed; then it is warmed up, and the rows are sampled round by round in rotating order (A B C,
B C A, ...) so drift hits all alike. Each sample averages enough runs to last about
``--sample-seconds``; tables show the median of the samples, the fastest, and the spread
((max - min) / median). The garbage collector stays on. W5 runs each measurement in a fresh
process. The environment (CPU, BLAS and its OPENBLAS_* settings) is printed, never changed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):  # measure the working tree's tapegrad
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench_workloads import LIB_GROUPS, LIBS, Worker  # noqa: E402
from bench_workloads import memory as _memory  # noqa: E402
from bench_workloads.report import (  # noqa: E402
    format_environment,
    format_memory,
    format_targets,
    format_timed,
    judge_targets,
)
from bench_workloads.specs import ORDER, SPECS, W5_CALLS, W5_LIBS, Spec  # noqa: E402

__all__ = ["SPECS", "Spec", "format_timed", "run", "run_timed", "main"]


# -- workers -----------------------------------------------------------------------------------


class WorkerDied(RuntimeError):
    pass


class ProcWorker:
    """A row's worker process."""

    def __init__(self, lib: str, logdir: str):
        self.lib = lib
        self.errpath = os.path.join(logdir, f"{lib}.stderr")
        self.err = open(self.errpath, "w")
        env = dict(os.environ, MPLBACKEND=os.environ.get("MPLBACKEND", "Agg"))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", lib],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            bufsize=1,
            env=env,
        )
        self.info: dict[str, Any] = {}

    def send(self, msg: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerDied(self._tail()) from None

    def recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerDied(self._tail())
        return json.loads(line)

    def request(self, msg: dict) -> dict:
        self.send(msg)
        return self.recv()

    def _tail(self) -> str:
        self.err.flush()
        try:
            lines = Path(self.errpath).read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        code = self.proc.poll()
        return f"worker exited ({code}): " + (lines[-1] if lines else "no message")

    def close(self) -> None:
        try:
            self.send({"cmd": "exit"})
            self.proc.wait(timeout=30)
        except (WorkerDied, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.err.close()


class LocalWorker:
    """A row served in this process (tests; no isolation)."""

    def __init__(self, lib: str, worker: Worker | None = None):
        self.lib = lib
        self.worker = worker or Worker(lib)
        self.info: dict[str, Any] = {}

    def request(self, msg: dict) -> dict:
        return json.loads(json.dumps(self.worker.handle(msg), default=str))

    def close(self) -> None:
        self.worker.handle({"cmd": "drop"})


def hello(workers: list) -> None:
    for w in workers:
        if hasattr(w, "send"):
            w.send({"cmd": "hello"})
    for w in workers:
        try:
            w.info = w.recv() if hasattr(w, "send") else w.request({"cmd": "hello"})
        except WorkerDied as e:
            w.info = {"lib": w.lib, "available": False, "reason": str(e)}


# -- running -----------------------------------------------------------------------------------


@dataclass
class Config:
    quick: bool
    rounds: int
    warmup: float
    sample: float
    log: Callable[[str], None] = field(default=lambda s: None)


def summarize(values: list[float]) -> dict[str, Any]:
    med = statistics.median(values)
    return {
        "samples": values,
        "median": med,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / med if med > 0 else 0.0,
    }


def run_timed(spec: Spec, workers: list, cfg: Config) -> dict[str, Any]:
    """Check every row, warm the good ones up, sample them in rotating rounds."""
    params = spec.params(cfg.quick)
    rows: dict[str, dict[str, Any]] = {}
    active = []
    for w in workers:
        if not w.info.get("available", False):
            rows[w.lib] = {"status": "not installed", "detail": w.info.get("reason", "")}
            continue
        try:
            r = w.request({"cmd": "prepare", "workload": spec.workload, "params": params})
        except WorkerDied as e:
            w.info = {"available": False, "reason": str(e)}
            rows[w.lib] = {"status": "crashed", "detail": str(e)}
            continue
        rows[w.lib] = r
        cfg.log(f"[{spec.key}] {w.lib}: {r['status']} {r.get('detail', '')}".rstrip())
        if r["status"] == "ok":
            active.append(w)
    for w in list(active):
        try:
            r = w.request({"cmd": "warmup", "seconds": cfg.warmup, "sample_seconds": cfg.sample})
            rows[w.lib]["inner"] = r.get("inner")
            rows[w.lib]["samples"] = []
        except WorkerDied as e:
            rows[w.lib] = {"status": "crashed", "detail": str(e)}
            active.remove(w)
    for k in range(cfg.rounds):
        n = len(active)
        order = active[k % n :] + active[: k % n] if n else []
        for w in order:
            try:
                r = w.request({"cmd": "sample"})
            except WorkerDied as e:
                rows[w.lib] = {"status": "crashed", "detail": str(e)}
                active.remove(w)
                continue
            if r.get("status") != "ok":
                rows[w.lib]["status"] = r.get("status")
                rows[w.lib]["detail"] = r.get("detail")
                active.remove(w)
                continue
            times = dict(r["times"])
            if spec.loads and "read" in times:  # load = open + read
                times["load"] = times.get("open", 0.0) + times.pop("read")
            rows[w.lib]["samples"].append(times)
    for w in workers:
        if w.info.get("available"):
            try:
                w.request({"cmd": "drop"})
            except WorkerDied:
                pass
    for row in rows.values():
        samples = row.pop("samples", None)
        if row.get("status") == "ok" and samples:
            row["phases"] = {ph: summarize([s[ph] for s in samples]) for ph in samples[0]}
    return {"params": params, "rows": rows}


def run_memory(quick: bool, libs: list[str], cfg: Config) -> dict[str, Any]:
    """W5: one fresh process per measurement."""
    kept_calls, stream_calls = W5_CALLS[quick]
    out: dict[str, Any] = {"kept_calls": kept_calls, "stream_calls": stream_calls, "kept": {}}

    def measure(req: dict) -> dict:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory", json.dumps(req)]
        env = dict(os.environ, MPLBACKEND=os.environ.get("MPLBACKEND", "Agg"))
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = p.stdout.strip().splitlines()
        if p.returncode != 0 or not lines:
            tail = p.stderr.strip().splitlines()
            return {"status": "crashed", "detail": tail[-1] if tail else f"exit {p.returncode}"}
        return json.loads(lines[-1])

    for lib in W5_LIBS:
        if lib in libs:
            r = measure({"what": "kept", "lib": lib, "calls": kept_calls})
            cfg.log(f"[W5] kept {lib}: {r['status']} {r.get('detail', '')}".rstrip())
            out["kept"][lib] = r
    if "tapegrad" in libs:
        out["stream"] = measure({"what": "stream", "calls": stream_calls, "to_file": True})
        cfg.log(f"[W5] stream to a file: {out['stream']['status']}")
        out["stream_no_tape"] = measure({"what": "stream", "calls": stream_calls, "to_file": False})
    return out


# -- the environment ------------------------------------------------------------------------------


def environment(workers: list) -> dict[str, Any]:
    import numpy as np

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    blas: list[dict] | str
    try:
        from threadpoolctl import threadpool_info

        blas = [
            {k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for d in threadpool_info()
        ]
    except ImportError:
        try:
            deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            blas = f"{deps.get('name')} {deps.get('version')} (threadpoolctl not installed)"
        except Exception:
            blas = "? (threadpoolctl not installed)"
    env_vars = (
        "OPENBLAS_CORETYPE",
        "OPENBLAS_L2_SIZE",
        "OPENBLAS_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "env": {k: os.environ.get(k) for k in env_vars},
        "git": _git(),
        "libs": {w.lib: w.info for w in workers},
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "") if head else "?"
    except OSError:
        return "?"


# -- main ----------------------------------------------------------------------------------------


def select(arg: str | None, valid: list[str], groups: dict[str, tuple]) -> list[str]:
    if not arg:
        return list(valid)
    out: list[str] = []
    for name in arg.split(","):
        name = name.strip()
        hits = groups.get(name.lower()) or [v for v in valid if v.lower() == name.lower()]
        if not hits:
            raise SystemExit(f"bench: unknown name {name!r}; choose from {', '.join(groups)}")
        out.extend(h for h in hits if h not in out)
    return [v for v in valid if v in out]


def run(args: argparse.Namespace, make_worker: Callable[[str], Any] | None = None) -> dict:
    """The whole benchmark; returns what --json writes."""
    quick = args.quick
    cfg = Config(
        quick=quick,
        rounds=args.rounds or (5 if quick else 9),
        warmup=args.warmup if args.warmup is not None else (0.02 if quick else 0.5),
        sample=args.sample_seconds or (0.01 if quick else 0.15),
        log=(lambda s: print(s, file=sys.stderr, flush=True))
        if not args.silent
        else (lambda s: None),
    )
    keys = ORDER
    groups = {"w1": ("W1",), "w2": ("W2-f64", "W2-f32"), "w3": ("W3",), "w5": ("W5",)}
    groups |= {"w4": ("W4-big", "W4-small"), "w6": ("W6",)}
    keys = select(args.only, ORDER, groups)
    libs = select(args.libs, list(LIBS), LIB_GROUPS)

    timed = [s for s in SPECS if s.key in keys]
    needed = [lib for lib in LIBS if lib in libs and any(lib in s.libs for s in timed)]
    needed += [lib for lib in ("torch",) if lib in libs and lib not in needed]  # versions
    logdir = tempfile.mkdtemp(prefix="tapegrad-bench-logs-")
    workers = [(make_worker or (lambda lib: ProcWorker(lib, logdir)))(lib) for lib in needed]
    try:
        hello(workers)
        env = environment(workers)
        print(format_environment(env, cfg), flush=True)
        results: dict[str, Any] = {}
        for key in keys:
            t0 = time.perf_counter()
            if key == "W5":
                results["W5"] = run_memory(quick, libs, cfg)
                print("\n" + format_memory(results["W5"]), flush=True)
            else:
                spec = next(s for s in SPECS if s.key == key)
                ws = [w for w in workers if w.lib in spec.libs]
                results[key] = run_timed(spec, ws, cfg)
                print("\n" + format_timed(spec, results[key]), flush=True)
            cfg.log(f"[{key}] done in {time.perf_counter() - t0:.1f} s")
        targets = judge_targets(results)
        print("\n" + format_targets(targets), flush=True)
    finally:
        for w in workers:
            w.close()
        shutil.rmtree(logdir, ignore_errors=True)
    report = {
        "environment": env,
        "config": {k: v for k, v in vars(cfg).items() if k != "log"},
        "results": results,
        "targets": targets,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        cfg.log(f"wrote {args.json}")
    return report


def failed(report: dict) -> bool:
    """Whether a tapegrad row came out wrong, crashed or raised (peers only get reported)."""
    for r in report["results"].values():
        rows = r.get("kept", r.get("rows", {}))
        for lib, row in rows.items():
            if lib.startswith("tapegrad") and row.get("status") in ("wrong", "error", "crashed"):
                return True
    return False


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, few samples (CI smoke)")
    p.add_argument("--json", metavar="OUT", help="write every sample and the environment here")
    p.add_argument("--only", help="workloads, e.g. W1,W2 (W2 is float64 and float32; W4 both)")
    p.add_argument("--libs", help="tapegrad,dezero,torch,autograd,numpy (default: all)")
    p.add_argument("--rounds", type=int, help="samples per row (default 9, quick 5)")
    p.add_argument("--sample-seconds", type=float, help="length of one sample")
    p.add_argument("--warmup", type=float, help="warm-up seconds per row")
    p.add_argument("--silent", action="store_true", help="no progress on stderr")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--memory", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        from bench_workloads.harness import serve

        serve(args.worker)
        return 0
    if args.memory:
        _memory.main(args.memory)
        return 0
    # a terminated run still stops its workers and removes its files (see run's finally)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return 1 if failed(run(args)) else 0


if __name__ == "__main__":
    sys.exit(main())
