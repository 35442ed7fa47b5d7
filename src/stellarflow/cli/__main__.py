"""``python -m stellarflow.cli`` runs the command line."""

from stellarflow.cli.main import run

run()
