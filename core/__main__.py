"""``python -m reelgraph`` runs the command line."""

from .cli import console

console()
