"""Figures of the element-dimensionality analysis (one function per figure)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from astropy.table import Table
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stellarflow.analysis.elements import ElementsResult

__all__ = [
    "plot_greedy_path",
    "plot_residual_correlations",
    "plot_residual_scatter",
    "plot_spectral_variance",
    "plot_tinsley_wallerstein",
]


def _axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        figure, ax = plt.subplots(figsize=size, layout="constrained")
        return figure, ax
    return ax.figure, ax  # type: ignore[return-value]


def plot_tinsley_wallerstein(fe_h: np.ndarray, mg_fe: np.ndarray, ax: Axes | None = None) -> Figure:
    """[Mg/Fe] against [Fe/H] of the input stars (density where crowded).

    Args:
        fe_h, mg_fe: `(n_stars,)`, dex.
    """
    figure, ax = _axes(ax, (6, 4.5))
    ax.hexbin(fe_h, mg_fe, gridsize=70, bins="log", mincnt=1, cmap="viridis")
    ax.set_xlabel("[Fe/H]")
    ax.set_ylabel("[Mg/Fe]")
    ax.set_title(f"Tinsley-Wallerstein diagram ({len(fe_h)} stars)")
    return figure


def plot_residual_scatter(results: Sequence[ElementsResult], ax: Axes | None = None) -> Figure:
    """Residual scatter per element against the noise, one marker set per conditioning set.

    The dashed line is the scatter the errors alone give (own errors plus propagated
    conditioning errors) for the first set; filled markers are the residual scatter,
    open ones the inferred independent intrinsic scatter.
    """
    figure, ax = _axes(ax, (10, 4.5))
    names = list(results[0].targets)
    for r in results[1:]:
        names += [t for t in r.targets if t not in names]
    x = {n: i for i, n in enumerate(names)}
    for k, r in enumerate(results):
        pos = np.array([x[t] for t in r.targets]) + 0.12 * (k - (len(results) - 1) / 2)
        label = "+".join(r.condition)
        line = ax.plot(pos, r.table["residual_scatter"], "o", label=f"residual | {label}")[0]
        ax.plot(
            pos,
            r.table["independent_scatter"],
            "o",
            mfc="none",
            color=line.get_color(),
            label=f"independent scatter | {label}",
        )
        if k == 0:
            ax.plot(pos, r.table["noise_scatter"], "k_", ms=14, label="errors alone")
    ax.set_xticks(range(len(names)), [n.replace("_FE", "") for n in names], rotation=60)
    ax.set_ylabel("scatter (dex)")
    ax.set_ylim(0, None)
    ax.legend(fontsize=7)
    return figure


def plot_residual_correlations(results: Sequence[ElementsResult]) -> Figure:
    """Residual correlation (upper triangle) vs what the errors alone give (lower), per set."""
    figure, axes = plt.subplots(
        1, len(results), figsize=(5.2 * len(results), 4.8), layout="constrained", squeeze=False
    )
    for ax, r in zip(axes[0], results, strict=True):
        k = len(r.targets)
        shown = np.where(np.triu(np.ones((k, k), bool), 1), r.correlation, r.error_correlation)
        np.fill_diagonal(shown, np.nan)
        image = ax.imshow(shown, vmin=-0.6, vmax=0.6, cmap="RdBu_r")
        names = [t.replace("_FE", "") for t in r.targets]
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
        ax.set_title(
            "| " + "+".join(r.condition) + "\nupper: residuals, lower: errors alone", fontsize=8
        )
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="correlation")
    return figure


def plot_greedy_path(table: Table, ax: Axes | None = None) -> Figure:
    """Shared residual structure after each greedy step, with the null's 95th percentile."""
    figure, ax = _axes(ax, (7, 4.2))
    step = np.asarray(table["step"])
    stat = np.asarray(table["excess_statistic"])
    err = np.asarray(table["excess_statistic_err"], dtype=float)
    ax.errorbar(step, stat, yerr=np.where(np.isfinite(err), err, 0.0), fmt="o-", label="excess λ1")
    ax.plot(step, table["null_p95"], "k--", label="null 95%")
    ax.plot(
        step,
        np.asarray(table["null_mean"]) + table.meta.get("min_excess", 0.0),
        "k:",
        label="null mean + min_excess",
    )
    labels = ["start"] + [str(e).replace("_FE", "") for e in table["added_element"][1:]]
    ax.set_xticks(step, [f"{s}\n+{lab}" if s else lab for s, lab in zip(step, labels, strict=True)])
    stop = int(table.meta.get("stop_step", step[-1]))
    ax.axvline(stop, color="grey", alpha=0.4)
    ax.set_yscale("log")
    ax.set_ylabel("largest excess eigenvalue")
    ax.legend(fontsize=8)
    return figure


def plot_spectral_variance(
    wavelength: np.ndarray,
    variances: dict[str, np.ndarray],
    noise_variance: np.ndarray,
    samples: dict[str, np.ndarray] | None = None,
) -> Figure:
    """Spectral variance at fixed labels for each conditioning set, against the noise.

    Args:
        wavelength: `(n_pixels,)`, vacuum Å.
        variances: set name -> `(n_pixels,)` variance of the noise-free flux at fixed labels.
        noise_variance: `(n_pixels,)`, median per-pixel noise variance of the survey.
        samples: set name -> `(n_samples, n_pixels)` noise-free sample spectra (top panel).
    """
    rows = 2 if samples else 1
    figure, axes = plt.subplots(
        rows, 1, figsize=(11, 3.2 * rows), layout="constrained", squeeze=False
    )
    if samples:
        for k, (name, flux) in enumerate(samples.items()):
            for s in flux:
                axes[0, 0].plot(wavelength, s + 0.15 * k, lw=0.4, color=f"C{k}", alpha=0.6)
            axes[0, 0].text(wavelength[0], 1.02 + 0.15 * k, name, color=f"C{k}", fontsize=8)
        axes[0, 0].set_ylabel("flux (offset)")
    ax = axes[-1, 0]
    for k, (name, var) in enumerate(variances.items()):
        ax.semilogy(wavelength, var, lw=0.6, color=f"C{k}", label=name)
    ax.semilogy(wavelength, noise_variance, "k", lw=0.6, alpha=0.5, label="noise variance")
    ax.set_xlabel("wavelength (Å, vacuum)")
    ax.set_ylabel("variance at fixed labels")
    ax.legend(fontsize=8)
    return figure
