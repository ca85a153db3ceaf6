"""Tapes of many small records: the column paths of the codec and of ``Tape``.

``save_tape`` checks and writes columns in bulk, the reader keeps a file's tables as columns and
hands out a payload area's arrays at once, and a loaded tape derives its records from the file's
columns. Each bulk path must do exactly what the one-at-a-time path does: the same bytes, the same
first culprit named, the same numbers, the same refusal of damage.
"""

from __future__ import annotations

import copy
import mmap
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tapegrad as tg
import tapegrad.functions as F
from tapegrad.errors import TapeCorruptError, TapeFormatError
from tapegrad.fileformat import (
    RecordColumns,
    RecordInfo,
    TapeWriter,
    ValueColumns,
    ValueInfo,
    layout,
    open_tape,
    save_tape,
    writer,
)
from tapegrad.tape import Record, function_attrs, function_opname

PROV = {"tapegrad": "test", "numpy": "test", "python": "test", "created": "2024-01-01"}
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def save(path: Path, values, records, grads=None) -> bytes:
    save_tape(path, values, records, meta={"m": 1}, grads=grads or {}, provenance=PROV)
    return path.read_bytes()


@contextmanager
def one_by_one() -> Iterator[None]:
    """Every bulk path of the writer and the ledger turned off: the checks and frames one value
    and one record at a time, the reference the bulk paths must agree with."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(writer, "_fast_values", lambda cols, ledger: None)
        m.setattr(writer, "_fast_records", lambda cols: False)
        m.setattr(writer._Batcher, "_add_alike", lambda self, *a: False)
        m.setattr(layout, "_BULK_RECORDS", 10**9)
        yield


def chain_parts(rng, n: int, shape=(16,), dtype="<f8") -> tuple[list, list]:
    """An input and ``n`` records each making the next value from the last: W4's shape."""
    arrays = [rng.standard_normal(shape).astype(dtype) for _ in range(n + 1)]
    values = [(ValueInfo("x", "input", dtype, shape), arrays[0])]
    values += [(ValueInfo(f"%{i}", "op", dtype, shape), arrays[i]) for i in range(1, n + 1)]
    records = [RecordInfo("tanh", {}, (i,), (i + 1,)) for i in range(n)]
    return values, records


def mixed_parts(rng) -> tuple[list, list]:
    """Values of every sort a frame can mix: shapes and dtypes that vary, values without bytes,
    a 0-d NumPy scalar, a big-endian array, a strided view, an array big enough for a frame of
    its own; records with attributes, sources and several inputs and outputs."""
    big = rng.standard_normal(40_000)  # 320 kB: a frame of its own
    strided = rng.standard_normal((6, 8))[::2, 1::3]
    values = [
        (ValueInfo("x", "input", "<f8", (3, 4)), rng.standard_normal((3, 4))),
        (ValueInfo("w", "input", "<f4", (4,)), rng.standard_normal(4).astype("<f4")),
        (ValueInfo("c", "const", "<f8", ()), np.float64(2.5)),
        (ValueInfo("b", "op", "<f8", (3, 4)), rng.standard_normal((3, 4)).astype(">f8")),
        (ValueInfo("s", "op", "<f8", (3, 3)), strided),
        (ValueInfo("n", "op", "<f8", (5,)), None),
        (ValueInfo("e", "op", "|b1", (0, 2)), np.zeros((0, 2), bool)),
        (ValueInfo("big", "op", "<f8", big.shape), big),
        (ValueInfo("i", "op", "<i8", (2,)), np.array([1, -2])),
    ]
    values += chain_parts(rng, 300)[0][1:]  # many small ones, named %1.. (not taken yet)
    records = [
        RecordInfo("mul", {}, (0, 2), (3,)),
        RecordInfo("get_item", {"index": (("slice", 0, None, 2),)}, (3,), (4,), ("a.py", 3, "f")),
        RecordInfo("split", {"parts": (1, 2)}, (4, 1), (5, 6)),
        RecordInfo("neg", {}, (0,), (7,)),
        RecordInfo("argmax", {"axis": 0, "keepdims": False}, (7,), (8,)),
    ]
    records += [RecordInfo("tanh", {}, (8 + i,), (9 + i,)) for i in range(299)]
    return values, records


