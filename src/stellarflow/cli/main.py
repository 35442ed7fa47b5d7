"""The ``stellarflow`` command: argument parsing, one library call per command, files out.

Errors that stellarflow raises on purpose (and file-system errors) become one line on stderr
and exit status 1; ``--debug`` shows the traceback instead. Usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from stellarflow.cli import (
    data_commands,
    demo_command,
    elements_command,
    lines_command,
    model_commands,
    outliers_command,
    report_command,
)
from stellarflow.errors import StellarflowError

__all__ = ["build_parser", "main", "run"]

_COMMAND_MODULES = (
    data_commands,
    model_commands,
    outliers_command,
    lines_command,
    elements_command,
    demo_command,
    report_command,
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with one sub-command per capability."""
    from stellarflow import __version__

    parser = argparse.ArgumentParser(
        prog="stellarflow",
        description="Normalising flows for stellar spectra: mock surveys, survey I/O, "
        "and (as they land) density models, outliers, hidden lines and element counts.",
    )
    parser.add_argument("--version", action="version", version=f"stellarflow {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks instead of one-line errors"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line in-process and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    started = time.time()
    args.argv = sys.argv[1:] if argv is None else list(argv)
    try:
        status = int(args.handler(args) or 0)
        if status == 0:
            _record_command(args, args.argv, started)
        return status
    except KeyboardInterrupt:
        print("stellarflow: interrupted", file=sys.stderr)
        return 130
    except (StellarflowError, OSError) as err:
        if args.debug:
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"stellarflow {args.command}: error: {message}", file=sys.stderr)
        return 1


def _record_command(args: argparse.Namespace, argv: list[str], started: float) -> None:
    """Write ``command.json`` (command line, version, time) into a command's output folder.

    ``stellarflow report`` lists these records, so a run directory assembled from separate
    commands says how each part was made. Only process 0 of a distributed run writes.
    """
    from stellarflow import __version__
    from stellarflow.train.checkpoint import write_json

    out = getattr(args, "out", None)
    if not isinstance(out, Path) or not out.is_dir() or os.environ.get("RANK", "0") != "0":
        return
    finished = time.time()
    write_json(
        out / "command.json",
        {
            "command": shlex.join(["stellarflow", *argv]),
            "stellarflow_version": __version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(finished)),
            "seconds": round(finished - started, 2),
            "working_directory": os.getcwd(),
        },
    )


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
