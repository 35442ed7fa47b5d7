r"""Rank stars by how improbable their spectrum is given their labels, and say why.

For each star, streamed ``chunk_size`` stars at a time (memory does not grow with the survey
beyond one row of results per star):

1. **Flags.** Labels missing or outside the training support (the model's local-outlier
   ratio, :mod:`stellarflow.train.support`) -> ``"unsupported_labels"``; a usable-pixel
   fraction below ``min_good_fraction`` -> ``"too_few_pixels"`` (not scored); a score or
   explanation that is not finite -> ``"failed"``. Flagged stars are never ranked: they get
   no ``rank`` and follow the ranked stars in the table.
2. **Calibrated improbability** (:func:`stellarflow.analysis.calibrate.calibrate_log_prob`):
   ``log_prob`` (nats) and the tail probability ``p_tail`` that a spectrum of a star with the
   same labels, noise and mask is at least this improbable under the model, exact for the
   Gaussian families, a reference-draw fit along the :math:`\chi^2_n` shape for a flow prior
   (the only way below 1/``n_reference``; see that module). ``one_in = 1 / p_tail``;
   ``z`` is its standard-normal deviate.
3. **Explanation** (:mod:`stellarflow.analysis.explain`): the whitened residual against the
   model's expectation, per-element matched-filter evidence over the line list with a
   direction, and features that match no known line.
4. **Ranking.** ``p_tail`` is an omnibus test: every pixel's surprise counts, so a few
   anomalous lines are diluted by thousands of ordinary pixels (their excess
   :math:`\chi^2` must beat the :math:`\sqrt{2n}` spread of the sum). A chemically
   peculiar star differs in the lines of one or a few elements. Two tests look there:
   ``p_element`` turns the strongest element's evidence into a tail probability under the
   model (Bonferroni over the elements: :func:`~stellarflow.analysis.calibrate.strongest_tail`,
   an upper bound), and ``p_lines`` is the **line-list test**: the :math:`\chi^2` of all
   elements' matched filters together under the model's covariance
   (:attr:`~stellarflow.analysis.explain.ElementTests.chi2`, :math:`\chi^2_E` for E
   elements), which also sees elements moving *against* the population's correlations
   (an alpha-poor star whose Na and Al stay where its [Fe/H] puts them). ``p_combined`` =
   min(1, m min(``p_tail``, ``p_lines``, ``p_element``)) over the m tests present is an
   upper bound on the chance that any of them is this extreme. ``rank_by="lines"`` orders
   by ``p_lines``, ``"omnibus"`` by ``p_tail``, ``"combined"`` by ``p_combined``;
   ``"auto"`` (default) takes ``"lines"`` when there is a line list, else ``"omnibus"``.
   ``one_in`` stays ``1 / p_tail``, the whole spectrum's "1 in N". All stay finite in log
   space where the probabilities underflow.

   Why the line-list test ranks by default (session 10, 7,514 pixels, factor analysis
   k = 16; four mocks with 0.5%, 1%, 0.1% and 0.1% injected outliers, BENCHMARKS.md):
   after the survey recalibration its inlier tail is the lightest of the three (no normal
   star beyond 1e-6 in 60,000), so the outliers' 10-50 sigma line anomalies are not
   crowded by the normal stars the model misfits as a whole (cool metal-rich giants:
   ``p_tail`` beyond 1e-6 for 0.01-0.11% of normal stars even after recalibration) or in
   one element (``p_element`` < 1e-3 for 0.6%, session 9). Precision at k 1.000 / 0.967 / 0.957 /
   1.000, AUC 1.000 / 0.999 / 0.990 / 1.000; the session-9 default (``p_tail`` and
   ``p_element`` combined) had precision 0.907 / 0.924 / 0.739 on the first three.
   The whole-spectrum test still finds what the line list does not cover (a strong
   unknown line, a data fault): rank by ``"omnibus"`` or ``"combined"`` to look for that.

The model's calibration is only as good as the model: on the mock, factor analysis misfits
the metal-poor tail and the coolest giants, whose normal stars then reach z ~ 30 and crowd
the top of the ranking (inlier z: mean -0.5, std 2.4; KS D = 0.26). ``recalibrate=
"neighbours"`` (:func:`recalibrate_by_neighbours`) re-standardises z among survey stars with
similar labels and S/N (an empirical null): precision at k 0.28 -> 0.65, AUC 0.985 -> 0.993,
inlier z std 1.18, KS D = 0.025, at the cost of ``p_tail`` no longer meaning "under the
model". Smooth references do it better (:mod:`stellarflow.analysis.reference`: the
location and scale of z quadratic in the labels and log S/N, fitted robustly, and a
Student-t upper tail): ``recalibrate="survey"`` cross-fits one on the ranked stars
themselves (five folds, each against the other four: :func:`recalibrate_by_survey`),
``"reference"`` uses the one ``stellarflow train`` fits on its validation stars (works
for a single star). ``"auto"`` (default) takes the survey reference from
:data:`SURVEY_REFERENCE_MIN` ranked stars, else the model's, else none. All three treat
``p_lines`` the same way (from ``z_lines_model``); ``stellarflow train`` fits the model
directory's line-list reference when its survey has a line list, for the default test
(that line list, R = 22,500, ``expectation="labels"``; another test is left under the
model, where its normal stars' z has mean ~1 and sd ~1.5 on the mocks: too many small
``p_lines``, still a good ranking but not calibrated). At 7,514 pixels
(session 9: two mocks of 10,000 test stars with 43 and 92 injected outliers, factor
analysis k = 16 by ECM) the survey reference takes the inliers' KS p from 2e-10 / 6e-5 to
0.51 / 0.06 and precision at k from 0.77 / 0.82 to 0.91 / 0.92; the ~2,000-star
validation reference ranks as well but fails KS on the first (p 7e-7: its own estimation
error shows against 10,000 stars). Recalibrating each
element's evidence the same way was measured and not kept (precision at k 0.86, the
true outliers among the survey stars fatten each element's tail).

**Which expectation explains an outlier** (measured with ``benchmarks/outliers.py``: 10,000
mock test stars at 1,024 pixels, factor analysis k = 8, 43 injected outliers; BENCHMARKS.md).
``expectation="labels"`` (default) compares the spectrum with the label-conditional mean
:math:`E[x | c]`: the evidence is *marginal*, "how far are this element's lines from stars
with the same labels, in units of their spread among such stars" (the population's
correlated variation included, so it is a z-score). ``"latent_fit"`` compares it with the
star's own fit :math:`m + s(\mu + W E[z | x])`: the evidence is *conditional*, "given the
rest of this spectrum" (generalised least squares; identical to the label-conditional GLS
for a Gaussian prior). All element templates are fitted jointly, so a blend is shared between
the elements whose lines make it (:func:`~stellarflow.analysis.explain.element_tests`).
The top element was an injected element (the kind's largest shift, or within 2/3 of it) for
56% of all 43 injected stars with marginal-joint evidence against 49% conditional, and an
element the kind shifts by >= 0.1 dex for 74% against 70%. Both put Ce, Nd and Na stars
right every time; N-rich/C-poor stars come out Na-enhanced (Na moves 0.2-0.5 dex against
a tiny population spread, N 0.6-1.1 dex against a large one), and the conditional fit also
reports spurious "Ce/Nd depleted" there, because the model expects s-process lines to follow
N. An independent-pixel filter on the label residual (not a z-score: correlated CN lines
inflate it to ~100 sigma) calls those stars N-rich and scores 67% strict: the price of
calibrated evidence on this mock.

The residual "in sigma" of the figures and of the unexplained features is
:math:`(x - E)/\sigma` with :math:`\sigma` the predicted spread of the observed flux around
the chosen expectation (:class:`Expectation`). Both expectations are the same for the Cannon
(no latent factors).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from astropy.table import MaskedColumn, Table
from scipy import special

from stellarflow.analysis.calibrate import (
    calibrate_log_prob,
    combine_tails,
    strongest_tail,
    tail_from_chi2,
)
from stellarflow.analysis.explain import (
    ElementProfiles,
    ElementTests,
    element_profiles,
    element_tests,
    line_depth,
    line_test_fingerprint,
    summarize_evidence,
    unexplained_features,
    whitened_residual,
)
from stellarflow.analysis.reference import (
    MIN_REFERENCE_STARS,
    REFERENCE_FILE,
    ReferenceCalibration,
    coordinates,
    fit_reference,
    held_out_scores,
    load_reference,
)
from stellarflow.analysis.score import chunk_flags, chunk_seed, map_chunks, scorable_rows
from stellarflow.data.dataset import ID_COLUMN, SpectralDataset, label_array
from stellarflow.data.summary import SpectraSource
from stellarflow.errors import DataValidationError, LabelError
from stellarflow.flows.distributions import DiagonalGaussianSpectra
from stellarflow.io.hdf5 import survey_linelist
from stellarflow.train.checkpoint import TrainedModel, check_compatible
from stellarflow.train.distributed import Distributed

__all__ = [
    "EXPECTATIONS",
    "FLAGS",
    "RANKINGS",
    "Expectation",
    "StarExplanation",
    "conditional_band",
    "explain_stars",
    "find_outliers",
    "line_test_scores",
    "line_test_z",
    "model_expectation",
    "recalibrate_by_neighbours",
    "recalibrate_by_reference",
    "recalibrate_by_survey",
]

logger = logging.getLogger(__name__)

FLAGS = ("", "unsupported_labels", "too_few_pixels", "failed")
"""Values of the ``flag`` column; "" = ranked."""

EXPECTATIONS = ("latent_fit", "labels")
"""What the residuals are taken against (module docstring)."""

RECALIBRATIONS = ("auto", "none", "survey", "reference", "neighbours")
"""How ``p_tail`` is calibrated: under the model, or among normal stars like each one."""

SURVEY_REFERENCE_MIN = 2000
"""Ranked stars from which ``recalibrate="auto"`` cross-fits the reference on the survey."""

RANKINGS = ("auto", "lines", "combined", "omnibus")
"""What ``rank`` orders by: ``p_lines``, ``p_combined`` or ``p_tail`` ("auto": ``p_lines``
with a line list, else ``p_tail``)."""

_MAX_UNEXPLAINED_LISTED = 5


@torch.no_grad()
def _population(
    model: torch.nn.Module,
    context: torch.Tensor | None,
    n_stars: int,
    n_samples: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Mean, independent variance, loading and Cov[z | c] of the noise-free spectra."""
    dist = model(context)
    shape = (n_stars, int(model.n_pixels))
    if isinstance(dist, DiagonalGaussianSpectra):
        return dist.mean.expand(shape), (dist.scale**2).expand(shape), None, None
    factors = model.covariance(context, n_samples=n_samples, generator=generator)
    loading = factors.loading
    mean = dist.flux_loc + dist.flux_scale * dist.loc
    mean = mean + (loading @ factors.latent_mean[..., None])[..., 0]
    k = loading.shape[-1]
    return (
        mean.expand(shape),
        factors.intrinsic_var.expand(shape),
        loading.expand(n_stars, *loading.shape[-2:]),
        factors.latent_cov.expand(n_stars, k, k),
    )


