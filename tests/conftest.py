"""Shared fixtures: every random number in the tests comes from a fixed seed given here."""

from __future__ import annotations

import numpy as np
import pytest

SEED = 20240611


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh generator with a fixed seed for each test."""
    return np.random.default_rng(SEED)


@pytest.fixture
def np_seed():
    """Seed NumPy's global RNG (what dropout draws from, in DeZero and tapegrad); restore it after."""
    state = np.random.get_state()
    np.random.seed(SEED)
    try:
        yield SEED
    finally:
        np.random.set_state(state)
