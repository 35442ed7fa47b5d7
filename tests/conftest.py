"""Shared fixtures: small synthetic datasets built in memory (no network, no shared data)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from astropy.table import Table

from stellarflow import SpectralDataset

matplotlib.use("Agg")


def make_dataset(
    n_stars: int = 12, n_pixels: int = 40, seed: int = 0, masked_fraction: float = 0.1
) -> SpectralDataset:
    """A small valid dataset with masked pixels carrying garbage flux."""
    rng = np.random.default_rng(seed)
    flux = 1.0 - 0.3 * rng.random((n_stars, n_pixels))
    ivar = rng.uniform(50.0, 5000.0, (n_stars, n_pixels))
    mask = rng.random((n_stars, n_pixels)) < masked_fraction
    flux[mask] = np.nan
    labels = Table(
        {
            "star_id": [f"2M{i:08d}" for i in range(n_stars)],
            "TEFF": rng.uniform(4000, 5200, n_stars),
            "LOGG": rng.uniform(1.0, 3.3, n_stars),
            "FE_H": rng.normal(-0.2, 0.25, n_stars),
        }
    )
    wavelength = np.geomspace(15150.0, 16950.0, n_pixels)
    return SpectralDataset(flux, ivar, wavelength, labels, mask=mask, meta={"survey": "test"})


@pytest.fixture
def dataset() -> SpectralDataset:
    return make_dataset()


def train_on_mock(
    folder, mock, *, n_latent: int, epochs: int, batch_size: int, from_file: bool = False
):
    """Write ``mock`` (a MockConfig) to ``folder/mock.h5`` and train a factor-analysis model
    on all of its stars (TEFF, LOGG, FE_H; CPU) into ``folder/model``; both paths.
    ``from_file``: train from the open survey file (as ``stellarflow train`` does: it sees
    the survey's line list) instead of the spectra loaded into memory."""
    from stellarflow.io.hdf5 import open_survey
    from stellarflow.mock import write_mock_survey
    from stellarflow.train.config import TrainConfig
    from stellarflow.train.loop import train_model

    survey = folder / "mock.h5"
    write_mock_survey(survey, mock)
    config = TrainConfig(
        label_names=("TEFF", "LOGG", "FE_H"),
        model="factor_analysis",
        model_options={"n_latent": n_latent},
        epochs=epochs,
        batch_size=batch_size,
        device="cpu",
    )
    with open_survey(survey) as data:
        train_model(data if from_file else data.load(), config, folder / "model")
    return survey, folder / "model"
