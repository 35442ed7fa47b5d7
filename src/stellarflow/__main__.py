"""``python -m stellarflow`` runs the command line."""

from stellarflow.cli.main import run

run()
