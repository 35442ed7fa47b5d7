"""``stellarflow outliers``: rank stars by calibrated improbability, explain, draw a gallery."""

from __future__ import annotations

import argparse
import math
import re
import shutil
from pathlib import Path
from typing import Any

from stellarflow.errors import DataValidationError
from stellarflow.io.atomic import atomic_directory, check_folder_writable

__all__ = ["register", "run_outliers"]


def register(commands: Any) -> None:
    """Add ``outliers`` to the sub-command parser."""
    parser = commands.add_parser(
        "outliers",
        help="rank stars by how improbable their spectrum is given their labels, and why",
        description="Streams the survey in chunks and writes OUT_DIR/outliers.ecsv (ranked: "
        "calibrated tail probability p_tail, '1 in N', per-element evidence, flags), "
        "OUT_DIR/score_distribution.png, OUT_DIR/gallery/NN_<star_id>.png for the top K "
        "and OUT_DIR/index.html showing them.",
    )
    parser.add_argument("model", type=Path, help="model directory")
    parser.add_argument("survey", type=Path, help="survey file (.h5)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--top", type=int, default=12, help="outliers in the gallery (12)")
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="label table (FITS, CSV, ECSV, Parquet) with star_id and the model's labels, "
        "used instead of the survey's labels",
    )
    parser.add_argument(
        "--linelist",
        type=Path,
        default=None,
        help="line list (VALD or table) for the per-element evidence (default: the "
        "survey's own 'linelist' table)",
    )
    parser.add_argument(
        "--expectation",
        choices=("labels", "latent_fit"),
        default="labels",
        help="element evidence against stars with the same labels (default) or given the "
        "star's own latent fit",
    )
    parser.add_argument(
        "--recalibrate",
        choices=("auto", "none", "survey", "reference", "neighbours"),
        default="auto",
        help="p_tail against a reference cross-fitted on the survey's own stars (survey), "
        "the model directory's reference from its validation stars (reference), the "
        "survey stars of similar labels and S/N (neighbours), or under the model (none); "
        "auto (default): survey from 2,000 ranked stars, else reference if the model has "
        "one, else none",
    )
    parser.add_argument(
        "--rank-by",
        choices=("auto", "lines", "combined", "omnibus"),
        default="auto",
        help="rank by p_lines, the line list's joint test of the star's lines (lines), by "
        "the whole spectrum's p_tail (omnibus), or by the most surprising of the two and "
        "the strongest element (combined); auto (default): lines with a line list, else "
        "omnibus",
    )
    parser.add_argument("--n-reference", type=int, default=16, help="reference draws (flows; 16)")
    parser.add_argument("--chunk-size", type=int, default=256, help="stars per chunk")
    parser.add_argument(
        "--min-good-fraction", type=float, default=0.2, help="flag stars with fewer good pixels"
    )
    parser.add_argument("--resolution", type=float, default=22_500.0, help="resolving power R")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda or auto; under torchrun each process uses cuda:LOCAL_RANK",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing folder (and discard the part files of an interrupted run)",
    )
    parser.set_defaults(handler=run_outliers)


def _file_name(rank: int, star_id: str, width: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", star_id).strip("._") or "star"
    return f"{rank:0{width}d}_{safe}.png"


def run_outliers(args: argparse.Namespace) -> int:
    """``stellarflow outliers``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stellarflow.analysis.outliers import explain_stars, find_outliers
    from stellarflow.cli.model_commands import parts_folder
    from stellarflow.io.arrays import read_label_table
    from stellarflow.io.hdf5 import open_survey
    from stellarflow.io.linelist import read_linelist
    from stellarflow.plot.outliers import (
        format_one_in,
        gallery_html,
        plot_outlier_spectrum,
        plot_score_distribution,
    )
    from stellarflow.train.checkpoint import load_model
    from stellarflow.train.distributed import distributed_session, process_device
    from stellarflow.train.loop import resolve_device

    if args.top < 0 or args.chunk_size < 1 or args.n_reference < 2:
        raise DataValidationError(
            f"need --top >= 0, --chunk-size >= 1 and --n-reference >= 2; got {args.top}, "
            f"{args.chunk_size}, {args.n_reference}"
        )
    check_folder_writable(args.out, args.overwrite)
    labels = read_label_table(args.labels) if args.labels is not None else None
    linelist = read_linelist(args.linelist) if args.linelist is not None else None
    options = {
        "linelist": linelist,
        "labels": labels,
        "expectation": args.expectation,
        "resolution": args.resolution,
        "seed": args.seed,
    }
    # scoring is sharded over the processes of a torchrun job and resumable from OUT.parts/
    parts = parts_folder(args.out)
    with distributed_session(args.device) as dist, open_survey(args.survey) as survey:
        if dist.is_main and args.overwrite:
            shutil.rmtree(parts, ignore_errors=True)
        trained = load_model(args.model, resolve_device(process_device(dist, args.device)))
        table = find_outliers(
            trained,
            survey,
            n_reference=args.n_reference,
            chunk_size=args.chunk_size,
            min_good_fraction=args.min_good_fraction,
            recalibrate=args.recalibrate,
            rank_by=args.rank_by,
            progress=not args.quiet,
            parts=parts,
            dist=dist,
            **options,
        )
        dist.barrier()  # every process has read the parts
        if not dist.is_main:
            return 0
        top = table[table["flag"] == ""][: args.top]
        explained = explain_stars(trained, survey, list(top["star_id"]), **options)
    width = max(2, len(str(len(top))))
    with atomic_directory(args.out, args.overwrite) as folder:
        table.write(folder / "outliers.ecsv", format="ascii.ecsv")
        figure = plot_score_distribution(table, top_k=len(top))
        figure.savefig(folder / "score_distribution.png", dpi=110)
        plt.close(figure)
        (folder / "gallery").mkdir()
        images = []
        for row, explanation in zip(top, explained, strict=True):
            name = _file_name(int(row["rank"]), str(row["star_id"]), width)
            lines = (
                f"; its lines 1 in {format_one_in(row['log_p_lines'])}"
                if math.isfinite(float(row["log_p_lines"]))
                else ""
            )
            title = (
                f"#{row['rank']} {row['star_id']}: 1 in {format_one_in(row['log_p_tail'])} "
                f"(z = {row['z']:.1f}{lines}); {row['element_summary'] or 'no line list'}"
            )
            figure = plot_outlier_spectrum(explanation, row["top_element"] or None, title)
            figure.savefig(folder / "gallery" / name, dpi=100)
            plt.close(figure)
            images.append(f"gallery/{name}")
        (folder / "index.html").write_text(gallery_html(table, images), encoding="utf-8")
    shutil.rmtree(parts, ignore_errors=True)
    counts = table.meta["flag_counts"]
    print(
        f"ranked {counts['ranked']} of {len(table)} stars ({len(table) - counts['ranked']} "
        f"flagged), ranked by {table.meta['rank_by']}; top {len(top)} in "
        f"{args.out / 'index.html'}; '1 in N' recalibrated: {table.meta['recalibration']}"
    )
    return 0
