"""One function per report section: a run's files in, ``(anchor, title, html)`` out.

Each function reads only the results of its own stage (and, on a mock, the survey's truth
for the answer key) and returns ``None`` when they are absent, so that a report of a
partial run, or of a user's own survey, shows only what exists.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from stellarflow.plot.outliers import format_one_in
from stellarflow.report import answer_key
from stellarflow.report.markup import definition_list, figure, table_html

__all__ = ["RunContents", "Section", "truth_table"]

Section = tuple[str, str, str]
"""``(anchor, title, html)`` of one report section."""

_OUTLIER_COLUMNS = ("rank", "star_id", "one_in", "p_tail", "p_lines", "p_combined", "z", "snr",
                    "supported",
                    "flag",
                    "top_element", "top_element_direction", "element_summary",
                    "n_unexplained")  # fmt: skip
_TOP_ROWS = 25


@dataclass(frozen=True)
class RunContents:
    """What a run directory holds, found by the files each stage writes.

    Attributes:
        run_dir: the run directory.
        stages: ``stages.json`` of a demo run (``None`` for separate commands).
        commands: ``command.json`` records of the commands that wrote sub-folders.
        survey: the survey file, if one is in the run directory.
        model_dir: a model folder (``metadata.json`` + ``model.pt``).
        scores: a scores table (``stellarflow score`` output).
        outliers_dir: a folder with ``outliers.ecsv``.
        lines_dir: a folder with ``candidates.ecsv``.
        elements_dir: a folder with ``elements.ecsv``.
    """

    run_dir: Path
    stages: dict[str, Any] | None = None
    commands: list[dict[str, Any]] = field(default_factory=list)
    survey: Path | None = None
    model_dir: Path | None = None
    scores: Path | None = None
    outliers_dir: Path | None = None
    lines_dir: Path | None = None
    elements_dir: Path | None = None


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def truth_table(contents: RunContents, name: str) -> Table | None:
    """A ``truth/<name>`` table of the run's survey, if it is a mock."""
    if contents.survey is None:
        return None
    from stellarflow.io.hdf5 import open_survey

    with open_survey(contents.survey) as survey:
        if not survey.has_truth:
            return None
        return survey.read_table(f"truth/{name}")


def _key_box(title: str, items: list[tuple[str, object]], table: Table | None = None) -> str:
    body = f"<h3>Answer key: {html.escape(title)}</h3>" + definition_list(items)
    if table is not None and len(table):
        body += table_html(table)
    return f'<div class="key">{body}</div>'


def overview(contents: RunContents, page_dir: Path, version: str, built: str) -> Section:
    """Package version, build time, command lines and the run time of each stage."""
    items: list[tuple[str, object]] = [("stellarflow version", version), ("report built", built),
                                       ("run directory", str(contents.run_dir))]  # fmt: skip
    parts = []
    if contents.stages is not None:
        stages = contents.stages.get("stages", {})
        command = contents.stages.get("command")
        if command:
            items.append(("command", command))
        total = sum(float(record.get("seconds", 0.0)) for record in stages.values())
        items.append(("run time (all stages)", f"{total:.1f} s"))
        rows = Table(
            {
                "stage": list(stages),
                "seconds": [float(r.get("seconds", 0.0)) for r in stages.values()],
                "command": [str(r.get("command", "")) for r in stages.values()],
            }
        )
        parts.append(table_html(rows, table_id="stages"))
    if contents.commands:
        rows = Table(
            {
                "folder": [str(c.get("folder", "")) for c in contents.commands],
                "command": [str(c.get("command", "")) for c in contents.commands],
                "seconds": [float(c.get("seconds", float("nan"))) for c in contents.commands],
                "finished": [str(c.get("finished", "")) for c in contents.commands],
            }
        )
        parts.append("<h3>Commands</h3>" + table_html(rows, table_id="commands"))
    return "overview", "Run", definition_list(items) + "".join(parts)


def survey_section(contents: RunContents, page_dir: Path, embed: bool) -> Section | None:
    """The survey summary (``summary.txt``) and the mock's figures."""
    run = contents.run_dir
    summary = run / "summary.txt"
    figures = [
        (run / "mock_spectra.png",
         "Spectra of three normal stars with published (and, on a mock, withheld) lines"),
        (run / "mock_population.png", "The population: Teff-logg and [Mg/Fe]-[Fe/H]"),
    ]  # fmt: skip
    parts = []
    if summary.is_file():
        lines = summary.read_text(encoding="utf-8").splitlines()
        head = [line for line in lines if not line.startswith((" ", "labels:"))]
        parts.append(f"<pre>{html.escape(chr(10).join(head))}</pre>")
        parts.append("<details><summary>labels: min / median / max</summary>"
                     f"<pre>{html.escape(chr(10).join(lines))}</pre></details>")  # fmt: skip
    parts += [figure(p, page_dir, caption, embed=embed) for p, caption in figures if p.is_file()]
    if not parts:
        return None
    return "survey", "Survey", "\n".join(parts)


