"""The ``tapegrad`` command, run as a subprocess on tapes made here (issue 4, contract section 3).

Every subcommand's output content and exit status: 0 fine, 1 a check found a problem, 2 bad usage
or a missing/damaged file (then exactly one line on stderr and no traceback). Recovered (cut-short)
tapes open with one warning line in ``inspect list nan validate`` and are refused by ``grad``.

Subprocesses cost ~0.3 s each: the tapes are made once per module, and batches of independent
commands run concurrently.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import tapegrad
import tapegrad.functions as F
from tapegrad import Variable

SUBCOMMANDS = ["inspect", "list", "grad", "eval", "check", "nan", "diff", "dot", "validate"]
SUBCOMMANDS += ["schema", "demo"]
THIS_FILE = os.path.basename(__file__)
CONSOLE_SCRIPT = Path(sys.executable).parent / "tapegrad"


@dataclass
class Run:
    args: tuple
    returncode: int
    stdout: str
    stderr: str

    @property
    def err_lines(self) -> list[str]:
        return self.stderr.splitlines()

    def json(self):
        return json.loads(self.stdout)


def cli(*args, cwd=None, env=None, exe=None) -> Run:
    cmd = [str(exe)] if exe else [sys.executable, "-m", "tapegrad.cli"]
    r = subprocess.run(
        cmd + [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    return Run(tuple(args), r.returncode, r.stdout, r.stderr)


def cli_many(argvs, cwd=None) -> list[Run]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda a: cli(*a, cwd=cwd), argvs))


def assert_ok(r: Run, code: int = 0) -> None:
    assert r.returncode == code, (r.args, r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr


def assert_error(r: Run, *words: str) -> None:
    """Exit 2, exactly one line on stderr (naming ``words``), no traceback."""
    assert r.returncode == 2, (r.args, r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert len(r.err_lines) == 1, (r.args, r.stderr)
    assert r.err_lines[0].startswith("tapegrad: error:"), r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def assert_recovered_warning(r: Run) -> None:
    assert_ok(r)
    assert len(r.err_lines) == 1, r.stderr
    assert r.err_lines[0].startswith("tapegrad: warning:") and "cut short" in r.stderr


# -- the tapes ------------------------------------------------------------------------------------

USER_OPS = '''
import numpy as np
import tapegrad


@tapegrad.register_op("tgcli.bad_square")
class BadSquare(tapegrad.Function):
    """x * x with a deliberately wrong backward (misses the factor 2)."""

    def forward(self, x):
        return x * x

    def backward(self, gy):
        (x,) = self.inputs
        return gy * x


@tapegrad.register_op("tgcli.square")
class Square(tapegrad.Function):
    def forward(self, x):
        return x * x

    def backward(self, gy):
        (x,) = self.inputs
        return gy * 2.0 * x
'''

KILL_SCRIPT = """
import os, signal, sys
import numpy as np
import tapegrad, tapegrad.functions as F
from tapegrad import Variable

rng = np.random.default_rng(5)
x = Variable(rng.standard_normal((4, 3)), name="x")
W = Variable(rng.standard_normal((3, 3)) * 0.5, name="W")
with tapegrad.record(sys.argv[1]):
    h = x
    for i in range(1000):
        h = F.tanh(F.matmul(h, W))
        if i == 4:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def _mlp(act=F.tanh, dW2=None, seed=11, source=True, overrides=None):
    g = np.random.default_rng(seed)
    x = g.standard_normal((6, 3))
    params = [
        Variable(g.standard_normal((3, 5)), name="W1"),
        Variable(g.standard_normal(5) * 0.1, name="b1"),
        Variable(g.standard_normal((5, 4)), name="W2"),
        Variable(g.standard_normal(4) * 0.1, name="b2"),
    ]
    if dW2 is not None:
        params[2].data[1, 2] += dW2
    for p in params:
        if overrides and p.name in overrides:
            p.data = np.array(overrides[p.name], copy=True)
    t = g.integers(0, 4, size=6)
    with tapegrad.record(source=source, meta={"run": "cli-test"}) as tape:
        h = act(F.linear(x, params[0], params[1]))
        loss = F.softmax_cross_entropy(F.linear(h, params[2], params[3]), t)
    loss.backward()
    return tape, loss, params


