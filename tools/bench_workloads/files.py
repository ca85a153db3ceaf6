"""W4 tape files and W6 the whole life of a tape (tapegrad's ``Tape.save`` and ``tapegrad.load``).

W4-big: a tape holding 256 MB of arrays (an input and fifteen negations of it, 16 MB each), saved
and loaded, against ``np.save``/``np.load`` of the same sixteen arrays into one file, and against
``np.save`` followed by an fsync (``Tape.save`` is durable: it fsyncs the file before renaming it). W4-small: a
tape of 100,000 records of 16-element arrays. "load" is open plus reading every value through the
public API, touching every page of every array (a lazily read or memory-mapped value is read by
then); "open" alone must not read the payload.

W6: the W1 chain recorded, saved, loaded and differentiated offline (``tape.backward()`` on the
loaded tape), each phase timed per recorded call.

Files go to a fresh temporary folder, removed when the case is dropped.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from . import chain
from .harness import RTOL, Case, Unavailable, builder, import_lib, rng

MB = 1 << 20


def need_files():
    """tapegrad with ``Tape.save`` and ``tapegrad.load`` importable, or ``Unavailable``."""
    tg = import_lib("tapegrad")
    try:
        import tapegrad.storage  # noqa: F401  (Tape.save and load import it on first use)
    except ImportError as e:
        raise Unavailable(f"tapegrad's tape files are not importable yet ({e})") from None
    return tg


def touch(a: np.ndarray) -> None:
    """Read one byte of every page of ``a`` (forces a lazily loaded or mapped array in)."""
    if a.size == 0:
        return
    if a.nbytes <= 4096:
        a.item(0)
        return
    np.ascontiguousarray(a).reshape(-1).view(np.uint8)[::4096].sum()


def read_bytes() -> int | None:
    """Bytes this process has read through system calls so far (``rchar``), if Linux tells."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def big_arrays(total_mb: int, count: int = 16) -> list[np.ndarray]:
    x = rng(4).standard_normal((total_mb * MB) // (8 * count))
    return [x if i % 2 == 0 else -x for i in range(count)]


def _tmpdir() -> tuple[str, callable]:
    d = tempfile.mkdtemp(prefix="tapegrad-bench-")
    return d, lambda: shutil.rmtree(d, ignore_errors=True)


@builder("W4-big", "tapegrad")
def _big_tape(lib: str, p: dict) -> Case:
    tg = need_files()
    arrays = big_arrays(p["mb"])
    with tg.record() as tape:
        y = tg.Variable(arrays[0], name="x")
        for _ in arrays[1:]:
            y = -y
    del y
    d, cleanup = _tmpdir()
    path = os.path.join(d, "big.tape")
    st: dict = {}

    def open_():
        st["tape"] = tg.load(path)

    def read():
        t = st["tape"]
        st["values"] = [t[name] for name in t.value_names]
        for a in st["values"]:
            touch(a)

    def opened_reads() -> int | None:
        before = read_bytes()
        t = tg.load(path)
        after = read_bytes()
        del t
        return None if before is None or after is None else after - before

    return Case(
        {"save": lambda: tape.save(path), "open": open_, "read": read},
        lambda: {f"v{i}": a for i, a in enumerate(st["values"])},
        lambda: {f"v{i}": a for i, a in enumerate(big_arrays(p["mb"]))},
        0.0,
        reset=st.clear,
        cleanup=cleanup,
        info={"payload_bytes": sum(a.nbytes for a in arrays), "arrays": len(arrays)},
        facts=lambda: {"file_bytes": os.path.getsize(path), "open_read_bytes": opened_reads()},
    )


@builder("W4-big", "numpy")
def _big_numpy(lib: str, p: dict) -> Case:
    arrays = big_arrays(p["mb"])
    d, cleanup = _tmpdir()
    path = os.path.join(d, "big.npy")
    st: dict = {}

    def save(fsync: bool = False):
        with open(path, "wb") as f:
            for a in arrays:
                np.save(f, a)
            if fsync:
                f.flush()
                os.fsync(f.fileno())

    def read():
        with open(path, "rb") as f:
            st["values"] = [np.load(f) for _ in arrays]
        for a in st["values"]:
            touch(a)

    return Case(
        # "save+fsync": np.save made durable as tapegrad's save is (it fsyncs before it renames)
        {"save": save, "save+fsync": lambda: save(True), "read": read},
        lambda: {f"v{i}": a for i, a in enumerate(st["values"])},
        lambda: {f"v{i}": a for i, a in enumerate(big_arrays(p["mb"]))},
        0.0,
        reset=st.clear,
        cleanup=cleanup,
        info={"payload_bytes": sum(a.nbytes for a in arrays), "arrays": len(arrays)},
        facts=lambda: {"file_bytes": os.path.getsize(path)},
    )


@builder("W4-small", "tapegrad")
def _small_tape(lib: str, p: dict) -> Case:
    tg = need_files()
    import tapegrad.functions as F

    n = p["records"]
    with tg.record() as tape:
        y = tg.Variable(rng(5).standard_normal(16), name="x")
        for _ in range(n):
            y = F.tanh(y)
    del y
    d, cleanup = _tmpdir()
    path = os.path.join(d, "small.tape")
    st: dict = {}

    def open_():
        st["tape"] = tg.load(path)

    def read():
        t = st["tape"]
        st["records"] = t.records
        st["values"] = [t[name] for name in t.value_names]
        for a in st["values"]:
            touch(a)

    def result():
        if len(st["records"]) != n:
            return {"records": np.array(len(st["records"]))}
        return {f"v{i}": a for i, a in enumerate(st["values"])} | {"records": np.array(n)}

    def reference():
        return {f"v{i}": tape[name] for i, name in enumerate(tape.value_names)} | {
            "records": np.array(n)
        }

    return Case(
        {"save": lambda: tape.save(path), "open": open_, "read": read},
        result,
        reference,
        0.0,
        calls=n,
        reset=st.clear,
        cleanup=cleanup,
        info={"records": n, "values": len(tape.value_names)},
        facts=lambda: {"file_bytes": os.path.getsize(path)},
    )


@builder("W6", "tapegrad")
def _life(lib: str, p: dict) -> Case:
    tg = need_files()
    import tapegrad.functions as F

    n = p["steps"]
    x, a, b = chain.tapegrad_leaves()
    tanh = F.tanh
    d, cleanup = _tmpdir()
    path = os.path.join(d, "chain.tape")
    st: dict = {}

    def record():
        with tg.record() as tape:
            y = x
            for _ in range(n):
                y = tanh(y * a + b)
        st["tape"] = tape

    def load():
        st["loaded"] = tg.load(path)

    def backward():
        st["grads"] = st["loaded"].backward()

    def result():
        t = st["loaded"]
        out = {f"grad:{k}": v for k, v in st["grads"].items()}
        return {"y": t[t.outputs[0]], **out}

    return Case(
        {
            "record": record,
            "save": lambda: st["tape"].save(path),
            "load": load,
            "backward": backward,
        },
        result,
        lambda: chain.reference(n),
        RTOL["float64"],
        calls=chain.CALLS_PER_STEP * n,
        reset=st.clear,
        cleanup=cleanup,
    )
