r"""Hidden atomic lines from conditional pixel correlations (issue 5).

At fixed stellar parameters part of the remaining star-to-star variation of a spectrum is
chemistry: the lines of one element deepen and weaken together with that element's
abundance (the rest is shared by all lines: broadening, residual label errors). So a pixel
that moves with the known lines of, say, Si but lies in no line list is a candidate unknown
(or mis-identified) Si transition. The steps:

1. **Correlation** of spectra at one label point (or in a small label box):
   :func:`model_correlation` draws noise-free spectra from a trained model and accumulates
   them in chunks (:mod:`stellarflow.analysis.correlation`); the baseline
   :func:`empirical_correlation` uses the residuals of observed spectra in a narrow
   Teff/logg bin instead, noise and all.
2. **Element templates** (:func:`element_templates`): for each element with published lines,
   the pixels at its line centres that are deep enough in the mean spectrum (0.02), not
   strong (below ``strong_depth`` = 0.2) and not shared with another element's published
   line within half a resolution element (elements with fewer than 5 such pixels get no
   template by default). An element's *index* is the mean standardised flux over its
   template pixels, :math:`t_e = |K_e|^{-1} \sum_{k \in K_e} (x_k - \bar x_k) / s_k`.
   Two *nuisance* indices are built the same way: ``"strong"``, the pixels of every
   published line at least ``strong_depth`` deep (any element), and ``"H"``, hydrogen's
   lines. Strong lines respond to broadening and saturation more than to abundance, and do
   so alike whatever their element, so an element template with a few of them (Ni, Si, Ti
   have 5-9 pixels here) becomes a "strong-line" index that takes the deep lines of every
   other element; hydrogen is the reference of all abundances, so its lines track Teff,
   logg and broadening, not chemistry. The joint association conditions on the nuisance
   indices and never assigns them.
3. **Association** (:func:`associate`): for every pixel ``p`` and element ``e`` the
   correlation of the pixel with the element's index. With :math:`G = \rho M` (``M`` the
   `(n_pixels, n_elements)` template-averaging matrix) and :math:`H = M^T \rho M`,

   - ``"plain"``: :math:`r_{pe} = G_{pe} / \sqrt{H_{ee}}`;
   - ``"shared_mode"``: the same after removing the leading eigenmode(s)
     :math:`\lambda u u^T` of :math:`\rho` (partial correlation given the dominant shared
     mode, e.g. residual metallicity), renormalised to unit diagonal;
   - ``"joint"`` (default): the partial correlation of pixel ``p`` with :math:`t_e` given all
     the other element indices and the nuisance indices (``M`` gains their columns). With
     :math:`\beta = H^{-1} G_{p\cdot}^T` and :math:`s^2 = 1 - G_{p\cdot} \beta`,
     :math:`r_{pe \cdot \mathrm{rest}} = \beta_e / \sqrt{s^2 (H^{-1})_{ee} + \beta_e^2}`.

   Significance compares the pixel's *response*, the flux change per 1-sigma change of the
   element's index (:math:`R_{pe} = r_{pe} s_p`; in ``"joint"`` mode the partial
   regression slope), with a null of line-free pixels (mean depth below ``null_depth``):
   :math:`S_{pe} = (R_{pe} - \mathrm{med}_0) / \sqrt{\sigma_0^2 + s_p^2 (1 - r_{pe}^2) /
   (n - 3 - c)}`, with :math:`\sigma_0` the null's robust (MAD) spread and ``c`` the number
   of conditioning variables. For a model's noise-free samples :math:`\sigma_0` measures
   the spurious scatter the model leaves in the continuum; for survey residuals it is
   mostly the noise. Using the response rather than the correlation keeps continuum pixels,
   whose tiny noise-free scatter can correlate with anything, from looking significant.
4. **Features** (:func:`find_features`): runs of adjacent pixels whose best element is
   significant and whose mean depth exceeds ``min_depth``; one feature per local maximum of
   the depth, its centre from a parabola through the depth at the peak pixel and its two
   neighbours, in vacuum Å.
5. **Cross-match** (:func:`cross_match`) with the published list: a feature is known when a
   published line within half a resolution element (:math:`\lambda / 2R`, the half-width of
   the line-spread function) belongs to its element, to an element it is also
   significantly associated with, or to an element without a template (untestable); else
   it is a candidate, ``kind`` ``"misidentified"`` (a published line of another element is
   within the window: the line may be given to the wrong element, or hides an unlisted
   line of this one) or ``"unlisted"`` (no published line within the window).

Steps 4-5 live in :mod:`stellarflow.analysis.line_features`.

Defaults and the numbers that chose them (``benchmarks/lines.py --ablations``; issue-5
mock, 19 withheld lines, point TEFF=4750, LOGG=2.5, FE_H=-0.1, 20,000 model spectra from
factor-analysis models with k latent factors trained on n stars; joint mode, 5 sigma;
recall / precision / AP in %, one change at a time, same cached correlations):

=====================  =========  =========  =========  =========  =========
model / n              k=16       k=16       k=32       k=64       baseline
                       2,000      20,000     2,000      20,000     20,000
=====================  =========  =========  =========  =========  =========
defaults               58/28/22   58/33/35   63/38/38   68/43/53   63/43/55
previous defaults [1]  42/26/12   47/30/21   53/43/33   47/43/40   47/53/32
no strong index        53/25/14   58/26/21   63/32/28   63/40/40   63/41/45
H as an element        58/31/22   58/39/27   63/39/39   63/40/46   63/41/49
window lambda/R        47/36/24   42/42/31   53/53/38   53/56/47   47/69/39
own element only [2]   63/11/6    63/9/5     68/17/13   74/16/21   63/22/38
=====================  =========  =========  =========  =========  =========

[1] window lambda/R, no nuisance indices. [2] only a published line of the feature's own
element explains it: features at published lines of other or untestable elements become
candidates, and the element assignment is not good enough for that. ``strong_depth`` 0.15
/ 0.2 / 0.25 / 0.3 gave AP 0.29 / 0.35 / 0.23 / 0.15 (k=16, n=20,000) and 0.59 / 0.50 /
0.42 / 0.39 (k=64; 0.15 at precision 0.30). Tried and not kept: assigning by significance
(no change); dropping template pixels whose leave-one-out correlation with the rest of
their element is below 0.3-0.7 of the element's median (AP -0.1 to +0.1, inconsistent);
requiring the association in both interleaved halves of each template (lower AP for every
model); a blend test of a quarter resolution element (Ca, Cr, Mg, Mn, V templates that
then take Fe lines).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
from astropy.table import Table

from stellarflow.analysis.correlation import PixelCorrelation
from stellarflow.analysis.line_features import cross_match, find_features
from stellarflow.analysis.lines_sampling import empirical_correlation, model_correlation
from stellarflow.errors import DataValidationError

__all__ = [
    "ASSOCIATION_MODES",
    "Association",
    "ElementTemplates",
    "LineSearch",
    "associate",
    "cross_match",
    "element_templates",
    "empirical_correlation",
    "find_features",
    "find_lines",
    "model_correlation",
]

logger = logging.getLogger(__name__)

AssociationMode = Literal["joint", "plain", "shared_mode"]
ASSOCIATION_MODES: tuple[str, ...] = ("joint", "plain", "shared_mode")
_BLOCK_ROWS = 1024
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class ElementTemplates:
    """Pixels at the published lines of each element.

    Attributes:
        elements: element symbols, in column order.
        pixels: per element, `(n_k,)` int pixel indices of its template.
        matrix: `(n_pixels, n_elements)` averaging matrix ``M``: ``1 / n_k`` on an element's
            template pixels, divided by the pixel's standard deviation (so that ``x @ M``
            averages standardised flux), 0 elsewhere.
        nuisance: names of the nuisance indices (``"strong"``: the strong lines of every
            element; nuisance elements such as ``"H"``): conditioned on in the ``"joint"``
            association, never assigned to a feature.
        nuisance_pixels: per nuisance index, `(n_k,)` int pixel indices.
        nuisance_matrix: `(n_pixels, n_nuisance)` averaging matrix like ``matrix``.
    """

    elements: tuple[str, ...]
    pixels: tuple[np.ndarray, ...]
    matrix: np.ndarray
    nuisance: tuple[str, ...] = ()
    nuisance_pixels: tuple[np.ndarray, ...] = ()
    nuisance_matrix: np.ndarray | None = None


@dataclass(frozen=True)
class Association:
    """How strongly each pixel moves with each element's template.

    Attributes:
        elements: element symbols, in column order.
        score: `(n_pixels, n_elements)` correlation (plain or partial), dimensionless.
        significance: `(n_pixels, n_elements)` in units of sigma (module docstring).
        null_median, null_sigma: `(n_elements,)` the line-free pixels' response median
            and robust spread, flux units.
        mode: the association mode.
        n_conditioned: variables conditioned on (partial correlations).
    """

    elements: tuple[str, ...]
    score: np.ndarray
    significance: np.ndarray
    null_median: np.ndarray
    null_sigma: np.ndarray
    mode: str
    n_conditioned: int


@dataclass(frozen=True)
class LineSearch:
    """Everything a hidden-line search produced (see :func:`find_lines`).

    Attributes:
        candidates: the feature table (:func:`find_features` + :func:`cross_match`).
        templates: the element templates.
        association: the per-pixel association with each element.
        correlation: the correlation it started from.
        depth: `(n_pixels,)` ``1 - mean`` flux.
        resolution: resolving power used for the cross-match.
    """

    candidates: Table
    templates: ElementTemplates
    association: Association
    correlation: PixelCorrelation
    depth: np.ndarray
    resolution: float


def _nearest_pixel(wavelength: np.ndarray, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest pixel to each line and whether it is within one pixel spacing."""
    right = np.clip(np.searchsorted(wavelength, lines), 1, wavelength.size - 1)
    left = right - 1
    pick = np.where(lines - wavelength[left] < wavelength[right] - lines, left, right)
    step = np.gradient(wavelength)[pick]
    return pick, np.abs(wavelength[pick] - lines) <= step


