r"""Closed-form polish of a trained factor-analysis model's intrinsic variance (ECM steps).

Minibatch Adam leaves the per-pixel intrinsic variance :math:`\tau^2` of the
linear-Gaussian models short of its optimum: where a star's own noise :math:`\sigma^2`
dominates, the gradient in :math:`\tau^2` is weak (BENCHMARKS.md and docs/design.md,
"tau^2 polish", session 6). One expectation / conditional-maximisation step, with the mean
and loadings held fixed:

* E-step: for every training star the exact Gaussian posterior of the latent vector,
  :math:`N(m_n, V_n)`, and per pixel the expected squared residual
  :math:`q_{np} = (r_{np} - W_p m_n)^2 + W_p V_n W_p^T`;
* CM-step, per pixel: one Newton step in :math:`\log \tau_p^2` on the expected complete
  log-likelihood :math:`\sum_n -\tfrac12 [\log D_{np} + q_{np} / D_{np}]`,
  :math:`D_{np} = \tau_p^2 + \sigma_{np}^2` (the star's noise in standardised units),
  over observed pixels only (masked pixels carry no weight), the step clipped to
  ``max_step`` in :math:`\log \tau^2`.

Each iteration is one pass over the stars, :math:`O(n\,p\,k^2)`, like one epoch of scoring.
Any step that raises the surrogate (the expected complete log-likelihood) raises the
log-likelihood (generalised EM); a clipped Newton step on a concave surrogate normally does,
and the tests check the increase on data. ``train --polish`` keeps the result only if the
validation loss improves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from stellarflow.flows._checks import FlowInputError, check_flux
from stellarflow.flows.base import star_chunks
from stellarflow.flows.gaussian import FactorAnalysisModel
from stellarflow.flows.linear_gaussian import GaussianReference, latent_posterior, noise_model

__all__ = ["check_polishable", "polish_in_passes", "polish_intrinsic_variance"]


def check_polishable(model: torch.nn.Module) -> FactorAnalysisModel:
    """``model`` if the polish supports it, else :class:`FlowInputError` saying why."""
    if not isinstance(model, FactorAnalysisModel):
        raise FlowInputError(
            f"polish_intrinsic_variance needs a factor_analysis model, got {type(model).__name__}"
        )
    if (
        model.loading_slopes is not None
        or model.latent_scale_slopes is not None
        or model.intrinsic_var_slopes is not None
    ):
        raise FlowInputError(
            "polish_intrinsic_variance supports label-independent loadings and scatter only "
            "(train without label_dependent_loading / label_dependent_variance)"
        )
    return model


def _newton_sums(
    model: FactorAnalysisModel, flux: Tensor, ivar: Tensor, context: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Per-pixel first and second derivatives of the E-step surrogate in tau^2 (float64)."""
    u, ivar_std = model.standardized(flux, ivar)
    labels = model.standardize_context(context)
    residual = (u - model.mean(labels)).double()
    loading = model.loading.detach().double()
    tau2 = model.intrinsic_var().detach().double()
    noise = noise_model(tau2, ivar_std.double())
    post = latent_posterior(residual, loading, noise.precision, GaussianReference(1.0))
    k = loading.shape[-1]
    eye = torch.eye(k, dtype=torch.float64, device=loading.device).expand_as(post.chol)
    chol_inv = torch.linalg.solve_triangular(post.chol, eye, upper=False)
    spread = torch.einsum("pk,njk->npj", loading, chol_inv).square().sum(-1)  # W V W^T
    q = (residual - post.mean @ loading.T).square() + spread
    d_inv = noise.precision  # exactly 0 on masked pixels: they add nothing below
    grad = (0.5 * (q * d_inv.square() - d_inv)).sum(0)
    hess = (0.5 * d_inv.square() - q * d_inv.pow(3)).sum(0)
    return grad, hess


