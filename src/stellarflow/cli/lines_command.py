"""``stellarflow lines``: pixels that move with an element's known lines but are in no list."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from stellarflow.errors import DataValidationError
from stellarflow.io.atomic import atomic_directory, check_folder_writable

__all__ = ["register", "run_lines"]


def register(commands: Any) -> None:
    """Add ``lines`` to the sub-command parser."""
    parser = commands.add_parser(
        "lines",
        help="find candidate unknown atomic lines from the model's conditional pixel correlations",
        description="Draws spectra from the model at a label point, accumulates their "
        "pixel-pixel correlation, scores every pixel against each element's known lines and "
        "writes OUT_DIR/candidates.ecsv (wavelength, element, score, significance, depth, "
        "known, nearest_known, offset, kind), OUT_DIR/correlation.h5 and figures "
        "(correlation_blocks.png, mean_spectrum.png, candidate_zooms.png).",
    )
    parser.add_argument("model", type=Path, help="model directory")
    parser.add_argument("--at", required=True, help="label point, e.g. TEFF=4750,LOGG=2.5,FE_H=0")
    parser.add_argument(
        "--linelist",
        type=Path,
        default=None,
        help="known (published) line list: VALD or a table (default: the --survey file's "
        "'linelist' table)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("-n", "--n-samples", type=int, default=20_000, help="spectra drawn (20000)")
    parser.add_argument(
        "--box",
        default=None,
        help="draw labels uniformly in point +- these half-widths, e.g. FE_H=0.05",
    )
    parser.add_argument(
        "--mode",
        choices=("joint", "plain", "shared_mode"),
        default="joint",
        help="association: partial correlation given the other elements (joint, default), "
        "plain correlation, or with the dominant shared mode removed",
    )
    parser.add_argument(
        "--threshold", type=float, default=5.0, help="significance threshold, sigma (5)"
    )
    parser.add_argument(
        "--min-depth", type=float, default=0.01, help="minimum mean depth of a feature"
    )
    parser.add_argument("--resolution", type=float, default=22_500.0, help="resolving power R")
    parser.add_argument(
        "--survey",
        type=Path,
        default=None,
        help="survey file (.h5): also run the empirical-correlation baseline on its stars "
        "near the point (OUT_DIR/baseline_candidates.ecsv)",
    )
    parser.add_argument("--chunk-size", type=int, default=1024, help="spectra per model call")
    parser.add_argument("--n-zoom", type=int, default=6, help="candidate zoom panels (6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.set_defaults(handler=run_lines)


def _check_arguments(args: argparse.Namespace) -> None:
    if args.n_samples < 2 or args.chunk_size < 1 or args.n_zoom < 0:
        raise DataValidationError(
            f"need --n-samples >= 2, --chunk-size >= 1 and --n-zoom >= 0; got "
            f"{args.n_samples}, {args.chunk_size}, {args.n_zoom}"
        )
    if args.linelist is None and args.survey is None:
        raise DataValidationError(
            "give the known lines with --linelist (or --survey, whose 'linelist' table is used)"
        )


def _known_lines(args: argparse.Namespace) -> Any:
    from stellarflow.io.hdf5 import open_survey
    from stellarflow.io.linelist import read_linelist

    if args.linelist is not None:
        return read_linelist(args.linelist)
    with open_survey(args.survey) as survey:
        if "linelist" not in survey.table_names:
            raise DataValidationError(
                f"{args.survey} has no 'linelist' table; give the known lines with --linelist"
            )
        return survey.read_table("linelist")


def run_lines(args: argparse.Namespace) -> int:
    """``stellarflow lines``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stellarflow.analysis.correlation import write_correlation
    from stellarflow.analysis.lines import empirical_correlation, find_lines, model_correlation
    from stellarflow.analysis.sampling import parse_label_point
    from stellarflow.io.hdf5 import open_survey
    from stellarflow.plot.lines import (
        plot_candidate_zooms,
        plot_element_blocks,
        plot_mean_spectrum,
    )
    from stellarflow.train.checkpoint import load_model

    _check_arguments(args)
    point = parse_label_point(args.at)
    box = parse_label_point(args.box) if args.box else None
    check_folder_writable(args.out, args.overwrite)
    linelist = _known_lines(args)
    trained = load_model(args.model)
    options = {
        "resolution": args.resolution,
        "mode": args.mode,
        "threshold": args.threshold,
        "min_depth": args.min_depth,
    }
    correlation = model_correlation(
        trained,
        point,
        args.n_samples,
        box=box,
        chunk_size=args.chunk_size,
        seed=args.seed,
        progress=not args.quiet,
    )
    search = find_lines(correlation, linelist, **options)
    baseline = None
    if args.survey is not None:
        with open_survey(args.survey) as survey:
            baseline = find_lines(empirical_correlation(survey, point), linelist, **options)
    columns = [
        "wavelength", "element", "score", "significance", "depth", "known", "nearest_known",
        "offset", "kind", "explained_by", "associated", "nearest_other", "nearest_other_element",
        "other_offset", "pixel", "n_pixels",
    ]  # fmt: skip
    with atomic_directory(args.out, args.overwrite) as folder:
        search.candidates[columns].write(folder / "candidates.ecsv", format="ascii.ecsv")
        if baseline is not None:
            table = baseline.candidates[columns]
            table.write(folder / "baseline_candidates.ecsv", format="ascii.ecsv")
        write_correlation(folder / "correlation.h5", correlation)
        for name, figure in (
            ("correlation_blocks.png", plot_element_blocks(search)),
            ("mean_spectrum.png", plot_mean_spectrum(search, linelist)),
            ("candidate_zooms.png", plot_candidate_zooms(search, n_zoom=args.n_zoom)),
        ):
            figure.savefig(folder / name, dpi=110)
            plt.close(figure)
    n_new = int((~search.candidates["known"]).sum())
    print(
        f"{len(search.candidates)} line features from {correlation.n_samples} spectra: "
        f"{n_new} candidate new, elements {', '.join(search.templates.elements)}; "
        f"{args.out / 'candidates.ecsv'}"
    )
    return 0
