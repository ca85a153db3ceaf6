"""Measure the tape file format: big-array save throughput against ``np.save``, and how many small
records per second save, stream and load. Prints a table; run ``python tools/bench_format.py``.

Options: ``--big-mb N`` (size of each of the 4 big arrays, default 256), ``--records N``
(default 100000), ``--dir PATH`` (where to write; default a temporary folder), ``--repeat N``.
Each figure is the best of ``--repeat`` runs; on a shared machine, other processes can halve them
(the CPU-time figures of the small-record runs suffer less).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from tapegrad.fileformat import RecordInfo, TapeWriter, ValueInfo, open_tape, save_tape

PROV = {"tapegrad": "bench", "numpy": np.__version__, "python": "-", "created": "-"}


def best(fn, repeat: int, clock=time.perf_counter) -> float:
    """The fastest of ``repeat`` runs (wall clock, or ``clock``)."""
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def fresh(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def np_save(path: str, arrays: list[np.ndarray], fsync: bool, atomic: bool = False) -> None:
    """The arrays one after another in one file, as np.save writes them."""
    target = path + ".tmp" if atomic else path
    with open(target, "wb") as f:
        for a in arrays:
            np.save(f, a)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    if atomic:
        os.replace(target, path)


def bench_big(folder: str, mb: int, repeat: int) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.random(mb * 1024 * 1024 // 8) for _ in range(4)]
    total = sum(a.nbytes for a in arrays)
    values = [(ValueInfo(f"w{i}", "input", "<f8", a.shape), a) for i, a in enumerate(arrays)]
    npy, tape = os.path.join(folder, "big.npy"), os.path.join(folder, "big.tape")

    def save(fsync: bool):
        save_tape(tape, values, [], meta={}, grads={}, provenance=PROV, fsync=fsync)

    print(f"big arrays: 4 x {mb} MiB float64 ({total / 2**20:.0f} MiB), GB/s, best of {repeat}")
    cases = [
        (
            "new file, no fsync",
            lambda: (fresh(npy), np_save(npy, arrays, False)),
            lambda: (fresh(tape), save(False)),
        ),
        (
            "over the old file, fsync",
            lambda: np_save(npy, arrays, True),
            lambda: save(True),
        ),
        (
            "atomic (temp, fsync, replace)",
            lambda: np_save(npy, arrays, True, atomic=True),
            lambda: save(True),
        ),
    ]
    for label, run_np, run_tape in cases:
        t_np, t_tape = best(run_np, repeat), best(run_tape, repeat)
        print(
            f"  {label:30s} np.save {total / t_np / 1e9:5.2f}   save_tape "
            f"{total / t_tape / 1e9:5.2f}   ratio {t_np / t_tape:4.0%}"
        )
    start = time.perf_counter()
    f = open_tape(tape)
    n = len(f.values)
    t_open = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(n):
        f.array(i)
    t_first = time.perf_counter() - start
    f.close()
    print(
        f"  open_tape {t_open * 1e3:.2f} ms; first access of every array (checksum) "
        f"{total / t_first / 1e9:.2f} GB/s"
    )


def small_tape(n: int):
    rng = np.random.default_rng(1)
    data = rng.random((n + 1, 16))
    values = [(ValueInfo("x", "input", "<f8", (16,)), data[0])]
    values += [(ValueInfo(f"v{i}", "op", "<f8", (16,)), data[i]) for i in range(1, n + 1)]
    records = [RecordInfo("tanh", {}, (i,), (i + 1,)) for i in range(n)]
    return values, records


def bench_small(folder: str, n: int, repeat: int) -> None:
    values, records = small_tape(n)
    saved = os.path.join(folder, "small.tape")
    streamed = os.path.join(folder, "streamed.tape")

    def save():
        save_tape(saved, values, records, meta={}, grads={}, provenance=PROV)

    def stream():
        with TapeWriter(streamed, provenance=PROV) as w:
            w.add_value(*values[0])
            for k, rec in enumerate(records):
                w.add_value(*values[k + 1])
                w.add_record(rec)

    def load(path):
        def run():
            f = open_tape(path)
            assert len(f.records) == n
            for r in f.records:
                r.op, r.inputs, r.outputs  # noqa: B018
            for v in f.values:
                v.shape, v.dtype  # noqa: B018
            f.close()

        return run

    def load_arrays(path):
        def run():
            f = open_tape(path)
            for i in range(len(f.values)):
                f.array(i)
            f.close()

        return run

    print(f"small records: {n} records, each one 16-element float64 value")
    for label, fn in (
        ("save_tape", save),
        ("open + metadata (saved file)", load(saved)),
        ("open + every array (saved)", load_arrays(saved)),
        ("TapeWriter stream", stream),
        ("open + metadata (streamed)", load(streamed)),
    ):
        t = best(fn, repeat)
        cpu = best(fn, repeat, time.process_time)
        print(
            f"  {label:30s} {n / t:10,.0f} records/s ({t * 1e3:6.0f} ms wall, "
            f"{n / cpu:10,.0f} by CPU time)"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mb", type=int, default=256)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None)
    a = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="tapegrad-bench-", dir=a.dir)
    try:
        if a.records:
            bench_small(folder, a.records, a.repeat)
        if a.big_mb:
            bench_big(folder, a.big_mb, a.repeat)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
