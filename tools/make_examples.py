"""Write the example tapes of the current format version into schema/examples/.

Each example is saved with the gradients of its live backward, so a later version can check that
it still loads these files and replays them to the same numbers (tests/test_examples.py). Files
of earlier format versions are never rewritten: run this once per new format version.

    python tools/make_examples.py
"""

from __future__ import annotations

import os
import sys

import numpy as np

import tapegrad as tg
import tapegrad.functions as F
from tapegrad.fileformat import FORMAT_VERSION

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "schema", "examples")


def mlp(rng: np.random.Generator) -> tg.Tape:
    """A classifier training step: linear, tanh, dropout, softmax cross entropy (float64)."""
    np.random.seed(0)
    x = rng.standard_normal((8, 4))
    t = rng.integers(0, 3, size=8)
    W1 = tg.Variable(rng.standard_normal((4, 6)) * 0.5, name="W1")
    b1 = tg.Variable(np.zeros(6), name="b1")
    W2 = tg.Variable(rng.standard_normal((6, 3)) * 0.5, name="W2")
    with tg.record(source=True, meta={"example": "mlp", "step": 1}) as tape:
        h = F.dropout(F.tanh(F.linear(x, W1, b1)), 0.25)
        loss = F.softmax_cross_entropy(F.matmul(h, W2), t)
        loss.backward()
    return tape


def ops_f32(rng: np.random.Generator) -> tg.Tape:
    """Many ops and attributes in float32: reductions with tuple axes, indexing, joins."""
    x = tg.Variable(rng.standard_normal((2, 3, 4)).astype(np.float32), name="x")
    w = tg.Variable(rng.standard_normal(4).astype(np.float32), name="w")
    with tg.record(meta={"example": "ops_f32"}) as tape:
        a = F.sum(F.exp(x * 0.5) * w, axis=(0, 2), keepdims=True)
        b = F.logsumexp(x[:, np.array([0, 2, 2]), 1:3], axis=-1)
        c = F.concatenate([F.reshape(b, (6,)), F.max(x, axis=1).reshape(8)], axis=0)
        d = F.stack([F.sigmoid(c), F.relu(c), F.leaky_relu(c, 0.1)], axis=1)
        e = F.where(d.data > 0.5, F.clip(d, 0.0, 0.9), F.square(d))
        loss = F.mean(e) + F.sum(a) / 3.0 - F.mean(F.log_softmax(F.transpose(x, (2, 0, 1)), axis=0))
        loss.backward()
    return tape


def guards(rng: np.random.Generator) -> tg.Tape:
    """A branch on a value (a recorded guard), comparisons, and integer and boolean values."""
    x = tg.Variable(np.array([0.5, -1.5, 2.0]), name="x")
    with tg.record(meta={"example": "guards"}) as tape:
        s = F.sum(x * x)
        y = F.sin(x) if s > 1.0 else F.cos(x)
        loss = F.sum(y * (x > 0).data) + F.sum(F.abs(x) ** 3)
        loss.backward()
    return tape


EXAMPLES = {"mlp": mlp, "ops_f32": ops_f32, "guards": guards}


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    for name, make in EXAMPLES.items():
        version = ".".join(map(str, FORMAT_VERSION))
        path = os.path.join(OUT, f"v{version}-{name}.tape")
        if os.path.exists(path) and "--force" not in sys.argv:
            print(f"keeping {path} (examples of a released version are never rewritten)")
            continue
        tape = make(np.random.default_rng(0))
        tape.save(path)
        print(f"wrote {path}: {len(tape)} records, inputs {tape.inputs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