def as_columns(values, records) -> tuple[ValueColumns, RecordColumns]:
    infos = [v[0] for v in values]
    vcols = ValueColumns(*map(list, zip(*infos)), [v[1] for v in values])
    sources = [r.source for r in records]
    rcols = RecordColumns(*map(list, zip(*(r[:4] for r in records))), sources)
    return vcols, rcols


# -- the writer: bulk and one by one agree -------------------------------------------------------


@pytest.mark.parametrize("kind", ["chain", "chain f4 (2,3)", "mixed", "strided chain", "no bytes"])
def test_bulk_and_one_by_one_write_the_same_bytes(tmp_path, rng, kind):
    if kind == "mixed":
        values, records = mixed_parts(rng)
    elif kind == "chain f4 (2,3)":
        values, records = chain_parts(rng, 20_000, (2, 3), "<f4")  # 24 bytes + 40 of padding
    else:
        values, records = chain_parts(rng, 20_000)  # more than one frame's 8192 rows
        if kind == "strided chain":  # views with no plain buffer amid plain arrays
            values[5] = (values[5][0], np.repeat(values[5][1], 2)[::2])
        if kind == "no bytes":
            values = [(info, None if i % 3 else a) for i, (info, a) in enumerate(values)]
    grads = {"x": rng.standard_normal(values[0][0].shape)}
    bulk_rows = save(tmp_path / "a.tape", values, records, grads)
    bulk_columns = save(tmp_path / "b.tape", *as_columns(values, records), grads)
    with one_by_one():
        reference = save(tmp_path / "c.tape", values, records, grads)
    assert bulk_rows == reference
    assert bulk_columns == reference
    with open_tape(tmp_path / "a.tape") as f:
        assert f.records == records
        for i, (info, array) in enumerate(values):
            assert f.values[i] == info
            if array is None:
                assert not f.has_array(i)
            else:
                assert f.array(i).tobytes() == np.asarray(array).astype(info.dtype).tobytes()


def _culprit_values(rng) -> dict[str, tuple]:
    """A bad value, by what is wrong with it."""
    a = rng.standard_normal(16)
    return {
        "taken name": (ValueInfo("%3", "op", "<f8", (16,)), a),
        "empty name": (ValueInfo("", "op", "<f8", (16,)), a),
        "kind": (ValueInfo("q", "leaf", "<f8", (16,)), a),
        "dtype": (ValueInfo("q", "op", "<U3", (16,)), a),
        "shape": (ValueInfo("q", "op", "<f8", (-1,)), None),
        "float dim": (ValueInfo("q", "op", "<f8", (16.0,)), None),
        "array shape": (ValueInfo("q", "op", "<f8", (4, 4)), a),
        "array dtype": (ValueInfo("q", "op", "<f8", (16,)), a.astype("<f4")),
        "array is a list": (ValueInfo("q", "op", "<f8", (16,)), list(a)),
        "not a ValueInfo": (("q", "op", "<f8", (16,)), a),
        "not a pair": "q",
    }


def _culprit_records() -> dict[str, RecordInfo | str]:
    return {
        "input out of range": RecordInfo("tanh", {}, (10_000,), (58,)),
        "input not made yet": RecordInfo("tanh", {}, (120,), (58,)),
        "output made already": RecordInfo("tanh", {}, (57,), (57,)),
        "output an input": RecordInfo("tanh", {}, (57,), (0,)),
        "outputs twice": RecordInfo("tanh", {}, (57,), (58, 58)),
        "negative input": RecordInfo("tanh", {}, (-2,), (58,)),
        "bool input": RecordInfo("tanh", {}, (True,), (58,)),
        "attrs set": RecordInfo("tanh", {"a": {1, 2}}, (57,), (58,)),
        "attrs key": RecordInfo("tanh", {1: 2}, (57,), (58,)),
        "attrs not a dict": RecordInfo("tanh", [1], (57,), (58,)),
        "empty op": RecordInfo("", {}, (57,), (58,)),
        "source": RecordInfo("tanh", {}, (57,), (58,), ("f.py", -1, "g")),
        "not a RecordInfo": ("tanh", {}, (57,), (58,)),
    }


