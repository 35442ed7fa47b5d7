"""Wavelength grids: the APOGEE log-lambda grid, chip gaps, and grid fingerprints.

APOGEE's combined spectra (DR13 and later) share one vacuum log10-lambda grid,
``log10(lambda / Angstrom) = CRVAL1 + CDELT1 * i`` with ``CRVAL1 = 4.179``,
``CDELT1 = 6e-6`` and 8,575 pixels. Dropping the pixels that fall in the two chip gaps and
at the detector ends leaves the 7,514 pixels that the field (astroNN, The Payne's data
releases, Ciuca & Ting) works with.
"""

from __future__ import annotations

import hashlib

import numpy as np

from stellarflow.errors import DataValidationError

__all__ = [
    "APOGEE_CDELT1",
    "APOGEE_CHIP_SLICES",
    "APOGEE_CRVAL1",
    "APOGEE_N_FULL",
    "APOGEE_N_PIXELS",
    "apogee_chip_index",
    "apogee_full_wavelength",
    "apogee_keep_mask",
    "apogee_wavelength",
    "grid_hash",
    "log_lambda_grid",
    "validate_wavelength",
]

APOGEE_CRVAL1 = 4.179
APOGEE_CDELT1 = 6e-6
APOGEE_N_FULL = 8575
# Pixels of the full 8,575-pixel grid kept on the blue, green and red chips.
APOGEE_CHIP_SLICES: tuple[slice, slice, slice] = (
    slice(246, 3274),
    slice(3585, 6080),
    slice(6344, 8335),
)
APOGEE_N_PIXELS = sum(s.stop - s.start for s in APOGEE_CHIP_SLICES)  # 7514


def log_lambda_grid(crval1: float, cdelt1: float, n_pixels: int) -> np.ndarray:
    """Wavelengths of a log10-linear grid, ``lambda_i = 10 ** (crval1 + cdelt1 * i)``.

    Args:
        crval1: log10 of the first wavelength in Angstrom.
        cdelt1: log10 step per pixel.
        n_pixels: number of pixels.

    Returns:
        wavelength: `(n_pixels,)`, Angstrom, float64.
    """
    return 10.0 ** (crval1 + cdelt1 * np.arange(n_pixels, dtype=np.float64))


def apogee_full_wavelength() -> np.ndarray:
    """The 8,575-pixel APOGEE combined-spectrum grid: `(8575,)`, vacuum Angstrom."""
    return log_lambda_grid(APOGEE_CRVAL1, APOGEE_CDELT1, APOGEE_N_FULL)


def apogee_keep_mask() -> np.ndarray:
    """Boolean `(8575,)`, True on the 7,514 pixels kept after removing the chip gaps."""
    keep = np.zeros(APOGEE_N_FULL, dtype=bool)
    for chip in APOGEE_CHIP_SLICES:
        keep[chip] = True
    return keep


def apogee_wavelength() -> np.ndarray:
    """The 7,514-pixel APOGEE grid with chip gaps removed: `(7514,)`, vacuum Angstrom."""
    return apogee_full_wavelength()[apogee_keep_mask()]


def apogee_chip_index(wavelength: np.ndarray) -> np.ndarray:
    """Which APOGEE chip (0 blue, 1 green, 2 red) each wavelength falls on.

    Args:
        wavelength: `(n_pixels,)`, vacuum Angstrom.

    Returns:
        chip: `(n_pixels,)` int, 0/1/2; wavelengths in a gap go to the nearer chip.
    """
    full = apogee_full_wavelength()
    # Chip boundaries halfway across each gap.
    edges = [
        0.5 * (full[APOGEE_CHIP_SLICES[0].stop - 1] + full[APOGEE_CHIP_SLICES[1].start]),
        0.5 * (full[APOGEE_CHIP_SLICES[1].stop - 1] + full[APOGEE_CHIP_SLICES[2].start]),
    ]
    return np.searchsorted(np.asarray(edges), np.asarray(wavelength, dtype=np.float64))


def validate_wavelength(wavelength: object, n_pixels: int | None = None) -> np.ndarray:
    """Check a wavelength grid and return it as float64.

    Args:
        wavelength: `(n_pixels,)`, vacuum Angstrom, finite, positive, strictly increasing.
        n_pixels: the number of pixels the spectra have, if known.

    Returns:
        wavelength: `(n_pixels,)` float64 copy.

    Raises:
        DataValidationError: if any of the conditions above fails.
    """
    wave = np.array(wavelength, dtype=np.float64)
    if wave.ndim != 1:
        raise DataValidationError(
            f"wavelength must be 1-D (n_pixels,), got shape {wave.shape}; pass one grid "
            "shared by all stars (resample spectra onto a common grid first)"
        )
    if wave.size == 0:
        raise DataValidationError("wavelength is empty; expected at least one pixel")
    if n_pixels is not None and wave.size != n_pixels:
        raise DataValidationError(
            f"wavelength has {wave.size} pixels but flux has {n_pixels}; "
            "pass the grid the spectra are sampled on"
        )
    if not np.all(np.isfinite(wave)) or np.any(wave <= 0):
        raise DataValidationError(
            "wavelength must be finite and positive (Angstrom); found "
            f"{int(np.sum(~np.isfinite(wave) | (wave <= 0)))} bad values"
        )
    steps = np.diff(wave)
    if np.any(steps <= 0):
        first = int(np.argmax(steps <= 0))
        raise DataValidationError(
            "wavelength must be strictly increasing; pixel "
            f"{first + 1} ({wave[first + 1]:.4f} A) is not above pixel {first} "
            f"({wave[first]:.4f} A); sort the pixels (and flux/ivar/mask with them)"
        )
    return wave


def grid_hash(wavelength: np.ndarray) -> str:
    """A short fingerprint of a wavelength grid, stable across platforms.

    Wavelengths are rounded to 1e-6 Angstrom before hashing, so that the same float64 grid
    computed on another platform (last-bit differences) gets the same fingerprint. Grids
    stored in float32 lose ~1e-3 Angstrom and do not match their float64 original.

    Args:
        wavelength: `(n_pixels,)`, Angstrom.

    Returns:
        16 hexadecimal characters.
    """
    rounded = np.round(np.asarray(wavelength, dtype=np.float64) * 1e6).astype("<i8")
    return hashlib.sha256(rounded.tobytes()).hexdigest()[:16]
