"""The end-to-end demo on the built-in mock survey, stage by stage, resumable.

Each stage writes its outputs atomically and is recorded, with its key numbers, in
``RUN_DIR/stages.json`` when it finishes; re-running with the same ``RUN_DIR`` skips the
finished stages. Stages today:

1. ``mock``: a mock survey with known truth (``survey.h5``).
2. ``summary``: ``summary.txt``, what ``stellarflow info`` prints.
3. ``figures``: ``mock_spectra.png`` (spectra with published and withheld lines) and
   ``mock_population.png`` (Teff-logg and [Mg/Fe]-[Fe/H]).
4. ``train``: the default model (``latent_flow``) of p(flux | TEFF, LOGG, FE_H), trained
   into ``model/`` (weights, config, metadata, ``training_curve.png``). An interrupted
   training resumes from its last finished epoch.
5. ``score``: ``scores.ecsv``, log p(flux | labels) of every star (as ``stellarflow score``).
6. ``samples``: ``samples_vs_data.png``, model samples beside the survey's spectra at a
   well-populated label point.
7. ``outliers``: ``outliers/`` as ``stellarflow outliers`` writes it (ranked table, score
   distribution, gallery); the injected outliers found are recorded.
8. ``lines``: ``lines/`` as ``stellarflow lines`` writes it at that label point (candidate
   lines, correlation matrix, figures, the empirical baseline); withheld lines recovered.
9. ``elements``: ``catalogue.ecsv`` (the survey's labels) and ``elements/`` as
   ``stellarflow elements --condition FE_H,MG_FE --greedy`` writes it; processes found.
10. ``report``: ``report.html`` (``stellarflow report``), rebuilt on every run.

Stages 7-9 run the documented commands in-process, and record their command lines.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from stellarflow.errors import StellarflowError
from stellarflow.io.atomic import atomic_path
from stellarflow.train.checkpoint import TrainedModel, read_json, write_json
from stellarflow.train.config import TrainConfig

__all__ = [
    "DEMO_LABELS",
    "DEMO_LINE_SAMPLES",
    "DEMO_SIZES",
    "DEMO_TRAINING",
    "DemoConfig",
    "run_demo",
]

# small: minutes on a 2-core laptop; full: the native 7,514-pixel APOGEE grid.
DEMO_SIZES: dict[str, dict[str, Any]] = {
    # 1,024 pixels around 15,600-15,900 A: Mg, Si, Fe, Ce and CO features, across a chip gap
    "small": {"n_stars": 3000, "n_pixels": 1024, "pixel_offset": 2400},
    "full": {"n_stars": 25000, "n_pixels": None},
}

# Maximum epochs, and a time budget in minutes as a safety net (training stops, with its
# best weights saved, after the epoch that exceeds it). small: 0.7 s per epoch on 2 idle CPU
# cores (50 epochs in 36 s, 2026-11-28), 5-10x that on a shared machine.
# full: ~60x the work per epoch (8x the stars, 7x the pixels), so on a CPU the time budget
# ends it (not measured yet; a GPU, used when present, should get through all the epochs).
DEMO_TRAINING: dict[str, dict[str, Any]] = {
    "small": {"epochs": 50, "time_limit": 4.0},
    "full": {"epochs": 60, "time_limit": 90.0},
}

DEMO_LABELS: tuple[str, ...] = ("TEFF", "LOGG", "FE_H")

# The default family (latent_flow) with the scatter at fixed labels free to change with the
# labels: on the 1,024-pixel mock it halves the S/N dependence of the calibrated score and
# doubles the outliers' precision at k (BENCHMARKS.md, "Label-dependent scatter").
DEMO_MODEL_OPTIONS: dict[str, Any] = {"label_dependent_variance": True}

# Model spectra drawn for the hidden-line search (its correlation's sampling noise is
# ~1/sqrt(n)); 20,000 at 7,514 pixels take ~35 s on 2 idle cores.
DEMO_LINE_SAMPLES: dict[str, int] = {"small": 10_000, "full": 20_000}

# The label point of the samples figure when the model supports it (else the median labels).
_REFERENCE_POINT = {"TEFF": 4750.0, "LOGG": 2.5, "FE_H": 0.0}
_N_SAMPLES = 1000
_N_GALLERY = 12  # outliers drawn in the gallery


@dataclass(frozen=True)
class DemoConfig:
    """Settings of a demo run.

    Attributes:
        size: "small" (default; minutes on a laptop) or "full" (7,514 pixels).
        seed: seed of the mock survey and of the training.
        n_stars: override the size's number of stars (tests use tiny runs).
        n_pixels: override the size's number of pixels.
        epochs: override the size's maximum number of training epochs.
        outlier_fraction: override the mock's fraction of injected outliers.
    """

    size: str = "small"
    seed: int = 0
    n_stars: int | None = None
    n_pixels: int | None = None
    epochs: int | None = None
    outlier_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.size not in DEMO_SIZES:
            raise ValueError(f"size must be one of {sorted(DEMO_SIZES)}, got {self.size!r}")
        if self.epochs is not None and (int(self.epochs) != self.epochs or self.epochs < 1):
            raise ValueError(f"epochs must be a positive integer, got {self.epochs}")

    @property
    def mock_options(self) -> dict[str, Any]:
        """Keyword arguments of the mock survey's configuration."""
        options = dict(DEMO_SIZES[self.size])
        if self.n_stars is not None:
            options["n_stars"] = self.n_stars
        if self.n_pixels is not None:
            options["n_pixels"] = self.n_pixels
        if self.outlier_fraction is not None:
            options["outlier_fraction"] = self.outlier_fraction
        return {k: v for k, v in options.items() if v is not None} | {"seed": self.seed}

    @property
    def train_config(self) -> TrainConfig:
        """How the demo's model is trained: the default model family and settings."""
        options = DEMO_TRAINING[self.size]
        return TrainConfig(
            label_names=DEMO_LABELS,
            model_options=DEMO_MODEL_OPTIONS,
            epochs=self.epochs if self.epochs is not None else options["epochs"],
            time_limit=options["time_limit"],
            seed=self.seed,
        )


