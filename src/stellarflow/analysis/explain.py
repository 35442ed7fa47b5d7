r"""Why a spectrum is improbable: per-pixel residuals, per-element evidence, unexplained features.

Small pure functions on arrays (numpy in, numpy out); :mod:`stellarflow.analysis.outliers`
feeds them the model's expectation for each star.

**Per-pixel contributions.** With :math:`E_i` the model's expectation of pixel i and
:math:`\sigma_i` its predicted spread (model scatter and the star's noise), the whitened
residual is

.. math:: r_i = (x_i - E_i) / \sigma_i \quad (0 \text{ at masked pixels}),

and :math:`r_i^2` is pixel i's share of the :math:`\chi^2`.

**Per-element evidence** is a matched filter of the residual with the element's line
profiles. Each line l of the line list (vacuum wavelength :math:`\lambda_l`) is a Gaussian of
the instrumental width, :math:`s_l = \lambda_l / (2.3548\,R)`; element e's profile is

.. math:: g_{e,i} = \min\big(1,\ \textstyle\sum_{l \in e} \exp[-(\lambda_i - \lambda_l)^2
          / 2 s_l^2]\big),

and its template (the flux change of deeper lines) scales it by the element's share of the
absorption the model expects at that pixel,
:math:`t_{e,i} = g_{e,i}\,h_{e,i}\,d_i` with :math:`d_i = \max(1 - E_i,\ d_{min})` and
:math:`h_{e,i} = g_{e,i} / \sum_f g_{f,i}` (a line counts in proportion to how deep it is in
a star with these labels, whatever its depth at some reference star; :math:`d_{min}` keeps
lines invisible in the expectation; where lines of several elements blend, each element's
template takes its profile's share of the blend's depth, not all of it). Without the share
(session 9 and before) an element whose lines sit in another's blends was fitted the
difference: N-rich/C-poor mock stars, whose CN lines deepen, came out V- or Cr-*depleted*
at up to -17 sigma; with it those depletions are gone and the top element is one the kind
shifts for 91-100% of the injected stars against 87-95% (session 10, four mocks at 7,514
pixels; BENCHMARKS.md). The
evidence (:func:`element_tests`) is the z-score of the template's amplitude in the
residual under the model's covariance (latent factors included), N(0, 1) for spectra drawn
from the model: *marginal* (against stars with the same labels) or *conditional* (given the
rest of the star's spectrum). Positive evidence = lines deeper than expected =
**enhanced**; negative = shallower = **depleted**. An element's lines blended with another's
share that pixel's residual; the element whose *other* lines agree wins.

**Molecules respond to several elements** (``molecules="equilibrium"``, the default). In an
oxygen-rich giant CO locks up nearly all the carbon, OH forms from the oxygen left over and
CN from the free carbon times nitrogen. Linearising that equilibrium in the strong-locking
limit, with :math:`q` = C/O (``carbon_to_oxygen``), the log number of each molecule moves
with the log abundances as

.. math:: \delta\ln \mathrm{CO} = \delta\ln C, \quad
          \delta\ln \mathrm{OH} = \frac{\delta\ln O - q\,\delta\ln C}{1 - q}, \quad
          \delta\ln \mathrm{CN} = \delta\ln N + \frac{\delta\ln C - \delta\ln O}{1 - q},

and the other carbon molecules follow the free carbon, :math:`\delta\ln \mathrm{CH} =
(\delta\ln C - \delta\ln O) / (1 - q)` and :math:`\delta\ln C_2` twice that
(:func:`molecular_response`). Each element's template is then the sum over the features it
moves, weighted by these coefficients, so the joint fit reads N from CN *given* the C that
the CO lines measure: a star with N up and C down (a globular-cluster escapee, or a strongly
mixed giant) has CN lines that change much less than its N (mock stars: +0.2-0.6 dex for N
+0.8-1.0 dex), and attributing CN to N alone called it at most mildly N-rich (session 11:
N evidence +4.3 -> +9.2 sigma for a +1.0 dex N, -0.26 dex C
mock star). :math:`q = 0.4` is a typical giant after the first dredge-up (solar 0.55,
lowered by ~0.15 dex of mixed carbon); 1 / (1 - q) is 1.43-2.22 over q = 0.3-0.55.
The linearisation does not hold for carbon stars (C/O >= 1). An element gets a molecule's
coefficient only if it also has features of its own (an atom, or a molecule attributed to
it); otherwise a molecule counts for the element the line list attributes it to
(:mod:`stellarflow.io.linelist`: CN -> N, CO -> C, OH -> O), as with
``molecules="attributed"`` everywhere.

**Unexplained features**: runs of at least ``min_pixels`` adjacent usable pixels with
:math:`|r_i| >` ``threshold`` of one sign whose strongest pixel lies farther than one
resolution element (:math:`\lambda / R`, the FWHM) from every line of the line list.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from scipy import sparse

from stellarflow.errors import DataValidationError

__all__ = [
    "FWHM_PER_SIGMA",
    "MOLECULE_RULES",
    "ElementProfiles",
    "ElementTests",
    "EvidenceSummary",
    "element_profiles",
    "element_tests",
    "line_depth",
    "line_test_fingerprint",
    "molecular_response",
    "summarize_evidence",
    "unexplained_features",
    "whitened_residual",
]

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
"""Full width at half maximum of a Gaussian in units of its standard deviation (2.3548)."""

MOLECULE_RULES = ("equilibrium", "attributed")
"""How molecular features count (module docstring): through the linearised C/N/O equilibrium,
or for the element the line list attributes them to."""


def molecular_response(carbon_to_oxygen: float = 0.4) -> dict[str, dict[str, float]]:
    r""":math:`\partial \ln n_{mol} / \partial \ln \epsilon_X` of CO, OH, CN, CH, C2 (docstring).

    Args:
        carbon_to_oxygen: the number ratio C/O, :math:`0 \le q < 1` (oxygen-rich stars).

    Returns:
        molecule -> {element: coefficient}.

    Raises:
        DataValidationError: ``carbon_to_oxygen`` outside [0, 1).
    """
    q = float(carbon_to_oxygen)
    if not 0.0 <= q < 1.0:
        raise DataValidationError(
            f"carbon_to_oxygen must be in [0, 1) (an oxygen-rich star), got {carbon_to_oxygen}"
        )
    f = 1.0 / (1.0 - q)
    return {
        "CO": {"C": 1.0},
        "OH": {"O": f, "C": -q * f},
        "CN": {"N": 1.0, "C": f, "O": -f},
        "CH": {"C": f, "O": -f},
        "C2": {"C": 2.0 * f, "O": -2.0 * f},
    }


@dataclass(frozen=True)
class ElementProfiles:
    r"""Line profiles of each element on a wavelength grid.

    Attributes:
        elements: element symbols, in the order of the rows of ``profiles``.
        profiles: `(n_elements, n_pixels)`, dimensionless in [0, 1]: :math:`g_{e,i}`.
        line_wavelength: `(n_lines,)` vacuum Å, sorted, every line that touches the grid.
        line_element: `(n_lines,)` str, the element of each of those lines.
        resolution: resolving power R used for the widths.
        templates: `(n_elements, n_pixels)` signed, dimensionless: each element's template
            per unit expected depth, :math:`\sum_f c_{e,f}\, g_f h_f` over the features f
            it moves (an element's atoms, each molecule) with their share :math:`h_f` of a
            blend and the response :math:`c_{e,f}` (1 for an atom; module docstring).
        rule: how the templates were made (molecule rule and C/O), for fingerprints.
    """

    elements: tuple[str, ...]
    profiles: np.ndarray
    line_wavelength: np.ndarray
    line_element: np.ndarray
    resolution: float
    templates: np.ndarray
    rule: str

    def lines_of(self, element: str) -> np.ndarray:
        """Vacuum wavelengths (Å) of the lines of ``element`` on the grid."""
        return self.line_wavelength[self.line_element == element]


def element_profiles(
    wavelength: np.ndarray,
    linelist: Table,
    resolution: float = 22_500.0,
    truncate: float = 4.0,
    *,
    molecules: str = "equilibrium",
    carbon_to_oxygen: float = 0.4,
) -> ElementProfiles:
    r"""Gaussian line profiles of the instrumental width, per element, and the templates.

    Args:
        wavelength: `(n_pixels,)`, vacuum Å, strictly increasing.
        linelist: a canonical line-list table (:mod:`stellarflow.io.linelist`) with
            ``wavelength`` (vacuum Å) and ``element`` columns (and ``species``, which the
            molecular response needs: without it every feature counts for its element).
        resolution: resolving power :math:`R = \lambda / \mathrm{FWHM}` (APOGEE: 22,500).
        truncate: profiles are cut at this many :math:`s_l` from the line centre.
        molecules: one of :data:`MOLECULE_RULES` (module docstring).
        carbon_to_oxygen: C/O of the linearised equilibrium (:func:`molecular_response`).

    Returns:
        The :class:`ElementProfiles` of every element with a line touching the grid.

    Raises:
        DataValidationError: a line list without those columns, ``resolution <= 0``, an
            unknown ``molecules`` rule or C/O outside [0, 1).
    """
    missing = [name for name in ("wavelength", "element") if name not in linelist.colnames]
    if missing:
        raise DataValidationError(
            f"the line list lacks the columns {missing}; read it with "
            "stellarflow.io.linelist.read_linelist"
        )
    if not resolution > 0:
        raise DataValidationError(f"resolution must be > 0, got {resolution}")
    if molecules not in MOLECULE_RULES:
        raise DataValidationError(f"molecules must be one of {MOLECULE_RULES}, got {molecules!r}")
    response = molecular_response(carbon_to_oxygen) if molecules == "equilibrium" else {}
    wavelength = np.asarray(wavelength, dtype=np.float64)
    centre = np.asarray(linelist["wavelength"], dtype=np.float64)
    element = np.asarray(linelist["element"]).astype(str)
    species = (
        np.asarray(linelist["species"]).astype(str) if "species" in linelist.colnames else element
    )
    sigma = centre / (FWHM_PER_SIGMA * resolution)
    first = np.searchsorted(wavelength, centre - truncate * sigma)
    last = np.searchsorted(wavelength, centre + truncate * sigma)
    on_grid = (last > first) & np.isfinite(centre) & (element != "")
    order = np.argsort(centre[on_grid], kind="stable")
    centre, element, sigma = centre[on_grid][order], element[on_grid][order], sigma[on_grid][order]
    first, last, species = first[on_grid][order], last[on_grid][order], species[on_grid][order]
    # features: each molecule with a response on its own, every other line with its element
    feature = np.where(np.isin(species, list(response)), species, element)
    names = sorted(set(feature.tolist()))
    elements = tuple(sorted(set(element.tolist())))
    row = {name: k for k, name in enumerate(names)}
    row_of = {name: k for k, name in enumerate(elements)}
    shapes = np.zeros((len(names), wavelength.size))  # per feature
    profiles = np.zeros((len(elements), wavelength.size))  # per attributed element
    for lam, f, el, s, a, b in zip(centre, feature, element, sigma, first, last, strict=True):
        g = np.exp(-0.5 * ((wavelength[a:b] - lam) / s) ** 2)
        shapes[row[f], a:b] += g
        profiles[row_of[el], a:b] += g
    templates = np.zeros_like(profiles)
    for name, share in zip(names, _shared(np.minimum(shapes, 1.0)), strict=True):
        weights = {el: c for el, c in response.get(name, {}).items() if el in row_of}
        for el, c in (weights or {str(element[feature == name][0]): 1.0}).items():
            templates[row_of[el]] += c * share
    rule = f"equilibrium C/O={float(carbon_to_oxygen):.4g}" if response else "attributed"
    return ElementProfiles(
        elements, np.minimum(profiles, 1.0), centre, element, float(resolution), templates, rule
    )


def line_test_fingerprint(profiles: ElementProfiles, expectation: str) -> str:
    """A short hash of what the line-list test depends on besides the model and the star.

    The lines on the grid (wavelengths to 1e-4 Å, elements), the resolution, the
    expectation ("labels" or "latent_fit") and the template rules (shared blend depth, the
    molecules' response): a reference fitted for one test must not recalibrate another.
    """
    digest = hashlib.sha256()
    digest.update(np.round(profiles.line_wavelength, 4).tobytes())
    digest.update("|".join(map(str, profiles.line_element)).encode())
    digest.update(f"{profiles.resolution:.6g}|{expectation}|shared-depth|{profiles.rule}".encode())
    return digest.hexdigest()[:16]


def whitened_residual(
    flux: np.ndarray, expectation: np.ndarray, spread: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Per-pixel residual in units of the predicted spread, :math:`(x - E) / \\sigma`.

    Args:
        flux: `(n_stars, n_pixels)`, continuum-normalised (anything at masked pixels).
        expectation: `(n_stars, n_pixels)`, the model's expectation, flux units.
        spread: `(n_stars, n_pixels)`, the predicted standard deviation of the observed flux
            around it (model scatter and noise), flux units, > 0 on usable pixels.
        mask: `(n_stars, n_pixels)` bool, True = excluded.

    Returns:
        `(n_stars, n_pixels)`, dimensionless; exactly 0 at masked pixels.
    """
    usable = ~np.asarray(mask, dtype=bool)
    safe = np.where(usable, spread, 1.0)
    clean = np.where(usable, flux, expectation)
    return np.where(usable, (clean - expectation) / safe, 0.0)


def line_depth(expectation: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """Expected absorption depth per pixel, :math:`d_i = \\max(1 - E_i, d_{min})`, at most 1.

    Args:
        expectation: `(n_stars, n_pixels)`, continuum-normalised model expectation.
        floor: :math:`d_{min}`, dimensionless.

    Returns:
        `(n_stars, n_pixels)`, dimensionless in [floor, 1].
    """
    return np.clip(1.0 - np.asarray(expectation, dtype=np.float64), floor, 1.0)


@dataclass(frozen=True)
class ElementTests:
    r"""The line-list tests of each star (:func:`element_tests`).

    Attributes:
        evidence: `(n_stars, n_elements)` signed z-scores, columns in ``profiles.elements``
            order: positive = lines deeper than expected (enhanced), negative = shallower
            (depleted); 0 for an element with no usable pixel.
        chi2: `(n_stars,)` :math:`\chi^2 = n^T \mathrm{Cov}[n]^{-1} n` of the vector
            :math:`n` of all elements' filter outputs under the model: how surprising the
            lines are *together*, the population's correlations between elements included
            (an element moving against the others that usually follow it). Exactly
            :math:`\chi^2_{dof}` for spectra drawn from a Gaussian model; it does not
            depend on whether the amplitudes are fitted jointly or singly.
        dof: `(n_stars,)` int, elements with usable pixels.
        depth_change: `(n_stars, n_elements)` the fitted fractional change of each
            element's line depths against the expectation (+0.5: 50% deeper; the size of
            the effect whose significance ``evidence`` gives); 0 for an element without
            usable pixels.
    """

    evidence: np.ndarray
    chi2: np.ndarray
    dof: np.ndarray
    depth_change: np.ndarray


def element_tests(
    delta: np.ndarray,
    variance: np.ndarray,
    depth: np.ndarray,
    profiles: ElementProfiles,
    mask: np.ndarray,
    loading: np.ndarray | None = None,
    latent_cov: np.ndarray | None = None,
    *,
    given_fit: bool = True,
    joint: bool = True,
    batch_size: int = 32,
) -> ElementTests:
    r"""Matched-filter evidence of each element (a z-score under the model) and of all at once.

    The template is ``profiles.templates`` times the expected depth, :math:`t_{e,i} = g_{e,i}
    h_{e,i} d_i` summed over the features the element moves (module docstring; flux units
    up to a scale), the model's covariance at the labels :math:`C = D + L \Sigma_z L^T`
    (:math:`D` independent per-pixel variance: intrinsic scatter and noise). Sums run over
    the usable pixels O.

    ``given_fit=True`` (**conditional**): ``delta`` :math:`= x - f` is the residual from the
    star's latent fit :math:`f = \mu + L E[z|x]` and ``latent_cov`` is
    :math:`\Sigma = Cov[z | x]`; the generalised-least-squares z-score

    .. math:: \mathrm{evidence}_e = -\frac{\sum t_{e,i} \delta_i / D_i}
              {\sqrt{\sum t_{e,i}^2 / D_i - b_e^T \Sigma\, b_e}}, \qquad
              b_e = \sum L_i\, t_{e,i} / D_i ,

    which for a Gaussian prior equals :math:`t^T C^{-1} r / \sqrt{t^T C^{-1} t}` with
    :math:`r = x - \mu` (Woodbury: :math:`C^{-1} r = D^{-1} \delta`): how surprising the
    element's lines are *given the rest of the spectrum*, the population's correlations
    included.

    ``given_fit=False`` (**marginal**): ``delta`` :math:`= x - E[x|c]` is the residual from
    the label-conditional mean and ``latent_cov`` is :math:`\Sigma = Cov[z | c]`; the filter
    whitens by the total per-pixel variance :math:`V = D + \mathrm{diag}(L \Sigma L^T)`,
    :math:`u = t / V`, and is normalised by its exact standard deviation under the model:

    .. math:: \mathrm{evidence}_e = -\frac{\sum u_{e,i} \delta_i}
              {\sqrt{\sum u_{e,i}^2 D_i + b_e^T \Sigma\, b_e}}, \qquad
              b_e = \sum L_i\, u_{e,i} :

    how far the element's lines are from stars *with the same labels*, in units of their
    spread among such stars. Both are N(0, 1) for spectra drawn from the model; without
    ``loading`` both are the independent-pixel matched filter of ``delta`` against
    ``variance``.

    Args:
        delta: `(n_stars, n_pixels)` observed minus expected flux, flux units (anything at
            masked pixels).
        variance: `(n_stars, n_pixels)` :math:`D`, flux units squared, > 0 on usable pixels
            (``variance``, ``depth`` and ``mask`` broadcast against ``delta``).
        depth: `(n_stars, n_pixels)` expected depth (:func:`line_depth`).
        profiles: the elements' line profiles on the same grid.
        mask: `(n_stars, n_pixels)` bool, True = excluded (no weight).
        loading: `(n_stars, n_pixels, k)` or `(n_pixels, k)`, flux units: :math:`L`; None
            for independent pixels.
        latent_cov: `(n_stars, k, k)`: :math:`\Sigma`, with ``loading``.
        given_fit: conditional (True) or marginal (False) evidence, as above.
        joint: fit every element's template at once (True) or each alone (False). Jointly,
            an element whose lines are blended with another's shares the blend's residual
            by least squares instead of claiming all of it: the amplitudes are
            :math:`a = M^{-1} T^T W \delta` (:math:`M = T^T W T`, W the whitening above)
            and the evidence is :math:`-a_e / \sqrt{Cov[a]_{ee}}` with the covariance
            propagated exactly under the model.
        batch_size: stars per block of the `(batch, n_pixels, k)` intermediates.

    Returns:
        :class:`ElementTests`: the per-element z-scores and the joint :math:`\chi^2` of all
        elements' filters.
    """
    delta = np.asarray(delta, dtype=np.float64)
    shape = delta.shape
    usable = ~np.broadcast_to(np.asarray(mask, dtype=bool), shape)
    depth = np.broadcast_to(np.asarray(depth, dtype=np.float64), shape)
    variance = np.broadcast_to(np.asarray(variance, dtype=np.float64), shape)
    g = sparse.csr_matrix(profiles.templates)  # lines cover few pixels: sparse products
    n_elements = g.shape[0]
    pairs = sparse.vstack([g.multiply(g[e]) for e in range(n_elements)]).tocsr()  # g_e g_f
    out = np.zeros((shape[0], n_elements))
    change = np.zeros((shape[0], n_elements))
    chi2 = np.zeros(shape[0])
    dof = np.zeros(shape[0], dtype=np.int64)
    for start in range(0, shape[0], batch_size):
        rows = slice(start, start + batch_size)
        ok = usable[rows]
        n = len(ok)
        d0 = np.where(ok, variance[rows], 1.0)
        part = None
        if loading is not None and latent_cov is not None:
            part = (
                loading[rows]
                if loading.ndim == 3
                else np.broadcast_to(loading, (n, *loading.shape))
            )
        v = d0
        if part is not None and not given_fit:
            v = d0 + ((part @ latent_cov[rows]) * part).sum(-1)
        w = np.where(ok, depth[rows] / v, 0.0)  # template / whitening variance, per profile
        numerator = (g @ (w * np.where(ok, delta[rows], 0.0)).T).T  # (batch, E)
        gram = (pairs @ (w * w * d0).T).T.reshape(n, n_elements, n_elements)
        extra = np.zeros_like(gram)
        if part is not None:
            k = part.shape[-1]
            scaled = (w[:, :, None] * part).transpose(1, 0, 2).reshape(w.shape[1], n * k)
            b = (g @ scaled).reshape(n_elements, n, k).transpose(1, 0, 2)  # (batch, E, k)
            extra = b @ latent_cov[rows] @ b.transpose(0, 2, 1)
        if given_fit:  # information matrix of the amplitudes, T^T C^-1 T
            out[rows], change[rows] = _z_scores(numerator, gram - extra, None, joint)
            spread = gram - extra  # Cov[T^T D^-1 delta] = T^T C^-1 T
        else:  # covariance of the numerator, and T^T V^-1 T for the joint fit
            fisher = (pairs @ (w * w * v).T).T.reshape(n, n_elements, n_elements)
            out[rows], change[rows] = _z_scores(numerator, fisher, gram + extra, joint)
            spread = gram + extra
        chi2[rows], dof[rows] = _joint_chi2(numerator, spread)
    return ElementTests(out, chi2, dof, change)


def _shared(profiles: np.ndarray) -> np.ndarray:
    """:math:`g_{e,i} h_{e,i}`: each element's profile times its share of the pixel's lines."""
    total = profiles.sum(axis=0)
    return profiles * (profiles / np.where(total > 0, total, 1.0))


def _joint_chi2(numerator: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:math:`n^T \\Sigma^{+} n` and the rank of :math:`\\Sigma`, per star.

    ``numerator`` `(n, E)`; ``covariance`` `(n, E, E)` its covariance under the model. The
    pseudo-inverse over the eigenvalues above 1e-9 of the largest: directions the model
    has (almost) no variance in (an element without usable pixels, or one whose template
    the star's latent fit absorbs, where ``T^T C^-1 T`` is a difference of nearly equal
    terms) are not tests, and the dof counts the rest.
    """
    sym = 0.5 * (covariance + np.swapaxes(covariance, 1, 2))
    values, vectors = np.linalg.eigh(sym)
    top = np.maximum(values[:, -1:], 1e-300)
    keep = values > 1e-9 * top
    projected = np.einsum("sef,se->sf", vectors, numerator)
    chi2 = np.where(keep, projected**2 / np.where(keep, values, 1.0), 0.0).sum(axis=1)
    return chi2, keep.sum(axis=1)


def _z_scores(
    numerator: np.ndarray, information: np.ndarray, covariance: np.ndarray | None, joint: bool
) -> tuple[np.ndarray, np.ndarray]:
    r"""Signed evidence ``-amplitude / std`` and ``-amplitude`` per element (:func:`element_tests`).

    ``numerator`` `(n, E)` is :math:`T^T W \delta`; with ``covariance`` None the
    estimator is generalised least squares and ``information`` `(n, E, E)` is
    :math:`T^T C^{-1} T`; otherwise ``information`` is :math:`M = T^T W T` and
    ``covariance`` the numerator's covariance under the model (a sandwich).
    """
    diag = np.diagonal(information, axis1=1, axis2=2)
    scale = np.maximum(diag.max(axis=1, keepdims=True), 1e-300)
    # an element without usable pixels (or wholly inside the latent span) has no evidence
    active = diag > 1e-9 * scale
    with np.errstate(invalid="ignore", divide="ignore"):
        if not joint:
            var = diag if covariance is None else np.diagonal(covariance, axis1=1, axis2=2)
            good = active & (var > 0)
            amplitude = numerator / np.where(active, diag, 1.0)
            z = -numerator / np.sqrt(np.where(good, var, 1.0))
            return np.where(good, z, 0.0), np.where(good, -amplitude, 0.0)
        eye = np.eye(information.shape[1])
        ridge = information + eye * (1e-9 * scale[:, :, None]) + eye * (~active)[:, None, :]
        inverse = np.linalg.inv(ridge)
        amplitude = np.einsum("sef,sf->se", inverse, numerator)
        cov = inverse if covariance is None else inverse @ covariance @ inverse
        var = np.diagonal(cov, axis1=1, axis2=2)
        good = active & (var > 0)
        z = -amplitude / np.sqrt(np.where(good, var, 1.0))
        return np.where(good, z, 0.0), np.where(good, -amplitude, 0.0)


@dataclass(frozen=True)
class EvidenceSummary:
    """The strongest element per star (arrays `(n_stars,)`).

    Attributes:
        top_element: symbol with the largest |evidence| ("" when there are no elements).
        direction: "enhanced" (evidence > 0), "depleted" (< 0), or "" (none).
        top_evidence: its evidence (signed z-score).
        summary: e.g. ``"Ce:+6.1 Nd:+3.2 Fe:-1.0"``, the ``n_top`` largest by |evidence|.
    """

    top_element: np.ndarray
    direction: np.ndarray
    top_evidence: np.ndarray
    summary: np.ndarray


def summarize_evidence(
    evidence: np.ndarray, elements: tuple[str, ...], n_top: int = 3
) -> EvidenceSummary:
    """Top element, its direction and a compact text summary per star.

    Args:
        evidence: `(n_stars, n_elements)` ``.evidence`` of :func:`element_tests`.
        elements: the column names (element symbols).
        n_top: elements listed in the summary.

    Returns:
        :class:`EvidenceSummary`.
    """
    evidence = np.asarray(evidence, dtype=np.float64)
    n_stars = evidence.shape[0]
    if not elements:
        empty = np.full(n_stars, "", dtype="<U2")
        return EvidenceSummary(empty, empty.astype("<U8"), np.zeros(n_stars), empty)
    order = np.argsort(-np.abs(evidence), axis=1, kind="stable")
    names = np.asarray(elements)
    top = evidence[np.arange(n_stars), order[:, 0]]
    direction = np.where(top > 0, "enhanced", np.where(top < 0, "depleted", ""))
    summary = [
        " ".join(f"{names[j]}:{evidence[i, j]:+.1f}" for j in order[i, :n_top])
        for i in range(n_stars)
    ]
    return EvidenceSummary(names[order[:, 0]], direction, top, np.asarray(summary, dtype=str))


def unexplained_features(
    residual: np.ndarray,
    mask: np.ndarray,
    wavelength: np.ndarray,
    line_wavelength: np.ndarray,
    resolution: float = 22_500.0,
    threshold: float = 5.0,
    min_pixels: int = 2,
) -> list[np.ndarray]:
    """Significant residual features farther than one resolution element from every line.

    Args:
        residual: `(n_stars, n_pixels)` whitened residual.
        mask: `(n_stars, n_pixels)` bool, True = excluded (masked pixels break a feature).
        wavelength: `(n_pixels,)` vacuum Å.
        line_wavelength: `(n_lines,)` vacuum Å of the known lines (any order).
        resolution: R; one resolution element at wavelength λ is λ / R.
        threshold: |r| above which a pixel is significant, in units of the predicted spread.
        min_pixels: minimum run of adjacent significant pixels of one sign.

    Returns:
        Per star, a `(n_features,)` array of feature wavelengths (vacuum Å, the strongest
        pixel of each run).
    """
    residual = np.asarray(residual, dtype=np.float64)
    wavelength = np.asarray(wavelength, dtype=np.float64)
    lines = np.sort(np.asarray(line_wavelength, dtype=np.float64))
    sign = np.sign(residual) * ((np.abs(residual) > threshold) & ~np.asarray(mask, dtype=bool))
    out: list[np.ndarray] = []
    for s, r in zip(sign, residual, strict=True):
        # a run starts where the sign changes away from 0 or flips
        padded = np.concatenate([[0.0], s, [0.0]])
        change = np.flatnonzero(padded[1:] != padded[:-1])
        found = []
        for a, b in itertools.pairwise(change):
            if s[a] == 0 or b - a < min_pixels:
                continue
            peak = a + int(np.argmax(np.abs(r[a:b])))
            lam = wavelength[peak]
            if not _near_line(lam, lines, lam / resolution):
                found.append(lam)
        out.append(np.asarray(found, dtype=np.float64))
    return out


def _near_line(lam: float, lines: np.ndarray, distance: float) -> bool:
    """Whether a sorted line list has a line within ``distance`` Å of ``lam``."""
    if lines.size == 0:
        return False
    k = int(np.searchsorted(lines, lam))
    neighbours = lines[max(k - 1, 0) : k + 1]
    return bool(np.min(np.abs(neighbours - lam)) <= distance)
