"""Self-contained model directories: weights, config, metadata; loaded without unpickling.

A model directory holds::

    model.pt            state dict of the best weights (tensors only; torch.load(weights_only))
    config.json         {"train": TrainConfig, "model": model.config (kind, sizes, options)}
    metadata.json       package version, label names, grid hash, training-data summary, history
    wavelength.npy      (n_pixels,) vacuum Angstrom grid the model was trained on
    support.npz         the training labels' support (see ``train.support``)
    training_state.pt   last weights, optimiser, scheduler, epoch, history (for --resume)
    training_curve.png  train / validation nats per pixel per epoch

Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stellarflow.data.grid import grid_hash
from stellarflow.errors import FileFormatError, GridMismatchError, LabelError
from stellarflow.io.atomic import atomic_path
from stellarflow.io.hdf5 import json_default
from stellarflow.train.config import TrainConfig
from stellarflow.train.support import LabelSupport

__all__ = [
    "TrainedModel",
    "check_compatible",
    "load_model",
    "log_prob_is_exact",
    "read_json",
    "save_torch",
    "write_json",
]

MODEL_FILES = ("model.pt", "config.json", "metadata.json", "wavelength.npy", "support.npz")


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically, replacing an existing file."""
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=json_default) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON file written by :func:`write_json`."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileFormatError(f"cannot read {path}: {err}") from None


def save_torch(path: Path, payload: object) -> None:
    """``torch.save`` atomically (tensors, numbers, strings, dicts and lists only)."""
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(payload, tmp)


def load_torch(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: never runs pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise FileFormatError(f"cannot read {path}: {err}") from None


@torch.no_grad()
def log_prob_is_exact(model: torch.nn.Module) -> bool:
    """Whether the model's noise-aware ``log_prob`` is exact (not a stochastic estimate)."""
    like = next(model.parameters())
    n_context = int(model.n_context)
    context = like.new_zeros(1, n_context) if n_context else None
    if not getattr(model, "noise_aware", True):
        return False  # exact for noise-free spectra only; masks are imputed (approximate)
    ivar = like.new_ones(1, int(model.n_pixels))
    return bool(model(context, ivar=ivar).log_prob_is_exact)


@dataclass
class TrainedModel:
    """A model loaded from a model directory, with what is needed to use it correctly.

    Attributes:
        model: the ``torch.nn.Module`` (``model(context)`` returns a distribution).
        label_names: label columns the model is conditioned on, in order.
        wavelength: `(n_pixels,)` vacuum Angstrom grid of the spectra it models.
        support: where in label space it was trained.
        config: the training configuration.
        metadata: version, training-data summary, history.
        path: the model directory.
    """

    model: torch.nn.Module
    label_names: tuple[str, ...]
    wavelength: np.ndarray
    support: LabelSupport
    config: TrainConfig
    metadata: dict[str, Any]
    path: Path

    @property
    def n_pixels(self) -> int:
        """Pixels per spectrum."""
        return int(self.wavelength.size)


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TrainedModel:
    """Load a model directory written by ``stellarflow train``.

    Raises:
        FileFormatError: if the directory lacks a file or a file cannot be read.
    """
    from stellarflow.flows import build_model

    directory = Path(path)
    missing = [name for name in MODEL_FILES if not (directory / name).is_file()]
    if missing:
        raise FileFormatError(
            f"{directory} is not a complete stellarflow model directory (missing {missing}); "
            "train one with `stellarflow train`"
        )
    config = read_json(directory / "config.json")
    metadata = read_json(directory / "metadata.json")
    model = build_model(**config["model"])
    state = load_torch(directory / "model.pt")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise FileFormatError(f"{directory}/model.pt does not match its config: {err}") from None
    model.to(device).eval()
    wavelength = np.load(directory / "wavelength.npy", allow_pickle=False)
    return TrainedModel(
        model=model,
        label_names=tuple(metadata["label_names"]),
        wavelength=wavelength,
        support=LabelSupport.load(directory / "support.npz"),
        config=TrainConfig.from_dict(config["train"]),
        metadata=metadata,
        path=directory,
    )


def check_compatible(
    trained: TrainedModel, wavelength: np.ndarray, label_names: list[str] | tuple[str, ...]
) -> None:
    """Refuse spectra on another grid or without the model's labels.

    Raises:
        GridMismatchError: different number of pixels or different wavelengths.
        LabelError: a label the model is conditioned on is missing.
    """
    if wavelength.size != trained.n_pixels or grid_hash(wavelength) != grid_hash(
        trained.wavelength
    ):
        raise GridMismatchError(
            f"the spectra have {wavelength.size} pixels ({wavelength[0]:.2f}-"
            f"{wavelength[-1]:.2f} A) but the model in {trained.path} was trained on "
            f"{trained.n_pixels} ({trained.wavelength[0]:.2f}-{trained.wavelength[-1]:.2f} A); "
            "resample the spectra onto the model's grid or train a model on this grid"
        )
    missing = [name for name in trained.label_names if name not in label_names]
    if missing:
        raise LabelError(
            f"the model is conditioned on {list(trained.label_names)} but the survey lacks "
            f"{missing}; add those label columns"
        )
