"""One exception hierarchy for everything a user's input can do wrong.

Every error that bad input (a file, an image, a checkpoint, an argument) can cause is a
:class:`SodecError` subclass with a one-line message and a distinct CLI exit code, so scripts can
tell a truncated download from a file made by another model without parsing text.
"""

from __future__ import annotations


class SodecError(Exception):
    """Base class. ``exit_code`` is what ``sodec`` returns when this error stops it."""

    exit_code = 1


class FormatError(SodecError):
    """Not a .sodec file, or a header field that no version of the format allows."""

    exit_code = 3


class UnsupportedVersionError(FormatError):
    """A .sodec file written by a newer (or unknown) format version."""

    exit_code = 3


class TruncatedError(SodecError):
    """The file ends before the lengths recorded in its header say it should."""

    exit_code = 4


class CorruptedError(SodecError):
    """A checksum does not match: the bytes changed after they were written."""

    exit_code = 5


class DesyncError(CorruptedError):
    """The entropy decoder produced symbols whose checksum differs from the encoder's.

    The streams passed their CRC, so the bytes are intact: the decoder computed different
    entropy parameters than the encoder (a different machine, library or model). Refusing here
    is what keeps a desync from turning into a silently wrong image.
    """

    exit_code = 5


class WrongModelError(SodecError):
    """The file names a model (or weights hash) other than the one asked to decode it."""

    exit_code = 6


class LimitsError(SodecError):
    """A header or an input claims more than the configured limits (pixels, stream bytes)."""

    exit_code = 7


class UnsupportedInputError(SodecError):
    """An input image we cannot code faithfully (e.g. a non-opaque alpha channel)."""

    exit_code = 8


class WeightsError(SodecError):
    """A checkpoint or weights file is missing, unreadable, of the wrong kind, or fails sha256."""

    exit_code = 9


class UsageError(SodecError):
    """Arguments that do not fit together (unknown model name, bad quality, ...)."""

    exit_code = 2


class OutputExistsError(SodecError):
    """The output file exists already; ``-f/--force`` replaces it (as gzip and zstd ask)."""

    exit_code = 10


def out_of_memory(e: BaseException, doing: str) -> LimitsError | None:
    """``MemoryError``, or torch's "can't allocate memory" RuntimeError, as the one-line
    :class:`LimitsError` ("not enough memory to <doing> (...)"); None for any other error.
    The one place that tells running out of memory from a bug, for the api and the CLI alike."""
    text = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "alloc" in text.lower()):
        return LimitsError(f"not enough memory to {doing} ({text})")
    return None
