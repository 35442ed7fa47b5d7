r"""Closed-form pieces of the linear-Gaussian observation model (pure functions).

All models in this package except the coupling flow share one observation model, written in
standardised pixel units :math:`u = (x - m) / s` (``m``, ``s`` the per-pixel standardisation
buffers):

.. math::

    u = \mu(c) + W(c)\, z + \epsilon, \qquad \epsilon \sim N(0, D), \qquad
    D = \mathrm{diag}(\tau^2 + \sigma_u^2),

with :math:`z \in R^k` a latent vector, :math:`\tau^2` the intrinsic per-pixel variance and
:math:`\sigma_u^2 = 1 / (\mathrm{ivar}\, s^2)` each star's own noise. Masked pixels
(``ivar == 0``) drop out of the observed set :math:`O` exactly: their :math:`D^{-1}` is 0.

For a Gaussian reference prior :math:`z \sim N(\mu_r, \Lambda^{-1})` (:math:`\Lambda = 0`
allowed: no reference) the posterior of :math:`z` is :math:`N(m, Q^{-1})` with

.. math::

    A = W_O^T D_O^{-1} W_O, \quad Q = A + \Lambda, \quad
    b = W_O^T D_O^{-1} (r - W \mu_r)_O, \quad m = \mu_r + Q^{-1} b, \quad r = u - \mu,

and the quadratic form :math:`r'^T D^{-1} r' - b^T Q^{-1} b` (:math:`r' = r - W\mu_r`) is
evaluated without cancellation as
:math:`(r - W m)^T D^{-1} (r - W m) + (m - \mu_r)^T \Lambda (m - \mu_r)`. Nothing of size
``n_pixels x n_pixels`` is ever formed: the cost per star is :math:`O(|O|\, k^2)`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from stellarflow.flows._checks import FlowInputError

__all__ = [
    "GaussianReference",
    "LatentPosterior",
    "NoiseModel",
    "latent_posterior",
    "n_quadratic_terms",
    "noise_model",
    "project",
    "quadratic_features",
    "sample_posterior",
]

LOG_2PI = math.log(2 * math.pi)


def n_quadratic_terms(n_context: int) -> int:
    """Columns of the quadratic design matrix: ``1 + L + L (L + 1) / 2`` for ``L`` labels."""
    return 1 + n_context + n_context * (n_context + 1) // 2


def quadratic_features(labels: Tensor | None, like: Tensor) -> Tensor:
    r"""The Cannon's design matrix :math:`a(l) = [1, l_1, \dots, l_L, l_i l_j\ (i \le j)]`.

    Args:
        labels: `(*batch, L)` standardised labels (dimensionless), or None (then ``L = 0``).
        like: a tensor whose dtype and device the result takes when ``labels`` is None.

    Returns:
        `(*batch, n_quadratic_terms(L))`, dimensionless; `(1,)` when ``labels`` is None.
    """
    if labels is None:
        return like.new_ones(1)
    n = labels.shape[-1]
    i, j = torch.triu_indices(n, n, device=labels.device)
    ones = labels.new_ones((*labels.shape[:-1], 1))
    return torch.cat([ones, labels, labels[..., i] * labels[..., j]], dim=-1)


def quadratic_feature_jacobian(labels: Tensor) -> Tensor:
    r""":math:`\partial a / \partial l`, `(*batch, n_terms, L)`: the rows are
    :math:`[0,\ e_m,\ \delta_{im} l_j + \delta_{jm} l_i]` for the constant, the linear terms
    and each pair :math:`i \le j` of :func:`quadratic_features`.

    Args:
        labels: `(*batch, L)` standardised labels.
    """
    n = labels.shape[-1]
    i, j = torch.triu_indices(n, n, device=labels.device)
    eye = torch.eye(n, dtype=labels.dtype, device=labels.device)
    pairs = labels[..., j, None] * eye[i] + labels[..., i, None] * eye[j]  # (*batch, pairs, L)
    constant = labels.new_zeros((*labels.shape[:-1], 1, n))
    return torch.cat([constant, eye.expand(*labels.shape[:-1], n, n), pairs], dim=-2)


class NoiseModel(NamedTuple):
    r"""Per-pixel variance of the observation model, in standardised units.

    Attributes:
        observed: `(*batch, n_pixels)` bool, True where the pixel enters the likelihood.
        weight: `(*batch, n_pixels)` float, ``observed`` as 0/1 (for masked sums by matmul).
        precision: `(*batch, n_pixels)`, :math:`D^{-1} = 1 / (\tau^2 + \sigma_u^2)` on
            observed pixels, exactly 0 on masked ones.
        log_det: `(*batch,)`, :math:`\sum_{i \in O} \log(2 \pi D_i)`.
    """

    observed: Tensor
    weight: Tensor
    precision: Tensor
    log_det: Tensor


def noise_model(intrinsic_var: Tensor, ivar_std: Tensor | None) -> NoiseModel:
    r"""Combine intrinsic variance and each star's noise: :math:`D = \tau^2 + 1/\mathrm{ivar}_u`.

    Written without divisions by ivar, so a masked pixel (ivar 0) yields exactly zero
    precision and zero gradient, never an inf or NaN:

    .. math:: D^{-1} = \frac{\mathrm{ivar}_u}{1 + \mathrm{ivar}_u \tau^2}, \qquad
              \log D = \log(1 + \mathrm{ivar}_u \tau^2) - \log \mathrm{ivar}_u .

    Args:
        intrinsic_var: `(n_pixels,)` or `(*batch, n_pixels)`, :math:`\tau^2`, standardised
            units, > 0.
        ivar_std: `(*batch, n_pixels)` finite inverse variance in standardised units
            (``ivar * s**2``), 0 = masked; None for noise-free spectra (all pixels observed).

    Returns:
        The :class:`NoiseModel`; masked pixels have precision 0 and add nothing to log_det.
    """
    if ivar_std is None:
        observed = torch.ones_like(intrinsic_var, dtype=torch.bool)
        weight = torch.ones_like(intrinsic_var)
        precision = 1 / intrinsic_var
        log_det = (LOG_2PI + torch.log(intrinsic_var)).sum(-1)
        return NoiseModel(observed, weight, precision, log_det)
    observed = ivar_std > 0
    weight = observed.to(ivar_std.dtype)
    scaled = ivar_std * intrinsic_var
    precision = ivar_std / (1 + scaled)
    # log(ivar + 1 - w) is log(ivar) on observed pixels and log(1) = 0 on masked ones.
    log_ivar = torch.log(ivar_std + (1 - weight))
    log_det = (torch.log1p(scaled) - log_ivar).sum(-1) + LOG_2PI * weight.sum(-1)
    return NoiseModel(observed, weight, precision, log_det)


class LatentPosterior(NamedTuple):
    r"""The Gaussian posterior of the latent vector and the closed-form evidence terms.

    Attributes:
        mean: `(*sample, *batch, k)`, :math:`m = Q^{-1} b`.
        chol: `(*batch, k, k)`, lower Cholesky factor :math:`L` of :math:`Q = L L^T`.
        quad: `(*sample, *batch)`, :math:`(r - W m)^T D^{-1} (r - W m) +
            (m - \mu_r)^T \Lambda (m - \mu_r)`.
        log_det_q: `(*batch,)`, :math:`\log |Q|`.
    """

    mean: Tensor
    chol: Tensor
    quad: Tensor
    log_det_q: Tensor


def _precision_matrix(loading: Tensor, precision: Tensor) -> Tensor:
    """:math:`A = W^T D^{-1} W`, `(*batch, k, k)`; one GEMM when W is shared by all stars."""
    k = loading.shape[-1]
    if loading.ndim == 2:
        outer = (loading[:, :, None] * loading[:, None, :]).reshape(-1, k * k)
        return (precision @ outer).unflatten(-1, (k, k))
    weighted = precision[..., None] * loading
    return weighted.transpose(-1, -2) @ loading


def per_star_matmul(x: Tensor, matrix: Tensor) -> Tensor:
    """``x @ matrix`` per star: x `(*sample, *batch, a)`, matrix `(*batch, a, b)`.

    Returns `(*sample, *batch, b)`. Broadcasting ``matmul`` would copy the per-star matrix
    once per sample (``n_samples x n_stars x n_pixels x k`` numbers); this folds the sample
    dimensions into the rows of one batched product instead.
    """
    n_batch = matrix.ndim - 2
    batch = matrix.shape[:-2]
    sample = x.shape[: x.ndim - 1 - n_batch]
    if not sample or tuple(x.shape[len(sample) : -1]) != tuple(batch):
        return (x[..., None, :] @ matrix).squeeze(-2)
    n_sample, n_stars, (a, b) = math.prod(sample), math.prod(batch), matrix.shape[-2:]
    rows = x.reshape(n_sample, n_stars, a).transpose(0, 1)  # (stars, samples, a)
    out = rows @ matrix.reshape(n_stars, a, b)
    return out.transpose(0, 1).reshape(*sample, *batch, b)


def project(loading: Tensor, z: Tensor) -> Tensor:
    """:math:`W z`: `(..., n_pixels)` from z `(..., k)` and W `(p, k)` or `(*batch, p, k)`."""
    if loading.ndim == 2:
        return z @ loading.T
    return per_star_matmul(z, loading.transpose(-1, -2))


class GaussianReference(NamedTuple):
    r"""A Gaussian reference prior :math:`N(\mu_r, \Lambda^{-1})` on z.

    Attributes:
        precision: :math:`\Lambda`: a float :math:`\lambda` (meaning :math:`\lambda I`;
            0 = no reference, the likelihood-only posterior) or a `(*batch, k, k)` matrix.
        mean: :math:`\mu_r` `(*batch, k)`, or None for 0.
    """

    precision: float | Tensor
    mean: Tensor | None = None

    def quadratic(self, z: Tensor) -> Tensor:
        r""":math:`(z - \mu_r)^T \Lambda (z - \mu_r)`, `(..., k)` -> `(...)`."""
        d = z if self.mean is None else z - self.mean
        if isinstance(self.precision, Tensor):
            return ((self.precision @ d[..., None]).squeeze(-1) * d).sum(-1)
        return self.precision * (d * d).sum(-1)

    def is_proper(self) -> bool:
        r"""False for the improper reference :math:`\Lambda = 0`."""
        return isinstance(self.precision, Tensor) or self.precision > 0


def latent_posterior(
    residual: Tensor, loading: Tensor, precision: Tensor, reference: GaussianReference
) -> LatentPosterior:
    r"""Posterior :math:`N(m, Q^{-1})` of z and the quadratic form, by Woodbury.

    Args:
        residual: `(*sample, *batch, n_pixels)`, :math:`r = u - \mu(c)`, standardised units;
            any finite value at masked pixels (their precision is 0).
        loading: `(n_pixels, k)` or `(*batch, n_pixels, k)`, :math:`W`, standardised units.
        precision: `(*batch, n_pixels)`, :math:`D^{-1}`, 0 at masked pixels.
        reference: the Gaussian reference prior; :math:`\Lambda = 0` gives the
            likelihood-only posterior :math:`N(\hat z, P^{-1})` of DESIGN-NOTES 2b.

    Returns:
        The :class:`LatentPosterior`.

    Raises:
        FlowInputError: if :math:`Q` is singular (no reference and fewer useful observed
            pixels than latent dimensions).
    """
    k = loading.shape[-1]
    q = _precision_matrix(loading, precision)
    if isinstance(reference.precision, Tensor):
        q = q + reference.precision
    elif reference.precision > 0:
        q = q + reference.precision * torch.eye(k, dtype=q.dtype, device=q.device)
    chol, info = torch.linalg.cholesky_ex(q)
    if bool((info > 0).any()):
        raise FlowInputError(
            "the latent posterior precision W^T D^-1 W + Lambda is singular or not finite for "
            "some stars (too few observed pixels for the latent dimension without a "
            "reference prior, or non-finite inputs); use proposal='posterior'"
        )
    if reference.mean is not None:
        residual = residual - project(loading, reference.mean)
    if loading.ndim == 2:
        b = (precision * residual) @ loading
    else:
        b = per_star_matmul(precision * residual, loading)
    # Q^-1 b by two triangular solves (they broadcast over sample dimensions).
    y = torch.linalg.solve_triangular(chol, b[..., None], upper=False)
    shift = torch.linalg.solve_triangular(chol.transpose(-1, -2), y, upper=True).squeeze(-1)
    e = residual - project(loading, shift)
    quad = (precision * e * e).sum(-1)
    if reference.is_proper():
        quad = quad + GaussianReference(reference.precision).quadratic(shift)
    mean = shift if reference.mean is None else shift + reference.mean
    log_det_q = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return LatentPosterior(mean, chol, quad, log_det_q)


def sample_posterior(posterior: LatentPosterior, eps: Tensor) -> Tensor:
    r"""Draw :math:`z = m + L^{-T} \varepsilon`, :math:`\varepsilon \sim N(0, I)`.

    Args:
        posterior: from :func:`latent_posterior`.
        eps: `(n_draws, *sample, *batch, k)` standard normal draws.

    Returns:
        `(n_draws, *sample, *batch, k)` draws of :math:`z \sim N(m, Q^{-1})`.
    """
    k = eps.shape[-1]
    eye = torch.eye(k, dtype=eps.dtype, device=eps.device)
    upper = posterior.chol.transpose(-1, -2)
    # L^-T once per star, then one batched product for all draws (a broadcast triangular
    # solve would loop over every draw).
    inv_upper = torch.linalg.solve_triangular(upper, eye, upper=True)
    return posterior.mean + torch.einsum("...ij,m...j->m...i", inv_upper, eps)
