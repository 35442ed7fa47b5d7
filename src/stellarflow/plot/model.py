"""Figures of a trained model: samples beside real spectra at the same labels."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from stellarflow.errors import DataValidationError

__all__ = ["plot_samples_vs_data"]


def plot_samples_vs_data(
    wavelength: np.ndarray,
    samples: np.ndarray,
    data_flux: np.ndarray,
    data_mask: np.ndarray | None = None,
    *,
    point: Mapping[str, float] | None = None,
    window: tuple[float, float] | None = None,
    n_show: int = 3,
) -> Figure:
    """Model samples and observed spectra at the same labels, with their spread.

    Top: the median and 16-84 % band of the samples and of the observed spectra. Middle: a
    few individual samples. Bottom: a few individual observed spectra (masked pixels gaps).

    Args:
        wavelength: `(n_pixels,)`, vacuum Angstrom.
        samples: `(n_samples, n_pixels)`, model draws (noise-free), continuum-normalised.
        data_flux: `(n_stars, n_pixels)`, observed spectra of stars near the label point.
        data_mask: `(n_stars, n_pixels)` bool, True = excluded.
        point: the label point, for the title.
        window: wavelength range to show, Angstrom (default: all).
        n_show: individual spectra drawn per panel.

    Returns:
        The figure.
    """
    wavelength = np.asarray(wavelength)
    if samples.shape[1] != wavelength.size or data_flux.shape[1] != wavelength.size:
        raise DataValidationError(
            f"samples {samples.shape} and data {data_flux.shape} must have "
            f"{wavelength.size} pixels, like the wavelength grid"
        )
    keep = np.ones(wavelength.size, dtype=bool)
    if window is not None:
        keep = (wavelength >= window[0]) & (wavelength <= window[1])
    wave = wavelength[keep]
    data = np.where(data_mask, np.nan, data_flux) if data_mask is not None else data_flux
    data, model = data[:, keep], samples[:, keep]
    figure, axes = plt.subplots(3, 1, figsize=(11, 7.5), sharex=True, layout="constrained")
    for flux, colour, name in ((model, "C0", "model samples"), (data, "k", "observed")):
        lo, mid, hi = np.nanpercentile(flux, [16, 50, 84], axis=0)
        axes[0].fill_between(wave, lo, hi, color=colour, alpha=0.25, lw=0)
        axes[0].plot(wave, mid, color=colour, lw=0.8, label=f"{name} (median, 16-84 %)")
    axes[0].legend(loc="lower left", fontsize=8)
    for row in range(min(n_show, model.shape[0])):
        axes[1].plot(wave, model[row] - 0.3 * row, color="C0", lw=0.6)
    for row in range(min(n_show, data.shape[0])):
        axes[2].plot(wave, data[row] - 0.3 * row, color="k", lw=0.6)
    axes[1].set_title("individual model samples", fontsize=9)
    axes[2].set_title("individual observed spectra", fontsize=9)
    for ax in axes:
        ax.set_ylabel("normalised flux")
    axes[-1].set_xlabel("vacuum wavelength [Å]")
    if point:
        title = ", ".join(f"{name} = {value:g}" for name, value in point.items())
        figure.suptitle(
            f"{samples.shape[0]} samples vs {data_flux.shape[0]} stars at {title}", fontsize=10
        )
    return figure
