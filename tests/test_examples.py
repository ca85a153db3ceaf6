"""Every tape in schema/examples/ (one set per released format version) loads and replays forever.

Each example was saved with the gradients of its live backward; loading it with today's code must
give the same records, the same replayed gradients and the same values on a forward replay.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

import tapegrad

EXAMPLES = sorted(
    glob.glob(os.path.join(os.path.dirname(__file__), "..", "schema", "examples", "*.tape"))
)


def test_there_are_examples_of_the_current_version():
    from tapegrad.fileformat import FORMAT_VERSION

    version = ".".join(map(str, FORMAT_VERSION))
    assert any(os.path.basename(p).startswith(f"v{version}-") for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_example_loads_and_replays_to_its_saved_gradients(path):
    tape = tapegrad.load(path)
    assert tape.complete and len(tape) > 0
    assert tape.meta["example"]
    assert str(tape).count("\n") >= len(tape)
    saved = tape.grads
    assert set(saved) == set(tape.inputs)
    grads = tape.backward()
    for name in tape.inputs:
        assert grads[name].dtype == saved[name].dtype
        np.testing.assert_array_equal(grads[name], saved[name])
    again = tape.replay({n: tape[n] for n in tape.inputs})
    for name in tape.outputs:
        assert again[name].tobytes() == tape[name].tobytes()


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_example_validates(path):
    from tapegrad.storage import validate

    report = validate(path)
    assert report["complete"] and report["records"] > 0
