r"""Pixel-pixel correlation of many spectra, accumulated in chunks in float64.

:class:`CorrelationAccumulator` keeps one `(n_pixels, n_pixels)` float64 matrix (1.8 GB at
15,000 pixels) and a few vectors, whatever the number of spectra: chunks of spectra arrive
one after another (model samples, survey residuals) and are added with a symmetric rank-k
BLAS update. Sums are taken about a shift (the first chunk's mean) so that the
one-pass formula does not cancel catastrophically:

.. math::

    \bar x = s + \frac{1}{n} \sum_a (x_a - s), \qquad
    \Sigma = \frac{1}{n - 1}\Big[\sum_a (x_a - s)(x_a - s)^T - n (\bar x - s)(\bar x - s)^T\Big],
    \qquad \rho_{ij} = \frac{\Sigma_{ij}}{\sqrt{\Sigma_{ii} \Sigma_{jj}}} .

:meth:`CorrelationAccumulator.finish` turns the sum into the correlation matrix in place
(never a second copy). The sampling noise of a coefficient from ``n`` independent draws is
:math:`\sigma_\rho \approx (1 - \rho^2) / \sqrt{n - 1}` (:func:`correlation_sampling_noise`).
The matrix is written to HDF5 in row blocks (:func:`write_correlation`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
from scipy.linalg import blas

from stellarflow.errors import DataValidationError, FileFormatError
from stellarflow.io.atomic import atomic_path

__all__ = [
    "CorrelationAccumulator",
    "PixelCorrelation",
    "correlation_sampling_noise",
    "read_correlation",
    "write_correlation",
]

FORMAT_NAME = "stellarflow-correlation"
_BLOCK_ROWS = 512  # rows per HDF5 write / symmetrisation block


def correlation_sampling_noise(r: np.ndarray, n_samples: int) -> np.ndarray:
    r"""Standard error of a correlation coefficient: :math:`(1 - r^2) / \sqrt{n - 1}`.

    Args:
        r: correlation coefficients, any shape, dimensionless.
        n_samples: independent draws behind each coefficient (>= 2).

    Returns:
        Same shape as ``r``, dimensionless.
    """
    r = np.asarray(r, dtype=np.float64)
    return (1.0 - r**2) / np.sqrt(max(n_samples - 1, 1))


@dataclass
class PixelCorrelation:
    """Mean, scatter and pixel-pixel correlation of a set of spectra.

    Attributes:
        wavelength: `(n_pixels,)` vacuum Å.
        mean: `(n_pixels,)` mean flux, continuum-normalised.
        std: `(n_pixels,)` standard deviation of the flux (n - 1 normalisation).
        correlation: `(n_pixels, n_pixels)` float64 correlation matrix (1 on the diagonal,
            0 in the rows and columns of pixels without scatter).
        n_samples: spectra behind the estimate.
        meta: provenance (label point, model, kind of estimate ...).
    """

    wavelength: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    correlation: np.ndarray
    n_samples: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_pixels(self) -> int:
        """Pixels per spectrum."""
        return int(self.mean.size)

    def covariance(self, pixels: np.ndarray | None = None) -> np.ndarray:
        r"""Covariance :math:`\Sigma_{ij} = \rho_{ij} s_i s_j` over ``pixels`` (all: a copy)."""
        idx = np.arange(self.n_pixels) if pixels is None else np.asarray(pixels)
        return self.correlation[np.ix_(idx, idx)] * np.outer(self.std[idx], self.std[idx])

    def sampling_noise(self, pixels: np.ndarray | None = None) -> np.ndarray:
        """Standard error of each coefficient over ``pixels`` (see the module docstring)."""
        idx = np.arange(self.n_pixels) if pixels is None else np.asarray(pixels)
        return correlation_sampling_noise(self.correlation[np.ix_(idx, idx)], self.n_samples)


class CorrelationAccumulator:
    """Streaming mean and correlation of spectra, in float64, one matrix in memory.

    Args:
        n_pixels: pixels per spectrum.

    Example:
        >>> acc = CorrelationAccumulator(3)
        >>> acc.update(np.random.default_rng(0).normal(size=(100, 3)))
        >>> acc.finish(np.arange(3.0)).correlation.shape
        (3, 3)
    """

    def __init__(self, n_pixels: int) -> None:
        if n_pixels < 1:
            raise DataValidationError(f"n_pixels must be >= 1, got {n_pixels}")
        self.n_pixels = int(n_pixels)
        self.n_samples = 0
        self._shift: np.ndarray | None = None
        self._sum = np.zeros(self.n_pixels)
        # Fortran order so that BLAS syrk updates it in place (upper triangle only).
        self._outer: np.ndarray | None = np.zeros((self.n_pixels, self.n_pixels), order="F")

    def update(self, flux: np.ndarray) -> None:
        """Add a chunk of spectra.

        Args:
            flux: `(n_chunk, n_pixels)`, finite, any float dtype (accumulated in float64).

        Raises:
            DataValidationError: wrong width or non-finite values.
        """
        if self._outer is None:
            raise DataValidationError("this accumulator is finished; start a new one")
        flux = np.asarray(flux, dtype=np.float64)
        if flux.ndim != 2 or flux.shape[1] != self.n_pixels:
            raise DataValidationError(
                f"expected a chunk of shape (n, {self.n_pixels}); got {flux.shape}"
            )
        if not np.all(np.isfinite(flux)):
            raise DataValidationError("flux chunk has NaN or inf; fill or drop those values")
        if flux.shape[0] == 0:
            return
        if self._shift is None:
            self._shift = flux.mean(axis=0)
        centred = np.asfortranarray(flux - self._shift)
        self._sum += centred.sum(axis=0)
        self._outer = blas.dsyrk(1.0, centred, beta=1.0, c=self._outer, trans=1, overwrite_c=1)
        self.n_samples += flux.shape[0]

    def finish(
        self, wavelength: np.ndarray, meta: dict[str, Any] | None = None
    ) -> PixelCorrelation:
        """Turn the sums into mean, std and the correlation matrix (in place; ends updates).

        Args:
            wavelength: `(n_pixels,)` vacuum Å.
            meta: provenance to keep with the result.

        Raises:
            DataValidationError: fewer than two spectra, or a wavelength of the wrong size.
        """
        wavelength = np.asarray(wavelength, dtype=np.float64)
        if wavelength.shape != (self.n_pixels,):
            raise DataValidationError(
                f"wavelength has shape {wavelength.shape}; expected ({self.n_pixels},)"
            )
        if self.n_samples < 2 or self._outer is None or self._shift is None:
            raise DataValidationError(
                f"need at least 2 spectra for a correlation, got {self.n_samples}"
            )
        n = self.n_samples
        offset = self._sum / n
        outer = self._outer
        self._outer = None
        outer = blas.dsyr(-float(n), offset, a=outer, overwrite_a=1)
        outer /= n - 1
        var = np.clip(np.diag(outer).copy(), 0.0, None)
        std = np.sqrt(var)
        # Pixels without scatter get correlation 0 (1 with themselves), not NaN.
        scale = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0)
        outer *= scale[:, None]
        outer *= scale[None, :]
        _symmetrise_upper(outer)
        np.clip(outer, -1.0, 1.0, out=outer)
        np.fill_diagonal(outer, 1.0)
        return PixelCorrelation(
            wavelength=wavelength,
            mean=self._shift + offset,
            std=std,
            correlation=outer.T,  # symmetric: the C-ordered view of the same memory
            n_samples=n,
            meta=dict(meta or {}),
        )


def _symmetrise_upper(matrix: np.ndarray) -> None:
    """Copy the upper triangle onto the lower one, in blocks (small temporaries only)."""
    n = matrix.shape[0]
    for start in range(0, n, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, n)
        block = matrix[start:stop, start:stop]
        block[...] = np.triu(block) + np.triu(block, 1).T
        if stop < n:
            matrix[stop:, start:stop] = matrix[start:stop, stop:].T


def write_correlation(
    path: str | os.PathLike[str],
    result: PixelCorrelation,
    *,
    overwrite: bool = False,
    sampling_noise: bool = True,
) -> None:
    """Write a :class:`PixelCorrelation` to HDF5, row block by row block.

    Layout: ``/wavelength``, ``/mean``, ``/std`` `(n_pixels,)`; ``/correlation``
    `(n_pixels, n_pixels)` float64; optionally ``/correlation_sigma`` (float32, the
    coefficients' standard errors); attrs ``format``, ``n_samples`` and ``meta_<key>``.
    """
    n = result.n_pixels
    with atomic_path(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs["format"] = FORMAT_NAME
        handle.attrs["format_version"] = 1
        handle.attrs["n_samples"] = result.n_samples
        handle.attrs["sampling_noise"] = "(1 - r^2) / sqrt(n_samples - 1)"
        for key, value in result.meta.items():
            handle.attrs[f"meta_{key}"] = value if np.isscalar(value) else str(value)
        for name in ("wavelength", "mean", "std"):
            handle.create_dataset(name, data=getattr(result, name))
        rows = max(1, min(n, (1 << 20) // (8 * n)))
        corr = handle.create_dataset("correlation", (n, n), dtype="f8", chunks=(rows, n))
        sigma = (
            handle.create_dataset("correlation_sigma", (n, n), dtype="f4", chunks=(rows, n))
            if sampling_noise
            else None
        )
        for start in range(0, n, _BLOCK_ROWS):
            block = result.correlation[start : start + _BLOCK_ROWS]
            corr[start : start + block.shape[0]] = block
            if sigma is not None:
                noise = correlation_sampling_noise(block, result.n_samples)
                sigma[start : start + block.shape[0]] = noise.astype(np.float32)


def read_correlation(path: str | os.PathLike[str]) -> PixelCorrelation:
    """Read a file written by :func:`write_correlation` (the matrix into memory).

    Raises:
        FileFormatError: not a stellarflow correlation file.
    """
    try:
        with h5py.File(path, "r") as handle:
            if handle.attrs.get("format") != FORMAT_NAME:
                raise FileFormatError(f"{path} is not a {FORMAT_NAME} file")
            meta = {
                key[5:]: (value.item() if hasattr(value, "item") else value)
                for key, value in handle.attrs.items()
                if key.startswith("meta_")
            }
            return PixelCorrelation(
                wavelength=handle["wavelength"][...],
                mean=handle["mean"][...],
                std=handle["std"][...],
                correlation=handle["correlation"][...],
                n_samples=int(handle.attrs["n_samples"]),
                meta=meta,
            )
    except (OSError, KeyError) as err:
        raise FileFormatError(f"cannot read correlation file {path}: {err}") from None
