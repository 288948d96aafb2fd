"""The one error type stbp raises for bad input (options, files, tensors)."""

from __future__ import annotations


class StbpError(ValueError):
    """Bad input to stbp: the message names the option or file and what is wrong.

    Subclasses :class:`ValueError` so that library users can catch either; the command-line
    interface prints the message alone (no traceback) and exits with status 2.
    """
