"""Hostile tape files: cut, flipped, forged and random bytes must raise TapeFormatError (or load
the same data), never another exception, never different numbers, never unbounded memory.

The helpers below build and take apart files from schema/FORMAT.md alone, independently of the
codec. ``python tests/test_fileformat_hostile.py`` rewrites the corpus in ``tests/hostile/``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tapegrad.errors import (
    TapeCorruptError,
    TapeFormatError,
    TapeTruncatedError,
    UnsupportedVersionError,
)
from tapegrad.fileformat import RecordInfo, TapeWriter, ValueInfo, open_tape, save_tape
from tapegrad.fileformat.layout import MAX_MESSAGE

HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"
PROV = {
    "tapegrad": "test",
    "numpy": "test",
    "python": "test",
    "created": "2024-01-01T00:00:00+00:00",
}
FILE_MAGIC = b"\x89TGD\r\n\x1a\n"
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- the format, from FORMAT.md ------------------------------------------------------------------


def crc(data: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(data))


def file_header(major: int = 1, minor: int = 0) -> bytes:
    head = FILE_MAGIC + struct.pack("<HH", major, minor)
    return head + crc(head)


def frame(pos: int, kind: bytes, seq: int, body: bytes, payload: bytes = b"") -> bytes:
    """A frame at file offset ``pos`` with correct checksums; ``payload`` is padded to 64."""
    pad = b""
    if payload:
        payload += bytes(-len(payload) % 64)
        pad = bytes(-(pos + 36 + len(body)) % 64)
    fields = struct.pack(
        "<4sB3sIIQII",
        b"TGFR",
        kind[0],
        b"\0\0\0",
        seq,
        len(body),
        len(payload),
        zlib.crc32(body + pad),
        zlib.crc32(payload),
    )
    return fields + crc(fields) + body + pad + payload


def craft(frames: list, version: tuple = (1, 0), trailer: bool = True) -> bytes:
    """A file of ``frames``: (kind, body, payload) with ``body`` bytes or an object to pack;
    the last one is the footer when ``trailer``."""
    out = bytearray(file_header(*version))
    footer_pos = 0
    for seq, (kind, body, payload) in enumerate(frames):
        if not isinstance(body, (bytes, bytearray)):
            body = msgpack.packb(body, use_bin_type=True)
        footer_pos = len(out)
        out += frame(len(out), kind, seq, bytes(body), payload)
    if trailer:
        tail = struct.pack("<Q4s", footer_pos, b"TGND")
        out += tail + crc(tail)
    return bytes(out)


def parse(data: bytes) -> list[tuple[bytes, bytes, bytes, int, int]]:
    """The frames of a well-formed file: (kind, body, payload, start offset, end offset)."""
    out, pos = [], 16
    while pos + 36 <= len(data):
        magic, kind, _, _, body_len, payload_len, _, _, _ = struct.unpack_from(
            "<4sB3sIIQIII", data, pos
        )
        if magic != b"TGFR":
            break
        body_end = pos + 36 + body_len
        area = body_end + (-body_end % 64 if payload_len else 0)
        end = area + payload_len
        if end > len(data):
            break
        out.append((bytes([kind]), data[pos + 36 : body_end], data[area:end], pos, end))
        pos = end
    return out


def unframe(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    return [(kind, body, payload) for kind, body, payload, _, _ in parse(data)]


def records_before(data: bytes, cut: int) -> int:
    """How many records the R frames that end at or before ``cut`` hold."""
    n = 0
    for kind, body, _, _, end in parse(data):
        if kind == b"R" and end <= cut:
            n += len(msgpack.unpackb(body)["op"])
    return n


# -- reference tapes -----------------------------------------------------------------------------


def reference_parts(rng: np.random.Generator) -> tuple[list, list, dict, dict]:
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal((4, 2)).astype(np.float32)
    values = [
        (ValueInfo("x", "input", "<f8", (3, 4)), x),
        (ValueInfo("w", "input", "<f4", (4, 2)), w),
        (ValueInfo("c", "const", "<i8", ()), np.array(7)),
        (ValueInfo("y", "op", "<f8", (3, 2)), x @ w),
        (ValueInfo("m", "op", "|b1", (3, 2)), (x @ w) > 0),
        (ValueInfo("z", "op", "<f8", (3, 2)), None),
        (ValueInfo("s", "op", "<c16", (2,)), np.array([1 + 2j, -0.0 - 1j])),
    ]
    records = [
        RecordInfo("matmul", {}, (0, 1), (3,)),
        RecordInfo("gt", {"rhs": 0.0}, (3,), (4,), ("model.py", 12, "forward")),
        RecordInfo("mul", {"axis": (0, 1), "k": [1, "two"]}, (3, 2), (5,)),
        RecordInfo("pair", {}, (5,), (6,)),
    ]
    meta = {"lr": 0.1, "tags": ["a", "b"]}
    grads = {"x": rng.standard_normal((3, 4)), "w": np.ones((4, 2), np.float32)}
    return values, records, meta, grads


def write_streamed(path: Path, values, records, meta, grads, close: bool = True) -> None:
    """Values as they are first needed, each record after its values (as recording does)."""
    w = TapeWriter(path, provenance=PROV, meta={"start": True})
    added = 0
    for rec in records:
        need = max((*rec.inputs, *rec.outputs), default=-1) + 1
        while added < need:
            w.add_value(*values[added])
            added += 1
        w.add_record(rec)
    while added < len(values):
        w.add_value(*values[added])
        added += 1
    if close:
        w.close(meta=meta, grads=grads)


@pytest.fixture
def saved(tmp_path: Path, rng: np.random.Generator) -> bytes:
    path = tmp_path / "saved.tape"
    values, records, meta, grads = reference_parts(rng)
    save_tape(path, values, records, meta=meta, grads=grads, provenance=PROV)
    return path.read_bytes()


@pytest.fixture
def streamed(tmp_path: Path, rng: np.random.Generator) -> bytes:
    path = tmp_path / "streamed.tape"
    write_streamed(path, *reference_parts(rng))
    return path.read_bytes()


def content(f) -> tuple:
    """Everything a TapeFile says, with arrays as bytes (bit for bit)."""
    arrays = [
        (f.array(i).dtype.str, f.array(i).tobytes()) if f.has_array(i) else None
        for i in range(len(f.values))
    ]
    grads = {g: f.grad(g).tobytes() for g in f.grad_names}
    return f.values, f.records, f.meta, arrays, grads, f.complete


def load_all(path: Path, recover: bool = False) -> tuple:
    """Open and touch everything; TapeFormatError may come from either step."""
    f = open_tape(path, recover=recover)
    try:
        return content(f)
    finally:
        f.close()


def expect_format_error(path: Path, recover: bool = False) -> TapeFormatError | None:
    """None if the file loads; the TapeFormatError otherwise. Anything else fails the test."""
    try:
        load_all(path, recover)
    except TapeFormatError as e:
        text = str(e)
        assert "unexpected decoding failure" not in text, text  # the safety net is not a check
        assert len(text) <= MAX_MESSAGE, len(text)
        return e
    return None


# -- cut short -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["streamed", "saved"])
def test_cut_at_every_frame_boundary(which, request, tmp_path):
    data = request.getfixturevalue(which)
    path = tmp_path / "cut.tape"
    full = open_tape_bytes(data, tmp_path)
    for _, _, _, _, end in parse(data)[:-1]:
        path.write_bytes(data[:end])
        with pytest.raises(TapeTruncatedError) as info:
            open_tape(path)
        n = records_before(data, end)
        assert info.value.complete_records == n
        assert f"{n} complete records" in str(info.value)
        values, records, meta, arrays, grads, complete = load_all(path, recover=True)
        assert not complete
        assert records == full[1][:n]
        assert values == full[0][: len(values)]
        assert arrays == full[3][: len(values)]


def open_tape_bytes(data: bytes, tmp_path: Path) -> tuple:
    path = tmp_path / "whole.tape"
    path.write_bytes(data)
    return load_all(path)


@pytest.mark.parametrize("which", ["streamed", "saved"])
def test_cut_at_every_offset(which, request, tmp_path):
    data = request.getfixturevalue(which)
    full = open_tape_bytes(data, tmp_path)
    path = tmp_path / "cut.tape"
    header_end = parse(data)[0][4]
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(TapeTruncatedError) as info:
            open_tape(path)
        if cut < header_end:  # not even the header frame: nothing to recover
            with pytest.raises(TapeTruncatedError):
                open_tape(path, recover=True)
            continue
        got = load_all(path, recover=True)
        assert got[1] == full[1][: len(got[1])] and len(got[1]) == info.value.complete_records
        assert got[3] == full[3][: len(got[3])]


def test_empty_and_tiny_files(tmp_path):
    path = tmp_path / "t.tape"
    for data in (b"", FILE_MAGIC[:3], FILE_MAGIC, file_header()):
        path.write_bytes(data)
        for recover in (False, True):
            with pytest.raises(TapeTruncatedError) as info:
                open_tape(path, recover=recover)
            assert info.value.complete_records == 0


# -- damage --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["saved", "streamed"])
def test_every_byte_flipped(which, request, tmp_path, rng):
    """One flipped bit at each byte (the bit drawn at random): an error at open or at the first
    access of the damaged value, never different numbers; in a complete file never 'cut short'."""
    data = request.getfixturevalue(which)
    path = tmp_path / "flip.tape"
    bits = rng.integers(0, 8, len(data))
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 1 << int(bits[i])
        path.write_bytes(damaged)
        error = expect_format_error(path)
        assert error is not None, f"a flipped bit at offset {i} went unnoticed"
        assert not isinstance(error, TapeTruncatedError), (i, error)


def test_damage_in_the_middle_of_a_cut_file_is_corruption(streamed, tmp_path):
    frames = parse(streamed)
    cut = frames[-2][4]  # an unfinished stream: no footer
    path = tmp_path / "t.tape"
    for _, _, _, start, end in frames[1:-2]:
        for offset in (start + 13, start + 40, end - 1):  # a length field, the body, the end
            damaged = bytearray(streamed[:cut])
            damaged[offset] ^= 0x10
            path.write_bytes(damaged)
            with pytest.raises(TapeCorruptError):
                load_all(path, recover=True)
    last_start = frames[-2][3]
    damaged = bytearray(streamed[:cut])
    damaged[last_start + 13] ^= 0x10  # the last frame's length: a torn tail
    path.write_bytes(damaged)
    with pytest.raises(TapeTruncatedError):
        open_tape(path)
    assert not load_all(path, recover=True)[5]


@pytest.mark.parametrize("field", ["body_len", "payload_len32", "payload_len64"])
@pytest.mark.parametrize("fix_crc", [False, True])
def test_length_fields_at_their_maximum(saved, streamed, tmp_path, field, fix_crc):
    path = tmp_path / "len.tape"
    offset, fmt, value = {
        "body_len": (12, "<I", 2**32 - 1),
        "payload_len32": (16, "<Q", 2**32 - 1),
        "payload_len64": (16, "<Q", 2**64 - 1),
    }[field]
    for data in (saved, streamed, streamed[: parse(streamed)[-2][4]]):
        for _, _, _, start, _ in parse(data):
            damaged = bytearray(data)
            struct.pack_into(fmt, damaged, start + offset, value)
            if fix_crc:
                struct.pack_into("<I", damaged, start + 32, zlib.crc32(damaged[start : start + 32]))
            path.write_bytes(damaged)
            assert expect_format_error(path) is not None
            expect_format_error(path, recover=True)


@SETTINGS
@given(data=st.data())
def test_random_multi_byte_damage(saved, tmp_path, data):
    damaged = bytearray(saved)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(saved) - 1))
        damaged[i] = data.draw(st.integers(0, 255).filter(lambda b, i=i: b != saved[i]))
    path = tmp_path / "dmg.tape"
    path.write_bytes(damaged)
    assert expect_format_error(path) is not None


# -- forged files (checksums right, content wrong) -----------------------------------------------

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@SETTINGS
@given(data=st.data())
def test_forged_bodies(saved, streamed, tmp_path, data):
    """A frame body replaced or edited, every checksum recomputed: the reader's own checks must
    refuse what is wrong and load what is right."""
    frames = unframe(data.draw(st.sampled_from([saved, streamed])))
    k = data.draw(st.integers(0, len(frames) - 1))
    kind, body, payload = frames[k]
    obj = msgpack.unpackb(body)
    how = data.draw(st.sampled_from(["replace", "field", "drop", "add", "cell"]))
    if how == "replace":
        obj = data.draw(plain)
    elif isinstance(obj, dict) and obj:
        key = data.draw(st.sampled_from(sorted(obj)))
        if how == "field":
            obj[key] = data.draw(plain)
        elif how == "drop":
            del obj[key]
        elif how == "add":
            obj[data.draw(st.text(max_size=6))] = data.draw(plain)
        elif isinstance(obj[key], list) and obj[key]:
            obj[key][data.draw(st.integers(0, len(obj[key]) - 1))] = data.draw(plain)
    frames[k] = (kind, obj, payload)
    path = tmp_path / "forged.tape"
    path.write_bytes(craft(frames))
    expect_format_error(path)


@SETTINGS
@given(kinds=st.lists(st.sampled_from(list(b"HVRGFX")), min_size=1, max_size=5), data=st.data())
def test_forged_frame_sequences(tmp_path, kinds, data):
    frames = [
        (bytes([k]), data.draw(plain), data.draw(st.sampled_from([b"", bytes(64), b"\1" * 128])))
        for k in kinds
    ]
    path = tmp_path / "seq.tape"
    path.write_bytes(craft(frames, trailer=data.draw(st.booleans())))
    assert expect_format_error(path) is not None or kinds[0] == ord("H")


@SETTINGS
@given(blob=st.binary(max_size=2000), with_magic=st.booleans())
def test_random_bytes(tmp_path, blob, with_magic):
    path = tmp_path / "random.tape"
    path.write_bytes((file_header() if with_magic else b"") + blob)
    assert expect_format_error(path) is not None
    expect_format_error(path, recover=True)


def test_other_documents(tmp_path):
    path = tmp_path / "other.tape"
    others = [
        msgpack.packb({"format": "tapegrad", "values": [1, 2, 3]}),
        msgpack.packb([FILE_MAGIC, 1, 0]),
        json.dumps({"a": 1}).encode(),
        b"\x93NUMPY\x01\x00" + bytes(100),
        b"PK\x03\x04" + bytes(100),
        FILE_MAGIC + msgpack.packb({"a": 1}) * 10,
    ]
    for data in others:
        path.write_bytes(data)
        assert isinstance(expect_format_error(path), TapeFormatError)


def test_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_tape(tmp_path / "missing.tape")
    with pytest.raises(IsADirectoryError):
        open_tape(tmp_path)


# -- versions ------------------------------------------------------------------------------------


def test_newer_major_version_is_refused(saved, tmp_path):
    path = tmp_path / "v2.tape"
    path.write_bytes(craft(unframe(saved), version=(2, 3)))
    with pytest.raises(UnsupportedVersionError) as info:
        open_tape(path)
    assert "2.3" in str(info.value) and "1.0" in str(info.value)


def test_newer_minor_version(saved, tmp_path):
    """A newer minor version loads when it uses nothing new; new fields or frame kinds are
    refused as an unsupported version, naming both versions."""
    frames = unframe(saved)
    path = tmp_path / "v11.tape"
    path.write_bytes(craft(frames, version=(1, 1)))
    assert open_tape(path).complete
    header = msgpack.unpackb(frames[0][1])
    header["compression"] = "none"
    path.write_bytes(craft([(b"H", header, b""), *frames[1:]], version=(1, 1)))
    with pytest.raises(UnsupportedVersionError) as info:
        open_tape(path)
    assert "1.1" in str(info.value) and "1.0" in str(info.value)
    path.write_bytes(craft([frames[0], (b"Z", {}, b""), *frames[1:]], version=(1, 1)))
    with pytest.raises(UnsupportedVersionError):
        open_tape(path)
    values = msgpack.unpackb(frames[1][1])
    values["dtype"][0] = "<f16"  # a dtype this reader does not know
    path.write_bytes(craft([frames[0], (b"V", values, frames[1][2]), *frames[2:]], version=(1, 1)))
    with pytest.raises(UnsupportedVersionError):
        open_tape(path)
    path.write_bytes(craft([(b"H", header, b""), *frames[1:]], version=(1, 0)))
    with pytest.raises(TapeCorruptError):  # the same field in a 1.0 file is damage
        open_tape(path)


def test_version_zero_does_not_exist(saved, tmp_path):
    path = tmp_path / "v0.tape"
    path.write_bytes(craft(unframe(saved), version=(0, 9)))
    with pytest.raises(TapeFormatError):
        open_tape(path)


# -- bounds --------------------------------------------------------------------------------------


def hostile_corpus() -> dict[str, bytes]:
    """Files that must be refused, each with its checksums right so that the checks behind them
    are reached."""
    prov = {"tapegrad": "x", "numpy": "x", "python": "x", "created": "x"}
    header = (b"H", {"format": "tapegrad", "provenance": prov, "meta": {}}, b"")

    def values(names=("x",), kinds=("input",), dtypes=("<f8",), shapes=((2,),), data=None):
        data = data if data is not None else [None] * len(names)
        return {"name": names, "kind": kinds, "dtype": dtypes, "shape": shapes, "data": data}

    def footer(frames, nv=1, nr=0):
        return (b"F", {"frames": frames, "values": nv, "records": nr, "grads": 0}, b"")

    four_mib = 4 * 1024 * 1024 - 64
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    corpus = {
        "empty_maps_bomb": craft(
            [
                header,
                (b"R", b"\xdd" + struct.pack(">I", four_mib - 5) + b"\x80" * (four_mib - 5), b""),
            ]
        ),
        "nested_arrays_bomb": craft([header, (b"V", b"\x91" * 100_000 + b"\xc0", b"")]),
        "array_len_2_32": craft([header, (b"V", b"\xdd\xff\xff\xff\xff", b"")]),
        "map_len_2_32": craft([header, (b"V", b"\xdf\xff\xff\xff\xff", b"")]),
        "str_len_2_32": craft([header, (b"V", b"\xdb\xff\xff\xff\xff", b"")]),
        "ext_type": craft([header, (b"V", b"\xd6\xff\x00\x00\x00\x00", b"")]),
        "huge_shape_no_data": craft(
            [header, (b"V", values(shapes=[(2**62, 2**62)]), b""), footer(2)]
        ),
        "huge_shape_with_data": craft(
            [
                header,
                (b"V", values(shapes=[(2**31, 2**31)], data=[(0, 2**63)]), bytes(64)),
                footer(2),
            ]
        ),
        "shape_too_big_for_numpy": craft(
            [header, (b"V", values(shapes=[(0, 2**62, 2**62)], data=[(0, 0)]), b""), footer(2)]
        ),
        "data_beyond_area": craft(
            [header, (b"V", values(data=[(0, 16)], shapes=[(2,)]), b""), footer(2)]
        ),
        "data_offset_inside_other": craft(
            [
                header,
                (
                    b"V",
                    values(
                        names=("a", "b"),
                        kinds=("input",) * 2,
                        dtypes=("<f8",) * 2,
                        shapes=((2,), (2,)),
                        data=[(0, 16), (0, 16)],
                    ),
                    bytes(128),
                ),
                footer(2, 2),
            ]
        ),
        "object_dtype": craft([header, (b"V", values(dtypes=["|O"]), b""), footer(2)]),
        "void_dtype": craft([header, (b"V", values(dtypes=["|V8"]), b""), footer(2)]),
        "structured_dtype": craft(
            [header, (b"V", values(dtypes=[[["a", "<f8"]]]), b""), footer(2)]
        ),
        "big_endian_dtype": craft([header, (b"V", values(dtypes=[">f8"]), b""), footer(2)]),
        "frame_after_footer": craft([header, footer(1, 0), (b"V", values(), b"")]),
        "record_uses_future_value": craft(
            [
                header,
                (b"R", {"op": ["f"], "attrs": [{}], "inputs": [[5]], "outputs": [[0]]}, b""),
                footer(2, 0, 1),
            ]
        ),
        "output_is_an_input": craft(
            [
                header,
                (b"V", values(), b""),
                (b"R", {"op": ["f"], "attrs": [{}], "inputs": [[0]], "outputs": [[0]]}, b""),
                footer(3, 1, 1),
            ]
        ),
        "duplicate_names": craft(
            [
                header,
                (
                    b"V",
                    values(
                        names=("a", "a"),
                        kinds=("input",) * 2,
                        dtypes=("<f8",) * 2,
                        shapes=((2,), (2,)),
                    ),
                    b"",
                ),
                footer(2, 2),
            ]
        ),
        "long_name": craft([header, (b"V", values(names=["n" * 1_000_000]), b""), footer(2)]),
        "deep_attrs": craft(
            [
                header,
                (b"V", values(), b""),
                (
                    b"R",
                    {"op": ["f"], "attrs": [{"a": deep}], "inputs": [[0]], "outputs": [[]]},
                    b"",
                ),
                footer(3, 1, 1),
            ]
        ),
        "columns_differ": craft([header, (b"V", values(names=("a", "b")), b""), footer(2, 2)]),
        "footer_counts_lie": craft([header, (b"V", values(), b""), footer(2, 5)]),
        "many_frame_magics": craft([header], trailer=False) + b"TGFR" * 200_000,
    }
    # the footer's sequence number says 2 but it is frame 1: frames were dropped
    frames = [header, (b"V", values(), b""), footer(2)]
    whole = craft(frames)
    dropped = parse(whole)
    corpus["frame_dropped"] = (
        whole[:16] + whole[dropped[0][3] : dropped[0][4]] + whole[dropped[2][3] :]
    )
    # two value frames swapped: each is numbered for the other's place
    two = craft(
        [header, (b"V", values(names=["a"]), b""), (b"V", values(names=["b"]), b""), footer(3, 2)]
    )
    a, b = parse(two)[1], parse(two)[2]
    corpus["frames_swapped"] = two[: a[3]] + two[b[3] : b[4]] + two[a[3] : a[4]] + two[b[4] :]
    return corpus


def test_hostile_corpus_is_refused(tmp_path):
    for name, data in hostile_corpus().items():
        path = tmp_path / f"{name}.tape"
        path.write_bytes(data)
        assert expect_format_error(path) is not None, name
        expect_format_error(path, recover=True)


def test_committed_hostile_files_are_refused():
    files = sorted(HOSTILE_DIR.glob("*.tape"))
    assert files, "tests/hostile/ is empty: run python tests/test_fileformat_hostile.py"
    for path in files:
        assert expect_format_error(path) is not None, path.name


def test_error_messages_are_bounded(tmp_path):
    name = "ñ" * 500_000
    path = tmp_path / ("p" * 200 + ".tape")
    data = craft(
        [
            (b"H", {"format": "tapegrad", "provenance": PROV, "meta": {}}, b""),
            (
                b"V",
                {
                    "name": [name],
                    "kind": ["input"],
                    "dtype": ["<f8"],
                    "shape": [[1]],
                    "data": [[0, 9]],
                },
                bytes(64),
            ),
        ]
    )
    path.write_bytes(data)
    error = expect_format_error(path)
    assert error is not None and len(str(error)) <= MAX_MESSAGE


def test_opening_a_gigabyte_tape_reads_only_its_index(tmp_path):
    """A 1 GiB payload (a sparse file): opening and listing it touches a few pages; the payload
    is read, and its checksum checked, only at first access."""
    import resource

    size = 2**30
    header = (b"H", {"format": "tapegrad", "provenance": PROV, "meta": {}}, b"")
    body = {
        "name": ["big"],
        "kind": ["input"],
        "dtype": ["<f8"],
        "shape": [[size // 8]],
        "data": [[0, size]],
    }
    head = craft([header], trailer=False)
    body_bytes = msgpack.packb(body)
    pad = bytes(-(len(head) + 36 + len(body_bytes)) % 64)
    fields = struct.pack(
        "<4sB3sIIQII",
        b"TGFR",
        ord("V"),
        b"\0\0\0",
        1,
        len(body_bytes),
        size,
        zlib.crc32(body_bytes + pad),
        12345,  # a payload checksum that cannot match
    )
    path = tmp_path / "giga.tape"
    with open(path, "wb") as f:
        f.write(head + fields + crc(fields) + body_bytes + pad)
        f.seek(size, os.SEEK_CUR)  # a hole: the payload
        footer_pos = f.tell()
        footer = msgpack.packb({"frames": 2, "values": 1, "records": 0, "grads": 0})
        f.write(frame(footer_pos, b"F", 2, footer))
        tail = struct.pack("<Q4s", footer_pos, b"TGND")
        f.write(tail + crc(tail))
    before = resource.getrusage(resource.RUSAGE_SELF)
    t = open_tape(path)
    assert [v.shape for v in t.values] == [(size // 8,)] and t.complete
    after = resource.getrusage(resource.RUSAGE_SELF)
    assert after.ru_minflt - before.ru_minflt < 4096  # pages: far below 1 GiB / 4 KiB
    with pytest.raises(TapeCorruptError):
        t.array(0)
    t.close()


RLIMIT_SCRIPT = textwrap.dedent(
    """
    import resource, sys, traceback
    from pathlib import Path
    from tapegrad.errors import TapeFormatError
    from tapegrad.fileformat import open_tape
    resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
    try:
        bytearray(2**30)
        sys.exit("the address-space limit is not in force")
    except MemoryError:
        pass
    bad = 0
    for path in sorted(Path(sys.argv[1]).glob("*.tape")):
        for recover in (False, True):
            try:
                f = open_tape(path, recover=recover)
                for i in range(len(f.values)):
                    if f.has_array(i):
                        f.array(i)
                for g in f.grad_names:
                    f.grad(g)
            except TapeFormatError:
                pass
            except BaseException:
                bad += 1
                print(path.name, recover, file=sys.stderr)
                traceback.print_exc()
    print("done", bad)
    sys.exit(1 if bad else 0)
    """
)


def test_hostile_files_under_a_1_gib_address_space_limit(tmp_path):
    for name, data in hostile_corpus().items():
        (tmp_path / f"{name}.tape").write_bytes(data)
    for path in HOSTILE_DIR.glob("*.tape"):
        (tmp_path / f"committed_{path.name}").write_bytes(path.read_bytes())
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", RLIMIT_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.strip() == "done 0"


if __name__ == "__main__":
    HOSTILE_DIR.mkdir(exist_ok=True)
    for old in HOSTILE_DIR.glob("*.tape"):
        old.unlink()
    for name, data in hostile_corpus().items():
        if len(data) <= 64 * 1024:  # the bombs stay generated, not committed
            (HOSTILE_DIR / f"{name}.tape").write_bytes(data)
