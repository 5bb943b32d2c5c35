"""``python -m tunelab.cli`` runs the command line (tests and torchrun use it)."""

from tunelab.cli import main

main()