def model_section(contents: RunContents, page_dir: Path, embed: bool) -> Section | None:
    """The trained model: its key numbers, training curve and samples beside the data."""
    from stellarflow.train.checkpoint import read_json

    if contents.model_dir is None:
        return None
    metadata = read_json(contents.model_dir / "metadata.json")
    config_path = contents.model_dir / "config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    history = metadata.get("history", [])
    train = config.get("train", {})
    options = ", ".join(f"{k}={v}" for k, v in train.get("model_options", {}).items())
    kind = str(train.get("model", ""))
    items: list[tuple[str, object]] = [
        ("model", f"{kind} ({options})" if options else kind),
        ("conditioned on", ", ".join(metadata.get("label_names", []))),
        ("pixels", metadata.get("n_pixels", "")),
        ("parameters", metadata.get("n_parameters", "")),
        ("epochs", len(history)),
        ("stopped", metadata.get("stopped", "")),
        ("best validation, nats/pixel", metadata.get("best_validation_nats_per_pixel", "")),
        ("training time, s", round(sum(float(h.get("seconds", 0.0)) for h in history), 1)),
        ("log_prob exact", metadata.get("log_prob_is_exact", "")),
    ]
    parts = [definition_list(items)]
    curve = contents.model_dir / "training_curve.png"
    if curve.is_file():
        parts.append(figure(curve, page_dir, "Training and validation nats per pixel",
                            embed=embed))  # fmt: skip
    samples = contents.run_dir / "samples_vs_data.png"
    if samples.is_file():
        point = ""
        if contents.stages is not None:
            record = contents.stages.get("stages", {}).get("samples", {})
            point = ", ".join(f"{k}={v:g}" for k, v in record.get("point", {}).items())
        parts.append(figure(samples, page_dir, f"Model samples beside survey spectra near "
                            f"{point or 'the label point'}", embed=embed))  # fmt: skip
    return "model", "Model", "\n".join(parts)


def scores_section(contents: RunContents, page_dir: Path, embed: bool) -> Section | None:
    """Key numbers of ``log p(flux | labels)`` over the survey."""
    if contents.scores is None:
        return None
    table = Table.read(contents.scores, format="ascii.ecsv")
    per_pixel = np.asarray(table["log_prob_per_pixel"], dtype=np.float64)
    items: list[tuple[str, object]] = [
        ("stars scored", len(table)),
        ("median log_prob, nats/pixel", float(np.nanmedian(per_pixel))),
        ("outside the label support", f"{100 * np.mean(~np.asarray(table['supported'])):.2f} %"),
    ]
    if "enough_pixels" in table.colnames:
        too_few = 100 * np.mean(~np.asarray(table["enough_pixels"]))
        items.append(("too few good pixels", f"{too_few:.2f} %"))
    return "scores", "Scores", definition_list(items)


def outliers_section(contents: RunContents, page_dir: Path, embed: bool) -> Section | None:
    """Score distribution, the ranked table, the gallery, and the injected outliers found."""
    folder = contents.outliers_dir
    if folder is None:
        return None
    table = Table.read(folder / "outliers.ecsv", format="ascii.ecsv")
    counts = table.meta.get("flag_counts", {})
    items: list[tuple[str, object]] = [
        ("stars", len(table)),
        ("ranked", counts.get("ranked", "")),
        ("calibration", table.meta.get("calibration", "")),
        ("expectation", table.meta.get("expectation", "")),
        ("ranked by", table.meta.get("rank_by", "omnibus")),
    ]
    parts = [definition_list(items)]
    distribution = folder / "score_distribution.png"
    if distribution.is_file():
        parts.append(figure(distribution, page_dir, "Calibrated scores; top outliers marked",
                            embed=embed))  # fmt: skip
    shown = table[:_TOP_ROWS].copy()
    if "log_p_tail" in shown.colnames and "one_in" in shown.colnames:
        shown["one_in"] = [format_one_in(v) for v in shown["log_p_tail"]]
    parts.append(table_html(shown, _OUTLIER_COLUMNS, table_id="outliers"))
    if len(table) > len(shown):
        parts.append(f'<p class="muted">top {len(shown)} of {len(table)} stars; all in '
                     f"{html.escape(folder.name)}/outliers.ecsv</p>")  # fmt: skip
    truth = truth_table(contents, "labels")
    if truth is not None and "outlier_kind" in truth.colnames:
        summary, per_kind = answer_key.outlier_recovery(table, truth)
        parts.append(_key_box("injected outliers", [
            ("injected", summary["n_injected"]),
            ("caught in the top k (k = injected among ranked)",
             f"{summary['caught']} of {summary['k']}"),
            ("precision at k", summary["precision_at_k"]),
            ("ROC AUC of the rank", summary["auc"]),
            ("top element right, among caught", summary["attribution"]),
        ], per_kind))  # fmt: skip
    gallery = sorted((folder / "gallery").glob("*.png")) if (folder / "gallery").is_dir() else []
    if gallery:
        parts.append("<h3>Top outliers</h3>")
        parts += [figure(p, page_dir, p.stem.replace("_", " ", 1), embed=embed) for p in gallery]
    return "outliers", "Outliers", "\n".join(parts)


