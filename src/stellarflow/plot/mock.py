"""Figures of the mock survey: example spectra with their lines, and the population."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from astropy.table import Table
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from stellarflow.errors import DataValidationError

__all__ = ["plot_mock_population", "plot_mock_spectra"]

_PUBLISHED_COLOUR = "0.55"
_WITHHELD_COLOUR = "crimson"
_OUTLIER_MARKERS = ("*", "D", "^", "v", "s", "P", "X", "h")


def _default_zooms(
    wavelength: np.ndarray, linelist: Table, n_zoom: int, width: float
) -> list[tuple[float, float]]:
    """Windows centred on withheld lines (else on the strongest lines), inside the grid."""
    wave = np.asarray(linelist["wavelength"], dtype=np.float64)
    inside = (wave > wavelength[0] + width / 2) & (wave < wavelength[-1] - width / 2)
    withheld = (
        np.asarray(linelist["withheld"], dtype=bool)
        if "withheld" in linelist.colnames
        else np.zeros(wave.size, dtype=bool)
    )
    depth = (
        np.asarray(linelist["depth_ref"])
        if "depth_ref" in linelist.colnames
        else np.ones(wave.size)
    )
    order = np.argsort(-(depth + 10.0 * withheld))
    centres: list[float] = []
    for i in order:
        if inside[i] and all(abs(wave[i] - c) > width for c in centres):
            centres.append(float(wave[i]))
        if len(centres) == n_zoom:
            break
    if not centres:
        mid = float(np.median(wavelength))
        centres = [mid]
    return [(c - width / 2, c + width / 2) for c in sorted(centres)]


def _mark_lines(
    ax: Axes,
    linelist: Table,
    lo: float,
    hi: float,
    top: float,
    label_depth: float,
    name_withheld: bool,
) -> None:
    """Ticks for published (grey) and withheld (red) lines; element names of strong lines."""
    wave = np.asarray(linelist["wavelength"], dtype=np.float64)
    withheld = (
        np.asarray(linelist["withheld"], dtype=bool)
        if "withheld" in linelist.colnames
        else np.zeros(wave.size, dtype=bool)
    )
    depth = (
        np.asarray(linelist["depth_ref"])
        if "depth_ref" in linelist.colnames
        else np.full(wave.size, np.inf)
    )
    inside = (wave >= lo) & (wave <= hi)
    atomic = np.asarray(linelist["ion"]) > 0 if "ion" in linelist.colnames else inside
    published = inside & ~withheld & (atomic | (depth > 0.5 * label_depth))
    ax.vlines(wave[published], top, top + 0.04, color=_PUBLISHED_COLOUR, lw=0.5)
    ax.vlines(wave[inside & withheld], top, top + 0.08, color=_WITHHELD_COLOUR, lw=1.2)
    species = np.asarray(linelist["species"]).astype(str)
    for i in np.flatnonzero(inside & ((depth > label_depth) | (withheld & name_withheld))):
        ax.text(
            wave[i],
            top + 0.09,
            species[i],
            rotation=90,
            ha="center",
            va="bottom",
            fontsize=6,
            color=_WITHHELD_COLOUR if withheld[i] else "0.25",
        )


def plot_mock_spectra(
    wavelength: np.ndarray,
    flux: np.ndarray,
    linelist: Table,
    *,
    truth_flux: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    labels: Table | None = None,
    zooms: Sequence[tuple[float, float]] | None = None,
    n_zoom: int = 3,
    zoom_width: float = 40.0,
    offset: float = 0.45,
    label_depth: float = 0.3,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """A few mock spectra stacked with offsets, lines marked, plus zoom panels.

    Published lines are grey ticks, withheld lines red ticks with their species; strong
    lines (``depth_ref > label_depth``) are labelled. Masked pixels are not drawn.

    Args:
        wavelength: `(n_pixels,)`, vacuum Angstrom.
        flux: `(n_show, n_pixels)`, continuum-normalised observed flux, dimensionless.
        linelist: lines to mark (``wavelength``, ``species``; ``withheld``, ``depth_ref``
            and ``ion`` if present).
        truth_flux: `(n_show, n_pixels)`, noiseless flux drawn over the data, optional.
        mask: `(n_show, n_pixels)` bool, True = excluded, optional.
        labels: one row per spectrum with ``TEFF``, ``LOGG``, ``FE_H`` for the legends.
        zooms: wavelength windows (Angstrom) of the zoom panels; default ``n_zoom`` windows
            of ``zoom_width`` around withheld lines.
        n_zoom: number of default zoom panels.
        zoom_width: width of the default zoom windows, Angstrom.
        offset: vertical offset between spectra.
        label_depth: reference depth above which lines get their species written.
        axes: ``1 + len(zooms)`` axes to draw into (overview first); default a new figure.

    Returns:
        The figure.

    Raises:
        DataValidationError: on inconsistent shapes or a wrong number of axes.
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    if flux.shape[1] != wavelength.size:
        raise DataValidationError(
            f"flux has {flux.shape[1]} pixels but wavelength has {wavelength.size}"
        )
    windows = (
        list(zooms)
        if zooms is not None
        else _default_zooms(wavelength, linelist, n_zoom, zoom_width)
    )
    if axes is None:
        figure = plt.figure(figsize=(13, 7.5), layout="constrained")
        grid = figure.add_gridspec(2, max(len(windows), 1), height_ratios=(1.0, 1.1))
        overview = figure.add_subplot(grid[0, :])
        zoom_axes = [figure.add_subplot(grid[1, i]) for i in range(len(windows))]
    else:
        axes = list(axes)
        if len(axes) != 1 + len(windows):
            raise DataValidationError(
                f"got {len(axes)} axes; need {1 + len(windows)} (overview + one per zoom)"
            )
        overview, zoom_axes = axes[0], axes[1:]
        figure = overview.figure
    shown = np.where(mask, np.nan, flux) if mask is not None else flux
    n_show = flux.shape[0]
    for ax, (lo, hi), full in [
        (overview, (wavelength[0], wavelength[-1]), True),
        *[(a, w, False) for a, w in zip(zoom_axes, windows, strict=True)],
    ]:
        # A gap of more than 3 pixels (chip gap) breaks the line.
        gap = np.flatnonzero(
            np.diff(np.log(wavelength)) > 3 * np.median(np.diff(np.log(wavelength)))
        )
        for i in range(n_show):
            shift = -offset * i
            y = np.insert(shown[i] + shift, gap + 1, np.nan)
            x = np.insert(wavelength, gap + 1, np.nan)
            name = None
            if labels is not None and full:
                row = labels[i]
                name = (
                    f"Teff {row['TEFF']:.0f} K, logg {row['LOGG']:.2f}, [Fe/H] {row['FE_H']:+.2f}"
                )
            ax.plot(
                x,
                y,
                lw=0.5 if full else 0.9,
                color=f"C{i}",
                label=name,
                drawstyle="default" if full else "steps-mid",
            )
            if truth_flux is not None and not full:
                yt = np.insert(np.asarray(truth_flux[i], np.float64) + shift, gap + 1, np.nan)
                ax.plot(x, yt, lw=0.7, color="k", alpha=0.6)
        _mark_lines(ax, linelist, lo, hi, 1.03, label_depth * (1.5 if full else 1.0), not full)
        ax.set_xlim(lo, hi)
        ax.set_ylim(1.0 - offset * (n_show - 1) - 0.55, 1.32)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8 if full else 4))
        ax.set_xlabel("vacuum wavelength [Å]")
        if full or ax is zoom_axes[0]:
            ax.set_ylabel("normalised flux (offset)")
    for lo, hi in windows:
        overview.axvspan(lo, hi, color="gold", alpha=0.25, lw=0)
    if labels is not None:
        overview.legend(loc="lower left", fontsize=7, ncols=min(n_show, 3), frameon=False)
    overview.plot([], [], color=_PUBLISHED_COLOUR, label="published line")
    overview.plot([], [], color=_WITHHELD_COLOUR, label="withheld line")
    return figure