@torch.no_grad()
def conditional_band(
    model: torch.nn.Module,
    context: torch.Tensor | None,
    n_stars: int,
    n_samples: int = 256,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The noise-free spectra's mean and standard deviation at given labels.

    :math:`E[x | c] = m + s(\mu + W E[z|c])` and
    :math:`\sqrt{\mathrm{diag}\,Cov[x | c]}` from the model's covariance factors (exact for
    Gaussian families; ``n_samples`` flow draws of z for a flow prior).

    Args:
        model: a cannon, factor_analysis or latent_flow model.
        context: `(n_stars, n_context)` labels in physical units, or None (unconditional).
        n_stars: number of stars (sets the batch when ``context`` is None).
        n_samples: draws of z per star for a flow prior.
        generator: random source of those draws.

    Returns:
        `(n_stars, n_pixels)` mean and standard deviation, flux units.
    """
    mean, var, loading, cov = _population(model, context, n_stars, n_samples, generator)
    if loading is not None and cov is not None:
        var = var + ((loading @ cov) * loading).sum(-1)
    return mean, var.sqrt()


@dataclass(frozen=True)
class Expectation:
    """What a star's spectrum is compared with (numpy, flux units; `(n_stars, n_pixels)`).

    Attributes:
        expected: the expectation the residual is taken against.
        spread: predicted standard deviation of the observed flux around it (model scatter,
            latent uncertainty and noise): the unit of the residual "in sigma".
        variance: :math:`D`, the independent per-pixel variance (intrinsic scatter and noise)
            used by the evidence; equal to ``spread**2`` without latent factors.
        loading: `(n_stars, n_pixels, k)` or `(n_pixels, k)` latent loading :math:`L`, or
            None (no latent factors).
        latent_cov: `(n_stars, k, k)`: :math:`Cov[z | x]` (latent fit) or :math:`Cov[z | c]`
            (labels), with ``loading``; else None.
        given_fit: True when ``expected`` is the latent fit (conditional evidence), False
            for the label-conditional mean (marginal evidence); see
            :func:`~stellarflow.analysis.explain.element_tests`.
    """

    expected: np.ndarray
    spread: np.ndarray
    variance: np.ndarray
    loading: np.ndarray | None
    latent_cov: np.ndarray | None
    given_fit: bool


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.double().cpu().numpy()


def _loading(t: torch.Tensor) -> np.ndarray:
    """The loading as numpy, `(n_pixels, k)` when it is the same for every star (no copies)."""
    if t.ndim == 3 and t.stride(0) == 0:
        t = t[0]
    return _numpy(t)


@torch.no_grad()
def model_expectation(
    model: torch.nn.Module,
    flux: torch.Tensor,
    ivar: torch.Tensor,
    context: torch.Tensor | None,
    expectation: str = "latent_fit",
    generator: torch.Generator | None = None,
) -> Expectation:
    """The expectation the residuals are taken against, and the spreads (module docstring).

    Args:
        model: a noise-aware model.
        flux: `(n_stars, n_pixels)`, continuum-normalised.
        ivar: `(n_stars, n_pixels)`, 1 / flux units squared, 0 = masked.
        context: `(n_stars, n_context)` labels in physical units, or None.
        expectation: "latent_fit" or "labels" (module docstring).
        generator: random source (importance draws or flow samples).

    Returns:
        The :class:`Expectation`.
    """
    observed = ivar > 0
    noise = torch.where(observed, 1.0 / torch.where(observed, ivar, 1.0), 0.0)
    if expectation == "labels":
        mean, var, loading, cov = _population(model, context, flux.shape[0], 256, generator)
        total = var if loading is None else var + ((loading @ cov) * loading).sum(-1)
        return Expectation(
            expected=_numpy(mean),
            spread=_numpy((total + noise).sqrt()),
            variance=_numpy(var + noise),
            loading=None if loading is None else _loading(loading),
            latent_cov=None if cov is None else _numpy(cov),
            given_fit=False,
        )
    options: dict[str, Any] = {}
    if "generator" in inspect.signature(model.posterior_mean).parameters:
        options["generator"] = generator
    post = model.posterior_mean(flux, ivar, context, **options)
    spread = _numpy(post.predicted_std)
    if not hasattr(model, "covariance"):  # the Cannon: independent pixels, no latent factors
        return Expectation(_numpy(post.predicted), spread, spread**2, None, None, True)
    # loading and intrinsic variance are deterministic; the latent moments are not used
    factors = model.covariance(context, n_samples=2, generator=generator)
    return Expectation(
        expected=_numpy(post.predicted),
        spread=spread,
        variance=_numpy(factors.intrinsic_var + noise),
        loading=_loading(factors.loading),
        latent_cov=_numpy(post.latent_cov),
        given_fit=True,
    )


class _Labels:
    """The labels of each star: from the survey, or from a separate table keyed by star_id."""

    def __init__(self, names: tuple[str, ...], table: Table | None) -> None:
        self.names = names
        self.values: np.ndarray | None = None
        self.row: dict[str, int] = {}
        if table is not None:
            self.values = label_array(table, names)
            self.row = {str(s): i for i, s in enumerate(np.asarray(table[ID_COLUMN]))}

    def __call__(self, chunk: SpectralDataset) -> np.ndarray:
        if self.values is None:
            return chunk.label_array(self.names)
        ids = [str(s) for s in chunk.star_id]
        missing = [s for s in ids if s not in self.row]
        if missing:
            raise LabelError(
                f"the label table lacks {len(missing)} of the survey's stars (e.g. "
                f"{missing[:3]}); give labels for every star or leave the table out"
            )
        return self.values[[self.row[s] for s in ids]]


def _flag(enough: np.ndarray, supported: np.ndarray, ok: np.ndarray) -> np.ndarray:
    flag = np.where(ok, "", "failed")
    flag = np.where(supported, flag, "unsupported_labels")
    return np.where(enough, flag, "too_few_pixels").astype("<U18")


@dataclass(frozen=True)
class _Settings:
    n_reference: int
    min_good_fraction: float
    expectation: str
    resolution: float
    seed: int


def _explain(
    flux: np.ndarray,
    mask: np.ndarray,
    expectation: Expectation,
    wavelength: np.ndarray,
    profiles: ElementProfiles | None,
    resolution: float,
) -> tuple[np.ndarray, ElementTests, list[np.ndarray]]:
    """Whitened residual, the line-list tests (:class:`ElementTests`) and unexplained features."""
    e = expectation
    residual = whitened_residual(flux, e.expected, e.spread, mask)
    n = len(flux)
    if profiles is None:
        none = np.zeros((n, 0))
        tests = ElementTests(none, np.zeros(n), np.zeros(n, dtype=np.int64), none)
        lines = np.zeros(0)
    else:
        tests = _line_tests(flux, mask, e, profiles)
        lines = profiles.line_wavelength
    features = unexplained_features(residual, mask, wavelength, lines, resolution)
    return residual, tests, features


def _line_tests(
    flux: np.ndarray, mask: np.ndarray, e: Expectation, profiles: ElementProfiles
) -> ElementTests:
    """:func:`~stellarflow.analysis.explain.element_tests` of stars against an expectation."""
    return element_tests(
        flux - e.expected,
        e.variance,
        line_depth(e.expected),
        profiles,
        mask,
        loading=e.loading,
        latent_cov=e.latent_cov,
        given_fit=e.given_fit,
    )


def _lines_tail(tests: ElementTests) -> tuple[np.ndarray, np.ndarray]:
    """``(log_p_lines, z_lines)`` under the model; 0 and -inf for a star without line pixels."""
    log_p, z = tail_from_chi2(tests.chi2, np.maximum(tests.dof, 1))
    has_lines = tests.dof > 0
    return np.where(has_lines, log_p, 0.0), np.where(has_lines, z, -np.inf)


def line_test_z(
    model: torch.nn.Module,
    chunk: SpectralDataset,
    keep: np.ndarray,
    label_names: Sequence[str],
    profiles: ElementProfiles,
    *,
    expectation: str = "labels",
    seed: int = 0,
) -> np.ndarray:
    """The line-list test's z under the model (``z_lines_model``) of the ``keep`` rows of a
    chunk; -inf for a star without line pixels."""
    param = next(model.parameters())
    flux, ivar = (
        torch.as_tensor(a[keep], dtype=param.dtype, device=param.device)
        for a in (chunk.flux, chunk.ivar)
    )
    context = None
    if label_names:
        labels = chunk.label_array(list(label_names))[keep]
        context = torch.as_tensor(labels, dtype=param.dtype, device=param.device)
    generator = torch.Generator(device=param.device).manual_seed(seed)
    e = model_expectation(model, flux, ivar, context, expectation, generator)
    return _lines_tail(_line_tests(chunk.flux[keep], chunk.mask[keep], e, profiles))[1]


def line_test_scores(
    model: torch.nn.Module,
    chunks: Iterable[SpectralDataset],
    label_names: Sequence[str],
    profiles: ElementProfiles,
    *,
    expectation: str = "labels",
    min_good_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The line-list test's z under the model, the labels and the S/N of held-out stars.

    What :func:`find_outliers` computes for ``z_lines_model``, for
    :func:`~stellarflow.analysis.reference.fit_reference` (:func:`~stellarflow.analysis.
    reference.held_out_scores` with :func:`line_test_z`; chunk ``number`` draws with
    :func:`~stellarflow.analysis.score.chunk_seed`). Stars without usable line pixels get
    z = -inf, which :func:`~stellarflow.analysis.reference.fit_reference` leaves out.

    Returns:
        ``(z_lines, labels, snr)``.
    """
    return held_out_scores(
        chunks,
        label_names,
        lambda chunk, keep, number: line_test_z(
            model,
            chunk,
            keep,
            label_names,
            profiles,
            expectation=expectation,
            seed=chunk_seed(seed, number),
        ),
        min_good_fraction=min_good_fraction,
    )


