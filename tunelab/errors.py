"""One exception type for user-facing errors.

The CLI prints ``TunelabError`` as a single line and exits non-zero; anything
else is a bug and keeps its traceback. ``tunelab.files`` reads user files so that
their problems surface as a ``TunelabError`` naming the file.
"""

from __future__ import annotations


class TunelabError(Exception):
    """A problem with the user's input: model name, data file, flags, output dir."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (library messages can span many)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
