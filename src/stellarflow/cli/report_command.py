"""``stellarflow report``: the HTML report of a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register", "run_report"]


def register(commands: Any) -> None:
    """Add ``report`` to the sub-command parser."""
    parser = commands.add_parser(
        "report",
        help="write the HTML report of a run directory (a demo run or separate commands)",
        description="Finds each stage's results in RUN_DIR and its sub-folders (a model "
        "folder, scores, outliers/, lines/, elements/ output folders, a survey with truth) "
        "and writes one offline HTML page with the key numbers, tables and figures of the "
        "stages that exist, and on a mock survey the answer key beside each result.",
    )
    parser.add_argument("run_dir", type=Path, help="run directory")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="HTML file to write (default RUN_DIR/report.html)",
    )
    parser.add_argument(
        "--embed",
        action="store_true",
        help="embed the figures in the HTML file (one file to share; larger)",
    )
    parser.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    """``stellarflow report``."""
    from stellarflow.report import build_report

    path = build_report(args.run_dir, out=args.out, embed=args.embed)
    print(f"report: {path}")
    return 0
