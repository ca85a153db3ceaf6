"""A tiny in-process run of the benchmark (tools/bench.py): W1 and W2 for tapegrad and the NumPy
floors pass the gradient check and get timed, and a library whose gradient is wrong is refused,
reported as wrong and never timed. No timing is asserted."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import bench  # noqa: E402
from bench_workloads import harness  # noqa: E402

TINY = {"W1": {"steps": 20}, "W2-f64": {"dtype": "float64"}, "W2-f32": {"dtype": "float32"}}


def tiny(key: str) -> bench.Spec:
    spec = next(s for s in bench.SPECS if s.key == key)
    return dataclasses.replace(spec, params=lambda quick: TINY[key])


def local(lib: str) -> bench.LocalWorker:
    w = bench.LocalWorker(lib, harness.Worker(lib, settle=False))
    bench.hello([w])
    return w


def config() -> bench.Config:
    return bench.Config(quick=True, rounds=2, warmup=0.0, sample=0.0)


@pytest.fixture
def wrong_lib(monkeypatch):
    """A row that runs tapegrad's W1 but reports d/da off by 0.1%."""

    def build(lib, params):
        case = harness.build("W1", "tapegrad", params)
        right = case.result

        def result():
            got = dict(right())
            got["grad:a"] = harness.to_numpy(got["grad:a"]) * 1.001
            return got

        case.result = result
        return case

    monkeypatch.setitem(harness._BUILDERS, ("W1", "tapegrad-wrong"), build)
    monkeypatch.setitem(harness.LABELS, "tapegrad-wrong", "tapegrad, wrong on purpose")
    return "tapegrad-wrong"


@pytest.mark.parametrize("key", ["W1", "W2-f64", "W2-f32"])
def test_tapegrad_and_the_floors_pass_the_check_and_are_timed(key):
    spec = tiny(key)
    workers = [local(lib) for lib in ("numpy-fwd", "numpy", "tapegrad", "tapegrad-notape")]
    result = bench.run_timed(spec, workers, config())
    for lib, row in result["rows"].items():
        assert row["status"] == "ok", (lib, row)
        assert row["check"]["ok"]
        (phase,) = row["phases"]
        assert len(row["phases"][phase]["samples"]) == 2
    text = bench.format_timed(spec, result)
    assert "tapegrad, on a tape" in text and "WRONG" not in text


def test_a_wrong_gradient_is_refused_and_never_timed(wrong_lib):
    w = harness.Worker(wrong_lib, settle=False)
    reply = w.handle({"cmd": "prepare", "workload": "W1", "params": TINY["W1"]})
    assert reply["status"] == "wrong"
    assert not reply["check"]["ok"] and reply["check"]["worst"] == "grad:a"
    assert "grad:a off by" in reply["check"]["detail"]
    for cmd in ({"cmd": "warmup", "seconds": 0, "sample_seconds": 0}, {"cmd": "sample"}):
        refused = w.handle(cmd)
        assert refused["status"] == "refused" and refused["why"] == "wrong"
        assert "times" not in refused


def test_the_runner_reports_the_wrong_row_and_times_the_others(wrong_lib):
    spec = tiny("W1")
    workers = [local("numpy"), local(wrong_lib)]
    result = bench.run_timed(spec, workers, config())
    assert result["rows"]["numpy"]["status"] == "ok"
    bad = result["rows"][wrong_lib]
    assert bad["status"] == "wrong" and "phases" not in bad
    text = bench.format_timed(spec, result)
    assert "WRONG, not timed: grad:a off by" in text
    report = {"results": {"W1": result}}
    assert bench.failed(report)  # a tapegrad row that is wrong fails the run


def test_compare_catches_nan_missing_values_and_shapes():
    ref = {"y": np.array(1.0), "grad:x": np.ones(3)}
    assert harness.compare(dict(ref), ref, 1e-9)["ok"]
    assert not harness.compare({"y": np.array(np.nan), "grad:x": np.ones(3)}, ref, 1e-9)["ok"]
    assert not harness.compare({"y": np.array(1.0)}, ref, 1e-9)["ok"]
    assert harness.compare({"y": np.array(1.0)}, ref, 1e-9, partial=True)["ok"]
    assert not harness.compare({"y": np.array(1.0), "grad:x": np.ones(4)}, ref, 1e-9)["ok"]
    exact = harness.compare({"y": np.array(1.0 + 1e-15), "grad:x": np.ones(3)}, ref, 0.0)
    assert not exact["ok"]
