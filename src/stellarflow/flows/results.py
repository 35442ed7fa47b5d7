r"""Result records returned by the models (plain named tuples of tensors)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["CovarianceFactors", "LogProbEstimate", "PosteriorPrediction"]


class LogProbEstimate(NamedTuple):
    r"""An importance-sampling estimate of log p(flux | context).

    Attributes:
        log_prob: `(*sample, *batch)`, nats: :math:`\log \frac{1}{M} \sum_m w_m` (plus the
            closed-form part); its expectation is a lower bound on the true value.
        std_error: `(*sample, *batch)`, nats: delta-method standard error of the estimate,
            :math:`\sqrt{\sum_m \tilde w_m^2 - 1/M}` with :math:`\tilde w` the normalised
            weights; 0 for exact models.
        ess: `(*sample, *batch)`: effective sample size :math:`1 / \sum_m \tilde w_m^2`.
        latent_mean: `(*sample, *batch, k)`: :math:`E[z | x_{obs}, c]` (self-normalised
            importance estimate; exact for a Gaussian prior).
        latent_cov: `(*sample, *batch, k, k)`: :math:`Cov[z | x_{obs}, c]`, likewise.
    """

    log_prob: Tensor
    std_error: Tensor
    ess: Tensor
    latent_mean: Tensor
    latent_cov: Tensor


class PosteriorPrediction(NamedTuple):
    r"""What the model predicts for a star's spectrum given its observed pixels.

    Attributes:
        mean: `(n_stars, n_pixels)` flux units: :math:`E[x_{int} | x_{obs}, c]`, the
            noise-free spectrum's posterior mean (masked pixels: the model's prediction).
        std: `(n_stars, n_pixels)` flux units: :math:`\sqrt{Var[x_{int} | x_{obs}, c]}`.
        predicted: `(n_stars, n_pixels)` flux units: :math:`m + s (\mu + W E[z | x_{obs}])`,
            the smooth model spectrum (without the per-pixel intrinsic term).
        predicted_std: `(n_stars, n_pixels)` flux units: predicted spread of the *observed*
            flux around ``predicted``, :math:`s \sqrt{\tau^2 + w_i^T Cov[z|x] w_i} \oplus
            \sigma_i` (noise :math:`\sigma_i` omitted at masked pixels). The standardised
            residual ``(flux - predicted) / predicted_std`` explains an outlier per pixel.
        latent_mean: `(n_stars, k)`: :math:`E[z | x_{obs}, c]`.
        latent_cov: `(n_stars, k, k)`: :math:`Cov[z | x_{obs}, c]`.
    """

    mean: Tensor
    std: Tensor
    predicted: Tensor
    predicted_std: Tensor
    latent_mean: Tensor
    latent_cov: Tensor


class CovarianceFactors(NamedTuple):
    r"""Low-rank-plus-diagonal covariance of the noise-free spectra at given labels.

    .. math:: Cov[x | c] = L\, Cov[z | c]\, L^T + \mathrm{diag}(v), \qquad L = s \odot W(c)

    (DESIGN-NOTES 4). No `(n_pixels, n_pixels)` matrix is formed unless asked for a subset.

    Attributes:
        loading: `(*batch, n_pixels, k)`, flux units: :math:`L`.
        latent_cov: `(*batch, k, k)`: :math:`Cov[z | c]` (exact for a Gaussian prior,
            else the sample covariance of ``n_samples`` flow draws; its sampling noise is that
            of a k x k covariance, relative error ~ :math:`\sqrt{2 / n}` on variances).
        latent_mean: `(*batch, k)`: :math:`E[z | c]`.
        intrinsic_var: `(n_pixels,)` or `(*batch, n_pixels)` when it depends on the labels,
            flux units squared: :math:`v = s^2 T^2 \tau^2`.
        n_samples: flow draws used (0 when exact).
    """

    loading: Tensor
    latent_cov: Tensor
    latent_mean: Tensor
    intrinsic_var: Tensor
    n_samples: int

    def covariance(self, pixels: Tensor | None = None) -> Tensor:
        """Dense covariance `(*batch, q, q)` over the pixel indices ``pixels`` `(q,)`, flux^2."""
        loading, var = self.loading, self.intrinsic_var
        if pixels is not None:
            loading, var = loading[..., pixels, :], var[..., pixels]
        cov = loading @ self.latent_cov @ loading.transpose(-1, -2)
        return cov + torch.diag_embed(var.expand(cov.shape[:-1]))

    def correlation(self, pixels: Tensor | None = None) -> Tensor:
        r"""Correlation matrix `(*batch, q, q)`: :math:`C_{ij} / \sqrt{C_{ii} C_{jj}}`."""
        cov = self.covariance(pixels)
        std = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
        return cov / (std[..., :, None] * std[..., None, :])