def lines_section(contents: RunContents, page_dir: Path, embed: bool) -> Section | None:
    """Candidate lines: their table, figures, and the withheld lines recovered."""
    folder = contents.lines_dir
    if folder is None:
        return None
    table = Table.read(folder / "candidates.ecsv", format="ascii.ecsv")
    known = np.asarray(table["known"], dtype=bool) if "known" in table.colnames else None
    items: list[tuple[str, object]] = [("features found", len(table))]
    if known is not None:
        items += [("in the line list", int(known.sum())), ("candidate new", int((~known).sum()))]
    parts = [definition_list(items)]
    if known is not None:
        new_first = np.argsort(known, kind="stable")
        table = table[new_first]
    parts.append(table_html(table, max_rows=60, table_id="candidates"))
    truth = truth_table(contents, "linelist")
    if truth is not None and "withheld" in truth.colnames and known is not None:
        grid = _wavelength_range(contents)
        if grid is not None:
            resolution = float(table.meta.get("resolution", 22_500.0))
            summary, withheld = answer_key.line_recovery(table, truth, grid, resolution)
            parts.append(_key_box("withheld lines", [
                ("withheld lines on the grid", summary["n_withheld"]),
                ("recovered (same element, within lambda/R)", summary["recovered"]),
                ("recall", summary["recall"]),
                ("new candidates", summary["n_new_candidates"]),
                ("precision (new candidates at a withheld line)", summary["precision"]),
            ], withheld))  # fmt: skip
    parts += [figure(p, page_dir, p.stem.replace("_", " "), embed=embed) for p in _pngs(folder)]
    return "lines", "Hidden lines", "\n".join(parts)


def _wavelength_range(contents: RunContents) -> tuple[float, float] | None:
    """The model's grid ends (else the survey's), vacuum Å."""
    if contents.model_dir is not None and (contents.model_dir / "wavelength.npy").is_file():
        wavelength = np.load(contents.model_dir / "wavelength.npy")
        return float(wavelength[0]), float(wavelength[-1])
    if contents.survey is not None:
        from stellarflow.io.hdf5 import open_survey

        with open_survey(contents.survey) as survey:
            return float(survey.wavelength[0]), float(survey.wavelength[-1])
    return None


def elements_section(contents: RunContents, page_dir: Path, embed: bool) -> Section | None:
    """Per-element residual scatter, the greedy path, figures, and the mock's processes."""
    folder = contents.elements_dir
    if folder is None:
        return None
    table = Table.read(folder / "elements.ecsv", format="ascii.ecsv")
    condition = table.meta.get("condition", "")
    parts = []
    if condition:
        items = [("conditioned on", ", ".join(condition) if isinstance(condition, list)
                  else condition)]  # fmt: skip
        parts.append(definition_list(items))
    parts.append(table_html(table, table_id="elements"))
    greedy_path = folder / "greedy.ecsv"
    greedy = Table.read(greedy_path, format="ascii.ecsv") if greedy_path.is_file() else None
    if greedy is not None:
        parts.append("<h3>Greedy conditioning set</h3>")
        parts.append(table_html(greedy, table_id="greedy"))
    parts += [figure(p, page_dir, p.stem.replace("_", " "), embed=embed) for p in _pngs(folder)]
    if truth_table(contents, "labels") is not None:
        found: list[tuple[str, object]] = []
        if greedy is not None:
            key = answer_key.greedy_processes(greedy)
            pairs = zip(key["added"], key["processes_added"], strict=True)
            carried = [f"{e} ({p or 'no extra process'})" for e, p in pairs]
            found = [("greedy added", ", ".join(carried) or "nothing"),
                     ("one element per extra process", key["recovered"])]  # fmt: skip
        parts.append(_key_box("processes of the mock", [
            *found,
            ("processes", ", ".join(answer_key.PROCESSES)),
            ("expected answer", "four processes: FE_H and MG_FE trace cc and ia; the AGB "
             "(Ce, Nd; also C, N) and odd-Z (Na, Al, K, Cu) processes need one more element "
             "each; independent per-element scatter remains. In a survey catalogue the "
             "surface C and N also carry mass-dependent mixing, a fifth dimension"),
        ], answer_key.process_table()))  # fmt: skip
    return "elements", "How many elements", "\n".join(parts)
