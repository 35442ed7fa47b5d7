"""stellarflow: deep normalising flows for stellar spectra."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from stellarflow.data.dataset import SpectralDataset
from stellarflow.errors import (
    DataValidationError,
    FileFormatError,
    GridMismatchError,
    LabelError,
    OutputExistsError,
    StellarflowError,
)

try:
    __version__ = version("stellarflow")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "DataValidationError",
    "FileFormatError",
    "GridMismatchError",
    "LabelError",
    "OutputExistsError",
    "SpectralDataset",
    "StellarflowError",
    "__version__",
]