def _chunk_columns(
    trained: TrainedModel,
    chunk: SpectralDataset,
    labels: np.ndarray,
    profiles: ElementProfiles | None,
    settings: _Settings,
    seed: int,
) -> dict[str, np.ndarray]:
    """Every per-star column of one chunk (survey order)."""
    model = trained.model
    n = chunk.n_stars
    flags = chunk_flags(trained, chunk, labels, settings.min_good_fraction)
    supported, enough = flags["supported"], flags["enough_pixels"]
    rows = scorable_rows(flags)
    cols: dict[str, np.ndarray] = {
        name: np.full(n, np.nan) for name in ("log_prob", "chi2", "log_p_tail", "z")
    }
    cols.update(
        spread_ratio=np.full(n, np.nan),
        dof=np.zeros(n, dtype=np.int64),
        log_p_element=np.full(n, np.nan),
        chi2_lines=np.full(n, np.nan),
        dof_lines=np.zeros(n, dtype=np.int64),
        log_p_lines=np.full(n, np.nan),
        z_lines=np.full(n, np.nan),
    )
    elements = () if profiles is None else profiles.elements
    evidence = np.zeros((n, len(elements)))
    n_unexplained = np.zeros(n, dtype=np.int64)
    where_unexplained = np.full(n, "", dtype=object)
    method = ""
    if rows.size:
        context = labels[rows] if trained.label_names else None
        context_err = None
        if trained.config.label_errors:  # the model marginalises each star's label errors
            context_err = chunk.label_array(trained.config.error_names)[rows]
        scores = calibrate_log_prob(
            model,
            chunk.flux[rows],
            chunk.ivar[rows],
            context,
            context_err=context_err,
            n_reference=settings.n_reference,
            chunk_size=rows.size,
            seed=seed,
        )
        method = scores.method
        for name in ("log_prob", "chi2", "log_p_tail", "z", "spread_ratio"):
            cols[name][rows] = getattr(scores, name)
        cols["dof"][rows] = scores.dof.astype(np.int64)
        param = next(model.parameters())
        tensors = [
            torch.as_tensor(a, dtype=param.dtype, device=param.device)
            for a in (chunk.flux[rows], chunk.ivar[rows])
        ]
        c = None if context is None else torch.as_tensor(context, dtype=param.dtype)
        generator = torch.Generator(device=param.device).manual_seed(seed)
        expected = model_expectation(model, *tensors, c, settings.expectation, generator)
        _, tests, features = _explain(
            chunk.flux[rows],
            chunk.mask[rows],
            expected,
            chunk.wavelength,
            profiles,
            settings.resolution,
        )
        evidence[rows] = tests.evidence
        if profiles is not None:
            cols["log_p_element"][rows] = strongest_tail(tests.evidence)
            cols["chi2_lines"][rows], cols["dof_lines"][rows] = tests.chi2, tests.dof
            cols["log_p_lines"][rows], cols["z_lines"][rows] = _lines_tail(tests)
        n_unexplained[rows] = [f.size for f in features]
        where_unexplained[rows] = [
            " ".join(f"{w:.2f}" for w in f[:_MAX_UNEXPLAINED_LISTED]) for f in features
        ]
    ok = np.isfinite(cols["log_p_tail"]) & np.all(np.isfinite(evidence), axis=1)
    summary = summarize_evidence(np.nan_to_num(evidence), elements)
    scored = np.zeros(n, dtype=bool)
    scored[rows] = True
    blank = ~scored | ~ok
    return {
        **cols,
        "labels": labels,
        "supported": supported,
        "support_ratio": flags["support_ratio"],
        "n_good_pixels": flags["n_good_pixels"],
        "snr": chunk.snr(),
        "flag": _flag(enough, supported, ok),
        "top_element": np.where(blank, "", summary.top_element).astype(str),
        "top_element_direction": np.where(blank, "", summary.direction).astype(str),
        "top_evidence": np.where(blank, np.nan, summary.top_evidence),
        "element_summary": np.where(blank, "", summary.summary).astype(str),
        "n_unexplained": n_unexplained,
        "unexplained_wavelength": where_unexplained.astype(str),
        "_method": np.full(n, method, dtype=object),
    }