LEDGER_PROBLEMS = {
    "input out of range",
    "input not made yet",
    "output made already",
    "output an input",
    "outputs twice",
}


def _error(call) -> tuple[type, str]:
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("second", [None, "kind", "array shape"])
@pytest.mark.parametrize("culprit", list(_culprit_values(np.random.default_rng(0))))
def test_a_bad_value_among_many_is_named_as_one_by_one(tmp_path, rng, culprit, second):
    values, records = chain_parts(rng, 200)
    values[57] = _culprit_values(rng)[culprit]
    if second:  # a later culprit too: the first is the one named
        values[150] = _culprit_values(rng)[second]
    bulk = _error(lambda: save(tmp_path / "t.tape", values, records))
    with one_by_one():
        assert _error(lambda: save(tmp_path / "t.tape", values, records)) == bulk
    assert "57" in bulk[1] or culprit == "not a ValueInfo", bulk  # (that message has no index)
    assert not list(tmp_path.iterdir())  # nothing left behind


@pytest.mark.parametrize("second", [None, "attrs set", "input out of range"])
@pytest.mark.parametrize("culprit", list(_culprit_records()))
def test_a_bad_record_among_many_is_named_as_one_by_one(tmp_path, rng, culprit, second):
    values, records = chain_parts(rng, 200)
    records[57] = _culprit_records()[culprit]
    if second == "attrs set":
        records[150] = RecordInfo("tanh", {"a": {1, 2}}, (150,), (151,))
    elif second:
        records[150] = RecordInfo("tanh", {}, (10_000,), (151,))
    bulk = _error(lambda: save(tmp_path / "t.tape", values, records))
    with one_by_one():
        assert _error(lambda: save(tmp_path / "t.tape", values, records)) == bulk
    # How records use values is checked a frame at a time, after each record of the frame was
    # checked alone: a bad attribute later in the frame is then the one named.
    named = 150 if second == "attrs set" and culprit in LEDGER_PROBLEMS else 57
    assert f"record {named}" in bulk[1] or culprit == "not a RecordInfo", bulk
    cols = as_columns(values, [r if type(r) is RecordInfo else RecordInfo(*r) for r in records])
    if culprit != "not a RecordInfo":  # the same culprit named when given as columns
        assert _error(lambda: save(tmp_path / "t.tape", *cols)) == bulk


def test_a_bad_value_before_a_row_that_is_no_pair_is_the_one_named(tmp_path, rng):
    values, records = chain_parts(rng, 10)
    values[3] = (ValueInfo("%3", "op", "<f8", (2,)), values[3][1])
    values[6] = "not a pair"
    with pytest.raises(ValueError, match="value 3"):
        save(tmp_path / "t.tape", values, records)


def test_a_negative_index_is_refused_before_anything_is_written(tmp_path, rng):
    """state[-2] is a valid bytearray index: a negative input must not slip through."""
    values, _ = chain_parts(rng, 2)
    bad = [RecordInfo("tanh", {}, (-2,), (1,))]
    for write in (
        lambda: save(tmp_path / "t.tape", values, bad),
        lambda: _stream(tmp_path, values, bad),
    ):
        with pytest.raises(ValueError, match="input -2 is not the index of an earlier value"):
            write()
    assert not (tmp_path / "t.tape").exists()


def _stream(tmp_path: Path, values, records) -> None:
    with TapeWriter(tmp_path / "s.tape", provenance=PROV) as w:
        for info, array in values:
            w.add_value(info, array)
        for rec in records:
            w.add_record(rec)