def _averaging_matrix(pixels: list[np.ndarray], std: np.ndarray) -> np.ndarray:
    """`(n_pixels, len(pixels))`: ``1 / (n_k s_p)`` on each group's pixels, 0 elsewhere."""
    matrix = np.zeros((std.size, len(pixels)))
    for j, idx in enumerate(pixels):
        matrix[idx, j] = 1.0 / (idx.size * std[idx])
    return matrix


def element_templates(
    wavelength: np.ndarray,
    depth: np.ndarray,
    std: np.ndarray,
    linelist: Table,
    *,
    resolution: float = 22_500.0,
    min_depth: float = 0.02,
    min_lines: int = 5,
    blend_window: float = 0.5,
    strong_depth: float | None = 0.2,
    nuisance_elements: tuple[str, ...] = ("H",),
) -> ElementTemplates:
    """Template pixels of each element with published lines on the grid.

    A published line contributes the pixel nearest its centre when that pixel lies within
    one pixel spacing, has mean depth >= ``min_depth`` (and < ``strong_depth``), has
    scatter, and no published line of another element lies within ``blend_window``
    resolution elements (``blend_window * wavelength / resolution``; 0 switches the test
    off). Elements with fewer than ``min_lines`` such pixels get no template.

    Strong lines (mean depth >= ``strong_depth``) respond to broadening and saturation more
    than to their element's abundance, and every element's strong lines do so alike; they
    form one nuisance index, ``"strong"`` (the pixels nearest every published line on the
    grid that deep, any element, blended or not), instead of entering their element's
    template. Elements in ``nuisance_elements`` (hydrogen: the reference of all abundances,
    so its lines track Teff, logg and broadening, not chemistry) also become nuisance
    indices. :func:`associate` conditions on the nuisance indices and never assigns them.

    Args:
        wavelength: `(n_pixels,)` vacuum Å, increasing.
        depth: `(n_pixels,)` ``1 - mean flux``, dimensionless.
        std: `(n_pixels,)` flux standard deviation at the label point.
        linelist: canonical line-list table (``wavelength`` vacuum Å, ``element``).
        resolution: resolving power R.
        min_depth: minimum mean depth of a template pixel.
        min_lines: minimum number of template pixels per element.
        blend_window: half-width, in resolution elements, of the blend test.
        strong_depth: mean depth from which a line is strong (None: no strong-line index).
        nuisance_elements: elements whose template is a nuisance index.

    Raises:
        DataValidationError: missing columns, or no element has a template.
    """
    for name in ("wavelength", "element"):
        if name not in linelist.colnames:
            raise DataValidationError(
                f"the line list needs columns 'wavelength' and 'element'; it has "
                f"{linelist.colnames}; read it with stellarflow.io.linelist.read_linelist"
            )
    if strong_depth is not None and not min_depth < strong_depth <= 1:
        raise DataValidationError(
            f"strong_depth must be in (min_depth={min_depth}, 1] or None, got {strong_depth}"
        )
    lines = np.asarray(linelist["wavelength"], dtype=np.float64)
    element = np.asarray(linelist["element"]).astype(str)
    order = np.argsort(lines)
    lines, element = lines[order], element[order]
    pick, on_grid = _nearest_pixel(wavelength, lines)
    usable = on_grid & (std[pick] > 0)
    strong = usable & (depth[pick] >= (np.inf if strong_depth is None else strong_depth))
    ok = usable & (depth[pick] >= min_depth) & ~strong
    if blend_window > 0:
        window = blend_window * lines / resolution
        lo = np.searchsorted(lines, lines - window)
        hi = np.searchsorted(lines, lines + window, side="right")
        for i in np.flatnonzero(ok):
            ok[i] = np.all(element[lo[i] : hi[i]] == element[i])
    elements, pixels, nuisance, nuisance_pixels = [], [], [], []
    for name in sorted(set(element[ok])):
        idx = np.unique(pick[ok & (element == name)])
        if idx.size >= min_lines:
            is_nuisance = name in nuisance_elements
            (nuisance if is_nuisance else elements).append(name)
            (nuisance_pixels if is_nuisance else pixels).append(idx)
    if strong.sum() >= min_lines:
        nuisance.append("strong")
        nuisance_pixels.append(np.unique(pick[strong]))
    if not elements:
        raise DataValidationError(
            f"no element has {min_lines} or more published lines deeper than {min_depth} on "
            f"this grid ({wavelength[0]:.1f}-{wavelength[-1]:.1f} Å); check the line list's "
            "wavelengths (vacuum Å) or lower min_depth"
        )
    return ElementTemplates(
        tuple(elements), tuple(pixels), _averaging_matrix(pixels, std),
        tuple(nuisance), tuple(nuisance_pixels),
        _averaging_matrix(nuisance_pixels, std) if nuisance else None,
    )  # fmt: skip


