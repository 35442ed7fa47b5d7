"""The end-to-end demo on the built-in mock survey, stage by stage, resumable.

Each stage writes its outputs atomically and is recorded in ``RUN_DIR/stages.json`` when it
finishes; re-running with the same ``RUN_DIR`` skips the finished stages. Stages today:

1. ``mock``: a mock survey with known truth (``survey.h5``).
2. ``summary``: ``summary.txt``, what ``stellarflow info`` prints.
3. ``figures``: ``mock_spectra.png`` (spectra with published and withheld lines) and
   ``mock_population.png`` (Teff-logg and [Mg/Fe]-[Fe/H]).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stellarflow.errors import StellarflowError
from stellarflow.io.atomic import atomic_path
from stellarflow.train.checkpoint import read_json, write_json

__all__ = ["DEMO_SIZES", "DemoConfig", "run_demo"]

# small: minutes on a 2-core laptop; full: the native 7,514-pixel APOGEE grid.
DEMO_SIZES: dict[str, dict[str, Any]] = {
    # 1,024 pixels around 15,600-15,900 A: Mg, Si, Fe, Ce and CO features, across a chip gap
    "small": {"n_stars": 3000, "n_pixels": 1024, "pixel_offset": 2400},
    "full": {"n_stars": 25000, "n_pixels": None},
}


@dataclass(frozen=True)
class DemoConfig:
    """Settings of a demo run.

    Attributes:
        size: "small" (default; minutes on a laptop) or "full" (7,514 pixels).
        seed: seed of the mock survey.
        n_stars: override the size's number of stars (tests use tiny runs).
        n_pixels: override the size's number of pixels.
    """

    size: str = "small"
    seed: int = 0
    n_stars: int | None = None
    n_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.size not in DEMO_SIZES:
            raise ValueError(f"size must be one of {sorted(DEMO_SIZES)}, got {self.size!r}")

    @property
    def mock_options(self) -> dict[str, Any]:
        """Keyword arguments of the mock survey's configuration."""
        options = dict(DEMO_SIZES[self.size])
        if self.n_stars is not None:
            options["n_stars"] = self.n_stars
        if self.n_pixels is not None:
            options["n_pixels"] = self.n_pixels
        return {k: v for k, v in options.items() if v is not None} | {"seed": self.seed}


class DemoStateError(StellarflowError, ValueError):
    """The run directory belongs to a demo run with other settings."""


def _load_state(out: Path, config: DemoConfig) -> dict[str, Any]:
    state_path = out / "stages.json"
    if not state_path.exists():
        return {"config": asdict(config), "stages": {}}
    state = read_json(state_path)
    if state.get("config") != asdict(config):
        raise DemoStateError(
            f"{out} holds a demo run with settings {state.get('config')}, not "
            f"{asdict(config)}; choose another --out or delete {out}"
        )
    return state


def run_demo(
    out: str | os.PathLike[str],
    config: DemoConfig,
    *,
    progress: bool = True,
    report: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Run (or resume) the demo in ``out``; returns the stage record.

    Args:
        out: run directory (created).
        config: demo settings.
        progress: show progress bars.
        report: called with one line per stage (the CLI prints them).
    """
    from stellarflow.mock import MockConfig, write_mock_survey

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out, config)
    stages: dict[str, Any] = state["stages"]
    survey_path = out / "survey.h5"

    def finish(name: str, started: float, **extra: Any) -> None:
        stages[name] = {"seconds": round(time.monotonic() - started, 2), **extra}
        write_json(out / "stages.json", state)
        report(f"[{name}] done in {stages[name]['seconds']:.1f} s")

    if "mock" in stages and survey_path.is_file():
        report("[mock] already done: survey.h5")
    else:
        started = time.monotonic()
        report(f"[mock] generating a mock survey: {config.mock_options}")
        write_mock_survey(
            survey_path, MockConfig(**config.mock_options), overwrite=True, progress=progress
        )
        finish("mock", started, survey=survey_path.name)

    if "summary" in stages:
        report("[summary] already done: summary.txt")
    else:
        started = time.monotonic()
        lines = _summary_lines(survey_path)
        with atomic_path(out / "summary.txt", overwrite=True) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        for line in lines:
            report("  " + line)
        finish("summary", started)

    if "figures" in stages:
        report("[figures] already done")
    else:
        started = time.monotonic()
        names = _mock_figures(survey_path, out)
        finish("figures", started, files=names)
    return state


def _summary_lines(survey_path: Path) -> list[str]:
    from stellarflow.data.summary import summarize
    from stellarflow.io.hdf5 import open_survey

    with open_survey(survey_path) as survey:
        return summarize(survey).lines()


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
    import matplotlib.pyplot as plt

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
        with atomic_path(out / name, overwrite=True) as tmp:
            figure.savefig(tmp, format="png", dpi=110)
        plt.close(figure)
    return list(figures)
