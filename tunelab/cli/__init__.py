"""The ``tunelab`` command line (typer). Bad input → one line on stderr, exit code 2.

One thin module per command group; importing this package registers every command on ``app``
(in the order ``tunelab --help`` lists them). Heavy imports stay inside the command functions,
so ``tunelab --help`` stays fast.
"""

from __future__ import annotations

import sys

from tunelab.cli import train, generate, unpack, demo, study, report, merge, pretrain, tasks, data, inspect, audit, attack, scaling, judge  # noqa: F401  (registers the commands)
from tunelab.cli.app import app
from tunelab.cli.common import err
from tunelab.errors import TunelabError


def main() -> None:
    """Console-script entry point: user errors become one line and exit code 2.

    Usage errors and Ctrl-C are click's (exit 2 with usage, and "Aborted!" with exit 1).
    """
    try:
        app()
    except TunelabError as exc:
        # One line, always: a message quoting a library's text could carry a newline.
        message = " ".join(line.strip() for line in str(exc).splitlines())
        err.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)



__all__ = ["app", "main"]
