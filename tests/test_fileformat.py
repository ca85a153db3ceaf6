"""The tape file format (``tapegrad.fileformat``): round trips of every dtype, odd arrays, bit
patterns, names, attributes, metadata and gradients; streamed and saved files alike; the writer's
checks; the JSON Schema; durability under SIGKILL; loading runs no code.

Hostile files are in ``test_fileformat_hostile.py``.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tapegrad.fileformat.writer as W
from tapegrad.errors import TapeFormatError, TapeTruncatedError
from tapegrad.fileformat import (
    ALLOWED_DTYPES,
    RecordInfo,
    TapeWriter,
    ValueInfo,
    open_tape,
    save_tape,
    schema_json,
)
from tapegrad.fileformat.models import (
    MAX_BODY_LEN,
    MAX_DEPTH,
    FooterBody,
    GradsBody,
    HeaderBody,
    RecordsBody,
    ValuesBody,
)
from tapegrad.fileformat.writer import TEMP_MARK

ROOT = Path(__file__).resolve().parent.parent
PROV = {
    "tapegrad": "test",
    "numpy": "test",
    "python": "test",
    "created": "2024-01-01T00:00:00+00:00",
}
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


DEEP: object = 1
for _ in range(MAX_DEPTH):
    DEEP = [DEEP]  # with the attrs dict: one level more than allowed


def random_array(rng: np.random.Generator, dtype: str, shape: tuple) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return np.asarray(rng.random(shape) > 0.5)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    return rng.standard_normal(shape).astype(dt)


def save(path: Path, values, records=(), meta=None, grads=None) -> None:
    save_tape(path, values, records, meta=meta or {}, grads=grads or {}, provenance=PROV)


def stream(path: Path, values, records=(), meta=None, grads=None) -> None:
    """As recording does: each record after the values it names."""
    with TapeWriter(path, provenance=PROV, meta={"started": True}) as w:
        added = 0
        for rec in records:
            need = max((*rec.inputs, *rec.outputs), default=-1) + 1
            for info, array in values[added:need]:
                w.add_value(info, array)
            added = max(added, need)
            w.add_record(rec)
        for info, array in values[added:]:
            w.add_value(info, array)
        w.close(meta=meta, grads=grads)


def content(path: Path) -> tuple:
    """What a file holds, arrays as (dtype, shape, bytes): bit for bit."""
    with open_tape(path) as f:
        arrays = []
        for i in range(len(f.values)):
            a = f.array(i) if f.has_array(i) else None
            arrays.append(None if a is None else (a.dtype.str, a.shape, a.tobytes()))
        grads = {g: (f.grad(g).dtype.str, f.grad(g).tobytes()) for g in f.grad_names}
        prov = {k: v for k, v in f.provenance.items() if k != "created"}
        return f.values, f.records, f.meta, arrays, grads, prov, f.complete


def bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALLOWED_DTYPES)
@pytest.mark.parametrize("write", [save, stream])
def test_every_dtype_round_trips(tmp_path, rng, dtype, write):
    path = tmp_path / "t.tape"
    arrays = [random_array(rng, dtype, shape) for shape in [(), (0,), (5,), (3, 4), (2, 0, 3)]]
    big_endian = arrays[3].astype(np.dtype(dtype).newbyteorder(">"))
    strided = random_array(rng, dtype, (6, 8))[::2, 1::3]
    fortran = np.asfortranarray(random_array(rng, dtype, (3, 5)))
    arrays += [big_endian, strided, fortran, strided.T]
    values = [(ValueInfo(f"v{i}", "input", a.dtype.str, a.shape), a) for i, a in enumerate(arrays)]
    write(path, values, grads={"g": big_endian})
    with open_tape(path) as f:
        for i, a in enumerate(arrays):
            b = f.array(i)
            assert b.dtype.str == dtype and b.shape == a.shape
            assert b.tobytes() == a.astype(dtype).tobytes()  # bit for bit, little-endian
            assert f.values[i].dtype == dtype
        assert f.grad("g").tobytes() == big_endian.astype(dtype).tobytes()


def test_arrays_are_read_only_views_of_the_file(tmp_path, rng):
    path = tmp_path / "t.tape"
    small, big = rng.standard_normal(10), rng.standard_normal(300_000)
    save(
        path,
        [
            (ValueInfo("s", "input", "<f8", (10,)), small),
            (ValueInfo("b", "input", "<f8", big.shape), big),
        ],
    )
    with open_tape(path) as f:
        for i in range(2):
            a = f.array(i)
            assert not a.flags.writeable
            assert a.ctypes.data % 64 == 0  # aligned payloads
            base = a
            while isinstance(base, np.ndarray):
                base = base.base
            assert isinstance(getattr(base, "obj", base), mmap.mmap)  # no copy
        kept = f.array(1)
    assert np.array_equal(kept, big)  # arrays outlive close()


def test_float_bit_patterns(tmp_path):
    path = tmp_path / "t.tape"
    special = [0x7FF8DEAD0000BEEF, 0x7FF0000000000001, 0xFFF8000000000000, 0x8000000000000000]
    special += [bits(math.inf), bits(-math.inf), 1, 0xFFEFFFFFFFFFFFFF]
    f64 = np.array(special, dtype="<u8").view("<f8")
    f32 = np.array([0x7FC01234, 0x7F800001, 0x80000000, 0xFF800000], dtype="<u4").view("<f4")
    f16 = np.array([0x7E01, 0x7C01, 0x8000, 0xFC00], dtype="<u2").view("<f2")
    c128 = np.stack([f64[:4], f64[4:]], axis=-1).view("<c16").reshape(4)  # no arithmetic
    floats = [x for x in f64.tolist()]
    values = [
        (ValueInfo(n, "const", a.dtype.str, a.shape), a)
        for n, a in [
            ("f64", f64),
            ("f32", f32),
            ("f16", f16),
            ("c128", c128),
            ("be", f64.astype(">f8")),
        ]
    ]
    records = [
        RecordInfo("consts", {"floats": tuple(floats), "neg0": -0.0, "nan": floats[0]}, (0,), ())
    ]
    for write in (save, stream):
        write(path, values, records, meta={"floats": floats})
        with open_tape(path) as f:
            for i, (_, a) in enumerate(values):
                assert f.array(i).tobytes() == a.astype(a.dtype.newbyteorder("<")).tobytes()
            attrs = f.records[0].attrs
            assert [bits(x) for x in attrs["floats"]] == [bits(x) for x in floats]
            assert bits(attrs["neg0"]) == bits(-0.0) and bits(attrs["nan"]) == special[0]
            assert [bits(x) for x in f.meta["floats"]] == [bits(x) for x in floats]


def test_unicode_names_and_large_attributes(tmp_path, rng):
    path = tmp_path / "t.tape"
    names = ["x", "α", "名前", "emoji 🎉", "with\nnewline", "\x00nul", "n" * 1024]
    values = [
        (ValueInfo(n, "input", "<f4", (2,)), rng.standard_normal(2).astype("f4")) for n in names
    ]
    values.append((ValueInfo("out ✓", "op", "<f4", (2,)), np.zeros(2, "f4")))
    nested: object = "leaf"
    for _ in range(MAX_DEPTH - 1):
        nested = (nested,)
    attrs = {
        "text": "ü" * 1_000_000,
        "blob": bytes(range(256)) * 4000,
        "ints": tuple(range(100_000)),
        "extremes": (-(2**63), 2**64 - 1, True, None),
        "nested": nested,
        "dict": {"ключ": {"a": (1, 2.5, "x")}},
    }
    records = [RecordInfo("mylib.op ∑", attrs, tuple(range(len(names))), (len(names),))]
    meta = {"ключ": ["значение", {"n": 1}], "b": b"\x00\xff"}
    for write in (save, stream):
        write(path, values, records, meta=meta)
        with open_tape(path) as f:
            assert [v.name for v in f.values] == names + ["out ✓"]
            assert f.records == records
            assert f.meta == meta
            assert f.index_of("名前") == 2


def test_tuples_come_back_as_tuples_and_meta_as_json(tmp_path):
    path = tmp_path / "t.tape"
    values = [
        (ValueInfo("x", "input", "<f8", (2,)), np.ones(2)),
        (ValueInfo("y", "op", "<f8", (2,)), None),
    ]
    rec = RecordInfo("sum", {"axis": [0, (1, [2])], "shape": (2, 3)}, [0], [1])
    save(path, values, [rec], meta={"t": (1, 2), "l": [3]})
    with open_tape(path) as f:
        (got,) = f.records
        assert got.attrs == {"axis": (0, (1, (2,))), "shape": (2, 3)}
        assert got.inputs == (0,) and got.outputs == (1,)
        assert f.meta == {"t": [1, 2], "l": [3]}
        assert not f.has_array(1)
        with pytest.raises(ValueError, match="without its bytes"):
            f.array(1)


def reference(rng: np.random.Generator):
    values = [
        (ValueInfo("x", "input", "<f8", (3,)), rng.standard_normal(3)),
        (ValueInfo("two", "const", "<f8", ()), np.array(2.0)),
        (ValueInfo("y", "op", "<f8", (3,)), rng.standard_normal(3)),
        (ValueInfo("big", "op", "<f4", (600, 300)), rng.standard_normal((600, 300)).astype("f4")),
        (ValueInfo("skip", "op", "<i4", (7,)), None),
        (ValueInfo("flag", "op", "|b1", ()), np.array(True)),
    ]
    records = [
        RecordInfo("mul", {}, (0, 1), (2,), ("train.py", 10, "step")),
        RecordInfo("outer", {"k": 1}, (2, 2), (3,)),
        RecordInfo("split", {"sections": (3, 4)}, (3,), (4, 5)),
    ]
    grads = {"x": rng.standard_normal(3), "two": np.array(0.5)}
    return values, records, {"epoch": 3, "loss": [0.5, 0.25]}, grads


def test_streamed_and_saved_files_hold_the_same(tmp_path, rng):
    values, records, meta, grads = reference(rng)
    save(tmp_path / "saved.tape", values, records, meta, grads)
    stream(tmp_path / "streamed.tape", values, records, meta, grads)
    saved, streamed = content(tmp_path / "saved.tape"), content(tmp_path / "streamed.tape")
    assert saved == streamed
    assert saved[2] == meta and saved[6] is True
    assert set(saved[5]) == {"format", "tapegrad", "numpy", "python"}
    assert saved[5]["format"] == "1.0"


def test_footer_meta_is_final_header_meta_is_recovered(tmp_path, rng):
    path = tmp_path / "t.tape"
    w = TapeWriter(path, provenance=PROV, meta={"phase": "start"})
    w.add_value(ValueInfo("x", "input", "<f8", (1,)), np.ones(1))
    w.close(meta={"phase": "end"})
    assert open_tape(path).meta == {"phase": "end"}
    w = TapeWriter(path, provenance=PROV, meta={"phase": "start"})
    w.add_value(ValueInfo("x", "input", "<f8", (1,)), np.ones(1))
    with pytest.raises(TapeTruncatedError):
        open_tape(path)
    assert open_tape(path, recover=True).meta == {"phase": "start"}
    w.close()
    assert open_tape(path).meta == {"phase": "start"}


def test_writer_closes_after_an_exception_and_twice(tmp_path):
    path = tmp_path / "t.tape"
    with pytest.raises(RuntimeError):
        with TapeWriter(path, provenance=PROV) as w:
            w.add_value(ValueInfo("x", "input", "<f8", (1,)), np.ones(1))
            raise RuntimeError("in the block")
    w.close()
    assert open_tape(path).complete
    with pytest.raises(ValueError, match="closed"):
        w.add_value(ValueInfo("y", "input", "<f8", (1,)), np.ones(1))


def test_writer_threads_do_not_interleave(tmp_path):
    path = tmp_path / "t.tape"
    w = TapeWriter(path, provenance=PROV)

    def work(t: int) -> None:
        for k in range(200):
            x = w.add_value(
                ValueInfo(f"x{t}.{k}", "input", "<f8", (50,)), np.full(50, t + k / 1000)
            )
            y = w.add_value(
                ValueInfo(f"y{t}.{k}", "op", "<f8", (50,)), np.full(50, -t, dtype="<f8")
            )
            w.add_record(RecordInfo("neg", {"t": t}, (x,), (y,)))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    with open_tape(path) as f:
        assert len(f.records) == 800 and len(f.values) == 1600
        for rec in f.records:
            assert f.array(rec.outputs[0])[0] == -rec.attrs["t"]


def test_a_failed_write_leaves_a_valid_prefix(tmp_path, monkeypatch):
    """A write that fails halfway (a full disk) is cut off again: the file stays a valid tape
    and the writer goes on."""
    path = tmp_path / "t.tape"
    w = TapeWriter(path, provenance=PROV)
    w.add_value(ValueInfo("x", "input", "<f8", (4,)), np.arange(4.0))
    real_writev = os.writev

    def full_disk(fd, parts):
        data = b"".join(bytes(p) for p in parts)
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "writev", full_disk)
    with pytest.raises(OSError, match="space"):
        w.add_value(ValueInfo("y", "op", "<f8", (4,)), np.ones(4))
    monkeypatch.setattr(os, "writev", real_writev)
    assert len(open_tape(path, recover=True).values) == 1
    w.add_value(ValueInfo("y", "op", "<f8", (4,)), np.ones(4))
    w.add_record(RecordInfo("f", {}, (0,), (1,)))
    w.close()
    with open_tape(path) as f:
        assert f.complete and [v.name for v in f.values] == ["x", "y"]
        f.verify()


# -- what the writer refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "array, error",
    [
        (np.array([object()]), TypeError),
        (np.zeros(2, "V8"), TypeError),
        (np.zeros(2, [("a", "<f8"), ("b", "<i4")]), TypeError),
        (np.array(["text"]), TypeError),
        (np.array(["2024-01-01"], "datetime64[D]"), TypeError),
        ([1.0, 2.0], TypeError),
    ],
)
def test_unstorable_arrays_are_refused_naming_the_value(tmp_path, array, error):
    dtype = getattr(array, "dtype", np.dtype("<f8")).str
    shape = np.shape(array)
    values = [
        (ValueInfo("fine", "input", "<f8", (1,)), np.ones(1)),
        (ValueInfo("culprit", "input", dtype, shape), array),
    ]
    path = tmp_path / "t.tape"
    path.write_bytes(b"old")
    with pytest.raises(error, match="culprit"):
        save(path, values)
    assert path.read_bytes() == b"old"  # untouched, and no temporary left
    assert [p.name for p in tmp_path.iterdir()] == ["t.tape"]
    w = TapeWriter(tmp_path / "s.tape", provenance=PROV)
    with pytest.raises(error, match="culprit"):
        w.add_value(values[1][0], array)
    w.close()


@pytest.mark.parametrize(
    "values, records, match",
    [
        ([("x", "input", "<f8", (2,), np.ones(3))], [], "shape"),
        ([("x", "input", "<f4", (2,), np.ones(2))], [], "dtype"),
        ([("x", "input", "<f8", (2,), None), ("x", "op", "<f8", (2,), None)], [], "already"),
        ([("x", "leaf", "<f8", (2,), None)], [], "kind"),
        ([("", "input", "<f8", (2,), None)], [], "name"),
        ([("n" * 1025, "input", "<f8", (2,), None)], [], "name"),
        ([("x", "input", "<f8", (-1,), None)], [], "shape"),
        ([("x", "input", "<f8", (2**62, 2**62), None)], [], "too big"),
        ([("x", "input", "<f8", (2,), None)], [("f", {}, (1,), ())], "input 1"),
        ([("x", "input", "<f8", (2,), None)], [("f", {}, (0,), (0,))], "output 0"),
        ([("x", "op", "<f8", (2,), None)], [("f", {}, (0,), (0,))], "input 0"),
        ([("x", "op", "<f8", (2,), None)], [("f", {}, (), (0,)), ("g", {}, (), (0,))], "already"),
        ([("x", "op", "<f8", (2,), None)], [("f", {}, (), (0, 0))], "twice"),
        ([("x", "input", "<f8", (2,), None)], [("f", {"a": np.ones(2)}, (0,), ())], "ndarray"),
        ([("x", "input", "<f8", (2,), None)], [("f", {1: 2}, (0,), ())], "key"),
        ([("x", "input", "<f8", (2,), None)], [("f", {"a": 2**64}, (0,), ())], "64 bits"),
        ([("x", "input", "<f8", (2,), None)], [("f", {"a": {1, 2}}, (0,), ())], "set"),
        ([("x", "input", "<f8", (2,), None)], [("f", {"a": "\udc80"}, (0,), ())], "encoded"),
        (
            [("x", "input", "<f8", (2,), None)],
            [("f", {"a": "x" * MAX_BODY_LEN}, (0,), ())],
            "bytes",
        ),
        ([("x", "input", "<f8", (2,), None)], [("f", {"a": DEEP}, (0,), ())], "deeper"),
        ([("x", "input", "<f8", (2,), None)], [("f", {}, ("0",), ())], "ints"),
        ([("x", "input", "<f8", (2,), None)], [("f", {}, (0,), (), ("file", -1, "fn"))], "source"),
    ],
)
def test_bad_values_and_records_are_refused(tmp_path, values, records, match):
    values = [(ValueInfo(*v[:4]), v[4]) for v in values]
    records = [RecordInfo(*r) for r in records]
    with pytest.raises((TypeError, ValueError), match=match):
        save(tmp_path / "t.tape", values, records)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises((TypeError, ValueError), match=match):
        with TapeWriter(tmp_path / "s.tape", provenance=PROV) as w:
            for info, array in values:
                w.add_value(info, array)
            for rec in records:
                w.add_record(rec)


def test_bad_meta_grads_and_provenance_are_refused(tmp_path):
    values = [(ValueInfo("x", "input", "<f8", (1,)), np.ones(1))]
    with pytest.raises(TypeError, match="meta"):
        save(tmp_path / "t.tape", values, meta={"when": object()})
    with pytest.raises(TypeError, match="gradient 'g'"):
        save(tmp_path / "t.tape", values, grads={"g": np.array([object()])})
    with pytest.raises(ValueError, match="provenance"):
        save_tape(tmp_path / "t.tape", values, [], meta={}, grads={}, provenance={"host": "x"})
    w = TapeWriter(tmp_path / "s.tape", provenance=PROV)
    with pytest.raises(TypeError):
        w.close(grads={"g": [1.0]})
    w.close(grads={"g": np.ones(2)})  # still open after the refusal
    assert open_tape(tmp_path / "s.tape").grad_names == ["g"]


# -- the metadata models -------------------------------------------------------------------------


def test_schema_file_matches_the_models():
    text = (ROOT / "schema" / "tape.schema.json").read_text(encoding="utf-8")
    assert text == schema_json(), "run python tools/gen_schema.py"
    schema = json.loads(text)
    assert set(schema["properties"]) == {"header", "values", "records", "grads", "footer"}


plain_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=10)
    | st.binary(max_size=10)
)
plain = st.recursive(
    plain_leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=15,
)
attrs = st.dictionaries(st.text(max_size=8), plain, max_size=4)
names = st.text(min_size=1, max_size=20)


def same_plain(a, b) -> bool:
    """Equal, with NaN equal to itself bit for bit, and sequences compared as sequences."""
    if isinstance(a, float) and isinstance(b, float):
        return bits(a) == bits(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_plain(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_plain(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@SETTINGS
@given(
    value_names=st.lists(names, min_size=1, max_size=5, unique=True),
    record_attrs=st.lists(attrs, min_size=1, max_size=4),
    meta=attrs,
    source=st.none() | st.tuples(st.text(max_size=30), st.integers(0, 2**31), st.text(max_size=10)),
)
def test_what_the_writer_accepts_the_models_accept(
    tmp_path, value_names, record_attrs, meta, source
):
    """Every frame body a writer produces validates against the pydantic models (the schema),
    and reads back the same."""
    values = [(ValueInfo(n, "input", "<f8", (2,)), np.arange(2.0)) for n in value_names]
    records = [RecordInfo(f"op{k}", a, (0,), (), source) for k, a in enumerate(record_attrs)]
    path = tmp_path / "t.tape"
    save(path, values, records, meta=meta)
    data = path.read_bytes()
    pos, models = (
        16,
        {b"H": HeaderBody, b"V": ValuesBody, b"R": RecordsBody, b"G": GradsBody, b"F": FooterBody},
    )
    while pos < len(data) - 16:
        _, kind, _, _, body_len, payload_len = struct.unpack_from("<4sB3sIIQ", data, pos)
        body = data[pos + 36 : pos + 36 + body_len]
        tables = kind != ord("H") and kind != ord("F")
        models[bytes([kind])].model_validate(msgpack.unpackb(body, use_list=not tables))
        end = pos + 36 + body_len
        pos = end + (-end % 64 + payload_len if payload_len else 0)
    with open_tape(path) as f:
        assert [v.name for v in f.values] == value_names
        assert all(same_plain(r.attrs, a) for r, a in zip(f.records, record_attrs))
        assert [r.source for r in f.records] == [source] * len(records)
        assert same_plain(f.meta, meta)


# -- durability ----------------------------------------------------------------------------------

STREAM_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from tapegrad.fileformat import RecordInfo, TapeWriter, ValueInfo
    prov = {"tapegrad": "t", "numpy": "t", "python": "t", "created": "t"}
    w = TapeWriter(sys.argv[1], provenance=prov)
    w.add_value(ValueInfo("v0", "input", "<f8", (16,)), np.zeros(16))
    i = 0
    while True:
        w.add_value(ValueInfo(f"v{i + 1}", "op", "<f8", (16,)), np.full(16, i + 1.0))
        w.add_record(RecordInfo("step", {"i": i}, (i,), (i + 1,)))
        i += 1
        if i == 3000:
            print("ready", flush=True)
    """
)