def _prepare(
    trained: TrainedModel,
    source: SpectraSource | SpectralDataset,
    linelist: Table | None,
    labels: Table | None,
    expectation: str,
    resolution: float,
) -> tuple[_Labels, ElementProfiles | None, str]:
    """Check the inputs; return the label reader, the profiles and the line list's origin."""
    if expectation not in EXPECTATIONS:
        raise DataValidationError(f"expectation must be one of {EXPECTATIONS}, got {expectation!r}")
    if not getattr(trained.model, "noise_aware", False):
        raise DataValidationError(
            f"outlier scores need a noise-aware model; {trained.model.kind!r} in "
            f"{trained.path} has none: train a cannon, factor_analysis or latent_flow model"
        )
    label_columns = source.labels.colnames if labels is None else labels.colnames
    check_compatible(trained, source.wavelength, label_columns)
    reader = _Labels(trained.label_names, labels)
    origin = "argument"
    if linelist is None:
        linelist = survey_linelist(source)
        origin = "survey" if linelist is not None else "none"
    if linelist is None:
        logger.warning("no line list: per-element evidence is empty")
        return reader, None, origin
    return reader, element_profiles(source.wavelength, linelist, resolution), origin


def find_outliers(
    trained: TrainedModel,
    source: SpectraSource | SpectralDataset,
    *,
    linelist: Table | None = None,
    labels: Table | None = None,
    n_reference: int = 16,
    chunk_size: int = 256,
    min_good_fraction: float = 0.2,
    expectation: str = "labels",
    resolution: float = 22_500.0,
    seed: int = 0,
    recalibrate: str = "auto",
    rank_by: str = "auto",
    progress: bool | Callable[[int], None] = False,
    parts: str | Path | None = None,
    dist: Distributed | None = None,
) -> Table:
    """Rank every star by the calibrated improbability of its spectrum given its labels.

    Args:
        trained: a noise-aware model loaded with
            :func:`~stellarflow.train.checkpoint.load_model`.
        source: an open survey file or a dataset on the model's grid.
        linelist: canonical line list (:func:`stellarflow.io.linelist.read_linelist`);
            default: the survey's ``linelist`` table, else none (no element evidence).
        labels: a table with ``star_id`` and the model's label columns to use instead of
            the survey's labels (every survey star must be in it).
        n_reference: reference draws per star for a flow prior (ignored when exact).
        chunk_size: stars per chunk (bounds memory).
        min_good_fraction: stars with a smaller usable-pixel fraction are flagged, not scored.
        expectation: "latent_fit" or "labels": what the explanation compares with (module
            docstring).
        resolution: resolving power R of the line profiles (APOGEE: 22,500).
        seed: seed of the reference draws and importance samples (reproducible results for
            a given ``chunk_size``).
        recalibrate: "none" (``p_tail`` under the model), "survey" (a reference
            cross-fitted on the ranked stars themselves: :func:`recalibrate_by_survey`),
            "reference" (the model directory's reference, fitted on the training run's
            validation stars: :mod:`stellarflow.analysis.reference`), "neighbours"
            (among survey stars with similar labels and S/N:
            :func:`recalibrate_by_neighbours`), or "auto" (default): "survey" from
            :data:`SURVEY_REFERENCE_MIN` ranked stars, else "reference" when the model
            directory has one, else "none".
        rank_by: "lines" (``p_lines``: the line list's joint test, how unusual the star's
            lines are together), "omnibus" (``p_tail``: the whole spectrum), "combined"
            (``p_combined``: the most surprising of the whole spectrum, the line-list
            test and the strongest element, Bonferroni), or "auto" (default): "lines" with
            a line list, else "omnibus" (module docstring).
        progress: show a progress bar (True) or call ``progress(n_done)`` per chunk.
        parts: folder of per-chunk part files: makes the scoring resumable and lets the
            processes of a ``torchrun`` job share it
            (:func:`stellarflow.analysis.score.map_chunks`); None: in memory.
        dist: this process's place in a ``torchrun`` job (each scores a contiguous range
            of chunks; every process returns the whole, identical table); None: one process.

    Returns:
        One row per star, ranked stars first (by ``rank``), then the flagged ones in survey
        order: ``rank`` (1 = most improbable; masked when flagged), ``star_id``, the model's
        label columns, ``flag`` (:data:`FLAGS`), ``log_prob`` (nats), ``chi2``, ``dof``,
        ``log_p_tail`` (natural log), ``p_tail``, ``one_in`` (1 / p_tail, inf where p_tail
        underflows), ``log_p_element`` and ``p_element`` (the strongest element's evidence
        as a tail probability, a Bonferroni upper bound; NaN without a line list),
        ``chi2_lines``, ``dof_lines``, ``log_p_lines``, ``p_lines`` and ``z_lines`` (the
        line list's joint test, recalibrated like ``p_tail``; what ``rank`` orders by by
        default), ``z_lines_model`` (its z under the model), ``log_p_combined`` and
        ``p_combined`` (min(1, m min(``p_tail``, ``p_lines``, ``p_element``)) over the m
        tests present, an upper bound), ``z``, ``z_model`` (the model's z, before any
        recalibration),
        ``spread_ratio``, ``snr`` (median S/N per usable pixel), ``supported``, ``support_ratio``,
        ``n_good_pixels``, ``top_element``, ``top_element_direction`` ("enhanced" /
        "depleted"), ``top_evidence`` (signed z-score), ``element_summary`` (the three
        strongest, e.g. ``"Ce:+6.1 Nd:+3.2 Fe:-1.0"``), ``n_unexplained`` and
        ``unexplained_wavelength`` (up to five, vacuum Å). ``meta`` records the
        calibration method, the expectation, the model, the line list and flag counts.

    Raises:
        GridMismatchError, LabelError: spectra on another grid, or labels missing.
        DataValidationError: a model without a noise model, or a bad option.
    """
    if chunk_size < 1:
        raise DataValidationError(f"chunk_size must be >= 1, got {chunk_size}")
    if recalibrate not in RECALIBRATIONS:
        raise DataValidationError(
            f"recalibrate must be one of {RECALIBRATIONS}, got {recalibrate!r}"
        )
    if rank_by not in RANKINGS:
        raise DataValidationError(f"rank_by must be one of {RANKINGS}, got {rank_by!r}")
    if recalibrate == "reference":  # fail before scoring
        _model_reference(trained, required=True)
    reader, profiles, origin = _prepare(trained, source, linelist, labels, expectation, resolution)
    if rank_by == "lines" and profiles is None:
        raise DataValidationError(
            "rank_by='lines' needs a line list with lines on the model's grid: pass one "
            "(stellarflow.io.linelist.read_linelist) or rank by 'omnibus'"
        )
    settings = _Settings(n_reference, min_good_fraction, expectation, resolution, seed)
    manifest = {
        "task": "outliers",
        "columns": 3,  # part files gained the line-list test (parts of older runs are refused)
        "model": str(Path(trained.path).resolve()),
        "source": str(getattr(source, "path", "in-memory dataset")),
        "settings": [n_reference, min_good_fraction, expectation, resolution, seed],
        "linelist": origin,
        "labels": "argument" if labels is not None else "survey",
    }
    columns = map_chunks(
        source,
        chunk_size,
        lambda number, chunk: _chunk_columns(
            trained, chunk, reader(chunk), profiles, settings, chunk_seed(seed, number)
        ),
        parts=parts,
        manifest=manifest,
        dist=dist,
        progress=progress,
        desc="outliers",
    )
    star_id = np.asarray(source.labels[ID_COLUMN]).astype(str)
    table = _rank(_assemble(star_id, columns, trained.label_names), rank_by)
    table.meta["recalibration"] = "none"
    n_ranked = int(np.sum(table["flag"] == ""))
    survey = recalibrate == "survey" or (recalibrate == "auto" and n_ranked >= SURVEY_REFERENCE_MIN)
    if recalibrate == "neighbours":
        table = recalibrate_by_neighbours(table, trained.label_names)
    elif survey:
        table = recalibrate_by_survey(table, trained.label_names, seed=seed)
    elif recalibrate in ("auto", "reference"):
        reference = _model_reference(trained, required=recalibrate == "reference")
        if reference is not None:
            lines = _lines_reference(trained, profiles, expectation)
            table = recalibrate_by_reference(table, reference, lines)
    methods = sorted({m for m in columns["_method"] if m})
    table.meta.update(
        calibration=methods[0] if len(methods) == 1 else ",".join(methods),
        n_reference=n_reference if "reference-chi2" in methods else 0,
        expectation=expectation,
        model=str(trained.path),
        model_kind=str(trained.model.kind),
        label_errors_used=bool(trained.config.label_errors),
        linelist=origin,
        elements=list(profiles.elements) if profiles is not None else [],
        resolution=resolution,
        min_good_fraction=min_good_fraction,
        flag_counts={f or "ranked": int(np.sum(table["flag"] == f)) for f in FLAGS},
    )
    return table


