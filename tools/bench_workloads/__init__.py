"""The workloads of ``tools/bench.py`` (issue 5), one module per workload family.

``harness`` holds the case, the check and the worker; ``specs`` says what is run and how it is
shown; ``report`` prints the tables and judges the targets. Importing this package registers every
workload's builders. Run the benchmark with ``python tools/bench.py``.
"""

from . import big, chain, files, mlp  # noqa: F401  (registers the builders)
from .harness import LABELS, LIB_GROUPS, LIBS, Case, Unavailable, Worker, compare

__all__ = ["LABELS", "LIBS", "LIB_GROUPS", "Case", "Unavailable", "Worker", "compare"]
