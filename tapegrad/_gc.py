"""A pause of the cyclic garbage collector, for code that builds or takes apart 100,000s of
small objects (a tape's records, a file's index): the collector would otherwise walk the growing
heap again and again, doubling or tripling the time. Nothing built under it forms a cycle."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