def _correlation_times(correlation: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``correlation @ weights`` in row blocks (works for an in-memory or HDF5 matrix)."""
    out = np.empty((correlation.shape[0], weights.shape[1]))
    for start in range(0, correlation.shape[0], _BLOCK_ROWS):
        out[start : start + _BLOCK_ROWS] = correlation[start : start + _BLOCK_ROWS] @ weights
    return out


def _leading_modes(correlation: np.ndarray, n_modes: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_modes`` largest eigenvalues `(k,)` and eigenvectors `(n_pixels, k)`."""
    from scipy.sparse.linalg import eigsh

    if n_modes >= correlation.shape[0] - 1:
        values, vectors = np.linalg.eigh(np.asarray(correlation))
        return values[::-1][:n_modes], vectors[:, ::-1][:, :n_modes]
    values, vectors = eigsh(correlation, k=n_modes, which="LA")
    return values, vectors


def associate(
    result: PixelCorrelation,
    templates: ElementTemplates,
    *,
    mode: AssociationMode = "joint",
    null_depth: float = 0.005,
    depth: np.ndarray | None = None,
    n_modes: int = 1,
) -> Association:
    """Association score and significance of every pixel with every element's template.

    See the module docstring for the three modes and the significance. The ``"joint"``
    mode also conditions on the templates' nuisance indices; the result has columns for
    ``templates.elements`` only.

    Args:
        result: the pixel correlation at the label point.
        templates: from :func:`element_templates` (built on the same grid).
        mode: ``"joint"``, ``"plain"`` or ``"shared_mode"``.
        null_depth: pixels with mean depth below this form the null.
        depth: `(n_pixels,)` mean depth (default ``1 - result.mean``).
        n_modes: leading eigenmodes removed in ``"shared_mode"``.

    Raises:
        DataValidationError: unknown mode or templates of another grid.
    """
    if mode not in ASSOCIATION_MODES:
        raise DataValidationError(f"mode must be one of {ASSOCIATION_MODES}, got {mode!r}")
    if not 1 <= n_modes < result.n_pixels:
        raise DataValidationError(f"n_modes must be in [1, {result.n_pixels}), got {n_modes}")
    if templates.matrix.shape[0] != result.n_pixels:
        raise DataValidationError(
            f"templates cover {templates.matrix.shape[0]} pixels, the correlation "
            f"{result.n_pixels}; build them from the same grid"
        )
    std = np.where(result.std > 0, result.std, 1.0)
    # M averages standardised flux; in correlation units the weights are M * s.
    weights = templates.matrix * std[:, None]
    n_elements = weights.shape[1]
    if mode == "joint" and templates.nuisance_matrix is not None:
        weights = np.hstack([weights, templates.nuisance_matrix * std[:, None]])
    g = _correlation_times(result.correlation, weights)
    n_columns = weights.shape[1]
    scatter = result.std  # of the flux left after conditioning (shared_mode: reduced)
    if mode == "shared_mode":
        values, u = _leading_modes(result.correlation, n_modes)
        keep = np.sqrt(np.clip(1.0 - (u**2) @ values, 1e-12, None))
        scaled = weights / keep[:, None]
        g = _correlation_times(result.correlation, scaled) - (u * values) @ (u.T @ scaled)
        g /= keep[:, None]
        h = scaled.T @ (g * keep[:, None])
        score = g / np.sqrt(np.diag(h))[None, :]
        scatter = result.std * keep
        n_conditioned = n_modes
    elif mode == "plain" or n_columns == 1:
        h = weights.T @ g
        score = g / np.sqrt(np.diag(h))[None, :]
        n_conditioned = 0
    else:
        h = weights.T @ g
        h_inv = np.linalg.pinv(h, hermitian=True)
        beta = g @ h_inv
        resid = np.clip(1.0 - np.einsum("pe,pe->p", g, beta), 1e-12, None)
        score = beta / np.sqrt(resid[:, None] * np.diag(h_inv)[None, :] + beta**2)
        n_conditioned = n_columns - 1
    score = np.clip(score[:, :n_elements], -0.999999, 0.999999)
    # Response of the pixel's flux to a 1-sigma change of the element's index (flux units):
    # the correlation times the pixel's scatter (partial: the partial regression slope).
    if mode == "joint" and n_columns > 1:
        response = (beta * np.sqrt(np.diag(h))[None, :])[:, :n_elements] * scatter[:, None]
    else:
        response = score * scatter[:, None]
    depth = 1.0 - result.mean if depth is None else depth
    null = (depth < null_depth) & (result.std > 0)
    if null.sum() < 10:
        null = depth <= np.quantile(depth, 0.1)
    median = np.median(response[null], axis=0)
    spread = _MAD_TO_SIGMA * np.median(np.abs(response[null] - median), axis=0)
    dof = max(result.n_samples - 3 - n_conditioned, 1)
    sampling = scatter[:, None] ** 2 * (1.0 - score**2) / dof
    significance = (response - median) / np.sqrt(spread**2 + sampling + 1e-300)
    return Association(templates.elements, score, significance, median, spread, mode, n_conditioned)


def find_lines(
    result: PixelCorrelation,
    linelist: Table,
    *,
    resolution: float = 22_500.0,
    mode: AssociationMode = "joint",
    threshold: float = 5.0,
    min_depth: float = 0.01,
    template_min_depth: float = 0.02,
    template_min_lines: int = 5,
    blend_window: float = 0.5,
    null_depth: float = 0.005,
    assign_by: Literal["score", "significance"] = "score",
    n_modes: int = 1,
    explain_threshold: float = 3.0,
    explain_fraction: float = 0.0,
    untested_explain: bool = True,
    strong_depth: float | None = 0.2,
    nuisance_elements: tuple[str, ...] = ("H",),
    match_window: float = 0.5,
) -> LineSearch:
    """Templates, association, features and cross-match on one pixel correlation.

    Args:
        result: from :func:`model_correlation` or :func:`empirical_correlation`.
        linelist: the published (known) line list, canonical columns.
        resolution: resolving power R (a resolution element is ``wavelength / R``).
        mode: association mode (module docstring; ``"joint"`` by default, see
            docs/design.md for the measurement behind the choice).
        threshold: feature significance threshold, sigma.
        min_depth: minimum mean depth of a feature.
        template_min_depth: minimum mean depth of a template pixel.
        template_min_lines: elements with fewer template pixels get no template.
        blend_window: half-width, resolution elements, of the template blend test.
        null_depth: line-free pixels (the significance null) are shallower than this.
        assign_by: assign each feature the element of largest score or significance.
        n_modes: leading eigenmodes removed in ``"shared_mode"``.
        explain_threshold: a published line explains a feature if the feature's association
            with the line's element is at least this significant (:func:`cross_match`).
        explain_fraction: ... and at least this fraction of its best element's.
        untested_explain: published lines of elements without a template (nuisance
            elements included) explain features near them (they cannot be tested).
        strong_depth: lines this deep in the mean spectrum leave their element's template
            and form the ``"strong"`` nuisance index (None: no such index).
        nuisance_elements: elements whose template is conditioned on, never assigned.
        match_window: half-width of the cross-match, resolution elements.

    Returns:
        A :class:`LineSearch`; its ``candidates`` table has ``wavelength``, ``element``,
        ``score``, ``significance``, ``depth``, ``known``, ``nearest_known``, ``offset``,
        ``kind`` (:func:`cross_match`).
    """
    if resolution <= 0 or threshold < 0 or not 0 <= min_depth < 1:
        raise DataValidationError(
            f"need resolution > 0, threshold >= 0, 0 <= min_depth < 1; got {resolution}, "
            f"{threshold}, {min_depth}"
        )
    depth = 1.0 - result.mean
    templates = element_templates(
        result.wavelength, depth, result.std, linelist,
        resolution=resolution, min_depth=template_min_depth, min_lines=template_min_lines,
        blend_window=blend_window, strong_depth=strong_depth,
        nuisance_elements=nuisance_elements,
    )  # fmt: skip
    association = associate(
        result, templates, mode=mode, null_depth=null_depth, depth=depth, n_modes=n_modes
    )
    features = find_features(
        result.wavelength, depth, association, threshold=threshold, min_depth=min_depth,
        assign_by=assign_by, explain_threshold=explain_threshold,
        explain_fraction=explain_fraction,
    )  # fmt: skip
    candidates = cross_match(
        features,
        linelist,
        resolution=resolution,
        window=match_window,
        tested_elements=templates.elements if untested_explain else None,
    )
    candidates.meta.update(
        {
            "mode": mode,
            "threshold": threshold,
            "assign_by": assign_by,
            "n_modes": n_modes if mode == "shared_mode" else 0,
            "resolution": resolution,
            "n_samples": result.n_samples,
            "elements": list(templates.elements),
            "nuisance": list(templates.nuisance),
            "strong_depth": -1.0 if strong_depth is None else strong_depth,
            "match_window": match_window,
            **{k: v for k, v in result.meta.items() if np.isscalar(v)},
        }
    )
    return LineSearch(candidates, templates, association, result, depth, resolution)