def test_a_killed_recording_recovers_its_complete_prefix(tmp_path):
    path = tmp_path / "run.tape"
    child = subprocess.Popen(
        [sys.executable, "-c", STREAM_CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with pytest.raises(TapeTruncatedError) as info:
        open_tape(path)
    n = info.value.complete_records
    assert n >= 3000 and f"{n} complete records" in str(info.value)
    with open_tape(path, recover=True) as f:
        assert not f.complete and len(f.records) == n
        for k, rec in enumerate(f.records):
            assert (rec.op, rec.attrs, rec.inputs, rec.outputs) == (
                "step",
                {"i": k},
                (k,),
                (k + 1,),
            )
        for i in range(n + 1):
            assert np.array_equal(f.array(i), np.full(16, float(i)))


SAVE_CHILD = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from tapegrad.fileformat import ValueInfo, save_tape
    prov = {"tapegrad": "t", "numpy": "t", "python": "t", "created": "t"}
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "hang":  # stop inside save_tape, with the temporary written, until killed
        def hang(fd):
            print("in save", flush=True)
            time.sleep(60)
        os.fsync = hang
    k = 0
    while True:
        a = np.full(300_000, float(k % 2))
        values = [(ValueInfo(f"v{i}", "input", "<f8", a.shape), a) for i in range(4)]
        save_tape(path, values, [], meta={"k": k % 2}, grads={}, provenance=prov)
        k += 1
        if k == 2:
            print("in save", flush=True)
    """
)


def temporaries(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}{TEMP_MARK}"))


@pytest.mark.parametrize("mode", ["loop", "hang"])
def test_a_killed_save_leaves_the_old_file(tmp_path, mode):
    path = tmp_path / "model.tape"
    old = np.full(10, 7.0)
    save(path, [(ValueInfo("old", "input", "<f8", (10,)), old)], meta={"k": "old"})
    child = subprocess.Popen(
        [sys.executable, "-c", SAVE_CHILD, str(path), mode], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "in save"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with open_tape(path) as f:  # complete: the old tape or one of the child's
        assert f.complete and f.meta["k"] in ("old", 0, 1)
        expected = old if f.meta["k"] == "old" else np.full(300_000, float(f.meta["k"]))
        assert np.array_equal(f.array(0), expected)
    left = temporaries(tmp_path, "model.tape")
    if mode == "hang":
        assert len(left) == 1  # recognisable: .model.tape.tapegrad-tmp-<pid>-<hex>
    mine = tmp_path / f".model.tape{TEMP_MARK}{os.getpid()}-live"
    mine.write_bytes(b"a save in progress in a live process")
    save(path, [(ValueInfo("new", "input", "<f8", (1,)), np.ones(1))])
    assert temporaries(tmp_path, "model.tape") == [mine.name]  # the dead one's is gone
    assert open_tape(path).values[0].name == "new"


def _three_values(k: float) -> list:
    return [
        (ValueInfo(f"v{i}", "input", "<f8", (100_000,)), np.full(100_000, k + i)) for i in range(3)
    ]


def _arrays(path: Path) -> list:
    with open_tape(path) as f:
        assert f.complete
        return [f.array(i).copy() for i in range(len(f.values))]


def test_a_durable_save_starts_writeback_as_it_writes(tmp_path, monkeypatch):
    """With fsync (the default) each chunk is handed to the kernel for writeback as soon as it is
    written, in ranges that tile the file; with fsync=False nothing is. Same bytes either way."""
    if W._START_WRITEBACK is None:
        pytest.skip("no writeback hint (posix_fadvise) on this platform")
    calls = []
    real = os.posix_fadvise

    def spy(fd, offset, length, advice):
        calls.append((offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(W, "_WRITEBACK_CHUNK", 64 * 1024)
    monkeypatch.setattr(os, "posix_fadvise", spy)
    save(tmp_path / "a.tape", _three_values(1.0))
    assert len(calls) >= 3 and {advice for _, _, advice in calls} == {W._START_WRITEBACK}
    ends = [0] + [offset + length for offset, length, _ in calls]
    assert [offset for offset, _, _ in calls] == ends[:-1]  # contiguous from byte 0
    assert all(length >= 64 * 1024 for _, length, _ in calls)
    assert ends[-1] <= os.path.getsize(tmp_path / "a.tape")
    calls.clear()
    save_tape(
        tmp_path / "b.tape", _three_values(1.0), [], meta={}, grads={}, provenance=PROV, fsync=False
    )
    assert calls == []
    for a, b in zip(_arrays(tmp_path / "a.tape"), _arrays(tmp_path / "b.tape")):
        assert np.array_equal(a, b)


def test_a_save_over_a_big_tape_frees_the_old_one_after_the_rename(tmp_path, monkeypatch):
    """The replaced file is held open across the rename and closed on another thread: readers
    see the new tape at once, the old one's descriptor is closed, and a small, missing or
    non-regular target is not held at all."""
    path = tmp_path / "big.tape"
    save(path, _three_values(0.0))
    monkeypatch.setattr(W, "_RELEASE_LATER_MIN", 1024)
    held, closed = [], threading.Event()
    real_hold, real_close = W._hold_replaced, os.close

    def hold(target):
        fd = real_hold(target)
        held.append(fd)
        return fd

    def close(fd):
        real_close(fd)
        if held and fd == held[0]:
            closed.set()

    monkeypatch.setattr(W, "_hold_replaced", hold)
    monkeypatch.setattr(os, "close", close)
    save(path, _three_values(10.0))
    assert held[0] is not None and closed.wait(10)
    assert [a[0] for a in _arrays(path)] == [10.0, 11.0, 12.0]
    monkeypatch.setattr(W, "_RELEASE_LATER_MIN", 10**12)
    assert real_hold(str(path)) is None  # small
    assert real_hold(str(tmp_path / "missing.tape")) is None
    assert real_hold(str(tmp_path)) is None  # not a regular file


# -- loading runs nothing ------------------------------------------------------------------------

AUDIT_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from tapegrad.errors import TapeFormatError
    from tapegrad.fileformat import RecordInfo, ValueInfo, open_tape, save_tape
    path, bad = sys.argv[1], sys.argv[2]
    prov = {"tapegrad": "t", "numpy": "t", "python": "t", "created": "t"}
    values = [(ValueInfo("x", "input", "<f8", (3,)), np.ones(3)), (ValueInfo("y", "op", "<f8", (3,)), None)]
    save_tape(path, values, [RecordInfo("os.system", {"cmd": "echo hi"}, (0,), (1,))],
              meta={"__reduce__": "os.system"}, grads={"x": np.ones(3)}, provenance=prov)
    seen = []
    watched = {"import", "exec", "compile", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn"}
    sys.addaudithook(lambda event, args: seen.append(event) if event in watched else None)
    for p in (path, path, bad):
        try:
            f = open_tape(p)
            f.array(0), f.grad("x"), f.records, f.meta, f.values, f.provenance, repr(f)
            f.close()
        except TapeFormatError as e:
            str(e)
    print(",".join(seen))
    """
)


def test_loading_imports_and_runs_nothing(tmp_path):
    bad = tmp_path / "bad.tape"
    bad.write_bytes(b"\x89TGD\r\n\x1a\n" + bytes(100))
    result = subprocess.run(
        [sys.executable, "-c", AUDIT_CHILD, str(tmp_path / "t.tape"), str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"audit events while loading: {result.stdout}"


# -- released formats ----------------------------------------------------------------------------

EXAMPLES = sorted((ROOT / "schema" / "examples").glob("*.tape"))


@pytest.mark.skipif(not EXAMPLES, reason="schema/examples/ holds no tapes yet")
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_of_every_released_format_loads(path):
    with open_tape(path) as f:
        assert f.complete
        f.verify()
        for i in range(len(f.values)):
            if f.has_array(i):
                f.array(i)


def test_format_error_is_the_only_content_error():
    assert issubclass(TapeTruncatedError, TapeFormatError)


def test_streaming_writer_refuses_a_taken_name_also_among_generated_ones(tmp_path):
    # The streaming writer does not keep "%<own index>" names in its name table (a long
    # recording would grow it by ~100 bytes a value); duplicates must still be refused.
    x = np.zeros(2)
    cases = [
        ["%0", "%0"],  # a generated name reused by a later value
        ["%1", "%1"],  # an explicit "%1" at index 0, then value 1's own generated name
        ["a", "%1", "%1"],
    ]
    for k, names in enumerate(cases):
        with TapeWriter(tmp_path / f"d{k}.tape", provenance={}) as w:
            for name in names[:-1]:
                w.add_value(ValueInfo(name, "input", "<f8", (2,)), x)
            with pytest.raises(ValueError, match="already value"):
                w.add_value(ValueInfo(names[-1], "input", "<f8", (2,)), x)
    with TapeWriter(tmp_path / "ok.tape", provenance={}) as w:
        for name in ["%0", "%01", "x", "%3", "%2"]:  # "%01" and "%2" at index 4 are not taken
            w.add_value(ValueInfo(name, "input", "<f8", (2,)), x)
    assert [v.name for v in open_tape(tmp_path / "ok.tape").values] == [
        "%0",
        "%01",
        "x",
        "%3",
        "%2",
    ]
