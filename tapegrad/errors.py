"""Exceptions raised by tapegrad.

Every problem with the *content* of a tape file is a ``TapeFormatError`` (or a subclass), so a caller
that opens untrusted files needs to catch exactly one type. Missing or unreadable paths raise the
usual ``OSError`` subclasses instead.
"""

from __future__ import annotations


class TapeFormatError(Exception):
    """A tape file's content is not a valid tape (damaged, cut short, or of an unknown version)."""


class TapeTruncatedError(TapeFormatError):
    """The file ends before its footer: the writer stopped mid-recording.

    ``complete_records`` says how many records before the cut are intact; ``load(path,
    recover=True)`` returns them.
    """

    def __init__(self, message: str, complete_records: int = 0):
        super().__init__(message)
        self.complete_records = complete_records


class TapeCorruptError(TapeFormatError):
    """Bytes of the file do not match their checksum or do not decode as the format says."""


class UnsupportedVersionError(TapeFormatError):
    """The file was written by a newer, incompatible major version of the format."""


class UnknownOpError(LookupError):
    """A tape names an op that no module imported in this process has registered."""


class GuardError(RuntimeError):
    """A replay took another branch than the recording: a recorded comparison changed its result."""
