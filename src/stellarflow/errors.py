"""The one small hierarchy of errors that stellarflow raises at its public boundary.

Every message names what was expected, what was received, and how to fix it. The CLI turns
any :class:`StellarflowError` into one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

__all__ = [
    "DataValidationError",
    "FileFormatError",
    "GridMismatchError",
    "LabelError",
    "OutputExistsError",
    "StellarflowError",
]


class StellarflowError(Exception):
    """Base class of every error stellarflow raises on purpose."""


class DataValidationError(StellarflowError, ValueError):
    """Arrays or tables that do not satisfy the spectral data model."""


class LabelError(DataValidationError):
    """Label columns or star ids that are missing, duplicated or malformed."""


class GridMismatchError(DataValidationError):
    """Spectra on a wavelength grid other than the one expected."""


class FileFormatError(StellarflowError, ValueError):
    """A file that is not what it claims to be, or cannot be read."""


class OutputExistsError(StellarflowError, FileExistsError):
    """A writer asked to replace an existing file without ``overwrite=True``."""
