"""``stellarflow demo``: the whole mission on the built-in mock survey."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from stellarflow.errors import DataValidationError

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``demo`` to the sub-command parser."""
    demo = commands.add_parser(
        "demo",
        help="run the end-to-end demo on a built-in mock survey",
        description="Generate a mock survey with known truth and run the whole mission on it "
        "(train the default model, score every star, draw samples, rank outliers, search "
        "for hidden lines, count the chemical dimensions), writing tables, figures and "
        "RUN_DIR/report.html. Re-running with the same --out resumes: finished stages are "
        "not redone and an interrupted training continues.",
    )
    demo.add_argument("--out", type=Path, default=Path("demo-run"), help="run directory")
    demo.add_argument(
        "--size",
        choices=("small", "full"),
        default="small",
        help="small: minutes on a laptop (default); full: the 7,514-pixel APOGEE grid",
    )
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of the mock survey and the training"
    )
    demo.add_argument("--n-stars", type=int, default=None, help=argparse.SUPPRESS)
    demo.add_argument("--n-pixels", type=int, default=None, help=argparse.SUPPRESS)
    demo.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    demo.add_argument("--outlier-fraction", type=float, default=None, help=argparse.SUPPRESS)
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """``stellarflow demo``."""
    from stellarflow.demo import DemoConfig, run_demo

    try:
        config = DemoConfig(
            size=args.size,
            seed=args.seed,
            n_stars=args.n_stars,
            n_pixels=args.n_pixels,
            epochs=args.epochs,
            outlier_fraction=args.outlier_fraction,
        )
    except ValueError as err:
        raise DataValidationError(f"invalid demo settings: {err}") from None
    argv = getattr(args, "argv", None)
    command = shlex.join(["stellarflow", *argv]) if argv else None
    run_demo(args.out, config, progress=not args.quiet, report=print, command=command)
    print(f"demo outputs in {args.out}/")
    return 0
