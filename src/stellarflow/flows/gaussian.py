r"""Gaussian baselines: The Cannon and conditional factor analysis (exact likelihoods).

Both live in standardised pixel units :math:`u = (x - m)/s` with a quadratic-in-labels mean
:math:`\mu(l) = a(l)^T \Theta` (:math:`a = [1, l_i, l_i l_j]`, standardised labels l) and a
learned intrinsic variance :math:`\tau_i^2 = e^{\eta_i} + \tau_{min}^2` per pixel.

* :class:`CannonModel`:
  :math:`\log p(x_O | c) = \sum_{i \in O} \log N(x_i;\ m_i + s_i \mu_i,\ s_i^2 \tau_i^2 +
  1/\mathrm{ivar}_i)`.
* :class:`FactorAnalysisModel`: :math:`u = \mu + W(l) z + \epsilon`, :math:`z \sim N(0, I_k)`,
  so :math:`x_O \sim N(m_O + s_O \mu_O,\ S (W W^T + \mathrm{diag}(\tau^2))S +
  \mathrm{diag}(1/\mathrm{ivar}))_O`, evaluated by Woodbury and the matrix determinant lemma
  in :math:`O(|O| k^2)` per star.

:class:`LinearGaussianModel` holds what factor analysis shares with the latent-flow model
(:mod:`stellarflow.flows.latent`): the mean, the loading :math:`W(l) = W_0 + \sum_j l_j W_j`
(label-dependent terms optional), the intrinsic variance, the warm start, the posterior
prediction and the covariance factors.

**Label errors** (``context_err``, optional everywhere a context is taken): measured labels
:math:`\hat l = l + \delta`, :math:`\delta \sim N(0, \mathrm{diag}\,\sigma_l^2)` (standardised
units, :math:`\sigma_l` = error / label scale). Linearising the mean,
:math:`\mu(l) \approx \mu(\hat l) + J(\hat l)(l - \hat l)` with :math:`J = \partial\mu/\partial l`
(:meth:`~stellarflow.flows.base.QuadraticMean.jacobian`), and writing
:math:`l = \hat l + \sigma_l \odot e`, :math:`e \sim N(0, I_L)`, the labels' errors are L
extra Gaussian latent coordinates with loading columns :math:`J\,\mathrm{diag}(\sigma_l)`:

.. math:: u = \mu(\hat l) + [W(\hat l),\ J(\hat l)\,\mathrm{diag}\,\sigma_l]\,[z; e]
          + \epsilon,

still low rank plus diagonal, so the exact (Woodbury) likelihood, masked pixels, the
posterior and sampling are unchanged in form; for factor analysis the covariance gains
:math:`S J \Sigma_l J^T S`. Neglected: the curvature of :math:`\mu` over the error ellipse
and, with label-dependent loadings, the product :math:`(\partial W/\partial l)\,\delta\, z`.
Temperature does not scale label errors (they are measurement errors, like the noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from stellarflow.flows._checks import FlowInputError, check_flux, check_temperature
from stellarflow.flows.base import QuadraticMean, SpectralModel, check_positive, in_row_blocks
from stellarflow.flows.distributions import (
    DiagonalGaussianSpectra,
    LatentGaussianSpectra,
    LatentPrior,
)
from stellarflow.flows.linear_gaussian import n_quadratic_terms, quadratic_features
from stellarflow.flows.results import CovarianceFactors, PosteriorPrediction
from stellarflow.flows.warm_start import linear_gaussian_warm_start

__all__ = [
    "CannonConfig",
    "CannonModel",
    "FactorAnalysisConfig",
    "FactorAnalysisModel",
    "LinearGaussianModel",
    "label_error_loading",
]


def label_error_loading(
    mean: QuadraticMean, labels: Tensor, err_std: Tensor, temperature: float
) -> Tensor:
    r"""Loading columns of the labels' errors, :math:`J(\hat l)\,\mathrm{diag}(\sigma_l) / T`.

    The distributions give every latent coordinate the tempered prior :math:`N(0, T^2)`;
    dividing by T keeps the label errors untempered (module docstring).

    Args:
        mean: the model's mean :math:`\mu(l)`.
        labels: `(*batch, L)` measured labels :math:`\hat l`, standardised.
        err_std: `(*batch, L)` their one-sigma errors :math:`\sigma_l`, standardised units.
        temperature: T.

    Returns:
        `(*batch, n_pixels, L)`, standardised flux units.
    """
    return mean.jacobian(labels) * (err_std / temperature)[..., None, :]


@dataclass(frozen=True)
class CannonConfig:
    """Options of :class:`CannonModel` (see there)."""

    n_pixels: int
    n_context: int
    var_floor: float = 1e-6

    def __post_init__(self) -> None:
        check_positive("n_pixels", self.n_pixels)
        check_positive("n_context", self.n_context, allow_zero=True)
        check_positive("var_floor", self.var_floor, allow_zero=True)


def _warm_start(
    model: SpectralModel,
    mean: QuadraticMean,
    flux: Tensor,
    ivar: Tensor | None,
    context: Tensor | None,
    n_latent: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Set buffers and the quadratic mean; return the warm-start W and tau^2 (float64)."""
    model.set_standardization(flux, ivar, context)
    u, ivar_std = model.standardized(flux, ivar)
    labels = model.standardize_context(context)
    features = quadratic_features(labels, u).expand(u.shape[0], -1)
    if mean.mlp is not None:
        u = u - mean.mlp(labels)
    start = linear_gaussian_warm_start(u, ivar_std, features, n_latent, generator=generator)
    mean.theta.copy_(start.theta)
    return start.loading, start.intrinsic_var


