"""Shared by the benchmark scripts: model specs ``kind[:opt=value;opt=value]``, training."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def model_options(spec: str) -> tuple[str, dict]:
    """``"factor_analysis:n_latent=16"`` -> ("factor_analysis", {"n_latent": 16}).

    Values are JSON, except ``init_from`` (a model directory for staged training), which
    is taken as a plain path.
    """
    kind, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        options[key] = value if key == "init_from" else json.loads(value)
    return kind, options


def option_pair(text: str) -> tuple[str, Any]:
    """One ``KEY=JSON_VALUE`` command-line option -> ``(key, value)``."""
    key, _, value = text.partition("=")
    return key, json.loads(value)


def directory_name(spec: str) -> str:
    """A file-system-safe directory name for a spec."""
    return spec.replace(":", "_").replace(";", "_").replace("=", "").replace("/", "-")


def train_on_first(
    survey_path: Path,
    n_stars: int,
    kind: str,
    options: dict[str, Any],
    out: Path,
    *,
    epochs: int,
    time_limit: float,
    seed: int,
    labels: tuple[str, ...] = ("TEFF", "LOGG", "FE_H"),
    polish: int = 0,
    within: dict[str, tuple[float, float]] | None = None,
) -> float:
    """Train ``kind`` on the survey's first ``n_stars`` stars (CPU, batch 256); seconds taken.

    ``polish`` > 0 (factor analysis): fit by that many ECM iterations instead of Adam epochs.
    ``within``: label ranges of a local model (``TrainConfig.within``) among those stars.
    """
    from stellarflow.io.hdf5 import open_survey
    from stellarflow.train.config import TrainConfig
    from stellarflow.train.loop import train_model

    config = TrainConfig(
        label_names=labels,
        model=kind,
        model_options=options,
        epochs=0 if polish else epochs,
        batch_size=256,
        time_limit=time_limit,
        seed=seed,
        device="cpu",
        polish_iterations=polish,
        within=within or {},
    )
    started = time.perf_counter()
    with open_survey(survey_path) as survey:
        train_model(survey.read(0, n_stars), config, out, overwrite=True)
    return time.perf_counter() - started