def plot_mock_population(
    labels: Table,
    *,
    outlier_kind: np.ndarray | None = None,
    max_points: int = 20_000,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Teff-logg coloured by [Fe/H], and [Mg/Fe] against [Fe/H], outliers marked by kind.

    Args:
        labels: table with ``TEFF`` (K), ``LOGG``, ``FE_H``, ``MG_FE`` (dex), e.g. the truth
            table or the measured labels; ``outlier_kind`` is read from it if present.
        outlier_kind: `(n_stars,)` str, ``""`` for normal stars; overrides the column.
        max_points: normal stars drawn at most (a fixed subsample beyond that).
        axes: two axes to draw into; default a new figure.

    Returns:
        The figure.

    Raises:
        DataValidationError: if a column is missing or two axes are not given.
    """
    missing = [c for c in ("TEFF", "LOGG", "FE_H", "MG_FE") if c not in labels.colnames]
    if missing:
        raise DataValidationError(f"labels lack the columns {missing} needed for this figure")
    if axes is None:
        figure, (ax_hr, ax_chem) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    else:
        if len(axes) != 2:
            raise DataValidationError(f"need two axes, got {len(axes)}")
        ax_hr, ax_chem = axes
        figure = ax_hr.figure
    teff, logg = np.asarray(labels["TEFF"], float), np.asarray(labels["LOGG"], float)
    fe_h, mg_fe = np.asarray(labels["FE_H"], float), np.asarray(labels["MG_FE"], float)
    if outlier_kind is None:
        outlier_kind = (
            np.asarray(labels["outlier_kind"]).astype(str)
            if "outlier_kind" in labels.colnames
            else np.full(len(labels), "")
        )
    kind = np.asarray(outlier_kind).astype(str)
    normal = np.flatnonzero(kind == "")
    if normal.size > max_points:
        normal = normal[:: int(np.ceil(normal.size / max_points))]
    size = 4 if normal.size > 3000 else 8
    points = ax_hr.scatter(
        teff[normal],
        logg[normal],
        c=fe_h[normal],
        s=size,
        cmap="viridis",
        vmin=-1.0,
        vmax=0.5,
        lw=0,
        rasterized=True,
    )
    figure.colorbar(points, ax=ax_hr, label="[Fe/H]")
    ax_chem.scatter(
        fe_h[normal],
        mg_fe[normal],
        s=size,
        color="0.45",
        alpha=0.5,
        lw=0,
        rasterized=True,
        label="normal stars",
    )
    for i, name in enumerate(sorted(set(kind) - {""})):
        rows = kind == name
        style = {
            "marker": _OUTLIER_MARKERS[i % len(_OUTLIER_MARKERS)],
            "s": 40,
            "facecolor": "none",
            "edgecolor": f"C{i}",
            "lw": 1.0,
        }
        ax_hr.scatter(teff[rows], logg[rows], **style)
        ax_chem.scatter(fe_h[rows], mg_fe[rows], label=f"{name} ({rows.sum()})", **style)
    ax_hr.set_xlim(5500, 3600)
    ax_hr.set_ylim(3.8, 0.4)
    ax_hr.set_xlabel("Teff [K]")
    ax_hr.set_ylabel("log g [dex]")
    ax_chem.set_xlim(-2.0, 0.7)
    ax_chem.set_ylim(-0.45, 0.5)
    ax_chem.set_xlabel("[Fe/H]")
    ax_chem.set_ylabel("[Mg/Fe]")
    ax_chem.legend(fontsize=7, loc="upper right", frameon=False)
    return figure
