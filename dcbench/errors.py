"""User-facing errors: one line, naming the problem and the valid choices."""

from __future__ import annotations


class DcbenchError(Exception):
    """An error caused by the user's input or environment, shown as one line without a traceback."""


class DataNotFoundError(DcbenchError):
    """A dataset's files were not found where dcbench looked for them."""


class InvalidDistilledSetError(DcbenchError):
    """A distilled set is malformed: wrong shapes, NaN/inf values or a foreign file."""


class DivergenceError(DcbenchError):
    """Training diverged (the loss became NaN or infinite)."""
