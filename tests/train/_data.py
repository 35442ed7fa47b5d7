"""A tiny structured training set for the training tests (not collected by pytest)."""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from stellarflow import SpectralDataset
from stellarflow.train.config import TrainConfig

LABELS = ("TEFF", "LOGG", "FE_H")

MODEL_OPTIONS = {
    "factor_analysis": {"n_latent": 2},
    "latent_flow": {"n_latent": 2, "flow_hidden": 8, "n_importance": 4},
    "cannon": {},
}


def training_set(
    n_stars: int = 64,
    n_pixels: int = 32,
    seed: int = 0,
    masked_value: float | None = None,
    with_errors: bool = True,
) -> SpectralDataset:
    """Spectra that depend on the labels, ~10% masked pixels, optional ``<LABEL>_ERR``.

    ``masked_value`` replaces the flux at masked pixels (None: leave the generated flux);
    everything else depends on ``seed`` only.
    """
    rng = np.random.default_rng(seed)
    teff = rng.uniform(4000, 5200, n_stars)
    logg = rng.uniform(1.0, 3.3, n_stars)
    fe_h = rng.normal(-0.2, 0.25, n_stars)
    x = np.stack([(teff - 4600) / 400, (logg - 2.2) / 0.7, fe_h / 0.25], axis=1)
    response = 0.03 * rng.standard_normal((3, n_pixels))
    latent = 0.01 * rng.standard_normal((n_stars, 1)) * rng.standard_normal((1, n_pixels))
    sigma = rng.uniform(0.005, 0.02, (n_stars, n_pixels))
    flux = 0.9 + x @ response + latent + sigma * rng.standard_normal((n_stars, n_pixels))
    ivar = 1 / sigma**2
    mask = rng.random((n_stars, n_pixels)) < 0.1
    if masked_value is not None:
        flux[mask] = masked_value
    columns = {"star_id": [f"2M{i:08d}" for i in range(n_stars)], "TEFF": teff, "LOGG": logg,
               "FE_H": fe_h}  # fmt: skip
    if with_errors:
        columns["TEFF_ERR"] = rng.uniform(20, 60, n_stars)
        columns["LOGG_ERR"] = rng.uniform(0.02, 0.08, n_stars)
        columns["FE_H_ERR"] = rng.uniform(0.005, 0.02, n_stars)
    wavelength = np.geomspace(15150.0, 16950.0, n_pixels)
    return SpectralDataset(flux, ivar, wavelength, Table(columns), mask=mask)


def tiny_config(model: str, **changes: object) -> TrainConfig:
    """Two quick epochs on the CPU."""
    settings: dict[str, object] = {
        "label_names": LABELS,
        "model": model,
        "model_options": MODEL_OPTIONS[model],
        "epochs": 2,
        "batch_size": 16,
        "warmup_steps": 2,
        "block_size": 4,
        "seed": 3,
        "device": "cpu",
        **changes,
    }
    return TrainConfig(**settings)  # type: ignore[arg-type]