def _assemble(
    star_id: np.ndarray, columns: dict[str, np.ndarray], label_names: Sequence[str]
) -> Table:
    """The output table from the per-star columns (survey order; see :func:`_rank`)."""
    table = Table()
    table[ID_COLUMN] = star_id
    for k, name in enumerate(label_names):
        table[name] = columns["labels"][:, k]
    for name in ("flag", "log_prob", "chi2", "dof", "log_p_tail", "p_tail", "one_in", "z"):
        table[name] = columns[name] if name in columns else np.zeros(star_id.size)
    table["log_prob"].unit = "nat"
    table["z_model"] = columns["z"]
    table["log_p_element"] = columns["log_p_element"]
    for name in ("chi2_lines", "dof_lines", "log_p_lines", "z_lines"):
        table[name] = columns[name]
    table["z_lines_model"] = columns["z_lines"]
    for name in ("spread_ratio", "snr", "supported", "support_ratio", "n_good_pixels",
                 "top_element", "top_element_direction", "top_evidence", "element_summary",
                 "n_unexplained", "unexplained_wavelength"):  # fmt: skip
        table[name] = columns[name]
    table["unexplained_wavelength"].unit = "Angstrom"
    return table


RANK_COLUMNS = {"lines": "log_p_lines", "combined": "log_p_combined", "omnibus": "log_p_tail"}
"""The natural-log tail probability each ranking orders by."""

