"""tapegrad: reverse-mode automatic differentiation for NumPy that records every call on a tape.

DeZero's API (``Variable``, ``Function``, ``Config``, ``no_grad``, ``tapegrad.functions``) plus
``record()``: the recorded tape can be saved, loaded elsewhere, inspected, replayed and
differentiated offline.
"""

from . import ops as _ops  # registers the built-in ops
from .analysis import diff
from .config import Config, no_grad, test_mode, using_config
from .core import Function, Parameter, Variable, as_array, as_variable
from .errors import (
    GuardError,
    TapeCorruptError,
    TapeFormatError,
    TapeTruncatedError,
    UnknownOpError,
    UnsupportedVersionError,
)
from .parallel import get_num_threads, set_num_threads
from .registry import register_op, registered_ops
from .tape import Record, Tape, record

__version__ = "0.1.0"


def load(path, recover: bool = False) -> Tape:
    """Open a tape file written by ``Tape.save`` or ``record(path)``.

    Reads the file's index now and each value's bytes at first use. A missing or unreadable path
    raises ``OSError``; anything wrong with the content raises ``TapeFormatError``. A file cut
    short raises ``TapeTruncatedError`` unless ``recover=True``, which returns its complete
    records. Nothing named in the file is imported or run.
    """
    from .storage import load as _load

    return _load(path, recover)


del _ops

__all__ = [
    "Config",
    "Function",
    "GuardError",
    "Parameter",
    "Record",
    "Tape",
    "TapeCorruptError",
    "TapeFormatError",
    "TapeTruncatedError",
    "UnknownOpError",
    "UnsupportedVersionError",
    "Variable",
    "as_array",
    "diff",
    "get_num_threads",
    "load",
    "as_variable",
    "no_grad",
    "record",
    "register_op",
    "registered_ops",
    "set_num_threads",
    "test_mode",
    "using_config",
]
