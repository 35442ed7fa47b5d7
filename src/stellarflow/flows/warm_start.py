r"""Closed-form warm starts for the linear-Gaussian models (pure functions, no gradients).

From standardised flux :math:`u` (masked pixels set to 0 and given zero weight) and standardised
noise variances :math:`\nu = 1 / \mathrm{ivar}_u`:

1. weighted least squares per pixel for the quadratic mean,
   :math:`\Theta_{\cdot i} = \arg\min \sum_n w_{ni} (u_{ni} - a_n^T \Theta_{\cdot i})^2` with
   :math:`w_{ni} = 1 / (\tau_i^2 + \nu_{ni})` on observed pixels (iterated from
   :math:`w = 1`), where :math:`\tau_i^2 = \langle r_{ni}^2 - \nu_{ni} \rangle_n`;
2. probabilistic PCA of the residuals :math:`r = u - a^T \Theta`: the top-k eigenpairs
   :math:`(\lambda_j, v_j)` of the noise-subtracted residual covariance
   :math:`C = R^T R / n - \mathrm{diag}(\bar\nu)` (masked residuals corrected by each
   pixel's observed fraction; by subspace iteration, never forming :math:`C`),
   :math:`W = V (\Lambda - \sigma^2)^{1/2}` with :math:`\sigma^2` the mean of the discarded
   spectrum, and
   :math:`\tau_i^2 = C_{ii} - \sum_j W_{ij}^2` (floored).

Only a starting point: the training loop maximises the exact likelihood afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from stellarflow.flows.base import star_chunks

__all__ = ["WarmStart", "linear_gaussian_warm_start"]


class WarmStart(NamedTuple):
    r"""Warm-start parameters, standardised units, float64.

    Attributes:
        theta: `(n_terms, n_pixels)` quadratic-mean coefficients.
        loading: `(n_pixels, k)` :math:`W` (k may be 0).
        intrinsic_var: `(n_pixels,)` :math:`\tau^2`.
    """

    theta: Tensor
    loading: Tensor
    intrinsic_var: Tensor


def _weighted_lstsq(features: Tensor, target: Tensor, weight: Tensor, chunk: int) -> Tensor:
    """Per-pixel weighted least squares: features `(n, t)`, target/weight `(n, p)` -> `(t, p)`."""
    t = features.shape[1]
    p = target.shape[1]
    gram = features.new_zeros(p, t * t)
    rhs = features.new_zeros(p, t)
    for part in star_chunks(features.shape[0], chunk):
        a = features[part]
        w = weight[part]
        gram += w.T @ (a[:, :, None] * a[:, None, :]).reshape(-1, t * t)
        rhs += (w * target[part]).T @ a
    gram = gram.reshape(p, t, t)
    ridge = 1e-9 * gram.diagonal(dim1=-2, dim2=-1).sum(-1).clamp(min=1.0) / t
    gram = gram + ridge[:, None, None] * torch.eye(t, dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram, rhs[..., None]).squeeze(-1).T


def _top_eigen(
    matvec: Callable[[Tensor], Tensor],
    n_pixels: int,
    n_vectors: int,
    like: Tensor,
    generator: torch.Generator | None,
    n_iter: int = 8,
) -> tuple[Tensor, Tensor]:
    """Leading eigenpairs of a symmetric operator by subspace iteration (descending)."""
    basis = torch.randn(n_pixels, n_vectors, generator=generator, dtype=like.dtype)
    basis = torch.linalg.qr(basis.to(like.device)).Q
    for _ in range(n_iter):
        basis = torch.linalg.qr(matvec(basis)).Q
    values, vectors = torch.linalg.eigh(basis.T @ matvec(basis))
    order = torch.argsort(values, descending=True)
    return values[order], basis @ vectors[:, order]


@torch.no_grad()
def linear_gaussian_warm_start(
    u: Tensor,
    ivar_std: Tensor | None,
    features: Tensor,
    n_latent: int,
    *,
    n_iter: int = 2,
    var_floor: float = 1e-6,
    chunk_size: int = 4096,
    generator: torch.Generator | None = None,
) -> WarmStart:
    r"""Least-squares quadratic mean, then probabilistic PCA of the residuals.

    Args:
        u: `(n_stars, n_pixels)` standardised flux, finite (masked pixels any finite value).
        ivar_std: `(n_stars, n_pixels)` standardised inverse variance, 0 = masked; None for
            noise-free data.
        features: `(n_stars, n_terms)` quadratic design matrix of the standardised labels.
        n_latent: k, the number of PCA components (0 for none).
        n_iter: reweighting passes of the least squares.
        var_floor: smallest :math:`\tau^2` returned.
        chunk_size: stars per chunk (bounds the memory of intermediate products).
        generator: random start of the subspace iteration.

    Returns:
        The :class:`WarmStart`, float64.
    """
    u = u.double()
    features = features.double()
    n, p = u.shape
    if ivar_std is None:
        observed = torch.ones_like(u, dtype=torch.bool)
        noise = torch.zeros_like(u)
    else:
        observed = ivar_std > 0
        safe = torch.where(observed, ivar_std.double(), torch.ones_like(u))
        noise = torch.where(observed, 1 / safe, torch.zeros_like(u))
    weight = observed.double()
    u = torch.where(observed, u, torch.zeros_like(u))
    count = weight.sum(0).clamp(min=1)
    noise_mean = noise.sum(0) / count

    def residual(theta: Tensor, part: slice) -> Tensor:
        r = u[part] - features[part] @ theta
        return torch.where(observed[part], r, torch.zeros_like(r))

    theta = _weighted_lstsq(features, u, weight, chunk_size)
    for _ in range(n_iter):
        r = residual(theta, slice(None))
        tau2 = ((r * r - noise) * weight).sum(0) / count
        tau2 = tau2.clamp(min=var_floor)
        weight = torch.where(observed, 1 / (tau2 + noise), torch.zeros_like(u))
        theta = _weighted_lstsq(features, u, weight, chunk_size)

    r_var = torch.zeros(p, dtype=u.dtype, device=u.device)
    for part in star_chunks(n, chunk_size):
        r_var += residual(theta, part).pow(2).sum(0)
    r_var = r_var / count  # observed residual variance, noise included
    excess = r_var - noise_mean  # diagonal of C
    loading = u.new_zeros(p, n_latent)
    if n_latent > 0:
        # Masked residuals are 0: rescale each pixel by its observed fraction f so that
        # off-diagonal products are unbiased (masks independent of the data), then fix the
        # diagonal, which that rescaling inflates by 1/f.
        fraction = (count / n).clamp(min=1 / n)
        diagonal = r_var * (1 / fraction - 1) + noise_mean

        def matvec(v: Tensor) -> Tensor:
            out = -diagonal[:, None] * v
            for part in star_chunks(n, chunk_size):
                r = residual(theta, part) / fraction
                out += r.T @ (r @ v) / n
            return out

        n_vec = min(p, n_latent + 10)
        values, vectors = _top_eigen(matvec, p, n_vec, u, generator)
        discarded = (excess.sum() - values[:n_latent].sum()) / max(p - n_latent, 1)
        sigma2 = discarded.clamp(min=var_floor)
        # A small positive floor: W = 0 is a stationary point the optimiser cannot leave.
        amp = (values[:n_latent] - sigma2).clamp(min=1e-2 * sigma2)
        loading = vectors[:, :n_latent] * amp.sqrt()
    intrinsic_var = (excess - (loading * loading).sum(1)).clamp(min=var_floor)
    return WarmStart(theta, loading, intrinsic_var)
