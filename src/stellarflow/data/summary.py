"""A streamed summary of a survey: counts, grid, S/N, label ranges, masked fraction."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from astropy.table import Table

from stellarflow.data.dataset import ID_COLUMN, SpectralDataset

__all__ = ["SpectraSource", "SurveySummary", "summarize"]


class SpectraSource(Protocol):
    """What in-memory datasets and out-of-core survey files have in common."""

    wavelength: np.ndarray
    labels: Table

    @property
    def n_stars(self) -> int: ...

    @property
    def n_pixels(self) -> int: ...

    def iter_chunks(self, chunk_size: int = ...) -> Iterator[SpectralDataset]: ...


@dataclass(frozen=True)
class SurveySummary:
    """What ``stellarflow info`` reports about a survey.

    Attributes:
        n_stars: number of spectra.
        n_pixels: pixels per spectrum.
        wavelength_range: first and last wavelength, vacuum Angstrom.
        median_dispersion: median ``lambda / delta lambda`` per pixel (sampling, not R).
        snr_quantiles: 1, 16, 50, 84, 99 per cent quantiles of the per-star median S/N.
        masked_fraction: fraction of all pixels that are masked.
        fully_masked_stars: stars with no usable pixel.
        label_ranges: per numeric label column, (min, median, max) ignoring NaN.
    """

    n_stars: int
    n_pixels: int
    wavelength_range: tuple[float, float]
    median_dispersion: float
    snr_quantiles: dict[str, float]
    masked_fraction: float
    fully_masked_stars: int
    label_ranges: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable report, one line per item."""
        lo, hi = self.wavelength_range
        snr = ", ".join(f"{k}: {v:.1f}" for k, v in self.snr_quantiles.items())
        out = [
            f"stars:            {self.n_stars}",
            f"pixels:           {self.n_pixels} ({lo:.2f} - {hi:.2f} A vacuum, "
            f"lambda/dlambda ~ {self.median_dispersion:.0f} per pixel)",
            f"S/N per pixel:    {snr}",
            f"masked pixels:    {100 * self.masked_fraction:.2f} %"
            f" ({self.fully_masked_stars} stars with no usable pixel)",
            "labels:           min / median / max",
        ]
        width = max((len(name) for name in self.label_ranges), default=0)
        for name, (vmin, vmed, vmax) in self.label_ranges.items():
            out.append(f"  {name:<{width}}  {vmin:12.4g} {vmed:12.4g} {vmax:12.4g}")
        return out


def summarize(source: SpectraSource, chunk_size: int = 2048) -> SurveySummary:
    """Summarise a dataset or survey file, streaming the spectra in chunks.

    S/N of a star is the median over usable pixels of ``flux * sqrt(ivar)``.

    Args:
        source: a :class:`SpectralDataset` or an open ``SurveyFile``.
        chunk_size: stars per chunk (bounds memory).
    """
    snr_parts: list[np.ndarray] = []
    n_masked = 0
    fully_masked = 0
    for chunk in source.iter_chunks(chunk_size):
        snr_parts.append(chunk.snr())
        n_masked += int(chunk.mask.sum())
        fully_masked += int(np.sum(chunk.mask.all(axis=1)))
    snr = np.concatenate(snr_parts)
    wave = source.wavelength
    dispersion = float(np.median(wave[1:] / np.diff(wave))) if wave.size > 1 else float("nan")
    percents = (1, 16, 50, 84, 99)
    ranges: dict[str, tuple[float, float, float]] = {}
    for name in source.labels.colnames:
        if name == ID_COLUMN:
            continue
        column = source.labels[name]
        if column.ndim != 1 or not np.issubdtype(np.asarray(column).dtype, np.number):
            continue
        values = np.asarray(
            column.filled(np.nan) if hasattr(column, "filled") else column, dtype=np.float64
        )
        values = values[np.isfinite(values)]
        if values.size:
            ranges[name] = (float(values.min()), float(np.median(values)), float(values.max()))
    return SurveySummary(
        n_stars=source.n_stars,
        n_pixels=source.n_pixels,
        wavelength_range=(float(wave[0]), float(wave[-1])),
        median_dispersion=dispersion,
        snr_quantiles={f"p{p}": float(np.percentile(snr, p)) for p in percents},
        masked_fraction=n_masked / (source.n_stars * source.n_pixels),
        fully_masked_stars=fully_masked,
        label_ranges=ranges,
    )
