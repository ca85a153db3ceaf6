"""What tools/bench.py runs: the timed workloads, their sizes (full and --quick) and how each
is shown (unit, per call or per run, the floor it is divided by, a rate column)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .harness import LIBS

ALL = LIBS
MB = 1 << 20


@dataclass
class Spec:
    """How one timed workload is run and shown."""

    key: str
    workload: str  # the builders' name
    title: str
    libs: tuple[str, ...]
    params: Callable[[bool], dict]  # quick -> params
    unit: str  # "us" or "ms"
    per_call: bool = False  # divide by the recorded calls of a run
    floor: str | None = None  # the row every other is divided by
    vs_torch: bool = False
    rate: tuple[str, str] | None = None  # (info key, unit): show info[key] / seconds
    loads: bool = False  # samples have open/read phases: show load = open + read

    def show(self, seconds: float, calls: int) -> float:
        v = seconds / calls if self.per_call else seconds
        return v * (1e6 if self.unit == "us" else 1e3)


SPECS = [
    Spec(
        "W1",
        "W1",
        "W1 scalar chain: 0-d float64, y = tanh(y * a + b), forward + backward",
        ALL,
        lambda q: {"steps": 200 if q else 667},
        "us",
        per_call=True,
        floor="numpy",
        vs_torch=True,
    ),
    Spec(
        "W2-f64",
        "W2",
        "W2 MLP step, float64: batch 64, 784-128-10, tanh, squared error, backward, SGD update",
        ALL,
        lambda q: {"dtype": "float64"},
        "us",
        floor="numpy",
        vs_torch=True,
    ),
    Spec(
        "W2-f32",
        "W2",
        "W2 MLP step, float32: batch 64, 784-128-10, tanh, squared error, backward, SGD update",
        ALL,
        lambda q: {"dtype": "float32"},
        "us",
        floor="numpy",
        vs_torch=True,
    ),
    Spec(
        "W3",
        "W3",
        "W3 big elementwise: ten ops and a sum, float64, forward + backward",
        ALL,
        lambda q: {"n": 300 if q else 2000},
        "ms",
        floor="numpy-fwd",
        vs_torch=True,
    ),
    Spec(
        "W4-big",
        "W4-big",
        "W4 a tape holding large arrays, saved and loaded, vs np.save/np.load of the same bytes",
        ("tapegrad", "numpy"),
        lambda q: {"mb": 16 if q else 256},
        "ms",
        floor="numpy",
        rate=("payload_bytes", "MB/s"),
        loads=True,
    ),
    Spec(
        "W4-small",
        "W4-small",
        "W4 a tape of many records of 16-element arrays, saved and loaded",
        ("tapegrad",),
        lambda q: {"records": 5000 if q else 100_000},
        "ms",
        rate=("records", "records/s"),
        loads=True,
    ),
    Spec(
        "W6",
        "W6",
        "W6 the whole life of a tape: W1's chain recorded, saved, loaded, backward offline",
        ("tapegrad",),
        lambda q: {"steps": 200 if q else 667},
        "us",
        per_call=True,
    ),
]
W5_CALLS = {False: (200_000, 1_000_000), True: (20_000, 30_000)}  # (kept, streamed)
W5_LIBS = ("numpy", "tapegrad", "tapegrad-notape", "dezero", "torch", "autograd")
ORDER = ["W1", "W2-f64", "W2-f32", "W3", "W4-big", "W4-small", "W5", "W6"]
