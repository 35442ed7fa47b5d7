"""Figures of an outlier search: the score distribution, one page per outlier, an HTML gallery."""

from __future__ import annotations

import html
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from astropy.table import Table
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import special, stats

from stellarflow.analysis.outliers import RANK_COLUMNS, StarExplanation

__all__ = ["format_one_in", "gallery_html", "plot_outlier_spectrum", "plot_score_distribution"]

_N_ZOOM = 3
_ZOOM_HALF_WIDTH = 6.0  # Angstrom


def format_one_in(log_p_tail: float) -> str:
    """ "1 in N" text from the natural-log tail probability, e.g. ``"3.2e+04"``, ``"10^412.3"``.

    Uses ``log_p_tail`` so that it stays finite where ``one_in`` overflows.
    """
    decades = -float(log_p_tail) / np.log(10.0)
    if not np.isfinite(decades):
        return "n/a"
    return f"{10.0**decades:.3g}" if decades < 15 else f"10^{decades:.1f}"


def _with_gaps(wavelength: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    """Insert NaN where the grid jumps (chip gaps), so that lines are not drawn across."""
    step = np.diff(wavelength)
    jumps = np.flatnonzero(step > 5 * np.median(step)) + 1 if step.size else np.zeros(0, int)
    return [
        np.insert(np.asarray(a, dtype=np.float64), jumps, np.nan) for a in (wavelength, *arrays)
    ]


def plot_score_distribution(table: Table, top_k: int = 12, ax: Axes | None = None) -> Figure:
    """Histogram of the calibrated scores z of the ranked stars, top outliers marked.

    z is the standard-normal deviate of what ``rank`` orders by (``table.meta["rank_by"]``:
    ``p_lines``, ``p_tail`` or ``p_combined``). For a calibrated model the inliers' z of
    ``p_lines`` and ``p_tail`` follow N(0, 1) (drawn for comparison, scaled to the number of
    ranked stars); those of ``p_combined``, an upper bound, lie to its left. Stars at p = 1
    (z = -inf) are counted, not drawn. The ``top_k`` highest-ranked stars are marked and
    labelled.

    Args:
        table: the output of :func:`stellarflow.analysis.outliers.find_outliers`.
        top_k: how many of the top-ranked stars to mark.
        ax: axes to draw on (default: a new figure).

    Returns:
        The figure.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    ranked = table[table["flag"] == ""]
    rank_by = table.meta.get("rank_by", "omnibus")
    column = RANK_COLUMNS.get(rank_by, "log_p_tail")
    if column not in table.colnames:
        rank_by, column = "omnibus", "log_p_tail"
    combined = rank_by == "combined"
    log_p = np.asarray(ranked[column], dtype=np.float64)
    z_all = np.where(log_p < 0, -special.ndtri_exp(np.minimum(log_p, -1e-300)), -np.inf)
    z = z_all[np.isfinite(z_all)]
    n_capped = int(np.sum(np.isneginf(z_all)))
    z = z[np.isfinite(z)]
    figure = ax.figure
    if z.size == 0:
        ax.text(0.5, 0.5, "no ranked stars", ha="center", va="center", transform=ax.transAxes)
        return figure
    hi = max(float(z.max()), 5.0)
    bins = np.linspace(min(float(z.min()), -4.0), hi + 0.5, 80)
    counts, _, _ = ax.hist(
        z,
        bins=bins,
        color="0.55",
        label=f"{z.size} ranked stars"
        + (f" ({n_capped} more at {column[4:]} = 1, not drawn)" if n_capped else ""),
    )
    grid = np.linspace(bins[0], bins[-1], 400)
    expected = z_all.size * np.diff(bins).mean() * stats.norm.pdf(grid)
    reference = "N(0, 1): calibrated inliers" + (
        " of each test (p_combined: to its left)" if combined else ""
    )
    ax.plot(grid, expected, "C0", lw=1.2, label=reference)
    ax.set_yscale("log")
    ax.set_ylim(0.5, 30.0 * max(float(counts.max()), 1.0))
    top = ranked[:top_k]
    for row, z_row in zip(top, z_all[:top_k], strict=True):
        if not np.isfinite(z_row):
            continue
        ax.axvline(z_row, color="C3", lw=0.8, alpha=0.7)
        ax.annotate(
            f"{row['rank']}: {row['star_id']}",
            (z_row, 0.98),
            xycoords=("data", "axes fraction"),
            xytext=(-2, 0),
            textcoords="offset points",
            fontsize=6,
            rotation=90,
            ha="right",
            va="top",
            color="C3",
        )
    statistic = {
        "lines": "p_lines, the line list's joint test",
        "combined": "p_combined, whole spectrum, line list or strongest element",
    }.get(rank_by, "p_tail, the whole spectrum")
    ax.set_xlabel(f"z = Φ⁻¹(1 - p)  (calibrated improbability; p = {statistic})")
    ax.set_ylabel("stars")
    n_flagged = len(table) - len(ranked)
    ax.set_title(
        f"outlier scores: {len(table)} stars, {n_flagged} flagged (not ranked), "
        f"top {len(top)} marked",
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=8)
    return figure


def _zoom_centres(explanation: StarExplanation, element: str) -> list[float]:
    """Lines of ``element`` where the residual is most significant (at most three)."""
    if explanation.profiles is None or not element:
        return []
    lines = explanation.profiles.lines_of(element)
    wave, resid = explanation.wavelength, np.abs(explanation.residual)
    strength = []
    for lam in lines:
        near = np.abs(wave - lam) <= lam / explanation.profiles.resolution
        strength.append(float(resid[near].max()) if near.any() else 0.0)
    order = np.argsort(strength)[::-1]
    picked: list[float] = []
    for k in order:
        if all(abs(lines[k] - c) > 2 * _ZOOM_HALF_WIDTH for c in picked):
            picked.append(float(lines[k]))
        if len(picked) == _N_ZOOM:
            break
    return picked


def _spectrum(ax: Axes, e: StarExplanation, keep: np.ndarray) -> None:
    flux = np.where(e.mask, np.nan, e.flux)
    lo1, hi1 = (e.band_mean + s * e.band_std for s in (-1, 1))
    lo2, hi2 = (e.band_mean + s * e.band_std for s in (-2, 2))
    wave, flux, lo1, hi1, lo2, hi2, expected = _with_gaps(
        e.wavelength[keep], *(a[keep] for a in (flux, lo1, hi1, lo2, hi2, e.expected))
    )
    ax.fill_between(wave, lo2, hi2, color="C0", alpha=0.15, lw=0, label="model ±2σ")
    ax.fill_between(wave, lo1, hi1, color="C0", alpha=0.3, lw=0, label="model ±1σ")
    ax.plot(wave, expected, color="C1", lw=0.7, label="expectation")
    ax.plot(wave, flux, color="k", lw=0.6, label="observed")


def plot_outlier_spectrum(
    explanation: StarExplanation,
    element: str | None = None,
    title: str | None = None,
) -> Figure:
    """One outlier: spectrum over the model's band at its labels, residual, implicated lines.

    Top: the observed spectrum (masked pixels as gaps) over the model's conditional band
    (noise-free spectra at the star's labels, ±1σ and ±2σ) and the expectation the residual
    is taken against. Middle: the whitened residual in σ, the lines of ``element`` (default:
    the one with the largest |evidence|) as vertical ticks, unexplained features as
    triangles. Bottom: up to three zooms on that element's most discrepant lines.

    Args:
        explanation: from :func:`stellarflow.analysis.outliers.explain_stars`.
        element: the element whose lines are marked.
        title: figure title (default: star id, labels and evidence).

    Returns:
        The figure.
    """
    e = explanation
    if element is None and e.elements:
        element = e.elements[int(np.argmax(np.abs(e.evidence)))]
    element = element or ""
    figure = plt.figure(figsize=(12, 7.5), layout="constrained")
    grid = figure.add_gridspec(3, _N_ZOOM, height_ratios=[1.2, 1.0, 1.0])
    top = figure.add_subplot(grid[0, :])
    middle = figure.add_subplot(grid[1, :], sharex=top)
    everything = np.ones(e.wavelength.size, dtype=bool)
    _spectrum(top, e, everything)
    top.set_ylabel("normalised flux")
    top.legend(loc="lower left", fontsize=7, ncol=4)
    resid = np.where(e.mask, np.nan, e.residual)
    middle.plot(*_with_gaps(e.wavelength, resid), color="k", lw=0.5)
    for level in (-5, 5):
        middle.axhline(level, color="0.6", lw=0.6, ls="--")
    lines = e.profiles.lines_of(element) if e.profiles is not None and element else np.zeros(0)
    for lam in lines:
        for ax in (top, middle):
            ax.axvline(lam, color="C3", lw=0.6, alpha=0.6)
    if e.unexplained.size:
        finite = resid[np.isfinite(resid)]
        y = np.nanmax(np.abs(finite)) if finite.size else 1.0
        middle.plot(e.unexplained, np.full(e.unexplained.size, y), "v", color="m", ms=6,
                    label="unexplained")  # fmt: skip
        middle.legend(loc="lower left", fontsize=7)
    middle.set_ylabel("residual [σ]")
    middle.set_xlabel(f"vacuum wavelength [Å]   (red: {element or 'no'} lines)")
    for k, centre in enumerate(_zoom_centres(e, element)):
        ax = figure.add_subplot(grid[2, k])
        keep = np.abs(e.wavelength - centre) <= _ZOOM_HALF_WIDTH
        _spectrum(ax, e, keep)
        for lam in lines[np.abs(lines - centre) <= _ZOOM_HALF_WIDTH]:
            ax.axvline(lam, color="C3", lw=0.8, alpha=0.7)
        ax.set_title(f"{element} {centre:.2f} Å", fontsize=8)
        ax.tick_params(labelsize=7)
    if title is None:
        labels = ", ".join(f"{n} = {v:.4g}" for n, v in e.labels.items())
        order = np.argsort(-np.abs(e.evidence))[:3]
        evidence = " ".join(f"{e.elements[j]}:{e.evidence[j]:+.1f}" for j in order)
        title = f"{e.star_id}   ({labels})   evidence: {evidence or 'none'}"
    figure.suptitle(title, fontsize=10)
    return figure


def gallery_html(
    table: Table,
    images: Sequence[str],
    *,
    distribution: str = "score_distribution.png",
    title: str = "stellarflow outliers",
) -> str:
    """A self-contained HTML page (relative links, no scripts) showing the figures.

    Args:
        table: the ranked table; its first ``len(images)`` rows are the stars shown.
        images: relative paths of the per-star figures, in rank order.
        distribution: relative path of the score-distribution figure.
        title: page title.

    Returns:
        The HTML text.
    """
    columns = ("rank", "star_id", "one_in", "z", "z_lines", "top_element",
               "top_element_direction", "element_summary", "n_unexplained")  # fmt: skip
    columns = tuple(c for c in columns if c in table.colnames)
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    rows = []
    for row in table[: len(images)]:
        cells = []
        for name in columns:
            value = row[name]
            if name == "star_id":
                text = f'<a href="#{esc(str(value))}">{esc(str(value))}</a>'
            elif name == "one_in":
                text = esc(format_one_in(row["log_p_tail"]))
            elif name in ("z", "z_lines"):
                text = esc(f"{value:.2f}")
            else:
                text = esc(str(value))
            cells.append(f"<td>{text}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    figures = "\n".join(
        f'<h2 id="{esc(str(row["star_id"]))}">{row["rank"]}. {esc(str(row["star_id"]))}</h2>\n'
        f'<a href="{esc(image)}"><img src="{esc(image)}" alt="{esc(str(row["star_id"]))}"></a>'
        for row, image in zip(table[: len(images)], images, strict=True)
    )
    meta = table.meta
    note = (
        f"{len(table)} stars, ranked by {esc(str(meta.get('rank_by', 'omnibus')))}; "
        f"calibration {esc(str(meta.get('calibration', '')))}; "
        f"'1 in N' recalibrated: {esc(str(meta.get('recalibration', 'none')))}; "
        f"expectation {esc(str(meta.get('expectation', '')))}; model "
        f"{esc(str(meta.get('model', '')))}"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #bbb; padding: 0.2em 0.5em; text-align: left; }}
img {{ max-width: 100%; }}
</style></head>
<body>
<h1>{esc(title)}</h1>
<p>{note}</p>
<img src="{esc(distribution)}" alt="score distribution">
<h2>Top {len(images)}</h2>
<table><tr>{head}</tr>
{chr(10).join(rows)}
</table>
{figures}
</body></html>
"""