def test_columns_are_checked_as_columns(tmp_path, rng):
    values, records = chain_parts(rng, 5)
    vcols, rcols = as_columns(values, records)
    with pytest.raises(ValueError, match="differ in length"):
        save(tmp_path / "t.tape", vcols._replace(kinds=vcols.kinds[:-1]), rcols)
    with pytest.raises(ValueError, match="differ in length"):
        save(tmp_path / "t.tape", vcols, rcols._replace(ops=rcols.ops + ["x"]))
    with pytest.raises(TypeError, match="values.names is not a sequence"):
        save(tmp_path / "t.tape", vcols._replace(names=None), rcols)
    # dtypes as NumPy dtypes, no arrays column, no sources column: all fine
    plain = vcols._replace(dtypes=[np.dtype(d) for d in vcols.dtypes], arrays=None)
    save(tmp_path / "t.tape", plain, rcols._replace(sources=None))
    with open_tape(tmp_path / "t.tape") as f:
        assert [v.dtype for v in f.values] == ["<f8"] * 6
        assert not any(f.has_array(i) for i in range(6))


# -- the ledger: all at once and one by one agree ------------------------------------------------


@SETTINGS
@given(
    kinds=st.lists(st.sampled_from(["input", "const", "op", "op"]), max_size=12),
    data=st.data(),
)
def test_the_ledger_takes_records_at_once_as_one_by_one(kinds, data):
    n = len(kinds)
    index = st.integers(-1, n)
    records = data.draw(
        st.lists(
            st.tuples(
                st.tuples(*[index] * 2) | st.tuples(index) | st.just(()),
                st.tuples(index) | st.tuples(index, index) | st.just(()),
            ),
            min_size=layout._BULK_RECORDS,
            max_size=layout._BULK_RECORDS + 8,
        )
        | _valid_batches(kinds, data)
    )
    ins, outs = [r[0] for r in records], [r[1] for r in records]
    ledgers = [layout._Ledger() for _ in range(3)]
    for ledger in ledgers:
        ledger.add_values([f"v{i}" for i in range(n)], kinds)
    bulk, through_the_api, one_by_one = ledgers
    before = bytearray(bulk.state)
    took_all = bulk._add_all(ins, outs)
    expected = None  # the loop's verdict, a record at a time
    for k, (i, o) in enumerate(zip(ins, outs)):
        problem = one_by_one.add_records([i], [o])
        if problem:
            expected = (k, problem[1])
            break
    if took_all:  # only when every record is fine, and then as the loop would
        assert expected is None and bulk.state == one_by_one.state
    else:  # nothing changed: the loop runs next
        assert bulk.state == before
    assert through_the_api.add_records(ins, outs) == expected
    if expected is None:
        assert through_the_api.state == one_by_one.state


def _valid_batches(kinds: list[str], data) -> st.SearchStrategy:
    """Batches a chain of records makes valid (and then, maybe, one index changed)."""
    ops = [i for i, k in enumerate(kinds) if k == "op"]
    made = [i for i, k in enumerate(kinds) if k != "op"]
    order = data.draw(st.permutations(ops))
    batch = []
    for o in order:
        ins = tuple(data.draw(st.lists(st.sampled_from(made), max_size=2))) if made else ()
        batch.append((ins, (o,)))
        made.append(o)
    while len(batch) < layout._BULK_RECORDS:
        batch.append(
            (tuple(data.draw(st.lists(st.sampled_from(made), max_size=2))) if made else (), ())
        )
    if kinds and data.draw(st.booleans()):
        k, i = data.draw(st.integers(0, len(batch) - 1)), data.draw(st.integers(0, len(kinds) - 1))
        ins, outs = batch[k]
        batch[k] = (ins + (i,), outs) if data.draw(st.booleans()) else (ins, outs + (i,))
    return st.just(batch)


# -- the reader: a payload area of alike values at once ------------------------------------------


