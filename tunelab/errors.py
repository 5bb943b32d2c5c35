"""One exception type for user-facing errors.

The CLI prints ``TunelabError`` as a single line and exits non-zero; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TunelabError(Exception):
    """A problem with the user's input: model name, data file, flags, output dir."""
