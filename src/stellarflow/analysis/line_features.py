"""Line features from per-pixel element associations, and their cross-match with a line list.

See :mod:`stellarflow.analysis.lines` for the whole search; this module holds steps 4
(:func:`find_features`) and 5 (:func:`cross_match`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from astropy.table import Table

from stellarflow.errors import DataValidationError

if TYPE_CHECKING:
    from stellarflow.analysis.lines import Association

__all__ = ["cross_match", "find_features"]


def _runs(selected: np.ndarray, wavelength: np.ndarray) -> Iterator[np.ndarray]:
    """Runs of adjacent selected pixels, split at grid gaps (chip gaps)."""
    step = np.diff(wavelength)
    gap = np.concatenate([[True], step > 3 * np.median(step)])
    idx = np.flatnonzero(selected)
    if idx.size == 0:
        return
    breaks = np.flatnonzero((np.diff(idx) > 1) | gap[idx[1:]]) + 1
    yield from np.split(idx, breaks)


def _parabola_peak(y: np.ndarray, i: int) -> float:
    """Sub-pixel offset in [-0.5, 0.5] of the vertex of the parabola through y[i-1:i+2]."""
    if i <= 0 or i >= y.size - 1:
        return 0.0
    a, b, c = y[i - 1], y[i], y[i + 1]
    curvature = a - 2 * b + c
    if curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (a - c) / curvature, -0.5, 0.5))


def _associated(association: Association, pixel: int, threshold: float, fraction: float) -> str:
    """Elements (comma-separated) at least ``threshold`` and ``fraction`` x best significant."""
    sig = association.significance[pixel]
    cut = max(threshold, fraction * float(sig.max()))
    order = [k for k in np.argsort(-sig) if sig[k] >= cut]
    return ",".join(association.elements[k] for k in order)


def find_features(
    wavelength: np.ndarray,
    depth: np.ndarray,
    association: Association,
    *,
    threshold: float = 5.0,
    min_depth: float = 0.01,
    assign_by: Literal["score", "significance"] = "score",
    explain_threshold: float = 3.0,
    explain_fraction: float = 0.0,
) -> Table:
    """Group significant pixels into line features with fitted centres.

    A pixel is selected when its best element (largest significance) exceeds ``threshold``
    and its mean depth exceeds ``min_depth``. Each run of adjacent selected pixels gives one
    feature per local maximum of the depth inside it; the feature's element, score and
    significance are those of its peak pixel's best element.

    Args:
        wavelength: `(n_pixels,)` vacuum Å.
        depth: `(n_pixels,)` ``1 - mean flux``.
        association: from :func:`associate`.
        threshold: significance threshold, sigma.
        min_depth: minimum mean depth of a feature pixel.
        assign_by: a pixel's element is the one with the largest score (correlation) or
            the largest significance.
        explain_threshold: elements at least this significant at the peak (and at least
            ``explain_fraction`` times the best element's significance) are listed in
            ``associated`` (used by :func:`cross_match`).
        explain_fraction: see ``explain_threshold``.

    Returns:
        Table with ``wavelength`` (vacuum Å), ``pixel`` (peak index), ``element``,
        ``score``, ``significance``, ``depth``, ``n_pixels`` (pixels in its run) and
        ``associated`` (comma-separated), sorted by significance (highest first).
    """
    if assign_by not in ("score", "significance"):
        raise DataValidationError(f"assign_by must be 'score' or 'significance', got {assign_by!r}")
    ranking = association.score if assign_by == "score" else association.significance
    best = np.argmax(ranking, axis=1)
    rows = np.arange(wavelength.size)
    best_sig = association.significance[rows, best]
    selected = (best_sig >= threshold) & (depth >= min_depth)
    pixel_index = np.arange(wavelength.size, dtype=np.float64)
    found: list[tuple[Any, ...]] = []
    for run in _runs(selected, wavelength):
        d = depth[run]
        inner = np.r_[True, d[1:] >= d[:-1]] & np.r_[d[:-1] > d[1:], True]
        for k in np.flatnonzero(inner):
            i = int(run[k])
            centre = np.interp(i + _parabola_peak(depth, i), pixel_index, wavelength)
            j = int(best[i])
            found.append(
                (
                    centre,
                    i,
                    association.elements[j],
                    association.score[i, j],
                    best_sig[i],
                    depth[i],
                    run.size,
                    _associated(association, i, explain_threshold, explain_fraction),
                )
            )
    names = (
        "wavelength", "pixel", "element", "score", "significance", "depth", "n_pixels",
        "associated",
    )  # fmt: skip
    if not found:
        dtypes = (float, int, "U3", float, float, float, int, "U64")
        return Table(names=names, dtype=dtypes)
    table = Table(rows=found, names=names)
    table.sort("significance", reverse=True)
    return table


def _nearest(lines: np.ndarray, wave: np.ndarray) -> np.ndarray:
    """Index into sorted ``lines`` of the nearest line to each of ``wave`` (lines non-empty)."""
    right = np.clip(np.searchsorted(lines, wave), 0, lines.size - 1)
    left = np.maximum(right - 1, 0)
    return np.where(np.abs(wave - lines[left]) <= np.abs(lines[right] - wave), left, right)


def cross_match(
    features: Table,
    linelist: Table,
    *,
    resolution: float = 22_500.0,
    window: float = 0.5,
    tested_elements: tuple[str, ...] | None = None,
) -> Table:
    """Mark features that a published line within half a resolution element explains.

    A feature is ``known`` when a published line within ``window * wavelength /
    resolution`` belongs to its own element, to an element it is significantly associated
    with (the feature's ``associated`` column, if present), or to an element outside
    ``tested_elements`` (one without a template, whose association could not be tested;
    ignored when None). Else it is a candidate: ``kind`` is ``"misidentified"`` when a
    published line of another element lies within the window (the line may be given to the
    wrong element, or an unlisted line of the feature's element is blended with it) and
    ``"unlisted"`` when no published line does.

    The default window, half a resolution element (0.36 Å at 16,000 Å and R = 22,500),
    is the half-width of the line-spread function: a line farther than that from the
    feature's fitted centre would have put the centre elsewhere. On the issue-5 mock
    (k = 64 factor analysis, 20,000 stars) 90% of the features with a published line of
    their own element within one resolution element have it within 0.25 of one, 95%
    within 0.33 and 98% within 0.5; the full resolution element (``window=1``) let
    published lines 0.36-0.72 Å away "explain" 3 of the 19 withheld lines (recall 0.16
    lower for the k = 16 and k = 64 models and the baseline at 20,000 stars).

    Args:
        features: from :func:`find_features` (``wavelength``, ``element``, optionally
            ``associated``).
        linelist: published lines (``wavelength`` vacuum Å, ``element``).
        resolution: resolving power R.
        window: half-width of the match, in resolution elements (``wavelength / R``).
        tested_elements: elements with a template (None: every element counts as tested).

    Returns:
        A new table with, added: ``nearest_known`` (vacuum Å of the nearest published line
        of the feature's own element; NaN if it has none), ``offset`` (feature minus that
        line, Å), ``known``, ``kind`` (``"known"``, ``"misidentified"``, ``"unlisted"``),
        ``explained_by`` (the element of the explaining line, '' if none) and, to spot
        blends and mis-identifications, ``nearest_other`` / ``nearest_other_element`` /
        ``other_offset`` for the nearest published line of any other element.
    """
    if resolution <= 0 or window <= 0:
        raise DataValidationError(
            f"need resolution > 0 and window > 0; got {resolution} and {window}"
        )
    out = features.copy()
    lines = np.asarray(linelist["wavelength"], dtype=np.float64)
    elements = np.asarray(linelist["element"]).astype(str)
    order = np.argsort(lines)
    lines, elements = lines[order], elements[order]
    wave = np.asarray(out["wavelength"], dtype=np.float64)
    feature_element = np.asarray(out["element"]).astype(str)
    same = np.full(wave.size, np.nan)
    other = np.full(wave.size, np.nan)
    other_element = np.full(wave.size, "", dtype="U8")
    for element in np.unique(feature_element):
        rows = feature_element == element
        mine = elements == element
        if mine.any():
            same[rows] = lines[mine][_nearest(lines[mine], wave[rows])]
        if (~mine).any():
            pick = _nearest(lines[~mine], wave[rows])
            other[rows] = lines[~mine][pick]
            other_element[rows] = elements[~mine][pick]
    associated = (
        [str(a).split(",") if str(a) else [] for a in out["associated"]]
        if "associated" in out.colnames
        else [[] for _ in range(wave.size)]
    )
    window = window * wave / resolution
    lo = np.searchsorted(lines, wave - window)
    hi = np.searchsorted(lines, wave + window, side="right")
    explained = np.full(wave.size, "", dtype="U8")
    kind = np.where(hi > lo, "misidentified", "unlisted").astype("U13")
    for i in range(wave.size):
        near = elements[lo[i] : hi[i]]
        ok = {feature_element[i], *associated[i]}
        hits = [
            e for e in near if e in ok or (tested_elements is not None and e not in tested_elements)
        ]
        if hits:
            explained[i] = feature_element[i] if feature_element[i] in hits else hits[0]
    out["nearest_known"] = same
    out["offset"] = wave - same
    out["known"] = explained != ""
    kind[out["known"]] = "known"
    out["kind"] = kind
    out["explained_by"] = explained
    out["nearest_other"] = other
    out["nearest_other_element"] = other_element
    out["other_offset"] = wave - other
    for name in ("wavelength", "nearest_known", "offset", "nearest_other", "other_offset"):
        out[name].unit = "Angstrom"
    return out