def test_an_area_of_alike_values_is_read_at_once(tmp_path, rng):
    values, records = chain_parts(rng, 300, (4, 4), "<f4")
    save(tmp_path / "t.tape", values, records)
    f = open_tape(tmp_path / "t.tape")
    first, arrays = f.arrays_around(123)
    assert first == 0 and len(arrays) == 301
    for j, a in enumerate(arrays):
        one = f.array(j)
        assert a.shape == one.shape == (4, 4) and a.dtype == one.dtype == np.float32
        assert a.tobytes() == one.tobytes() == values[j][1].tobytes()
        assert not a.flags.writeable and np.shares_memory(a, one)
    base = arrays[7]
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(getattr(base, "obj", base), mmap.mmap)  # a view of the file, no copy
    f.close()
    assert arrays[300].tobytes() == values[300][1].tobytes()  # arrays outlive close()


def test_values_not_alike_are_read_one_at_a_time(tmp_path, rng):
    values, records = mixed_parts(rng)
    save(tmp_path / "t.tape", values[:9], records[:5])
    with open_tape(tmp_path / "t.tape") as f:
        for i in range(9):
            if f.has_array(i):
                assert f.arrays_around(i)[0] == i and len(f.arrays_around(i)[1]) == 1
            else:
                with pytest.raises(ValueError, match="without its bytes"):
                    f.arrays_around(i)
    scalars = [(ValueInfo(f"s{i}", "input", "<f8", ()), np.float64(i)) for i in range(5)]
    save(tmp_path / "s.tape", scalars, [])
    with open_tape(tmp_path / "s.tape") as f:  # 0-d: rows of an array would be NumPy scalars
        first, arrays = f.arrays_around(3)
        assert first == 3 and arrays[0].shape == () and arrays[0][()] == 3.0


def test_every_byte_of_an_area_of_alike_values_flipped(tmp_path, rng):
    """Damage to a payload read at once is reported at the first access, through the file or
    the tape, and never comes back as numbers; the other frame's values still read."""
    values, records = chain_parts(rng, 20, (8,))
    path = tmp_path / "t.tape"
    data = save(path, values, records)
    with open_tape(path) as f:
        start, length, _ = f._areas[0]
    expected = [a.tobytes() for _, a in values]
    for offset in range(start, start + length, 7):
        damaged = bytearray(data)
        damaged[offset] ^= 0x10
        path.write_bytes(damaged)
        with open_tape(path) as f:
            with pytest.raises(TapeCorruptError, match="fail their checksum"):
                f.arrays_around(offset % 21)
        tape = tg.load(path)
        with pytest.raises(TapeCorruptError):
            tape[tape.value_names[offset % 21]]
        with pytest.raises(TapeFormatError):
            [tape[n] for n in tape.value_names]
    path.write_bytes(data)
    tape = tg.load(path)
    assert [tape[n].tobytes() for n in tape.value_names] == expected


# -- a loaded tape: the file's columns as its tables ---------------------------------------------


class Split(tg.Function):
    """Two outputs, and an array kept on self (not plain data: saved as a marker)."""

    def __init__(self):
        self.weights = np.ones(2)
        self.at = 1

    def forward(self, x):
        return x[: self.at], x[self.at :]

    def backward(self, gy0, gy1):
        return F.concatenate([gy0, gy1])


def recorded_tape(rng) -> tg.Tape:
    with tg.record(source=True) as tape:
        x = tg.Variable(rng.standard_normal((3, 4)), name="x")
        w = tg.Variable(rng.standard_normal((4, 5)), name="w")
        h = F.relu(F.matmul(x, w)) * 2.0
        s = F.sum(h, axis=1, keepdims=True)
        a, b = Split()(F.reshape(s, (3,)))
        y = F.sum(F.tanh(a)) + F.sum(b**2) + F.sum(x[1:, ::2].T)
        for _ in range(50):
            y = F.tanh(y)
        y.backward()
    return tape


