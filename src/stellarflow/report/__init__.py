"""The HTML report of a run directory: every stage's key numbers, tables and figures.

:func:`find_run_contents` looks for each stage's results by the files it writes (in the run
directory and its immediate sub-folders), so the same report comes from a ``stellarflow
demo`` run or from a folder where a user ran ``train``, ``outliers``, ``lines`` and
``elements`` separately; :func:`build_report` writes ``report.html`` with a section for each
stage whose results exist. The page needs no network: its style and its one short script
are inline, and its figures are relative links to the PNG files beside it (or, with
``embed=True``, inside it).
"""

from __future__ import annotations

import html
import os
import time
from pathlib import Path
from typing import Any

from stellarflow.errors import DataValidationError, StellarflowError
from stellarflow.report import sections
from stellarflow.report.markup import page
from stellarflow.report.sections import RunContents

__all__ = ["RunContents", "build_report", "find_run_contents", "render_report"]

_MARKERS = {
    "model_dir": ("metadata.json", "model.pt"),
    "outliers_dir": ("outliers.ecsv",),
    "lines_dir": ("candidates.ecsv",),
    "elements_dir": ("elements.ecsv",),
}


def _is_survey(path: Path) -> bool:
    from stellarflow.io.hdf5 import open_survey

    try:
        with open_survey(path):
            return True
    except Exception:  # any file that does not open as a survey is not one
        return False


def _is_scores(path: Path) -> bool:
    from astropy.table import Table

    try:
        return "log_prob_per_pixel" in Table.read(path, format="ascii.ecsv").colnames
    except Exception:  # any table that does not read is not a scores table
        return False


def find_run_contents(run_dir: str | os.PathLike[str]) -> RunContents:
    """What a run directory holds: the results of each stage, found by their files.

    Args:
        run_dir: the run directory (a ``stellarflow demo --out`` folder, or any folder whose
            sub-folders hold the outputs of ``train``, ``outliers``, ``lines``, ``elements``).

    Returns:
        The paths found (``None`` for a stage without results).

    Raises:
        DataValidationError: ``run_dir`` is not a folder or holds no results at all.
    """
    from stellarflow.train.checkpoint import read_json

    run = Path(run_dir)
    if not run.is_dir():
        raise DataValidationError(f"{run} is not a folder; give the run directory of a demo "
                                  "or of stellarflow commands")  # fmt: skip
    folders = [run, *sorted(p for p in run.iterdir() if p.is_dir() and not p.name.startswith("."))]
    found: dict[str, Any] = {}
    for key, markers in _MARKERS.items():
        for folder in folders:
            if all((folder / marker).is_file() for marker in markers):
                found[key] = folder
                break
    stages = read_json(run / "stages.json") if (run / "stages.json").is_file() else None
    commands = []
    for folder in folders:
        if (folder / "command.json").is_file():
            record = read_json(folder / "command.json")
            commands.append({"folder": folder.name if folder != run else "."} | record)
    surveys = [p for p in sorted(run.glob("*.h5")) if _is_survey(p)]
    scores = [p for p in sorted(run.glob("*.ecsv")) if _is_scores(p)]
    contents = RunContents(
        run_dir=run,
        stages=stages,
        commands=commands,
        survey=surveys[0] if surveys else None,
        scores=scores[0] if scores else None,
        **found,
    )
    if not (found or stages or scores):
        raise DataValidationError(
            f"{run} holds no stellarflow results (no model, scores, outliers.ecsv, "
            "candidates.ecsv or elements.ecsv); run the demo or the commands first"
        )
    return contents


def render_report(
    contents: RunContents, page_dir: Path, *, embed: bool = False, title: str | None = None
) -> str:
    """The report's HTML for ``contents``, with figure links relative to ``page_dir``."""
    from stellarflow import __version__

    built = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    parts = [sections.overview(contents, page_dir, __version__, built)]
    for make in (sections.survey_section, sections.model_section, sections.scores_section,
                 sections.outliers_section, sections.lines_section,
                 sections.elements_section):  # fmt: skip
        try:
            section = make(contents, page_dir, embed)
        except (OSError, ValueError, KeyError, StellarflowError) as err:
            # one unreadable result must not hide the others: say what failed, go on
            name = make.__name__.removesuffix("_section")
            message = html.escape(str(err).splitlines()[0] if str(err) else type(err).__name__)
            section = (name, name.capitalize(), f"<p>could not read this stage's results: "
                       f"{message}</p>")  # fmt: skip
        if section is not None:
            parts.append(section)
    mock = contents.survey is not None and sections.truth_table(contents, "labels") is not None
    intro = (
        "<p>What stellarflow found in this run, stage by stage. "
        + ("The survey is a mock with known truth: each stage shows its answer key beside "
           "its result (green boxes). " if mock else "")
        + "Click a table header to sort by it.</p>"
    )  # fmt: skip
    return page(title or f"stellarflow report: {contents.run_dir.name}", intro, parts)


def build_report(
    run_dir: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    embed: bool = False,
) -> Path:
    """Write the report of ``run_dir`` (default ``run_dir/report.html``), atomically.

    Args:
        run_dir: the run directory.
        out: where to write the HTML file.
        embed: embed the figures in the file (one file to share) instead of linking them.

    Returns:
        The path written.
    """
    from stellarflow.io.atomic import atomic_path

    contents = find_run_contents(run_dir)
    path = Path(out) if out is not None else contents.run_dir / "report.html"
    text = render_report(contents, path.parent.resolve(), embed=embed)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