# each test's model z column, and the tail probability and z a recalibration replaces
_TESTS = {
    "tail": ("z_model", "log_p_tail", "z"),
    "lines": ("z_lines_model", "log_p_lines", "z_lines"),
}


def _has_lines(table: Table) -> bool:
    """Whether the table carries the line-list test (a line list was given)."""
    return "dof_lines" in table.colnames and bool(np.any(np.asarray(table["dof_lines"]) > 0))


def _rank(table: Table, rank_by: str) -> Table:
    """Set the probabilities, ``one_in`` and ``rank`` (by ``rank_by``); ranked rows first."""
    if rank_by == "auto":
        rank_by = "lines" if _has_lines(table) else "omnibus"
    log_p_tail = np.asarray(table["log_p_tail"], dtype=np.float64)
    log_p_lines = np.asarray(table["log_p_lines"], dtype=np.float64)
    log_p_element = np.asarray(table["log_p_element"], dtype=np.float64)
    log_combined = combine_tails(log_p_tail, log_p_lines, log_p_element)
    with np.errstate(over="ignore"):
        table["p_tail"] = np.exp(log_p_tail)
        table["one_in"] = np.exp(-log_p_tail)
        table["p_lines"] = np.exp(log_p_lines)
        table["p_element"] = np.exp(log_p_element)
        table["log_p_combined"] = log_combined
        table["p_combined"] = np.exp(log_combined)
    table.meta["rank_by"] = rank_by
    log_p = np.asarray(table[RANK_COLUMNS[rank_by]], dtype=np.float64)
    ranked = np.asarray(table["flag"]) == ""
    first = np.flatnonzero(ranked)
    first = first[np.argsort(log_p[first], kind="stable")]
    order = np.concatenate([first, np.flatnonzero(~ranked)])
    out = table[order]
    rank = np.zeros(len(out), dtype=np.int64)
    rank[: first.size] = np.arange(1, first.size + 1)
    if "rank" in out.colnames:
        out.remove_column("rank")
    out.add_column(MaskedColumn(rank, mask=np.arange(len(out)) >= first.size), 0, "rank")
    return out


def recalibrate_by_neighbours(
    table: Table, label_names: Sequence[str], n_neighbours: int = 100
) -> Table:
    r"""Empirical recalibration of ``z`` (and ``z_lines``) among survey stars like each one.

    The model's calibration is exact only if the model is right; where it misfits a region
    of label space (the metal-poor tail, the coolest giants) every star there looks
    improbable. This replaces each ranked star's score by its standing among its
    ``n_neighbours`` nearest ranked stars in standardised (labels, log10 S/N) space:
    :math:`z' = (z - \mathrm{median}) / (1.4826\,\mathrm{MAD})` of their ``z_model``
    (robust, so a few outliers among them do not matter), and
    :math:`p_{tail} = \Phi(-z')`: a Gaussian extrapolation of the local null distribution
    (Efron's empirical null), so below ~1/``n_neighbours`` it is an extrapolation.
    ``p_tail`` then means "at least this unusual *among stars like this one in the survey,
    as the model scores them*", no longer "under the model".

    Args:
        table: the output of :func:`find_outliers` (any order).
        label_names: the label columns to match on.
        n_neighbours: stars per neighbourhood.

    Returns:
        A new table, re-ranked; ``z_model`` keeps the model's z, and
        ``meta["recalibration"]`` records the method.
    """
    from scipy import stats
    from scipy.spatial import cKDTree

    ranked = np.flatnonzero(np.asarray(table["flag"]) == "")
    if ranked.size <= n_neighbours:
        raise DataValidationError(
            f"recalibration needs more than {n_neighbours} ranked stars, got {ranked.size}"
        )
    x = coordinates(
        _label_rows(table, label_names, ranked), np.asarray(table["snr"], dtype=np.float64)[ranked]
    )
    spread = stats.median_abs_deviation(x, axis=0, scale="normal")
    x = (x - np.median(x, axis=0)) / np.where(spread > 0, spread, 1.0)
    _, index = cKDTree(x).query(x, k=n_neighbours + 1)
    updates = {}
    for test, (model_column, p_column, _) in _tests_of(table).items():
        z = np.asarray(table[model_column], dtype=np.float64)[ranked]
        z = np.where(np.isfinite(z), z, np.nan)  # no test for this star: not a neighbour
        local = z[index[:, 1:]]
        centre = np.nanmedian(local, axis=1)
        scale = stats.median_abs_deviation(local, axis=1, scale="normal", nan_policy="omit")
        log_p = np.asarray(table[p_column], dtype=np.float64).copy()
        standing = special.log_ndtr(-(z - centre) / np.maximum(scale, 1e-6))
        log_p[ranked] = np.where(np.isnan(z), log_p[ranked], standing)
        updates[test] = log_p
    meta = f"neighbours(k={n_neighbours}; labels + log10 S/N)"
    return _with_log_p(table, ranked, updates, meta)