@torch.no_grad()
def polish_intrinsic_variance(
    model: FactorAnalysisModel,
    flux: Tensor,
    ivar: Tensor,
    context: Tensor | None,
    *,
    n_iter: int = 4,
    chunk_size: int = 256,
    max_step: float = 1.0,
) -> list[float]:
    r"""Refine :math:`\tau^2` of a trained factor-analysis model in place (module docstring).

    Args:
        model: a trained :class:`FactorAnalysisModel` with label-independent loadings and
            scatter (its mean and loadings are left unchanged).
        flux: `(n_stars, n_pixels)` training flux; anything at masked pixels.
        ivar: `(n_stars, n_pixels)` inverse variance, 0 = masked.
        context: `(n_stars, n_context)` labels in physical units, or None.
        n_iter: E/CM iterations (passes over the stars).
        chunk_size: stars per chunk of the pass (memory ~ chunk x pixels x k numbers).
        max_step: largest change of :math:`\log \tau^2` per pixel and iteration.

    Returns:
        Per iteration, the largest absolute change of :math:`\log \tau^2` made over the
        pixels (a convergence record; pixels held at ``var_floor`` count as unchanged).

    Raises:
        FlowInputError: unsupported model, or inputs of the wrong shape.
    """
    check_polishable(model)
    if chunk_size < 1:
        raise FlowInputError(f"chunk_size must be >= 1, got {chunk_size}")
    check_flux(flux, model.n_pixels, model.flux_loc, finite=False)
    context, ivar = model._check_inputs(context, ivar)
    if ivar is None or ivar.shape != flux.shape:
        raise FlowInputError(
            f"ivar must have the flux's shape {tuple(flux.shape)}; pass each star's inverse "
            "variance (0 = masked)"
        )

    def one_pass() -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
        for part in star_chunks(flux.shape[0], chunk_size):
            yield flux[part], ivar[part], None if context is None else context[part]

    return polish_in_passes(model, one_pass, n_iter=n_iter, max_step=max_step)


@torch.no_grad()
def polish_in_passes(
    model: FactorAnalysisModel,
    one_pass: Callable[[], Iterable[tuple[Tensor, Tensor, Tensor | None]]],
    *,
    n_iter: int = 4,
    max_step: float = 1.0,
) -> list[float]:
    r""":func:`polish_intrinsic_variance` over chunks from a callable (out-of-core surveys).

    Args:
        model: as in :func:`polish_intrinsic_variance`.
        one_pass: returns a fresh iterable of ``(flux, ivar, context)`` chunks covering the
            training stars once (anything at masked pixels: standardisation zeroes them).
        n_iter: E/CM iterations.
        max_step: largest change of :math:`\log \tau^2` per pixel and iteration.

    Returns:
        Per iteration, the largest absolute change of :math:`\log \tau^2` made.

    Raises:
        FlowInputError: unsupported model, ``n_iter < 0`` or ``max_step <= 0``.
    """
    model = check_polishable(model)
    if n_iter < 0 or max_step <= 0:
        raise FlowInputError(f"need n_iter >= 0 and max_step > 0, got {n_iter}, {max_step}")
    changes = []
    for _ in range(n_iter):
        grad = torch.zeros(model.n_pixels, dtype=torch.float64, device=model.loading.device)
        hess = torch.zeros_like(grad)
        for flux, ivar, context in one_pass():
            g, h = _newton_sums(model, flux, ivar, context)
            grad += g
            hess += h
        tau2 = model.intrinsic_var().detach().double()
        first = tau2 * grad  # derivatives in log tau^2
        second = tau2.square() * hess + first
        step = torch.where(second < 0, -first / second.clamp(max=-1e-300), torch.sign(first))
        step = step.clamp(-max_step, max_step)
        floor = model.options.var_floor
        new = (tau2 * torch.exp(step) - floor).clamp(min=1e-12)
        model.log_intrinsic_var.copy_(torch.log(new).to(model.log_intrinsic_var.dtype))
        # the change made, not the step asked for (pixels held at the floor do not move)
        moved = torch.log(model.intrinsic_var().detach().double()) - torch.log(tau2)
        changes.append(float(moved.abs().max()))
    return changes