def test_a_loaded_tape_is_the_recorded_one(tmp_path, rng):
    tape = recorded_tape(rng)
    tape.save(tmp_path / "t.tape")
    loaded = tg.load(tmp_path / "t.tape")
    for t in (tape, loaded):
        rows = [t._entry(k)[1:] for k in range(len(t))]
        assert [tuple(c) for c in zip(*t._record_columns())] == rows  # columns = _entry
    assert loaded.records == tape.records
    assert [r.source for r in loaded.records] == [r.source for r in tape.records]
    assert loaded.records[3].source[0].endswith("test_columns.py")
    split = next(r for r in loaded.records if r.op.endswith("Split"))
    assert split.attrs["weights"].startswith("<not plain data") and split.attrs["at"] == 1
    assert len(split.outputs) == 2
    for name in ("value_names", "inputs", "constants", "outputs"):
        assert getattr(loaded, name) == getattr(tape, name), name
    for name in tape.value_names:
        assert loaded[name].dtype == tape[name].dtype
        assert loaded[name].tobytes() == tape[name].tobytes()
        assert not loaded[name].flags.writeable
    assert str(loaded) == str(tape)
    names = loaded.value_names
    names.append("mine")  # a copy: the tape's own list is not handed out
    assert "mine" not in loaded and loaded.value_names == tape.value_names


def test_a_loaded_tape_saves_the_same_bytes(tmp_path, rng):
    tape = recorded_tape(rng)
    for values in ("all", "backward", "none"):
        tape.save(tmp_path / "a.tape", values=values)
        loaded = tg.load(tmp_path / "a.tape")
        loaded.save(tmp_path / "b.tape", values=values)
        assert (tmp_path / "a.tape").read_bytes() == (tmp_path / "b.tape").read_bytes(), values


def test_a_loaded_tapes_records_are_a_view_that_acts_as_a_list(tmp_path, rng):
    tape = recorded_tape(rng)
    tape.save(tmp_path / "t.tape")
    entries = tg.load(tmp_path / "t.tape")._entries
    as_list = [entries[k] for k in range(len(entries))]
    assert list(entries) == as_list
    assert entries[-1] == as_list[-1] and entries[2:5] == as_list[2:5]
    assert all(len(e) == 6 and e[0] is None for e in entries)
    with pytest.raises(IndexError):
        entries[len(entries)]


def test_records_are_immutable_tuples_compared_without_their_source():
    r = Record("tanh", {"k": 1}, ("x",), ("%1",), ("f.py", 3, "g"))
    assert (r.op, r.attrs, r.inputs, r.outputs, r.source) == (
        "tanh",
        {"k": 1},
        ("x",),
        ("%1",),
        ("f.py", 3, "g"),
    )
    assert r == Record("tanh", {"k": 1}, ("x",), ("%1",)) and not r != Record(*r[:4])
    assert r != Record("tanh", {"k": 2}, ("x",), ("%1",))
    assert r != tuple(r) and tuple(r) != r  # no record equals a plain tuple
    assert copy.copy(r) == r and pickle.loads(pickle.dumps(r)).source == r.source
    assert repr(r) == "Record(op='tanh', attrs={'k': 1}, inputs=('x',), outputs=('%1',))"
    with pytest.raises(AttributeError):
        r.op = "neg"
    with pytest.raises(TypeError):
        hash(r)


def test_op_names_and_attributes_in_bulk_are_those_of_each_call():
    """The per-class shortcut of ``_record_columns`` gives what ``function_opname`` and
    ``function_attrs`` say of each recorded call."""

    class Scale(tg.Function):  # a user Function: its attributes per call
        def __init__(self, k):
            self.k = k

        def forward(self, x):
            return x * self.k

        def backward(self, gy):
            return gy * self.k

    with tg.record() as tape:
        x = tg.Variable(np.ones(3), name="x")
        y = Scale(2.0)(F.sum(F.tanh(x), axis=0, keepdims=True))
        Scale(3.0)(F.clip(y, 0.0, 1.5))
    fns = [e[0] for e in tape._entries]
    ops, attrs, *_ = tape._record_columns()
    assert ops == [function_opname(fn) for fn in fns]
    assert attrs == [function_attrs(fn) for fn in fns]
    assert [a.get("k") for a in attrs if "k" in a] == [2.0, 3.0]