class DemoStateError(StellarflowError, ValueError):
    """The run directory belongs to a demo run with other settings."""


def _load_state(out: Path, config: DemoConfig) -> dict[str, Any]:
    state_path = out / "stages.json"
    if not state_path.exists():
        return {"config": asdict(config), "stages": {}}
    state = read_json(state_path)
    saved = state.get("config")
    if isinstance(saved, dict):
        # settings added since the run was started take their defaults
        saved = {f.name: f.default for f in fields(DemoConfig)} | saved
    if saved != asdict(config):
        raise DemoStateError(
            f"{out} holds a demo run with settings {state.get('config')}, not "
            f"{asdict(config)}; choose another --out or delete {out}"
        )
    state["config"] = saved
    return state


@dataclass(frozen=True)
class _Run:
    """What every stage needs: where, with which settings, and how to talk."""

    out: Path
    config: DemoConfig
    progress: bool
    report: Callable[[str], None]

    @property
    def survey_path(self) -> Path:
        return self.out / "survey.h5"

    @property
    def model_dir(self) -> Path:
        return self.out / "model"


def run_demo(
    out: str | os.PathLike[str],
    config: DemoConfig,
    *,
    progress: bool = True,
    report: Callable[[str], None] = lambda message: None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the demo in ``out``; returns the stage record.

    Args:
        out: run directory (created).
        config: demo settings.
        progress: show progress bars.
        report: called with one line per stage (the CLI prints them).
        command: the command line that started the run (the report shows it).

    Returns:
        The content of ``stages.json``: ``{"config": ..., "stages": {name: record}}``, each
        record holding the stage's ``seconds`` and its key numbers.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out, config)
    stages: dict[str, Any] = state["stages"]
    run = _Run(out, config, progress, report)
    if command is not None:
        state["command"] = command
    for name, stage, outputs in _STAGES:
        done = name in stages and all((out / output).exists() for output in outputs)
        if done and name != "report":  # the report always shows the latest state
            report(f"[{name}] already done: {', '.join(outputs)}")
            continue
        started = time.monotonic()
        record = stage(run)
        stages[name] = {"seconds": round(time.monotonic() - started, 2), **record}
        write_json(out / "stages.json", state)
        report(f"[{name}] done in {stages[name]['seconds']:.1f} s")
    return state


def _mock_stage(run: _Run) -> dict[str, Any]:
    from stellarflow.mock import MockConfig, write_mock_survey

    run.report(f"[mock] generating a mock survey: {run.config.mock_options}")
    write_mock_survey(
        run.survey_path,
        MockConfig(**run.config.mock_options),
        overwrite=True,
        progress=run.progress,
    )
    return {"survey": run.survey_path.name}


def _summary_stage(run: _Run) -> dict[str, Any]:
    from stellarflow.data.summary import summarize
    from stellarflow.io.hdf5 import open_survey

    with open_survey(run.survey_path) as survey:
        lines = summarize(survey).lines()
    with atomic_path(run.out / "summary.txt", overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    for line in lines:
        run.report("  " + line)
    return {}


def _figures_stage(run: _Run) -> dict[str, Any]:
    return {"files": _mock_figures(run.survey_path, run.out)}


def _showcase_rows(truth: Any, n_show: int = 3) -> np.ndarray:
    """Rows of a few normal, high-S/N stars spanning the temperature range."""
    normal = np.flatnonzero(
        (np.asarray(truth["outlier_kind"]).astype(str) == "")
        & (np.asarray(truth["SNR"]) > np.median(truth["SNR"]))
    )
    order = normal[np.argsort(np.asarray(truth["TEFF"])[normal])]
    picks = np.linspace(0, order.size - 1, n_show + 2)[1:-1].round().astype(int)
    return np.sort(order[picks])


def _mock_figures(survey_path: Path, out: Path) -> list[str]:
    from stellarflow.data.dataset import concatenate
    from stellarflow.io.hdf5 import open_survey
    from stellarflow.plot.mock import plot_mock_population, plot_mock_spectra

    with open_survey(survey_path) as survey:
        truth = survey.read_table("truth/labels")
        rows = _showcase_rows(truth)
        shown = concatenate([survey.read(int(r), int(r) + 1) for r in rows])
        truth_flux = np.stack([survey.read_truth_flux(int(r), int(r) + 1)[0] for r in rows])
        linelist = survey.read_table("truth/linelist")
    figures = {
        "mock_spectra.png": plot_mock_spectra(
            shown.wavelength,
            shown.flux,
            linelist,
            truth_flux=truth_flux,
            mask=shown.mask,
            labels=truth[rows],
        ),
        "mock_population.png": plot_mock_population(truth),
    }
    for name, figure in figures.items():
        _save_figure(figure, out / name)
    return list(figures)


def _save_figure(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path, overwrite=True) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def _training_finished(model_dir: Path) -> bool:
    """Whether ``train_model`` returned in ``model_dir`` (it writes the curve last)."""
    metadata = model_dir / "metadata.json"
    return (
        metadata.is_file()
        and "stopped" in read_json(metadata)
        and (model_dir / "training_curve.png").is_file()
    )


def _train_stage(run: _Run) -> dict[str, Any]:
    from stellarflow.io.hdf5 import open_survey
    from stellarflow.train.loop import train_model, training_source

    config = run.config.train_config
    model_dir = run.model_dir
    if _training_finished(model_dir):
        run.report("[train] the training in model/ had finished; recording it")
    else:
        # training_state.pt is written at the end of every epoch: resume from the last one
        resume = (model_dir / "training_state.pt").is_file()
        if resume:
            metadata_path = model_dir / "metadata.json"
            done = len(read_json(metadata_path)["history"]) if metadata_path.is_file() else 1
            run.report(f"[train] resuming the interrupted training at epoch {done + 1}")
        else:
            run.report(
                f"[train] {config.model} on {', '.join(config.label_names)}: up to "
                f"{config.epochs} epochs, time limit {config.time_limit:g} min -> model/"
            )
        with open_survey(run.survey_path) as survey:
            source, linelist = training_source(survey)
            train_model(
                source,
                config,
                model_dir,
                resume=resume,
                overwrite=not resume,
                progress=run.progress,
                linelist=linelist,
            )
    metadata = read_json(model_dir / "metadata.json")
    history = metadata["history"]
    record = {
        "model": model_dir.name,
        "model_kind": config.model,
        "epochs": len(history),
        "best_epoch": int(metadata["best_epoch"]),
        "best_validation_nats_per_pixel": round(
            float(metadata["best_validation_nats_per_pixel"]), 5
        ),
        "stopped": metadata["stopped"],
        "training_seconds": round(sum(float(h["seconds"]) for h in history), 1),
    }
    run.report(
        f"[train] {record['epochs']} epochs ({record['stopped']}); best validation "
        f"{record['best_validation_nats_per_pixel']:.4f} nats/pixel at epoch "
        f"{record['best_epoch'] + 1}"
    )
    return record


def _load_trained(run: _Run) -> TrainedModel:
    """The demo's model, on the device it was trained on (CUDA when present)."""
    from stellarflow.train.checkpoint import load_model
    from stellarflow.train.loop import resolve_device

    return load_model(run.model_dir, device=resolve_device(run.config.train_config.device))


def _score_stage(run: _Run) -> dict[str, Any]:
    from stellarflow.analysis.score import score_survey
    from stellarflow.io.hdf5 import open_survey

    run.report("[score] log p(flux | labels) of every star -> scores.ecsv")
    trained = _load_trained(run)
    with open_survey(run.survey_path) as survey:
        started = time.monotonic()
        table = score_survey(trained, survey, progress=run.progress)
        seconds = time.monotonic() - started
    with atomic_path(run.out / "scores.ecsv", overwrite=True) as tmp:
        table.write(tmp, format="ascii.ecsv")
    n_stars = len(table)
    per_pixel = np.asarray(table["log_prob_per_pixel"], dtype=np.float64)
    record = {
        "scores": "scores.ecsv",
        "n_stars": n_stars,
        "stars_per_second": round(n_stars / max(seconds, 1e-9), 1),
        "unsupported_fraction": round(float(np.mean(~np.asarray(table["supported"]))), 4),
        "too_few_pixels_fraction": round(float(np.mean(~np.asarray(table["enough_pixels"]))), 4),
        "median_log_prob_per_pixel": round(float(np.nanmedian(per_pixel)), 5),
        "log_prob_is_exact": bool(table.meta["log_prob_is_exact"]),
    }
    run.report(
        f"[score] {n_stars} stars at {record['stars_per_second']:.0f} stars/s; "
        f"{100 * record['unsupported_fraction']:.1f} % outside the label support, "
        f"{100 * record['too_few_pixels_fraction']:.1f} % with too few pixels; median "
        f"{record['median_log_prob_per_pixel']:.4f} nats/pixel"
    )
    return record


def _label_point(trained: TrainedModel, labels: Any) -> dict[str, float]:
    """The reference point if the model supports it and stars are there, else the median."""
    from stellarflow.analysis.sampling import stars_near
    from stellarflow.data.dataset import label_array

    names = trained.label_names
    reference = {name: _REFERENCE_POINT[name] for name in names if name in _REFERENCE_POINT}
    if len(reference) == len(names):
        inside = trained.support.contains(np.array([[reference[n] for n in names]]))[0]
        if inside and stars_near(labels, reference).size >= 20:
            return reference
    median = np.nanmedian(label_array(labels, names), axis=0)
    return {
        n: float(np.round(v, -1 if n == "TEFF" else 2)) for n, v in zip(names, median, strict=True)
    }


def _run_command(run: _Run, argv: list[str]) -> str:
    """Run one ``stellarflow`` command in-process, as a user would type it; its text.

    The demo calls the documented commands rather than their library functions so that its
    outputs, and the command lines the report shows, are exactly those of the interface.
    """
    import shlex

    from stellarflow.cli.main import build_parser

    args = build_parser().parse_args((["-q"] if not run.progress else []) + argv)
    args.handler(args)
    shown = [str(Path(a).relative_to(run.out)) if a.startswith(str(run.out)) else a for a in argv]
    return shlex.join(["stellarflow", *shown])


def _outliers_stage(run: _Run) -> dict[str, Any]:
    from astropy.table import Table

    from stellarflow.io.hdf5 import open_survey
    from stellarflow.report.answer_key import outlier_recovery

    run.report("[outliers] calibrated '1 in N' of every star, explained -> outliers/")
    out = run.out / "outliers"
    command = _run_command(run, ["outliers", str(run.model_dir), str(run.survey_path),
                                 "--out", str(out), "--top", str(_N_GALLERY),
                                 "--overwrite"])  # fmt: skip
    table = Table.read(out / "outliers.ecsv", format="ascii.ecsv")
    record: dict[str, Any] = {"command": command, "outliers": "outliers/outliers.ecsv",
                              "ranked": int(table.meta["flag_counts"]["ranked"])}  # fmt: skip
    with open_survey(run.survey_path) as survey:
        truth = survey.read_table("truth/labels")
    summary, _ = outlier_recovery(table, truth)
    record["answer_key"] = {k: (round(v, 4) if isinstance(v, float) else v)
                            for k, v in summary.items()}  # fmt: skip
    run.report(
        f"[outliers] {summary['caught']} of {summary['k']} injected outliers in the top "
        f"{summary['k']} (AUC {summary['auc']:.3f}); the top element is right for "
        f"{100 * summary['attribution']:.0f} % of them"
    )
    return record


def _lines_stage(run: _Run) -> dict[str, Any]:
    from astropy.table import Table

    from stellarflow.io.hdf5 import open_survey
    from stellarflow.report.answer_key import line_recovery

    trained = _load_trained(run)
    with open_survey(run.survey_path) as survey:
        point = _label_point(trained, survey.labels)
        linelist = survey.read_table("truth/linelist")
    text = ",".join(f"{name}={value:g}" for name, value in point.items())
    n_samples = DEMO_LINE_SAMPLES[run.config.size]
    run.report(f"[lines] pixel correlations of {n_samples} model spectra at {text} -> lines/")
    out = run.out / "lines"
    command = _run_command(run, ["lines", str(run.model_dir), "--at", text,
                                 "--survey", str(run.survey_path), "--out", str(out),
                                 "--n-samples", str(n_samples), "--seed",
                                 str(run.config.seed), "--overwrite"])  # fmt: skip
    candidates = Table.read(out / "candidates.ecsv", format="ascii.ecsv")
    grid = (float(trained.wavelength[0]), float(trained.wavelength[-1]))
    summary, _ = line_recovery(candidates, linelist, grid)
    run.report(
        f"[lines] {len(candidates)} features, {summary['n_new_candidates']} not in the line "
        f"list; {summary['recovered']} of {summary['n_withheld']} withheld lines recovered"
    )
    return {
        "command": command,
        "candidates": "lines/candidates.ecsv",
        "point": point,
        "n_features": len(candidates),
        "answer_key": {k: (round(v, 4) if isinstance(v, float) else v)
                       for k, v in summary.items()},
    }  # fmt: skip


def _elements_stage(run: _Run) -> dict[str, Any]:
    from astropy.table import Table

    from stellarflow.io.hdf5 import open_survey
    from stellarflow.report.answer_key import greedy_processes

    catalogue = run.out / "catalogue.ecsv"
    with open_survey(run.survey_path) as survey:
        labels = survey.labels
    with atomic_path(catalogue, overwrite=True) as tmp:
        labels.write(tmp, format="ascii.ecsv")
    run.report("[elements] residual abundance structure given FE_H, MG_FE; greedy -> elements/")
    out = run.out / "elements"
    command = _run_command(run, ["elements", str(catalogue), "--condition", "FE_H,MG_FE",
                                 "--elements", "all", "--also", "TEFF,LOGG", "--greedy",
                                 "--out", str(out), "--seed", str(run.config.seed),
                                 "--overwrite"])  # fmt: skip
    greedy = Table.read(out / "greedy.ecsv", format="ascii.ecsv")
    key = greedy_processes(greedy)
    run.report(
        f"[elements] greedy conditioning set {', '.join(key['condition'])}; processes "
        f"found beyond FE_H and MG_FE: {', '.join(key['processes_added']) or 'none'}"
    )
    return {"command": command, "elements": "elements/elements.ecsv", "answer_key": key}


def _report_stage(run: _Run) -> dict[str, Any]:
    from stellarflow.report import build_report

    path = build_report(run.out)
    run.report(f"[report] {path}")
    return {"report": path.name}


def _samples_stage(run: _Run) -> dict[str, Any]:
    from stellarflow.analysis.sampling import sample_spectra, stars_near
    from stellarflow.data.dataset import concatenate
    from stellarflow.io.hdf5 import open_survey
    from stellarflow.plot.model import plot_samples_vs_data

    trained = _load_trained(run)
    with open_survey(run.survey_path) as survey:
        point = _label_point(trained, survey.labels)
        rows = stars_near(survey.labels, point)[:200]
        near = concatenate([survey.read(int(r), int(r) + 1) for r in rows])
    text = ",".join(f"{name}={value:g}" for name, value in point.items())
    run.report(f"[samples] {_N_SAMPLES} samples at {text} beside {rows.size} stars near it")
    samples = sample_spectra(trained, point, _N_SAMPLES, seed=run.config.seed)
    window = None
    if trained.wavelength[0] < 15600.0 and trained.wavelength[-1] > 15900.0:
        window = (15600.0, 15900.0)  # the small demo's window; the full grid is too dense
    figure = plot_samples_vs_data(
        trained.wavelength, samples, near.flux, near.mask, point=point, window=window
    )
    _save_figure(figure, run.out / "samples_vs_data.png")
    return {
        "figure": "samples_vs_data.png",
        "point": point,
        "n_samples": _N_SAMPLES,
        "n_stars_near": int(rows.size),
    }


# name, function, outputs (relative to the run directory) that must exist for it to count
_STAGES: tuple[tuple[str, Callable[[_Run], dict[str, Any]], tuple[str, ...]], ...] = (
    ("mock", _mock_stage, ("survey.h5",)),
    ("summary", _summary_stage, ("summary.txt",)),
    ("figures", _figures_stage, ("mock_spectra.png", "mock_population.png")),
    ("train", _train_stage, ("model/model.pt",)),
    ("score", _score_stage, ("scores.ecsv",)),
    ("samples", _samples_stage, ("samples_vs_data.png",)),
    ("outliers", _outliers_stage, ("outliers/outliers.ecsv",)),
    ("lines", _lines_stage, ("lines/candidates.ecsv",)),
    ("elements", _elements_stage, ("elements/elements.ecsv",)),
    ("report", _report_stage, ("report.html",)),
)