def recalibrate_by_survey(
    table: Table, label_names: Sequence[str], n_folds: int = 5, seed: int = 0
) -> Table:
    """Recalibrate against references cross-fitted on the ranked stars themselves.

    The ranked stars are dealt into ``n_folds`` folds (a seeded permutation in ``star_id``
    order, so the result does not depend on the table's order); each fold is recalibrated
    by a reference (:func:`~stellarflow.analysis.reference.fit_reference`, robust to the
    few real outliers among them) fitted on the other folds, so no star's ``p_tail`` is
    measured against a reference that contains it. Like :func:`recalibrate_by_neighbours`
    an empirical null among survey stars of similar labels and S/N, but smooth (location,
    scale and tail fitted on thousands of stars instead of 100 neighbours each); below
    ~1/(number of stars) ``p_tail`` is an extrapolation of the fitted Student-t tail. The
    line-list test (``z_lines_model`` -> ``p_lines``, ``z_lines``) is recalibrated the same
    way, with its own references, when the table has it.

    Args:
        table: the output of :func:`find_outliers` (any order).
        label_names: the label columns of the reference.
        n_folds: folds of the cross-fit (>= 2).
        seed: seed of the fold assignment.

    Raises:
        DataValidationError: fewer than ``n_folds`` x 200 ranked stars, or ``n_folds`` < 2.
    """
    if n_folds < 2:
        raise DataValidationError(f"n_folds must be >= 2, got {n_folds}")
    ranked = np.flatnonzero(np.asarray(table["flag"]) == "")
    ranked = ranked[np.argsort(np.asarray(table["star_id"]).astype(str)[ranked], kind="stable")]
    if ranked.size < n_folds * MIN_REFERENCE_STARS:
        raise DataValidationError(
            f"a survey reference needs at least {n_folds * MIN_REFERENCE_STARS} ranked stars "
            f"({n_folds} folds), got {ranked.size}; use recalibrate='reference' or 'none'"
        )
    fold = np.random.default_rng([seed, 11]).permutation(ranked.size) % n_folds
    labels = _label_rows(table, label_names, ranked)
    snr = np.asarray(table["snr"], dtype=np.float64)[ranked]
    updates, shapes = {}, []
    for test, (model_column, p_column, _) in _tests_of(table).items():
        z_model = np.asarray(table[model_column], dtype=np.float64)[ranked]
        tested = np.isfinite(z_model)  # the line-list test: stars with line pixels
        log_p = np.asarray(table[p_column], dtype=np.float64).copy()
        dofs = []
        for f in range(n_folds):
            rest, this = tested & (fold != f), tested & (fold == f)
            if rest.sum() < MIN_REFERENCE_STARS:
                raise DataValidationError(
                    f"a survey reference of the {test} test needs {MIN_REFERENCE_STARS} "
                    f"stars per fold complement, got {int(rest.sum())}"
                )
            reference = fit_reference(z_model[rest], labels[rest], snr[rest], label_names)
            log_p[ranked[this]] = reference.log_p_tail(z_model[this], labels[this], snr[this])
            dofs.append(reference.dof)
        updates[test] = log_p
        shapes.append(f"p_{test} {_shape(float(np.median(dofs)))}")
    meta = (
        f"survey({n_folds}-fold cross-fitted reference over {ranked.size} ranked stars; "
        f"labels + log10 S/N; upper tails {', '.join(shapes)})"
    )
    return _with_log_p(table, ranked, updates, meta)


def _model_reference(trained: TrainedModel, required: bool) -> ReferenceCalibration | None:
    """The model directory's reference (None if it has none and it is not ``required``)."""
    reference = load_reference(trained.path)
    if reference is None and required:
        raise DataValidationError(
            f"{trained.path} has no {REFERENCE_FILE}; retrain it with this version of "
            "stellarflow or use recalibrate='none' or 'neighbours'"
        )
    if reference is not None and reference.label_names != tuple(trained.label_names):
        raise DataValidationError(
            f"the reference in {trained.path} is for labels {list(reference.label_names)}, "
            f"the model for {list(trained.label_names)}: refit it"
        )
    return reference


def _lines_reference(
    trained: TrainedModel, profiles: ElementProfiles | None, expectation: str
) -> ReferenceCalibration | None:
    """The model directory's line-list reference if it was fitted for this very test."""
    if profiles is None:
        return None
    reference = load_reference(trained.path, lines=True)
    if reference is None:
        return None
    if reference.linelist != line_test_fingerprint(profiles, expectation):
        logger.info(
            "p_lines stays under the model: %s's line-list reference was fitted for another "
            "line list, resolution or expectation",
            trained.path,
        )
        return None
    return reference


def _label_rows(table: Table, names: Sequence[str], rows: np.ndarray) -> np.ndarray:
    """`(rows.size, len(names))` float64 labels of the given rows (no names: no columns)."""
    columns = [np.asarray(table[name], dtype=np.float64)[rows] for name in names]
    return np.column_stack(columns) if columns else np.zeros((rows.size, 0))


def _tests_of(table: Table) -> dict[str, tuple[str, str, str]]:
    """The recalibrated tests a table carries: the whole spectrum, and the line list's."""
    return {t: c for t, c in _TESTS.items() if t == "tail" or _has_lines(table)}


def _with_log_p(
    table: Table, ranked: np.ndarray, updates: dict[str, np.ndarray], meta: str
) -> Table:
    """A re-ranked copy with each updated test's log tail probability (and z) replaced.

    ``updates`` maps a test of ``_TESTS`` ("tail", "lines") to its new natural-log tail
    probabilities (all rows; only the ``ranked`` ones change).
    """
    out = table.copy()
    for test, log_p in updates.items():
        _, p_column, z_column = _TESTS[test]
        z_all = np.asarray(out[z_column], dtype=np.float64).copy()
        z_all[ranked] = -special.ndtri_exp(log_p[ranked])
        out[z_column], out[p_column] = z_all, log_p
    out.meta["recalibration"] = meta
    return _rank(out, out.meta.get("rank_by", RANKINGS[0]))


