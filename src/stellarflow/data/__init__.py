"""The spectral data model: in-memory datasets, grids, validation and summaries."""

from __future__ import annotations

from stellarflow.data.dataset import SpectralDataset, concatenate, label_array, sigma_to_ivar
from stellarflow.data.grid import apogee_wavelength, grid_hash

__all__ = [
    "SpectralDataset",
    "apogee_wavelength",
    "concatenate",
    "grid_hash",
    "label_array",
    "sigma_to_ivar",
]