def _flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x5A
    return bytes(b)


class Tapes:
    pass


@pytest.fixture(scope="module")
def tapes(tmp_path_factory) -> Tapes:
    d = tmp_path_factory.mktemp("cli")
    T = Tapes()
    T.dir = d

    T.mlp_tape, T.loss, T.params = _mlp()
    T.mlp = d / "mlp.tape"
    T.mlp_tape.save(T.mlp)
    T.live = {p.name: p.grad.data.copy() for p in T.params}
    _mlp()[0].save(d / "mlp_same.tape")
    _mlp(dW2=1e-6)[0].save(d / "mlp_w2.tape")
    _mlp(act=F.sigmoid)[0].save(d / "mlp_sigmoid.tape")

    # two outputs: a vector and a scalar
    g = np.random.default_rng(12)
    W = Variable(g.standard_normal((3, 2)), name="W")
    x = g.standard_normal((4, 3))
    with tapegrad.record() as two:
        h = F.tanh(F.matmul(x, W))
        h * 2.0  # a vector output ...
        F.sum(h * h)  # ... and a scalar one
    T.two = d / "two.tape"
    two.save(T.two)
    T.two_outputs = {two[n].shape: n for n in two.outputs}
    T.two_W = W.data
    T.two_x = x

    # a NaN made by log of a negative number; an inf made only in the backward pass
    u = Variable(np.array([2.0, -1.0, 0.5]), name="u")
    with np.errstate(all="ignore"), tapegrad.record(source=True) as tl:
        F.sum(F.exp(F.log(F.tanh(u) + 0.5)))
    T.log_record = [r.op for r in tl.records].index("log")
    T.log = d / "log.tape"
    tl.save(T.log)
    z = Variable(np.array([0.0, 1.0, 4.0]), name="z")
    with tapegrad.record() as ts:
        F.sum(F.sqrt(z) * 2.0)
    T.sqrt = d / "sqrt.tape"
    ts.save(T.sqrt)

    # a branch on a value
    a = Variable(np.array(2.0), name="a")
    with tapegrad.record(source=True) as tgd:
        T.guard_line = sys._getframe().f_lineno + 1
        if a > 0:
            a * 3.0
    T.guard = d / "guard.tape"
    tgd.save(T.guard)

    # user ops in a module the CLI imports with --import
    (d / "tgcli_ops.py").write_text(textwrap.dedent(USER_OPS))
    sys.path.insert(0, str(d))
    try:
        import tgcli_ops
    finally:
        sys.path.remove(str(d))
    v = Variable(np.array([0.5, -1.5, 2.0]), name="v")
    with tapegrad.record() as tb:
        F.sum(F.sin(tgcli_ops.BadSquare()(v)))
    T.bad = d / "bad.tape"
    tb.save(T.bad)
    with tapegrad.record() as tg:
        F.sum(F.sin(tgcli_ops.Square()(v)))
    T.good = d / "good.tape"
    tg.save(T.good)

    # a big input: the middle of the file is inside its bytes
    X = Variable(np.random.default_rng(13).standard_normal((96, 64)), name="X")
    with tapegrad.record() as tbig:
        F.sum(F.tanh(X))
    T.big = d / "big.tape"
    tbig.save(T.big)

    # a recording cut short by SIGKILL
    (d / "train.py").write_text(KILL_SCRIPT)
    T.killed = d / "killed.tape"
    r = subprocess.run([sys.executable, str(d / "train.py"), str(T.killed)], capture_output=True)
    assert r.returncode == -signal.SIGKILL, r.stderr

    # damaged files
    data = T.big.read_bytes()
    T.flip = d / "flip.tape"
    T.flip.write_bytes(_flip(data, len(data) // 2))
    loaded = tapegrad.load(T.flip)  # the index is intact: the damage is in X's bytes
    with pytest.raises(tapegrad.TapeCorruptError):
        loaded.backward()
    T.flipmeta = d / "flipmeta.tape"
    mdata = T.mlp.read_bytes()
    for pos in range(len(mdata) - 1, 0, -1):  # a byte of the index (found from the end)
        T.flipmeta.write_bytes(_flip(mdata, pos))
        try:
            tapegrad.load(T.flipmeta)
        except tapegrad.TapeFormatError:
            break
    else:
        raise AssertionError("no byte of the index found")
    T.trunc = d / "trunc.tape"
    T.trunc.write_bytes(mdata[: len(mdata) // 2])
    T.empty = d / "empty.tape"
    T.empty.write_bytes(b"")
    T.random = d / "random.tape"
    T.random.write_bytes(np.random.default_rng(14).bytes(3000))
    T.missing = d / "no-such.tape"
    return T


# -- --help ----------------------------------------------------------------------------------------


def test_help_of_every_subcommand_shows_an_example():
    runs = cli_many([[sub, "--help"] for sub in SUBCOMMANDS])
    for sub, r in zip(SUBCOMMANDS, runs):
        assert_ok(r)
        assert r.stdout.startswith(f"usage: tapegrad {sub}")
        assert "example:" in r.stdout and f"tapegrad {sub}" in r.stdout.split("example:")[1]


def test_bad_usage_exits_2_with_one_line():
    runs = cli_many(
        [
            [],  # no command: the help on stdout, one error line on stderr
            ["frobnicate"],
            ["inspect", "--no-such-option", "x.tape"],
            ["list", "x.tape", "--limit", "-1"],
            ["eval", "x.tape", "-o", "out.tape"],  # --inputs is required
        ]
    )
    for r in runs:
        assert_error(r)
    for sub in SUBCOMMANDS:
        assert sub in runs[0].stdout
    assert "frobnicate" in runs[1].stderr
    assert "--no-such-option" in runs[2].stderr
    assert "--limit" in runs[3].stderr
    assert "--inputs" in runs[4].stderr


# -- inspect / list ----------------------------------------------------------------------------------


def test_inspect_prints_the_summary(tapes):
    r = cli("inspect", tapes.mlp)
    assert_ok(r)
    assert r.stderr == ""
    out = r.stdout
    assert "records   4" in out
    assert "W1: float64[3, 5]" in out and "b2: float64[4]" in out
    assert "linear x2" in out and "tanh x1" in out and "softmax_cross_entropy x1" in out
    assert "float64" in out and "int64" in out  # bytes by dtype
    assert "meta      run = 'cli-test'" in out
    assert tapegrad.__version__ in out and "recovered" not in out


def test_inspect_json(tapes):
    r = cli("inspect", tapes.mlp, "--json")
    assert_ok(r)
    s = r.json()
    assert s["records"] == 4 and s["complete"] is True
    assert s["ops"] == {"linear": 2, "softmax_cross_entropy": 1, "tanh": 1}
    assert [v["name"] for v in s["inputs"]] == ["W1", "b1", "W2", "b2"]
    assert s["inputs"][0] == {"name": "W1", "shape": [3, 5], "dtype": "float64"}
    assert s["outputs"] == [{"name": tapes.mlp_tape.outputs[0], "shape": [], "dtype": "float64"}]
    assert s["grads"] == ["W1", "W2", "b1", "b2"]
    assert s["meta"] == {"run": "cli-test"}
    assert s["provenance"]["tapegrad"] == tapegrad.__version__
    assert s == json.loads(json.dumps(tapegrad.load(tapes.mlp).summary()))


def test_list_prints_one_line_per_record_and_filters(tapes):
    full, by_op, limited, js = cli_many(
        [
            ["list", tapes.mlp],
            ["list", tapes.mlp, "--op", "linear"],
            ["list", tapes.mlp, "--limit", "1"],
            ["list", tapes.mlp, "--json", "--op", "tanh"],
        ]
    )
    assert_ok(full)
    lines = full.stdout.splitlines()
    assert len(lines) == 4
    for k, (line, rec) in enumerate(zip(lines, tapes.mlp_tape.records)):
        assert line.startswith(f"{k}  ") and f"= {rec.op}(" in line
        assert f"# {THIS_FILE}:" in line  # recorded with source=True
    assert "W1:f64[3,5]" in lines[0]

    assert_ok(by_op)
    ops_lines = by_op.stdout.splitlines()
    assert [ln for ln in ops_lines if "= linear(" in ln] == [lines[0], lines[2]]
    assert ops_lines[-1] == "(2 of 4 records shown)"

    assert_ok(limited)
    assert limited.stdout.splitlines() == [lines[0], "(1 of 4 records shown)"]

    assert_ok(js)
    (rec,) = js.json()
    assert rec["index"] == 1 and rec["op"] == "tanh" and rec["attrs"] == {}
    (h,) = tapes.mlp_tape.records[1].inputs
    assert rec["inputs"] == [{"name": h, "shape": [6, 5], "dtype": "float64"}]
    assert len(rec["outputs"]) == 1
    assert rec["source"][0].endswith(THIS_FILE)


# -- grad / eval -----------------------------------------------------------------------------------


def test_grad_prints_writes_and_jsons_the_live_gradients(tapes):
    out = tapes.dir / "grads.npz"
    text, to_file, js = cli_many(
        [["grad", tapes.mlp], ["grad", tapes.mlp, "-o", out], ["grad", tapes.mlp, "--json"]]
    )
    assert_ok(text)
    for name, g in tapes.live.items():
        assert f"{name}: float64{list(g.shape)}  |grad| = {np.linalg.norm(g):.6g}" in text.stdout

    assert_ok(to_file)
    assert str(out) in to_file.stdout
    with np.load(out) as z:
        assert sorted(z.files) == sorted(tapes.live)
        for name, g in tapes.live.items():
            assert z[name].dtype == g.dtype and np.array_equal(z[name], g)  # bit for bit

    assert_ok(js)
    data = js.json()
    assert set(data) == set(tapes.live)
    for name, g in tapes.live.items():
        assert data[name]["shape"] == list(g.shape) and data[name]["dtype"] == "float64"
        assert np.array_equal(np.array(data[name]["values"]), g)  # JSON floats round-trip


def test_grad_of_a_chosen_output(tapes):
    of_vec, of_sum = tapes.two_outputs[(4, 2)], tapes.two_outputs[()]
    none, chosen = cli_many([["grad", tapes.two], ["grad", tapes.two, "--of", of_sum, "--json"]])
    assert_error(none, "of")  # two outputs: which one?
    assert of_vec in none.stderr and of_sum in none.stderr
    assert_ok(chosen)
    W = Variable(tapes.two_W.copy(), name="W")
    h = F.tanh(F.matmul(tapes.two_x, W))
    F.sum(h * h).backward()
    assert np.array_equal(np.array(chosen.json()["W"]["values"]), W.grad.data)


def test_eval_replays_with_new_inputs(tapes, tmp_path):
    g = np.random.default_rng(21)
    new = {"W1": g.standard_normal((3, 5)), "b2": g.standard_normal(4)}
    np.savez(tmp_path / "in.npz", **new)
    out = tmp_path / "out.tape"
    r = cli("eval", tapes.mlp, "--inputs", tmp_path / "in.npz", "-o", out)
    assert_ok(r)
    assert "replayed 4 records" in r.stdout and str(out) in r.stdout

    assert "outputs:" in r.stdout
    live, loss, params = _mlp(overrides=new)  # a live run at those inputs
    replayed = tapegrad.load(out)
    d = tapegrad.diff(replayed, live, rtol=0, atol=0)
    assert d.same, str(d)
    assert replayed[replayed.outputs[0]] == loss.data
    got = replayed.backward()
    for p in params:
        assert np.array_equal(got[p.name], p.grad.data)


def test_eval_refuses_bad_inputs(tapes, tmp_path):
    np.savez(tmp_path / "unknown.npz", nope=np.ones(3))
    np.savez(tmp_path / "shape.npz", W1=np.ones((4, 5)))
    (tmp_path / "junk.npz").write_bytes(b"not an npz at all")
    out = tmp_path / "o.tape"
    unknown, shape, junk = cli_many(
        [
            ["eval", tapes.mlp, "--inputs", tmp_path / "unknown.npz", "-o", out],
            ["eval", tapes.mlp, "--inputs", tmp_path / "shape.npz", "-o", out],
            ["eval", tapes.mlp, "--inputs", tmp_path / "junk.npz", "-o", out],
        ]
    )
    assert_error(unknown, "nope", "W1")
    assert_error(shape, "record 0", "linear", "(4, 5)", "(3, 5)")
    assert_error(junk, "junk.npz")
    assert not out.exists()


def test_eval_across_a_branch_guard(tapes, tmp_path):
    np.savez(tmp_path / "neg.npz", a=np.array(-1.0))
    strict_out, loose_out = tmp_path / "s.tape", tmp_path / "l.tape"
    common = [tapes.guard, "--inputs", tmp_path / "neg.npz", "-o"]
    strict, loose = cli_many(
        [["eval", *common, strict_out], ["eval", *common, loose_out, "--no-strict"]]
    )
    assert_error(strict, "record 0 (greater)", f"{THIS_FILE}:{tapes.guard_line}")
    assert not strict_out.exists()
    assert_ok(loose)
    assert loose_out.exists()
    # one warning line per changed guard: the comparison and the if
    assert len(loose.err_lines) == 2, loose.stderr
    assert all(ln.startswith("tapegrad: warning: replay: record") for ln in loose.err_lines)


# -- check / nan / diff -------------------------------------------------------------------------------


def test_check_passes_on_a_correct_tape_and_fails_on_a_wrong_user_op(tapes):
    d = tapes.dir
    ok, good, bad, bad_json, unregistered, no_module = cli_many(
        [
            ["check", tapes.mlp],
            ["check", tapes.good, "--import", "tgcli_ops"],
            ["check", tapes.bad, "--import", "tgcli_ops"],
            ["check", tapes.bad, "--import", "tgcli_ops", "--json"],
            ["check", tapes.bad],
            ["check", tapes.bad, "--import", "no_such_module_xyz"],
        ],
        cwd=d,
    )
    assert_ok(ok)
    assert "ok" in ok.stdout and "FAILED" not in ok.stdout
    for name in ("W1", "b1", "W2", "b2"):
        assert name in ok.stdout
    assert_ok(good)
    assert_ok(bad, 1)
    assert "FAILED" in bad.stdout and "FAIL" in bad.stdout.splitlines()[1]
    assert_ok(bad_json, 1)
    res = bad_json.json()
    assert res["ok"] is False and res["errors"]["v"] > res["rtol"]
    assert set(res) >= {"ok", "output", "rtol", "errors", "skipped"}
    assert_error(unregistered, "tgcli.bad_square", "--import")
    assert_error(no_module, "no_such_module_xyz")


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="console script not installed")
def test_console_script_imports_user_modules_from_the_current_directory(tapes):
    r = cli("check", tapes.bad, "--import", "tgcli_ops", cwd=tapes.dir, exe=CONSOLE_SCRIPT)
    assert_ok(r, 1)
    assert "FAILED" in r.stdout


def test_nan_finds_the_log_of_a_negative_number_and_a_backward_inf(tapes):
    log, log_json, sq, clean = cli_many(
        [
            ["nan", tapes.log],
            ["nan", tapes.log, "--json"],
            ["nan", tapes.sqrt],
            ["nan", tapes.mlp, "--json"],
        ]
    )
    k = tapes.log_record
    assert_ok(log, 1)
    assert "forward: first non-finite output" in log.stdout
    assert f"at record {k} (log)" in log.stdout
    assert f"{THIS_FILE}:" in log.stdout  # recorded with source=True
    assert log.stderr == ""  # NumPy's warnings are not shown
    assert_ok(log_json, 1)
    f = log_json.json()["forward"]
    assert f["op"] == "log" and f["record"] == k and f["pass"] == "forward"
    assert log_json.json()["backward"] is None

    assert_ok(sq, 1)
    assert "backward: first non-finite gradient at record 0 (sqrt)" in sq.stdout
    assert sq.stderr == ""

    assert_ok(clean)
    assert clean.json() == {"forward": None, "backward": None, "inputs": []}


def test_diff(tapes):
    d = tapes.dir
    same, value, value_json, tolerant, structural = cli_many(
        [
            ["diff", tapes.mlp, d / "mlp_same.tape"],
            ["diff", tapes.mlp, d / "mlp_w2.tape"],
            ["diff", tapes.mlp, d / "mlp_w2.tape", "--json"],
            ["diff", tapes.mlp, d / "mlp_w2.tape", "--rtol", "1e-3"],
            ["diff", tapes.mlp, d / "mlp_sigmoid.tape", "--json"],
        ]
    )
    assert_ok(same)
    assert "same" in same.stdout

    assert_ok(value, 1)
    assert "first differing value: W2" in value.stdout
    assert "linear" in value.stdout  # the record reading it
    assert_ok(value_json, 1)
    res = value_json.json()
    assert res["same"] is False and res["structural"] == []
    fv = res["first_value"]
    assert fv["value"] == "W2" and fv["index"] == [1, 2] and fv["record"] == 2
    assert fv["max_abs"] == pytest.approx(1e-6, rel=1e-3)

    assert_ok(tolerant)  # within --rtol

    assert_ok(structural, 1)
    res = structural.json()
    assert res["same"] is False and res["first_value"] is None
    assert len(res["structural"]) == 1
    assert res["structural"][0].startswith("record 1:")
    assert "tanh" in res["structural"][0] and "sigmoid" in res["structural"][0]


# -- dot / validate / schema / demo ----------------------------------------------------------------------


def test_dot_writes_graphviz_text(tapes, tmp_path):
    dot_file, svg_file = tmp_path / "g.dot", tmp_path / "g.svg"
    stdout, to_file, svg = cli_many(
        [["dot", tapes.mlp], ["dot", tapes.mlp, "-o", dot_file], ["dot", tapes.mlp, "-o", svg_file]]
    )
    assert_ok(stdout)
    assert stdout.stdout.startswith("digraph")
    assert_ok(to_file)
    text = dot_file.read_text()
    assert text == stdout.stdout
    for op in ("linear", "tanh", "softmax_cross_entropy"):
        assert f'"{op}' in text
    for name in ("W1", "b1", "W2", "b2"):
        assert f'"{name}\\n' in text
    if shutil.which("dot"):
        assert_ok(svg)
        assert "<svg" in svg_file.read_text()
    else:
        assert_error(svg, "Graphviz")
        assert not svg_file.exists()


def test_validate(tapes):
    text, js = cli_many([["validate", tapes.mlp], ["validate", tapes.mlp, "--json"]])
    assert_ok(text)
    assert "valid" in text.stdout and "4 records" in text.stdout
    assert_ok(js)
    rep = js.json()
    assert rep["complete"] is True and rep["records"] == 4
    assert rep["values"] == len(tapes.mlp_tape.value_names) == rep["arrays"]
    assert sorted(rep["grads"]) == sorted(tapes.live)
    assert rep["bytes"] >= sum(tapes.mlp_tape[n].nbytes for n in tapes.mlp_tape.value_names)


def test_schema_prints_a_json_schema():
    r = cli("schema")
    assert_ok(r)
    schema = r.json()
    assert "json-schema.org" in schema["$schema"]
    assert schema.get("type") == "object" or "$defs" in schema or "properties" in schema


def test_demo_records_saves_and_replays(tmp_path):
    r = cli("demo", cwd=tmp_path)
    assert_ok(r)
    assert (tmp_path / "demo.tape").exists()
    out = r.stdout
    assert "demo.tape" in out and "softmax_cross_entropy" in out
    assert "all equal, bit for bit" in out and "MISMATCH" not in out
    assert out.count("equal: True") == 4
    t = tapegrad.load(tmp_path / "demo.tape")
    grads = t.backward()
    for name, g in t.grads.items():
        assert np.array_equal(grads[name], g)


# -- recovered, missing and damaged files -------------------------------------------------------------


def test_a_killed_recording_opens_with_a_warning_but_grad_refuses_it(tapes):
    k = tapes.killed
    inspect_, list_, nan, validate, grad = cli_many(
        [["inspect", k, "--json"], ["list", k], ["nan", k], ["validate", k, "--json"], ["grad", k]]
    )
    for r in (inspect_, list_, nan, validate):
        assert_recovered_warning(r)
    s = inspect_.json()  # the warning goes to stderr: stdout stays JSON
    assert s["complete"] is False and s["records"] == 10
    assert len(list_.stdout.splitlines()) == 10 and "tanh" in list_.stdout
    assert "finite" in nan.stdout
    rep = validate.json()
    assert rep["complete"] is False and rep["records"] == 10
    assert_error(grad, "cut short")


def test_missing_files(tapes):
    m = tapes.missing
    nowhere = tapes.dir / "no-such-dir" / "g.npz"
    *runs, out = cli_many(
        [["inspect", m], ["grad", m], ["diff", tapes.mlp, m], ["grad", tapes.mlp, "-o", nowhere]]
    )
    for r in runs:
        assert_error(r, str(m), "No such file")
    assert_error(out, str(nowhere), "No such file")  # the path asked for, not a temporary


DAMAGED = [
    # (file, commands): every command exits 2 with one line on stderr
    ("flip", ["grad", "check", "validate"]),  # a value's bytes
    ("flipmeta", ["inspect", "list"]),  # the index
    ("trunc", ["grad", "eval"]),  # cut short: refused where not recoverable
    ("empty", ["inspect", "grad"]),
    ("random", ["list", "validate"]),
]


@pytest.fixture(scope="module")
def damaged_runs(tapes):
    npz = tapes.dir / "empty_inputs.npz"
    np.savez(npz)
    argvs = []
    for name, cmds in DAMAGED:
        path = getattr(tapes, name)
        for c in cmds:
            if c == "eval":
                argvs.append([c, path, "--inputs", npz, "-o", tapes.dir / f"eval-{name}.tape"])
            elif c == "diff":
                argvs.append([c, tapes.big if name == "flip" else tapes.mlp, path])
            else:
                argvs.append([c, path])
    argvs.append(["diff", tapes.big, tapes.flip])  # diff reads every value
    argvs.append(["inspect", tapes.trunc])  # a cut-short saved tape: opened with a warning
    runs = cli_many(argvs)
    out = {(name, c): runs.pop(0) for name, cmds in DAMAGED for c in cmds}
    out[("flip", "diff")], out[("trunc", "inspect-ok")] = runs
    return out


@pytest.mark.parametrize(
    "name,cmd", [(n, c) for n, cmds in DAMAGED for c in cmds] + [("flip", "diff")]
)
def test_damaged_files_exit_2_with_one_line(damaged_runs, tapes, name, cmd):
    r = damaged_runs[(name, cmd)]
    assert_error(r, getattr(tapes, name).name)
    assert r.stdout == ""


def test_a_cut_short_saved_tape_opens_with_a_warning(damaged_runs):
    r = damaged_runs[("trunc", "inspect-ok")]
    assert_recovered_warning(r)
    assert "recovered" in r.stdout
