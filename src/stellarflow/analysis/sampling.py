"""Draw spectra from a trained model at given labels, and store them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np
import torch

from stellarflow.errors import LabelError
from stellarflow.io.atomic import atomic_path
from stellarflow.train.checkpoint import TrainedModel

__all__ = ["parse_label_point", "sample_spectra", "stars_near", "write_samples"]


def parse_label_point(text: str) -> dict[str, float]:
    """Parse ``"TEFF=4750,LOGG=2.5,FE_H=0"`` into a dict (names upper-cased).

    Raises:
        LabelError: on a malformed item or a repeated name.
    """
    point: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or not name.strip() or not np.isfinite(number):
            raise LabelError(
                f"cannot read label point item {item!r}; expected NAME=VALUE items separated "
                "by commas, e.g. TEFF=4750,LOGG=2.5,FE_H=0"
            )
        key = name.strip().upper()
        if key in point:
            raise LabelError(f"label {key} is given twice in {text!r}")
        point[key] = number
    return point


def _context(trained: TrainedModel, point: Mapping[str, float]) -> np.ndarray:
    missing = [name for name in trained.label_names if name not in point]
    extra = [name for name in point if name not in trained.label_names]
    if missing or extra:
        raise LabelError(
            f"the model is conditioned on {list(trained.label_names)}; got {sorted(point)} "
            f"(missing {missing}, unknown {extra}); give exactly the model's labels"
        )
    return np.array([[point[name] for name in trained.label_names]], dtype=np.float64)


@torch.no_grad()
def sample_spectra(
    trained: TrainedModel,
    point: Mapping[str, float],
    n_samples: int,
    *,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 1024,
) -> np.ndarray:
    """Draw noise-free spectra from the model at one label point.

    Args:
        trained: a loaded model.
        point: label values by name (the model's labels exactly).
        n_samples: number of spectra.
        temperature: scale of the base distribution (1 = the model itself).
        seed: makes the draw reproducible (a private generator state; global state untouched).
        batch_size: spectra per model call.

    Returns:
        flux: `(n_samples, n_pixels)` float32, continuum-normalised.
    """
    if n_samples < 1:
        raise LabelError(f"n_samples must be >= 1, got {n_samples}")
    context = _context(trained, point)
    device = next(trained.model.parameters()).device
    out = np.empty((n_samples, trained.n_pixels), dtype=np.float32)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, n_samples, batch_size):
            n = min(batch_size, n_samples - start)
            labels = torch.as_tensor(np.repeat(context, n, axis=0), device=device).float()
            distribution = trained.model(labels if trained.label_names else None)
            draw = _sample(distribution, temperature)
            out[start : start + n] = draw.float().cpu().numpy()
    return out


def _sample(distribution: torch.distributions.Distribution, temperature: float) -> torch.Tensor:
    if temperature == 1.0:
        return distribution.sample()
    return distribution.sample(temperature=temperature)  # type: ignore[call-arg]


def write_samples(
    path: str | os.PathLike[str],
    flux: np.ndarray,
    wavelength: np.ndarray,
    point: Mapping[str, float],
    *,
    model_path: str = "",
    temperature: float = 1.0,
    overwrite: bool = False,
) -> None:
    """Write samples to HDF5: ``/flux`` `(n_samples, n_pixels)`, ``/wavelength``, attrs.

    Attributes record the label point (``label_<NAME>``), the model and the temperature.
    """
    with atomic_path(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs["format"] = "stellarflow-samples"
        handle.attrs["format_version"] = 1
        handle.attrs["model"] = model_path
        handle.attrs["temperature"] = temperature
        for name, value in point.items():
            handle.attrs[f"label_{name}"] = value
        handle.create_dataset("flux", data=flux, chunks=True)
        handle.create_dataset("wavelength", data=wavelength)


def stars_near(
    labels: Any,
    point: Mapping[str, float],
    widths: Mapping[str, float] | None = None,
    *,
    min_stars: int = 20,
) -> np.ndarray:
    """Rows of a label table inside a box around a label point.

    The box starts at ``widths`` (default: 100 K in TEFF, 0.2 dex in LOGG, 0.1 dex for
    abundances) and doubles until it holds ``min_stars`` stars (at most five times).

    Args:
        labels: an astropy Table with the point's label columns.
        point: label values by name.
        widths: half-widths of the box per label, in the labels' units.
        min_stars: stars wanted.

    Returns:
        `(n,)` int row numbers (possibly fewer than ``min_stars``).
    """
    from stellarflow.data.dataset import label_array

    names = list(point)
    values = label_array(labels, names)
    centre = np.array([point[name] for name in names])
    default = {"TEFF": 100.0, "LOGG": 0.2}
    half = np.array([(widths or {}).get(n, default.get(n, 0.1)) for n in names])
    rows = np.zeros(0, dtype=int)
    for _ in range(6):
        inside = np.all(np.abs(values - centre) <= half, axis=1)
        rows = np.flatnonzero(inside)
        if rows.size >= min_stars:
            break
        half = half * 2
    return rows
