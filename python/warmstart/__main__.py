"""``python -m warmstart`` runs the command line."""

from warmstart.cli import console_main

console_main()
