"""Figures of a hidden-line search: element-block correlation matrix, mean spectrum, zooms."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from astropy.table import Table
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stellarflow.analysis.lines import LineSearch

__all__ = ["plot_candidate_zooms", "plot_element_blocks", "plot_mean_spectrum"]

_MAX_BLOCK_PIXELS = 600  # template pixels shown in the matrix figure


def _colours(elements: tuple[str, ...]) -> dict[str, tuple[float, ...]]:
    cmap = plt.get_cmap("tab20")
    return {el: cmap(i % 20) for i, el in enumerate(elements)}


def plot_element_blocks(search: LineSearch, ax: Axes | None = None) -> Figure:
    """Correlation among the template pixels, grouped into element blocks, then candidates.

    Rows and columns are the template pixels of each element (in element order, at most
    ~600 in all, thinned evenly within an element) followed by the candidate-new features'
    peak pixels; element blocks are outlined and labelled.

    Args:
        search: from :func:`stellarflow.analysis.lines.find_lines`.
        ax: axes to draw on (default: a new figure).

    Returns:
        The figure.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 7), layout="constrained")
    figure = ax.figure
    templates = search.templates
    total = sum(p.size for p in templates.pixels)
    keep = max(1.0, total / _MAX_BLOCK_PIXELS)
    order, edges = [], [0]
    for pixels in templates.pixels:
        chosen = pixels[:: int(np.ceil(keep))] if pixels.size > 2 else pixels
        order.extend(chosen.tolist())
        edges.append(len(order))
    new = search.candidates[~np.asarray(search.candidates["known"], dtype=bool)]
    order.extend(int(p) for p in new["pixel"][:60])
    idx = np.asarray(order, dtype=int)
    block = np.asarray(search.correlation.correlation[np.ix_(idx, idx)])
    image = ax.imshow(block, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    for lo, hi, element in zip(edges[:-1], edges[1:], templates.elements, strict=True):
        ax.add_patch(plt.Rectangle((lo - 0.5, lo - 0.5), hi - lo, hi - lo, fill=False, lw=0.8))
        if hi - lo >= max(2, idx.size // 60):
            ax.text(-1, (lo + hi) / 2, element, ha="right", va="center", fontsize=7)
    if idx.size > edges[-1]:
        ax.axhline(edges[-1] - 0.5, color="k", lw=1.0)
        ax.axvline(edges[-1] - 0.5, color="k", lw=1.0)
        ax.text(-1, (edges[-1] + idx.size) / 2, "new", ha="right", va="center", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(
        f"pixel correlation at the label point ({search.correlation.n_samples} spectra): "
        "element template blocks, then candidates",
        fontsize=9,
    )
    figure.colorbar(image, ax=ax, shrink=0.8, label="correlation")
    return figure


def plot_mean_spectrum(search: LineSearch, linelist: Table, ax: Axes | None = None) -> Figure:
    """Mean spectrum with the template lines coloured by element and candidates marked.

    Args:
        search: from :func:`stellarflow.analysis.lines.find_lines`.
        linelist: the published list (only lines of template elements are drawn).
        ax: axes to draw on (default: a new figure).

    Returns:
        The figure.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(14, 4.5), layout="constrained")
    figure = ax.figure
    wave = search.correlation.wavelength
    mean = search.correlation.mean
    step = np.diff(wave)
    jumps = np.flatnonzero(step > 5 * np.median(step)) + 1
    ax.plot(np.insert(wave, jumps, np.nan), np.insert(mean, jumps, np.nan), "k", lw=0.5)
    colours = _colours(search.templates.elements)
    for element, pixels in zip(search.templates.elements, search.templates.pixels, strict=True):
        ax.plot(wave[pixels], mean[pixels] - 0.02, "|", color=colours[element], ms=6,
                label=element)  # fmt: skip
    cand = search.candidates
    new = cand[~np.asarray(cand["known"], dtype=bool)]
    for row in new:
        ax.axvline(row["wavelength"], color=colours.get(str(row["element"]), "C3"), lw=0.8,
                   ls="--", alpha=0.8)  # fmt: skip
    ax.plot([], [], "k--", lw=0.8, label=f"{len(new)} candidates (new)")
    ax.set_xlabel("vacuum wavelength (Å)")
    ax.set_ylabel("mean flux")
    ax.legend(ncol=min(12, len(colours) + 1), fontsize=7, loc="lower left")
    ax.set_title(f"mean spectrum at the label point; {len(linelist)} published lines", fontsize=9)
    return figure


def plot_candidate_zooms(search: LineSearch, n_zoom: int = 6, half_width: float = 4.0) -> Figure:
    """Small panels around the most significant candidate-new features.

    Each panel: the mean spectrum (top axis) and the significance of the association with
    the candidate's element (bottom, shared x), the centre and published lines marked.

    Args:
        search: from :func:`stellarflow.analysis.lines.find_lines`.
        n_zoom: panels (at most).
        half_width: half width of a panel, Å.

    Returns:
        The figure.
    """
    cand = search.candidates
    new = cand[~np.asarray(cand["known"], dtype=bool)][:n_zoom]
    n = max(len(new), 1)
    figure, axes = plt.subplots(2, n, figsize=(3.2 * n, 4.5), sharex="col", squeeze=False,
                                layout="constrained")  # fmt: skip
    wave = search.correlation.wavelength
    if len(new) == 0:
        axes[0, 0].text(0.5, 0.5, "no candidates", ha="center", transform=axes[0, 0].transAxes)
        return figure
    elements = search.templates.elements
    for k, row in enumerate(new):
        centre = float(row["wavelength"])
        near = np.abs(wave - centre) <= half_width
        j = elements.index(str(row["element"]))
        top, bottom = axes[0, k], axes[1, k]
        top.plot(wave[near], search.correlation.mean[near], "k.-", lw=0.8, ms=3)
        bottom.plot(wave[near], search.association.significance[near, j], "C0.-", lw=0.8, ms=3)
        for a in (top, bottom):
            a.axvline(centre, color="C3", lw=1.0)
        top.set_title(f"{row['element']} {centre:.2f} Å\nS = {row['significance']:.1f}",
                      fontsize=8)  # fmt: skip
        bottom.set_xlabel("Å", fontsize=8)
    axes[0, 0].set_ylabel("mean flux")
    axes[1, 0].set_ylabel("significance (σ)")
    return figure
