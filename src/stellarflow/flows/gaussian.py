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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from stellarflow.flows._checks import FlowInputError, check_flux, check_temperature
from stellarflow.flows.base import QuadraticMean, SpectralModel, check_positive
from stellarflow.flows.distributions import (
    DiagonalGaussianSpectra,
    LatentGaussianSpectra,
    LatentPrior,
)
from stellarflow.flows.linear_gaussian import quadratic_features
from stellarflow.flows.results import CovarianceFactors, PosteriorPrediction
from stellarflow.flows.warm_start import linear_gaussian_warm_start

__all__ = [
    "CannonConfig",
    "CannonModel",
    "FactorAnalysisConfig",
    "FactorAnalysisModel",
    "LinearGaussianModel",
]


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
    ) -> DiagonalGaussianSpectra:
        """p(flux | context), of observed spectra when ``ivar`` is given.

        Args:
            context: `(n_stars, n_context)` labels in physical units; None if unconditional.
            ivar: `(n_stars, n_pixels)`, 1 / flux units squared, 0 = masked; None gives the
                noise-free (intrinsic) spectra.
            temperature: T, scales the intrinsic standard deviation (not the noise).
            generator: default random source for sampling.

        Returns:
            A :class:`DiagonalGaussianSpectra` (exact ``log_prob``).
        """
        context, ivar = self._check_inputs(context, ivar)
        temperature = check_temperature(temperature)
        mu = self.mean(self.standardize_context(context))
        loc = self.flux_loc + self.flux_scale * mu
        scale = self.flux_scale * self.intrinsic_var().sqrt()
        return DiagonalGaussianSpectra(loc, scale, ivar, temperature, generator)

    def posterior_mean(
        self, flux: Tensor, ivar: Tensor | None, context: Tensor | None
    ) -> PosteriorPrediction:
        """Posterior of each star's noise-free spectrum; see :class:`PosteriorPrediction`."""
        dist = self(context, ivar=ivar)
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

    def __post_init__(self) -> None:
        check_positive("n_pixels", self.n_pixels)
        check_positive("n_context", self.n_context, allow_zero=True)
        check_positive("n_latent", self.n_latent)
        check_positive("var_floor", self.var_floor, allow_zero=True)
        if self.n_latent > self.n_pixels:
            raise FlowInputError(
                f"n_latent ({self.n_latent}) must not exceed n_pixels ({self.n_pixels})"
            )


class LinearGaussianModel(SpectralModel):
    r"""Shared machinery of models :math:`u = \mu(l) + W(l) z + \epsilon` (abstract).

    Parameters: ``mean`` (:class:`QuadraticMean`), ``loading`` :math:`W_0` `(n_pixels, k)`,
    optional ``loading_slopes`` :math:`W_j` `(n_context, n_pixels, k)` so that
    :math:`W(l) = W_0 + \sum_j l_j W_j` (line responses that change with Teff), and
    ``log_intrinsic_var`` :math:`\eta`, :math:`\tau^2 = e^\eta + \tau_{min}^2`.
    Subclasses supply the prior on z through :meth:`_prior`.
    """

    def _build_linear(self, n_latent: int, label_dependent: bool, mean_hidden: int = 0) -> None:
        p, n_context = self.n_pixels, self.n_context
        self.mean = QuadraticMean(p, n_context, mean_hidden)
        self.loading = nn.Parameter(torch.randn(p, n_latent) / math.sqrt(p))
        self.loading_slopes: nn.Parameter | None = None
        if label_dependent and n_context > 0:
            self.loading_slopes = nn.Parameter(torch.zeros(n_context, p, n_latent))
        self.log_intrinsic_var = nn.Parameter(torch.zeros(p))

    def intrinsic_var(self) -> Tensor:
        r""":math:`\tau^2` `(n_pixels,)`, standardised units."""
        return self.log_intrinsic_var.exp() + self.options.var_floor

    def loading_at(self, labels: Tensor | None) -> Tensor:
        """:math:`W(l)`: `(n_pixels, k)`, or `(*batch, n_pixels, k)` if label-dependent."""
        if self.loading_slopes is None or labels is None:
            return self.loading
        slopes = torch.tensordot(labels, self.loading_slopes, dims=([-1], [0]))
        return self.loading + slopes

    def _prior(self, labels: Tensor | None, temperature: float) -> LatentPrior | None:
        return None

    def _distribution_options(self, temperature: float) -> dict[str, Any]:
        return {}

    def forward(
        self,
        context: Tensor | None = None,
        ivar: Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> LatentGaussianSpectra:
        """p(flux | context), of observed spectra when ``ivar`` is given.

        Args:
            context: `(n_stars, n_context)` labels in physical units; None if unconditional.
            ivar: `(n_stars, n_pixels)`, 1 / flux units squared, 0 = masked; None gives the
                noise-free (intrinsic) spectra.
            temperature: T, scales the latent base Gaussian's and the intrinsic standard
                deviations (not the noise).
            generator: default random source for sampling (and importance draws).

        Returns:
            A :class:`LatentGaussianSpectra`.
        """
        context, ivar = self._check_inputs(context, ivar)
        temperature = check_temperature(temperature)
        labels = self.standardize_context(context)
        prior = self._prior(labels, temperature)
        return LatentGaussianSpectra(
            self.flux_loc,
            self.flux_scale,
            self.mean(labels),
            self.loading_at(labels),
            self.intrinsic_var(),
            ivar,
            prior=prior,
            temperature=temperature,
            generator=generator,
            **self._distribution_options(temperature),
        )

    def posterior_mean(
        self,
        flux: Tensor,
        ivar: Tensor | None,
        context: Tensor | None,
        generator: torch.Generator | None = None,
    ) -> PosteriorPrediction:
        """E[x | x_obs, c] and the predicted per-pixel spread; see :class:`PosteriorPrediction`.

        Args:
            flux: `(n_stars, n_pixels)`, continuum-normalised; anything at masked pixels.
            ivar: `(n_stars, n_pixels)`, 1 / flux units squared, 0 = masked, or None.
            context: `(n_stars, n_context)` labels, physical units, or None.
            generator: random source of the importance draws (flow prior only).
        """
        dist = self(context, ivar=ivar, generator=generator)
        check_flux(flux, self.n_pixels, self.flux_loc, dist._noise.observed)
        return dist.posterior(flux)

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
        var = self.flux_scale**2 * temperature**2 * self.intrinsic_var()
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
        if self.loading_slopes is not None:
            self.loading_slopes.zero_()
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
    """

    kind = "factor_analysis"

    def __init__(
        self,
        n_pixels: int,
        n_context: int,
        n_latent: int = 8,
        label_dependent_loading: bool = False,
        var_floor: float = 1e-6,
    ) -> None:
        super().__init__(n_pixels, n_context)
        self.options = FactorAnalysisConfig(
            n_pixels, n_context, n_latent, label_dependent_loading, var_floor
        )
        self._build_linear(n_latent, label_dependent_loading)