class CannonModel(SpectralModel):
    r"""The Cannon: independent Gaussian pixels, mean quadratic in the labels.

    .. math:: x_i | c \sim N\big(m_i + s_i\, a(l)^T \Theta_{\cdot i},\
              s_i^2 (e^{\eta_i} + \tau_{min}^2) + 1/\mathrm{ivar}_i\big)

    Exact ``log_prob``; masked pixels drop out. Parameters: :math:`\Theta`
    `(n_terms, n_pixels)` and :math:`\eta` `(n_pixels,)` (``log_intrinsic_var``), i.e.
    ``(n_terms + 1) * n_pixels``: 82,654 at 7,514 pixels and 3 labels.

    Args:
        n_pixels: number of pixels.
        n_context: number of labels (0: unconditional).
        var_floor: :math:`\tau_{min}^2`, standardised units.
    """

    kind = "cannon"

    def __init__(self, n_pixels: int, n_context: int, var_floor: float = 1e-6) -> None:
        super().__init__(n_pixels, n_context)
        self.options = CannonConfig(n_pixels, n_context, var_floor)
        self.mean = QuadraticMean(n_pixels, n_context)
        self.log_intrinsic_var = nn.Parameter(torch.zeros(n_pixels))

    def intrinsic_var(self) -> Tensor:
        r""":math:`\tau^2` `(n_pixels,)`, standardised units."""
        return self.log_intrinsic_var.exp() + self.options.var_floor

    def forward(
        self,
        context: Tensor | None = None,
        ivar: Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        context_err: Tensor | None = None,
    ) -> DiagonalGaussianSpectra | LatentGaussianSpectra:
        r"""p(flux | context), of observed spectra when ``ivar`` is given.

        Args:
            context: `(n_stars, n_context)` labels in physical units; None if unconditional.
            ivar: `(n_stars, n_pixels)`, 1 / flux units squared, 0 = masked; None gives the
                noise-free (intrinsic) spectra.
            temperature: T, scales the intrinsic standard deviation (not the noise).
            generator: default random source for sampling.
            context_err: `(n_stars, n_context)` one-sigma label errors, physical units,
                finite and >= 0, or None (exact labels). When given, the labels' errors
                become L latent coordinates (module docstring): the pixels are correlated
                through :math:`J \Sigma_l J^T`, ``log_prob`` stays exact, and samples are
                spectra of stars whose true labels scatter around ``context`` by those errors.

        Returns:
            A :class:`DiagonalGaussianSpectra` (exact ``log_prob``), or with ``context_err`` a
            :class:`LatentGaussianSpectra` (exact) whose latent vector is :math:`T e`.
        """
        context, ivar = self._check_inputs(context, ivar)
        self._check_context_err(context_err, context)
        temperature = check_temperature(temperature)
        labels = self.standardize_context(context)
        mu = self.mean(labels)
        if context_err is not None and labels is not None:
            err_std = self.standardize_context_err(context_err)
            return LatentGaussianSpectra(
                self.flux_loc,
                self.flux_scale,
                mu,
                label_error_loading(self.mean, labels, err_std, temperature),
                self.intrinsic_var(),
                ivar,
                temperature=temperature,
                generator=generator,
                n_label_errors=err_std.shape[-1],
            )
        loc = self.flux_loc + self.flux_scale * mu
        scale = self.flux_scale * self.intrinsic_var().sqrt()
        return DiagonalGaussianSpectra(loc, scale, ivar, temperature, generator)

    def posterior_mean(
        self,
        flux: Tensor,
        ivar: Tensor | None,
        context: Tensor | None,
        context_err: Tensor | None = None,
    ) -> PosteriorPrediction:
        r"""Posterior of each star's noise-free spectrum; see :class:`PosteriorPrediction`.

        With ``context_err`` (label errors, physical units) the latent results are those of
        the L label-error coordinates :math:`e`: true labels
        :math:`l \approx \hat l + \sigma_l \odot e` (standardised); without, they are empty.
        """
        dist = self(context, ivar=ivar, context_err=context_err)
        check_flux(flux, self.n_pixels, self.flux_loc, dist._noise.observed)
        return dist.posterior(flux)

    @torch.no_grad()
    def initialize_from_data(
        self,
        flux: Tensor,
        ivar: Tensor | None,
        context: Tensor | None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Standardisation buffers, then the weighted least-squares mean and its scatter."""
        _, tau2 = _warm_start(self, self.mean, flux, ivar, context, 0, generator)
        self.log_intrinsic_var.copy_(torch.log(tau2))


@dataclass(frozen=True)
class FactorAnalysisConfig:
    """Options of :class:`FactorAnalysisModel` (see there)."""

    n_pixels: int
    n_context: int
    n_latent: int = 8
    label_dependent_loading: bool = False
    var_floor: float = 1e-6
    mean_hidden: int = 0
    label_dependent_variance: bool = False
    loading_degree: int = 1

    def __post_init__(self) -> None:
        check_loading_degree(self.loading_degree)
        check_positive("n_pixels", self.n_pixels)
        check_positive("n_context", self.n_context, allow_zero=True)
        check_positive("n_latent", self.n_latent)
        check_positive("var_floor", self.var_floor, allow_zero=True)
        check_positive("mean_hidden", self.mean_hidden, allow_zero=True)
        if self.n_latent > self.n_pixels:
            raise FlowInputError(
                f"n_latent ({self.n_latent}) must not exceed n_pixels ({self.n_pixels})"
            )


def check_loading_degree(degree: int) -> None:
    """Raise :class:`FlowInputError` unless the loadings' label polynomial degree is 1 or 2."""
    if degree not in (1, 2):
        raise FlowInputError(f"loading_degree must be 1 (linear) or 2 (quadratic), got {degree}")


class LinearGaussianModel(SpectralModel):
    r"""Shared machinery of models :math:`u = \mu(l) + W(l) z + \epsilon` (abstract).

    Parameters: ``mean`` (:class:`QuadraticMean`), ``loading`` :math:`W_0` `(n_pixels, k)`,
    optional ``loading_slopes`` :math:`W_j` `(n_context, n_pixels, k)` so that
    :math:`W(l) = W_0 + \sum_j l_j W_j` (line responses that change with Teff), with
    ``loading_degree`` 2 also ``loading_curvature`` :math:`W_{ij}` `(L (L + 1) / 2, n_pixels,
    k)` adding :math:`\sum_{i \le j} l_i l_j W_{ij}`, and
    ``log_intrinsic_var`` :math:`\eta`, :math:`\tau^2 = e^\eta + \tau_{min}^2`.

    With ``label_dependent_variance``, the amount of scatter at fixed labels may change with
    the labels (in the mock, as in the Galaxy, metal-poor and metal-rich giants scatter more
    than solar ones): with :math:`a'(l)` the quadratic features without the constant,
    ``latent_scale_slopes`` :math:`A` `(n_terms - 1, k)` and ``intrinsic_var_slopes``
    :math:`B` `(n_terms - 1, n_pixels)`,

    .. math:: W(l) \to W(l)\, \mathrm{diag}\, e^{a'(l) A}, \qquad
              \tau^2(l) = e^{\eta + a'(l) B} + \tau_{min}^2 .

    Both start at zero (the label-independent model) and the likelihood stays exact.
    Subclasses supply the prior on z through :meth:`_prior`.
    """

    def _build_linear(
        self,
        n_latent: int,
        label_dependent: bool,
        mean_hidden: int = 0,
        label_dependent_variance: bool = False,
        loading_degree: int = 1,
    ) -> None:
        p, n_context = self.n_pixels, self.n_context
        self.mean = QuadraticMean(p, n_context, mean_hidden)
        self.loading = nn.Parameter(torch.randn(p, n_latent) / math.sqrt(p))
        self.loading_slopes: nn.Parameter | None = None
        self.loading_curvature: nn.Parameter | None = None
        if label_dependent and n_context > 0:
            self.loading_slopes = nn.Parameter(torch.zeros(n_context, p, n_latent))
            if loading_degree == 2:
                n_pairs = n_context * (n_context + 1) // 2
                self.loading_curvature = nn.Parameter(torch.zeros(n_pairs, p, n_latent))
        self.log_intrinsic_var = nn.Parameter(torch.zeros(p))
        self.latent_scale_slopes: nn.Parameter | None = None
        self.intrinsic_var_slopes: nn.Parameter | None = None
        if label_dependent_variance and n_context > 0:
            n_terms = n_quadratic_terms(n_context) - 1
            self.latent_scale_slopes = nn.Parameter(torch.zeros(n_terms, n_latent))
            self.intrinsic_var_slopes = nn.Parameter(torch.zeros(n_terms, p))
        # the fitted mean coefficients' own uncertainty (set by the ECM fit; empty = none)
        self.register_buffer("mean_coef_var", torch.zeros(0))

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # the estimate's shape comes from the checkpoint; checkpoints from before it (or
        # without one) load unchanged and leave the model without an estimate
        key = prefix + "mean_coef_var"
        shape = state_dict[key].shape if key in state_dict else (0,)
        self.mean_coef_var = self.mean_coef_var.new_zeros(shape)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if key in missing_keys:
            missing_keys.remove(key)

    def drop_estimation_var(self) -> bool:
        """Forget the stored estimate (a refit makes it stale); whether there was one."""
        had = self.mean_coef_var.numel() > 0
        self.mean_coef_var = self.mean_coef_var.new_zeros(0)
        return had

    def estimation_var(self, labels: Tensor | None = None) -> Tensor | None:
        r"""The prediction's variance from the fitted mean's uncertainty, or None.

        Per pixel :math:`v_p(l) = a(l)^T \Sigma_p a(l)`, the variance of the fitted mean
        :math:`\hat\mu_p(l)` with :math:`\Sigma_p` = ``mean_coef_var`` `(n_pixels,
        n_terms, n_terms)`, the mean block of the inverse per-pixel information of the ECM
        fit (:func:`stellarflow.flows.polish.estimate_coefficient_variance`). A held-out
        star differs from a plug-in model's mean by the truth's residual *and* the fit's
        error, so its predictive distribution is wider than the plug-in one: with 10
        coefficients per pixel from 10^4 stars, a fraction of a per cent of a high-S/N
        star's variance, which over thousands of pixels moves its chi-square by several
        units (session 8, issue 3). The loadings' own error is left out, measured: on a
        small factor-analysis toy it is real (tests/flows/test_polish.py: the held-out
        chi-square excess 2.3 falls to 1.3 with the mean's part, 0.7 with both), but on the
        full-size mock with label-dependent loadings and scales adding it made the
        held-out likelihood worse (all test stars 0.0130 -> 0.0144 nats/pixel from the
        oracle at k = 16) by making stars in sparse corners of label space (metal-poor
        dwarfs, where the loadings' label terms extrapolate) thousands of nats less
        probable, and over-corrected high-S/N stars; the mean's part alone improved every
        held-out measure there. None until estimated.

        Args:
            labels: `(*batch, n_context)` standardised labels, or None.

        Returns:
            `(*batch, n_pixels)` or `(n_pixels,)` in standardised units, like
            :meth:`intrinsic_var`; None when the model carries no estimate.
        """
        if self.mean_coef_var.numel() == 0:
            return None
        features = quadratic_features(labels, self.mean_coef_var)
        outer = (features[..., :, None] * features[..., None, :]).flatten(-2)  # a (x) a
        return outer @ self.mean_coef_var.flatten(1).T  # one matrix product per block

    def predictive_var(self, labels: Tensor | None = None) -> Tensor:
        """:meth:`intrinsic_var` plus :meth:`estimation_var` (when estimated)."""
        var = self.intrinsic_var(labels)
        extra = self.estimation_var(labels)
        return var if extra is None else var + extra

    def intrinsic_var(self, labels: Tensor | None = None) -> Tensor:
        r""":math:`\tau^2(l)`: `(n_pixels,)`, or `(*batch, n_pixels)` if label-dependent.

        Args:
            labels: `(*batch, n_context)` standardised labels, or None.
        """
        log_var = self.log_intrinsic_var
        if self.intrinsic_var_slopes is not None and labels is not None:
            log_var = log_var + quadratic_features(labels, labels)[..., 1:] @ (
                self.intrinsic_var_slopes
            )
        return log_var.exp() + self.options.var_floor

    def loading_at(self, labels: Tensor | None) -> Tensor:
        """:math:`W(l)`: `(n_pixels, k)`, or `(*batch, n_pixels, k)` if label-dependent."""
        loading = self.loading
        if labels is None:
            return loading
        features = quadratic_features(labels, labels)[..., 1:]  # [l_i, l_i l_j (i <= j)]
        if self.loading_slopes is not None:
            loading = loading + torch.tensordot(labels, self.loading_slopes, dims=([-1], [0]))
        if self.loading_curvature is not None:
            pairs = features[..., self.n_context :]
            loading = loading + torch.tensordot(pairs, self.loading_curvature, dims=([-1], [0]))
        if self.latent_scale_slopes is not None:
            loading = loading * torch.exp(features @ self.latent_scale_slopes)[..., None, :]
        return loading

    def _per_star_columns(self, label_errors: bool) -> int:
        """The per-star loading's columns when W depends on the labels or on label errors."""
        per_star = self.loading_slopes is not None or self.latent_scale_slopes is not None
        if not (per_star or (label_errors and self.n_context)):
            return 0
        return self.loading.shape[-1] + (self.n_context if label_errors else 0)

    def _prior(
        self, labels: Tensor | None, temperature: float, n_errors: int = 0
    ) -> LatentPrior | None:
        """The tempered prior of z (None: N(0, T^2 I)), of ``[z; T e]`` if ``n_errors`` > 0."""
        return None

    def _distribution_options(self, temperature: float, n_errors: int = 0) -> dict[str, Any]:
        return {}

    def forward(
        self,
        context: Tensor | None = None,
        ivar: Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        context_err: Tensor | None = None,
    ) -> LatentGaussianSpectra:
        r"""p(flux | context), of observed spectra when ``ivar`` is given.

        Args:
            context: `(n_stars, n_context)` labels in physical units; None if unconditional.
            ivar: `(n_stars, n_pixels)`, 1 / flux units squared, 0 = masked; None gives the
                noise-free (intrinsic) spectra.
            temperature: T, scales the latent base Gaussian's and the intrinsic standard
                deviations (not the noise, nor the label errors).
            generator: default random source for sampling (and importance draws).
            context_err: `(n_stars, n_context)` one-sigma label errors, physical units,
                finite and >= 0, or None (exact labels). When given, the latent vector is
                :math:`[z; T e]` (k + n_context coordinates, module docstring) with loading
                :math:`[W, J\,\mathrm{diag}(\sigma_l)/T]`: ``log_prob`` marginalises over
                the true labels (exact for factor analysis), and samples are spectra of
                stars whose true labels scatter around ``context`` by those errors.

        Returns:
            A :class:`LatentGaussianSpectra`.
        """
        context, ivar = self._check_inputs(context, ivar)
        self._check_context_err(context_err, context)
        temperature = check_temperature(temperature)
        labels = self.standardize_context(context)
        loading = self.loading_at(labels)
        n_errors = 0
        if context_err is not None and labels is not None:
            err_std = self.standardize_context_err(context_err)
            extra = label_error_loading(self.mean, labels, err_std, temperature)
            loading = loading.expand(*extra.shape[:-1], loading.shape[-1])
            loading = torch.cat([loading, extra], dim=-1)
            n_errors = extra.shape[-1]
        prior = self._prior(labels, temperature, n_errors)
        return LatentGaussianSpectra(
            self.flux_loc,
            self.flux_scale,
            self.mean(labels),
            loading,
            self.predictive_var(labels),
            ivar,
            prior=prior,
            temperature=temperature,
            generator=generator,
            n_label_errors=n_errors,
            **self._distribution_options(temperature, n_errors),
        )

    def posterior_mean(
        self,
        flux: Tensor,
        ivar: Tensor | None,
        context: Tensor | None,
        generator: torch.Generator | None = None,
        context_err: Tensor | None = None,
    ) -> PosteriorPrediction:
        r"""E[x | x_obs, c] and the predicted per-pixel spread; see :class:`PosteriorPrediction`.

        Args:
            flux: `(n_stars, n_pixels)`, continuum-normalised; anything at masked pixels.
            ivar: `(n_stars, n_pixels)`, 1 / flux units squared, 0 = masked, or None.
            context: `(n_stars, n_context)` labels, physical units, or None.
            generator: random source of the importance draws (flow prior only).
            context_err: `(n_stars, n_context)` label errors, physical units, or None. When
                given, ``latent_mean``/``latent_cov`` have k + n_context coordinates
                :math:`[z; e]`: the last ones give the true labels'
                posterior, :math:`l \approx \hat l + \sigma_l \odot e` (standardised).
        """

        def evaluate(flux: Tensor, ivar: Tensor | None, context: Tensor | None, err: Any) -> Any:
            dist = self(context, ivar=ivar, generator=generator, context_err=err)
            check_flux(flux, self.n_pixels, self.flux_loc, dist._noise.observed)
            return dist.posterior(flux)

        rows = self.block_rows(context_err is not None, torch.is_grad_enabled())
        return in_row_blocks(evaluate, rows, flux, ivar, context, context_err)

    def _latent_moments(
        self,
        labels: Tensor | None,
        temperature: float,
        n_samples: int,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        """E[z | c] `(*batch, k)` and Cov[z | c] `(*batch, k, k)` of the (tempered) prior."""
        k = self.loading.shape[-1]
        batch = () if labels is None else labels.shape[:-1]
        cov = temperature**2 * torch.eye(k, dtype=self.loading.dtype, device=self.loading.device)
        return self.loading.new_zeros((*batch, k)), cov.expand(*batch, k, k)

    @torch.no_grad()
    def covariance(
        self,
        context: Tensor | None = None,
        temperature: float = 1.0,
        n_samples: int = 4096,
        generator: torch.Generator | None = None,
    ) -> CovarianceFactors:
        """Factors of :math:`Cov[x | c]` of the noise-free spectra (DESIGN-NOTES 4).

        Args:
            context: `(n_stars, n_context)` labels in physical units, or None.
            temperature: T.
            n_samples: draws of z per star for a flow prior (ignored when exact).
            generator: random source of those draws.

        Returns:
            :class:`CovarianceFactors` in flux units.
        """
        context, _ = self._check_inputs(context, None)
        temperature = check_temperature(temperature)
        labels = self.standardize_context(context)
        mean, cov = self._latent_moments(labels, temperature, n_samples, generator)
        loading = self.flux_scale[:, None] * self.loading_at(labels)
        loading = loading.expand(mean.shape[:-1] + loading.shape[-2:])
        var = self.flux_scale**2 * temperature**2 * self.intrinsic_var(labels)
        used = 0 if self._prior(labels, temperature) is None else n_samples
        return CovarianceFactors(loading, cov, mean, var, used)

    @torch.no_grad()
    def initialize_from_data(
        self,
        flux: Tensor,
        ivar: Tensor | None,
        context: Tensor | None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Buffers, least-squares mean, then probabilistic PCA for W and tau^2.

        Args:
            flux: `(n_stars, n_pixels)`, continuum-normalised; anything at masked pixels.
            ivar: `(n_stars, n_pixels)`, 1 / flux units squared, 0 = masked, or None.
            context: `(n_stars, n_context)` labels, physical units, or None.
            generator: random start of the PCA's subspace iteration.
        """
        k = self.loading.shape[-1]
        loading, tau2 = _warm_start(self, self.mean, flux, ivar, context, k, generator)
        self.loading.copy_(loading)
        for slopes in (
            self.loading_slopes,
            self.loading_curvature,
            self.latent_scale_slopes,
            self.intrinsic_var_slopes,
        ):
            if slopes is not None:
                slopes.zero_()
        self.log_intrinsic_var.copy_(torch.log(tau2))


class FactorAnalysisModel(LinearGaussianModel):
    r"""Conditional factor analysis: :math:`u = \mu(l) + W(l) z + \epsilon`, :math:`z \sim N(0, I)`.

    .. math:: x_O | c \sim N\big(m_O + s_O \mu_O,\ [S (W W^T + \mathrm{diag}\,\tau^2) S
              + \mathrm{diag}(1/\mathrm{ivar})]_{OO}\big)

    ``log_prob`` is exact (Woodbury and the matrix determinant lemma, DESIGN-NOTES 2b with a
    Gaussian prior), :math:`O(|O| k^2)` per star; masked pixels are marginalised exactly.
    Parameters at 7,514 pixels, 3 labels, k = 8: 142,766 (plus 180,336 with
    ``label_dependent_loading``).

    Args:
        n_pixels: number of pixels.
        n_context: number of labels (0: unconditional).
        n_latent: k.
        label_dependent_loading: use :math:`W(l) = W_0 + \sum_j l_j W_j`.
        var_floor: :math:`\tau_{min}^2`, standardised units.
        mean_hidden: width of an MLP residual on the quadratic mean (0: none). A mean that
            is too rigid for the labels' effect pushes the misfit into W z, which then
            reads as scatter at fixed labels (docs/design.md, noise-aware likelihood).
        label_dependent_variance: let the latent scales and the per-pixel intrinsic
            variance change with the labels (log-quadratic; see
            :class:`LinearGaussianModel`).
        loading_degree: 1: W(l) linear in the labels; 2: quadratic (with
            ``label_dependent_loading``; the extra terms start at zero, so a degree-1 model
            loaded by ``init_from`` is where training starts).
    """

    kind = "factor_analysis"

    def __init__(
        self,
        n_pixels: int,
        n_context: int,
        n_latent: int = 8,
        label_dependent_loading: bool = False,
        var_floor: float = 1e-6,
        mean_hidden: int = 0,
        label_dependent_variance: bool = False,
        loading_degree: int = 1,
    ) -> None:
        super().__init__(n_pixels, n_context)
        self.options = FactorAnalysisConfig(
            n_pixels,
            n_context,
            n_latent,
            label_dependent_loading,
            var_floor,
            mean_hidden,
            label_dependent_variance,
            loading_degree,
        )
        self._build_linear(
            n_latent, label_dependent_loading, mean_hidden, label_dependent_variance, loading_degree
        )