def recalibrate_by_reference(
    table: Table, reference: ReferenceCalibration, lines: ReferenceCalibration | None = None
) -> Table:
    """Recalibrate ``z`` and ``p_tail`` of the ranked stars against a held-out reference.

    Each ranked star's model z (``z_model``) is placed in the reference's distribution at
    its labels and S/N (:mod:`stellarflow.analysis.reference`); ``p_tail`` then means "at
    least this unusual among normal held-out stars like this one, as the model scores
    them", extrapolated along the fitted Student-t tail below ~1/``reference.n_stars``.

    Args:
        table: the output of :func:`find_outliers` (any order).
        reference: from :func:`~stellarflow.analysis.reference.fit_reference` (same labels).
        lines: a reference of the line-list test (``p_lines``, ``z_lines``) fitted the
            same way for the same line list (``stellarflow train`` writes one when its
            survey has a line list); None leaves ``p_lines`` under the model.

    Returns:
        A new table, re-ranked; ``meta["recalibration"]`` records the reference.
    """
    ranked = np.flatnonzero(np.asarray(table["flag"]) == "")
    labels = _label_rows(table, reference.label_names, ranked)
    snr = np.asarray(table["snr"], dtype=np.float64)[ranked]
    references = {"tail": reference}
    note = ""
    if _has_lines(table) and lines is None:
        note = "; line-list test under the model"
    elif _has_lines(table) and lines is not None:
        references["lines"] = lines
        note = f"; line-list test: {lines.n_stars} held-out stars, upper tail {_shape(lines.dof)}"
    updates = {}
    for test, placed_in in references.items():
        model_column, p_column, _ = _TESTS[test]
        z_model = np.asarray(table[model_column], dtype=np.float64)[ranked]
        tested = np.isfinite(z_model)  # the line-list test: stars with line pixels
        log_p = np.asarray(table[p_column], dtype=np.float64).copy()
        log_p[ranked[tested]] = placed_in.log_p_tail(z_model[tested], labels[tested], snr[tested])
        updates[test] = log_p
    meta = (
        f"reference({reference.n_stars} held-out stars; labels + log10 S/N, degree "
        f"{reference.degree}; upper tail {_shape(reference.dof)}{note})"
    )
    return _with_log_p(table, ranked, updates, meta)


def _shape(dof: float) -> str:
    """A reference's upper-tail shape in words."""
    return f"t dof {dof:.3g}" if np.isfinite(dof) else "gaussian"


@dataclass(frozen=True)
class StarExplanation:
    """Everything a per-star figure shows (arrays `(n_pixels,)` unless stated).

    Attributes:
        star_id: the star.
        labels: label name -> value used.
        wavelength: vacuum Å.
        flux, mask: the observed spectrum (mask True = excluded).
        band_mean, band_std: the noise-free spectra's mean and spread at the labels.
        expected, spread: what the residual is taken against, and its spread.
        residual: whitened residual (0 at masked pixels).
        elements: element symbols of ``evidence``.
        evidence: `(n_elements,)` signed z-scores.
        unexplained: `(n_features,)` vacuum Å of features matching no known line.
        profiles: the line profiles (None without a line list).
        model_terms: the star's :class:`Expectation` (arrays with a leading axis of 1),
            to recompute the evidence with other options.
    """

    star_id: str
    labels: dict[str, float]
    wavelength: np.ndarray
    flux: np.ndarray
    mask: np.ndarray
    band_mean: np.ndarray
    band_std: np.ndarray
    expected: np.ndarray
    spread: np.ndarray
    residual: np.ndarray
    elements: tuple[str, ...]
    evidence: np.ndarray
    unexplained: np.ndarray
    profiles: ElementProfiles | None
    model_terms: Expectation


def explain_stars(
    trained: TrainedModel,
    source: SpectraSource | SpectralDataset,
    star_ids: Sequence[str],
    *,
    linelist: Table | None = None,
    labels: Table | None = None,
    expectation: str = "labels",
    resolution: float = 22_500.0,
    seed: int = 0,
) -> list[StarExplanation]:
    """The detail behind a few stars' explanations (for figures), as in :func:`find_outliers`.

    Args:
        trained, source, linelist, labels, expectation, resolution, seed: as for
            :func:`find_outliers`.
        star_ids: the stars, e.g. the top rows of its table.

    Returns:
        One :class:`StarExplanation` per star, in the order given.

    Raises:
        LabelError: a star id that is not in the survey.
    """
    reader, profiles, _ = _prepare(trained, source, linelist, labels, expectation, resolution)
    row_of = {str(s): i for i, s in enumerate(np.asarray(source.labels[ID_COLUMN]))}
    unknown = [s for s in star_ids if str(s) not in row_of]
    if unknown:
        raise LabelError(f"stars {unknown[:3]} are not in the survey; use ids from its table")
    model = trained.model
    param = next(model.parameters())
    out = []
    for star in star_ids:
        row = row_of[str(star)]
        chunk = source.read(row, row + 1)
        values = reader(chunk)
        context = None
        if trained.label_names:
            context = torch.as_tensor(values, dtype=param.dtype, device=param.device)
        flux, ivar = (
            torch.as_tensor(a, dtype=param.dtype, device=param.device)
            for a in (chunk.flux, chunk.ivar)
        )
        generator = torch.Generator(device=param.device).manual_seed(seed)
        band_mean, band_std = conditional_band(model, context, 1, generator=generator)
        expected = model_expectation(model, flux, ivar, context, expectation, generator)
        residual, tests, features = _explain(
            chunk.flux, chunk.mask, expected, chunk.wavelength, profiles, resolution
        )
        out.append(
            StarExplanation(
                star_id=str(star),
                labels={n: float(v) for n, v in zip(trained.label_names, values[0], strict=True)},
                wavelength=chunk.wavelength,
                flux=chunk.flux[0],
                mask=chunk.mask[0],
                band_mean=band_mean[0].double().cpu().numpy(),
                band_std=band_std[0].double().cpu().numpy(),
                expected=expected.expected[0],
                spread=expected.spread[0],
                residual=residual[0],
                elements=() if profiles is None else profiles.elements,
                evidence=tests.evidence[0],
                unexplained=features[0],
                profiles=profiles,
                model_terms=expected,
            )
        )
    return out
