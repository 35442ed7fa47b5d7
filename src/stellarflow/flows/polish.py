r"""Closed-form ECM polish of a factor-analysis model: mean, loadings and scatter.

Minibatch Adam leaves the linear-Gaussian models short of their maximum likelihood in weak
directions: the per-pixel intrinsic variance :math:`\tau^2` where a star's own noise
dominates, and the overall scale of the loadings :math:`W` (BENCHMARKS.md and
docs/design.md, "tau^2 polish" and "ECM", sessions 6-7). Factor analysis is linear in its
mean coefficients and loadings once the latent vector is known, so expectation /
conditional-maximisation (ECM) steps do what Adam does slowly, in closed form. One
iteration is up to two passes over the stars:

1. **Mean and loadings** (``"mean_loading"``). E-step: each star's exact Gaussian posterior
   of the latent vector, :math:`N(m_n, V_n)`. CM-step, per pixel p, with :math:`\tau^2`
   held fixed: the weighted least squares

   .. math:: \beta_p = \arg\min \sum_n D_{np}^{-1}\,
             E\big[(u_{np} - \beta_p^T g_n)^2\big], \qquad
             g_n = [a(l_n);\ \tilde z_n \otimes h(l_n)],

   where :math:`a(l)` are the quadratic mean's features, :math:`h(l) = [1]`, :math:`[1, l]`
   or :math:`[1, l, l_i l_j]` the loading's label features (label-independent, linear or
   quadratic ``label_dependent_loading``), :math:`\tilde z = e^{a'(l) A} \odot z` the latent
   vector times the (fixed) latent scales of ``label_dependent_variance``, and
   :math:`D_{np} = \tau_p^2(l_n) + \sigma_{np}^2` (the star's noise in standardised units;
   masked pixels have :math:`D^{-1} = 0` and carry no weight). The normal equations need
   only :math:`E[g g^T]`, i.e. :math:`m_n` and :math:`V_n`: :math:`O(n\,p\,d^2)` per pass,
   :math:`d = n_{terms} + k\,|h|`. An MLP residual on the mean (``mean_hidden``) is held
   fixed; :math:`\Theta` of the quadratic part is refitted under it. Parameter expansion
   (PX-EM, Liu, Rubin & Wu 1998): the same pass also fits a covariance :math:`\Sigma` of
   the latent prior, :math:`\frac1n \sum_n E[z z^T]`, and folds it into the loadings,
   :math:`W \to W L_\Sigma`; plain EM crawls along the loadings' overall scale.
2. **Intrinsic variance** (``"intrinsic_var"``). A fresh E-step, then per pixel one Fisher
   scoring step on the expected complete log-likelihood
   :math:`\sum_n -\tfrac12 [\log D_{np} + q_{np} / D_{np}]`,
   :math:`q_{np} = E[(u_{np} - \mu_p(l_n) - W_p(l_n) z_n)^2]`, in the coefficients
   :math:`\psi_p` of :math:`\log(\tau_p^2(l) - \tau_{min}^2) = \psi_p^T [1, a'(l)]`
   (one coefficient, :math:`\eta_p`, when the scatter does not depend on the labels; also
   the ``intrinsic_var_slopes`` column :math:`B_p` with ``label_dependent_variance``).
   With :math:`v = \tau^2 - \tau_{min}^2`: gradient
   :math:`\sum_n \tfrac12 v (q/D^2 - 1/D)\, b_n`, expected information
   :math:`\sum_n \tfrac12 (v/D)^2\, b_n b_n^T` (positive definite, unlike the observed
   Hessian where :math:`q \gg D`); the step is shrunk so that its root-mean-square change
   of :math:`\log v` over the stars is at most ``max_step``.

3. **Latent scales** (``"latent_scale"``, with ``label_dependent_variance``), in the same
   pass as 2 and from the same E-step. Take :math:`z' = s(l) \odot z` as the complete data:
   the observation model :math:`u = \mu + W(l) z' + \epsilon` no longer involves the
   scales, and the prior :math:`z'_i \sim N(0, s_i(l)^2)` involves nothing else, so the
   expected complete log-likelihood separates and its scale part,

   .. math:: \sum_n -\big[\log s_{ni} + E[z'^2_{ni}] / (2 s_{ni}^2)\big], \qquad
             \log s_{ni} = c_i + a'(l_n)^T A_i ,

   is concave in :math:`(c_i, A_i)`; it is maximised exactly (damped Newton with
   back-tracking). The overall scale :math:`c_i` is folded into the loadings' column i
   (:math:`W_{\cdot i} \to e^{c_i} W_{\cdot i}`, every label block), which leaves the
   likelihood unchanged: only the label-dependence A is a parameter of the model. Without
   this step ``--epochs 0`` fits held the scales at zero: latent directions whose amplitude
   grows towards the label edges (deeper lines in cool, metal-poor giants) were left
   under-predicted there (session 7, issue 3).

**Label errors** (``context_err``): the latent vector becomes :math:`y = [z; e]` with the
true labels :math:`\hat l + \sigma_l \odot e` (:mod:`stellarflow.flows.gaussian`); the
linearised mean :math:`a(\hat l)^T\Theta + (\partial a/\partial l\,\mathrm{diag}\,\sigma_l\,
e)^T\Theta` is still linear in :math:`\Theta` given e, so the mean rows of the regressors
gain :math:`\partial a/\partial l\,\mathrm{diag}(\sigma_l)\,e` and the same normal
equations (now with the joint posterior of ``[z; e]``) give the exact CM-step.

Each CM-step raises the expected complete log-likelihood (the first and third exactly, the
second in practice; the tests check the log-likelihood on data), hence the likelihood
(generalised EM). The MLP mean is not updated. ``train --polish N`` runs N iterations after
Adam (``--epochs 0``: instead of it), keeping each only while the validation loss improves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from stellarflow.flows._checks import FlowInputError, check_flux
from stellarflow.flows.base import star_chunks
from stellarflow.flows.gaussian import FactorAnalysisModel, label_error_loading
from stellarflow.flows.linear_gaussian import (
    GaussianReference,
    latent_posterior,
    noise_model,
    quadratic_feature_jacobian,
    quadratic_features,
)

__all__ = [
    "PARTS",
    "PolishStep",
    "check_polishable",
    "estimate_coefficient_variance",
    "polish_factor_analysis",
    "polish_in_passes",
    "polish_intrinsic_variance",
]

PARTS = ("mean_loading", "intrinsic_var", "latent_scale")

Chunk = tuple[Tensor, Tensor, Tensor | None, Tensor | None]  # flux, ivar, context, context_err
Chunks = Callable[[], Iterable[Chunk]]


class PolishStep(NamedTuple):
    """What one ECM iteration changed.

    Attributes:
        max_log_tau2_change: largest absolute change of :math:`\\log \\tau^2` over the pixels
            (at the training-mean labels when the scatter depends on the labels); 0 when
            the intrinsic variance was not updated.
        mean_loading_change: relative change of the mean coefficients and loadings,
            :math:`\\|\\Delta\\beta\\|_F / \\|\\beta\\|_F`; 0 when they were not updated.
        max_log_scale_change: largest absolute change of a latent direction's log scale
            :math:`\\log s_i(l)` over the training stars (the label-dependence only; the
            overall scale folded into the loadings is not counted); 0 when the latent
            scales were not updated or the model has none.
    """

    max_log_tau2_change: float
    mean_loading_change: float
    max_log_scale_change: float = 0.0


def check_polishable(model: torch.nn.Module) -> FactorAnalysisModel:
    """``model`` if the polish supports it, else :class:`FlowInputError` saying why."""
    if not isinstance(model, FactorAnalysisModel):
        raise FlowInputError(
            f"the ECM polish needs a factor_analysis model (a Gaussian latent prior), got "
            f"{type(model).__name__}"
        )
    return model


def _check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    parts = tuple(parts)
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        raise FlowInputError(f"parts must be a non-empty subset of {PARTS}, got {parts}")
    return parts


class _Posterior(NamedTuple):
    """One chunk's E-step, float64, standardised units."""

    features: Tensor  # (n, n_terms): a(l)
    loading_features: Tensor  # (n, H): h(l)
    target: Tensor  # (n, p): u minus the (fixed) MLP part of the mean
    loading: Tensor  # (p, k) or (n, p, k): W(l), latent scales included
    precision: Tensor  # (n, p): 1 / D, 0 at masked pixels
    mean: Tensor  # (n, k): E[z]
    chol_inv: Tensor  # (n, k, k): L^-1, Cov[z] = L^-T L^-1
    scale: Tensor  # (n, k): latent scales e^{a'(l) A} (ones without them)
    labels: Tensor | None  # (n, L) standardised labels, model dtype
    error_design: Tensor | None  # (n, n_terms, L): d a / d l diag(sigma_l), label errors only


def _loading_width(model: FactorAnalysisModel) -> int:
    """|h(l)|: 1, 1 + L (linear loadings) or n_terms (quadratic loadings)."""
    if model.loading_curvature is not None:
        return model.mean.theta.shape[0]
    if model.loading_slopes is not None:
        return 1 + model.n_context
    return 1


def _e_step(
    model: FactorAnalysisModel,
    flux: Tensor,
    ivar: Tensor,
    context: Tensor | None,
    context_err: Tensor | None = None,
) -> _Posterior:
    """The exact posterior of the latent vector (with label errors: of ``[z; e]``)."""
    u, ivar_std = model.standardized(flux, ivar)
    labels = model.standardize_context(context)
    n = u.shape[0]
    features = quadratic_features(labels, u).expand(n, -1).double()
    target = u.double()
    if model.mean.mlp is not None and labels is not None:
        target = target - model.mean.mlp(labels).double()
    loading = model.loading_at(labels).detach()
    error_design = None
    if context_err is not None and labels is not None:
        if model.mean.mlp is not None:
            raise FlowInputError(
                "the ECM polish with label errors needs a quadratic mean (mean_hidden = 0)"
            )
        err_std = model.standardize_context_err(context_err)
        extra = label_error_loading(model.mean, labels, err_std, 1.0).detach()
        loading = torch.cat([loading.expand(n, *loading.shape[-2:]), extra], dim=-1)
        error_design = (quadratic_feature_jacobian(labels) * err_std[:, None, :]).double()
    loading = loading.double()
    noise = noise_model(model.intrinsic_var(labels).detach().double(), ivar_std.double())
    residual = target - features @ model.mean.theta.detach().double()
    post = latent_posterior(residual, loading, noise.precision, GaussianReference(1.0))
    size = loading.shape[-1]
    eye = torch.eye(size, dtype=torch.float64, device=u.device).expand_as(post.chol)
    chol_inv = torch.linalg.solve_triangular(post.chol, eye, upper=False)
    k = model.loading.shape[-1]
    scale = torch.ones(n, k, dtype=torch.float64, device=u.device)
    if model.latent_scale_slopes is not None and labels is not None:
        scale = torch.exp(features[:, 1:] @ model.latent_scale_slopes.detach().double())
    return _Posterior(
        features,
        features[:, : _loading_width(model)],
        target,
        loading,
        noise.precision,
        post.mean,
        chol_inv,
        scale,
        labels,
        error_design,
    )


def _normal_equations(post: _Posterior) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per-pixel :math:`\sum_n D^{-1} E[g g^T]` `(p, d, d)`, :math:`\sum_n D^{-1} u E[g]`
    `(p, d)`, and :math:`\sum_n E[z z^T]` `(k, k)` (for the parameter expansion).

    The regressors are affine in the latent vector y (z, or ``[z; e]`` with label errors):
    :math:`g = c + G y` with :math:`c = [a(\hat l); 0]`, the loading rows
    :math:`G_{[z \otimes h], z} = (I_k \otimes h)\,\mathrm{diag}(s)` and, with label errors
    (true labels :math:`\hat l + \sigma_l \odot e`, the mean linearised), the mean rows
    :math:`G_{a, e} = \partial a/\partial l\,\mathrm{diag}(\sigma_l)`; so
    :math:`E[g] = c + G m` and :math:`\mathrm{Cov}[g] = G V G^T`.
    """
    n, size = post.mean.shape
    k = post.scale.shape[1]
    h = post.loading_features
    n_terms, width = post.features.shape[1], k * h.shape[1]
    eye = torch.eye(k, dtype=torch.float64, device=h.device)
    z_rows = (post.scale[:, None, None, :] * eye[None, :, None, :]) * h[:, None, :, None]
    design = post.features.new_zeros(n, n_terms + width, size)
    design[:, n_terms:, :k] = z_rows.reshape(n, width, k)
    if post.error_design is not None:
        design[:, :n_terms, k:] = post.error_design
    offset = torch.cat([post.features, post.features.new_zeros(n, width)], 1)
    expected = offset + (design @ post.mean[:, :, None]).squeeze(-1)
    spread = design @ post.chol_inv.mT  # G L^-T: Cov[g] = spread spread^T
    second = expected[:, :, None] * expected[:, None, :] + spread @ spread.mT
    d = expected.shape[1]
    lhs = (post.precision.T @ second.reshape(n, d * d)).reshape(-1, d, d)
    rhs = (post.precision * post.target).T @ expected
    z_cov = (post.chol_inv.mT @ post.chol_inv)[:, :k, :k]
    z_second = post.mean[:, :k].T @ post.mean[:, :k] + z_cov.sum(0)
    return lhs, rhs, z_second


def _ridged_cholesky(matrices: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel Cholesky factors of `(p, d, d)` systems with a 1e-10 relative ridge, and
    which pixels have one: factorised, and with data (a positive first diagonal entry)."""
    diag = torch.diagonal(matrices, dim1=-2, dim2=-1)
    ridge = 1e-10 * diag.mean(-1).clamp(min=1e-300)
    eye = torch.eye(matrices.shape[-1], dtype=matrices.dtype, device=matrices.device)
    chol, failed = torch.linalg.cholesky_ex(matrices + ridge[:, None, None] * eye)
    return chol, (failed == 0) & (diag[:, 0] > 0)


def _solve_mean_loading(
    model: FactorAnalysisModel, lhs: Tensor, rhs: Tensor, z_moment: Tensor
) -> float:
    r"""Solve the per-pixel normal equations and write Theta and W; the relative change.

    ``z_moment`` is the stars' mean :math:`E[z z^T]`: parameter expansion (PX-EM, Liu,
    Rubin & Wu 1998) fits the latent prior's covariance :math:`\Sigma` too and folds it back,
    :math:`W \to W L_\Sigma`, which converges much faster along the loadings' overall scale
    (with latent scales, only the diagonal of :math:`\Sigma`, which commutes with them).
    """
    n_terms, k = model.mean.theta.shape[0], model.loading.shape[-1]
    old = _mean_loading_vector(model)
    chol, factorised = _ridged_cholesky(lhs)
    beta = torch.cholesky_solve(rhs[:, :, None], chol).squeeze(-1)
    # pixels without data (every star masked) or a singular system keep their values
    solved = factorised & torch.isfinite(beta).all(-1)
    beta = torch.where(solved[:, None], beta, old)
    blocks = beta[:, n_terms:].reshape(-1, k, _loading_width(model))
    factor, failed = torch.linalg.cholesky_ex(z_moment)
    if model.latent_scale_slopes is not None:  # diagonal expansion: commutes with the scales
        factor = torch.diag(z_moment.diagonal().clamp(min=0).sqrt())
    if not bool(failed) and bool((factor.diagonal() > 0).all()):
        blocks = torch.einsum("pjh,jk->pkh", blocks, factor)
        beta = torch.cat([beta[:, :n_terms], blocks.reshape(blocks.shape[0], -1)], 1)
    dtype = model.loading.dtype
    model.mean.theta.copy_(beta[:, :n_terms].T.to(dtype))
    model.loading.copy_(blocks[..., 0].to(dtype))
    if model.loading_slopes is not None:
        n_context = model.n_context
        model.loading_slopes.copy_(blocks[..., 1 : 1 + n_context].permute(2, 0, 1).to(dtype))
        if model.loading_curvature is not None:
            model.loading_curvature.copy_(blocks[..., 1 + n_context :].permute(2, 0, 1).to(dtype))
    return float((beta - old).norm() / old.norm().clamp(min=1e-300))


def _mean_loading_vector(model: FactorAnalysisModel) -> Tensor:
    """Per pixel, [Theta_p; vec(W_p blocks)] in the order of :func:`_normal_equations`."""
    blocks = [model.loading[..., None]]
    if model.loading_slopes is not None:
        blocks.append(model.loading_slopes.permute(1, 2, 0))
        if model.loading_curvature is not None:
            blocks.append(model.loading_curvature.permute(1, 2, 0))
    loading = torch.cat(blocks, -1).reshape(model.n_pixels, -1)
    return torch.cat([model.mean.theta.T, loading], 1).detach().double()


def _variance_sums(model: FactorAnalysisModel, post: _Posterior) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pixel Fisher-scoring gradient `(p, B)`, information `(p, B, B)`, and sum b b^T."""
    loading = post.loading
    fit = post.features @ model.mean.theta.detach().double()
    if loading.ndim == 2:
        fit = fit + post.mean @ loading.T
        spread = torch.einsum("pk,njk->npj", loading, post.chol_inv).square().sum(-1)
    else:
        fit = fit + (loading @ post.mean[:, :, None]).squeeze(-1)
        spread = (loading @ post.chol_inv.mT).square().sum(-1)
    q = (post.target - fit).square() + spread  # E[squared intrinsic residual]
    c = post.precision  # exactly 0 on masked pixels: they add nothing below
    n = q.shape[0]
    basis = post.features[:, :1]  # log v = psi^T [1, a'(l)], or eta alone
    if model.intrinsic_var_slopes is not None:
        basis = post.features
    tau2 = model.intrinsic_var(post.labels).detach().double()
    v = (tau2 - model.options.var_floor).expand(n, -1)
    grad = (0.5 * v * (q * c.square() - c)).T @ basis
    outer = (basis[:, :, None] * basis[:, None, :]).reshape(n, -1)
    info = ((0.5 * (v * c).square()).T @ outer).reshape(-1, basis.shape[1], basis.shape[1])
    return grad, info, basis.T @ basis


def _step_intrinsic_var(
    model: FactorAnalysisModel, grad: Tensor, info: Tensor, moment: Tensor, max_step: float
) -> float:
    """One capped Fisher-scoring step per pixel; the largest change of log tau^2 made."""
    chol, factorised = _ridged_cholesky(info)
    delta = torch.cholesky_solve(grad[:, :, None], chol).squeeze(-1)
    usable = factorised & torch.isfinite(delta).all(-1)
    delta = torch.where(usable[:, None], delta, torch.zeros_like(delta))
    rms = ((delta @ moment) * delta).sum(-1).clamp(min=0).sqrt()
    delta = delta * (max_step / rms.clamp(min=max_step))[:, None]
    before = model.intrinsic_var().detach().double()
    eta = model.log_intrinsic_var.detach().double() + delta[:, 0]
    model.log_intrinsic_var.copy_(eta.clamp(min=-80.0).to(model.log_intrinsic_var.dtype))
    if model.intrinsic_var_slopes is not None:
        model.intrinsic_var_slopes.add_(delta[:, 1:].T.to(model.intrinsic_var_slopes.dtype))
    after = model.intrinsic_var().detach().double()
    return float((torch.log(after) - torch.log(before)).abs().max())


def _scale_moments(post: _Posterior) -> Tensor:
    r""":math:`E[z'^2_{ni}]` `(n, k)` of the scaled latent vector :math:`z' = s \odot z`."""
    k = post.scale.shape[1]
    variance = post.chol_inv[:, :, :k].square().sum(1)  # diag(L^-T L^-1) of the z block
    return post.scale.square() * (post.mean[:, :k].square() + variance)


def _fit_log_scales(basis: Tensor, moments: Tensor, start: Tensor, n_newton: int = 50) -> Tensor:
    r"""Maximise :math:`\sum_n -[x_n^T b_i + \tfrac12 m_{ni} e^{-2 x_n^T b_i}]` per column i.

    Args:
        basis: `(n, B)` regressors :math:`x_n = [1, a'(l_n)]`.
        moments: `(n, k)` :math:`m_{ni} = E[z'^2_{ni}] > 0`.
        start: `(k, B)` starting coefficients.

    Returns:
        `(k, B)` coefficients: the exact maximiser (the objective is strictly concave),
        found by Newton steps halved until the objective rises.
    """
    n = basis.shape[0]

    def objective(coef: Tensor) -> Tensor:
        eta = basis @ coef.T  # (n, k)
        return -(eta + 0.5 * moments * torch.exp(-2 * eta)).sum(0) / n

    coef = start.clone()
    value = objective(coef)
    eye = torch.eye(basis.shape[1], dtype=basis.dtype, device=basis.device)
    for _ in range(n_newton):
        weight = moments * torch.exp(-2 * (basis @ coef.T))  # (n, k)
        grad = ((weight - 1).T @ basis) / n  # (k, B)
        hess = 2 * torch.einsum("nk,nb,nc->kbc", weight, basis, basis) / n
        scale = torch.diagonal(hess, dim1=-2, dim2=-1).mean(-1).clamp(min=1e-300)
        step = torch.linalg.solve(hess + 1e-12 * scale[:, None, None] * eye, grad)
        rate = torch.ones(coef.shape[0], 1, dtype=coef.dtype, device=coef.device)
        for _ in range(30):  # back-tracking, per column
            trial = coef + rate * step
            trial_value = objective(trial)
            if bool((trial_value >= value).all()):
                break
            rate = torch.where((trial_value >= value)[:, None], rate, 0.5 * rate)
        improved = trial_value >= value
        coef = torch.where(improved[:, None], trial, coef)
        gain = torch.where(improved, trial_value - value, torch.zeros_like(value))
        value = torch.maximum(trial_value, value)
        if float(gain.max()) < 1e-13:
            break
    return coef


def _step_latent_scales(model: FactorAnalysisModel, basis: Tensor, moments: Tensor) -> float:
    """The exact CM-step of the latent scales (module docstring, 3); the largest change."""
    slopes = model.latent_scale_slopes
    assert slopes is not None
    old = slopes.detach().double()
    start = torch.cat([torch.zeros_like(old[:1]), old], 0).T  # (k, 1 + T)
    coef = _fit_log_scales(basis, moments, start)
    if not bool(torch.isfinite(coef).all()):
        return 0.0
    overall = torch.exp(coef[:, 0]).to(model.loading.dtype)  # folded into W's columns
    for loading in (model.loading, model.loading_slopes, model.loading_curvature):
        if loading is not None:
            loading.mul_(overall)
    slopes.copy_(coef[:, 1:].T.to(slopes.dtype))
    change = basis[:, 1:] @ (coef[:, 1:].T - old)
    return float(change.abs().max())


def _accumulate(sums: tuple[Tensor, ...] | None, new: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Add one chunk's sums in place (the normal equations are pixels x d^2 numbers)."""
    if sums is None:
        return new
    for total, part in zip(sums, new, strict=True):
        total += part
    return sums


@torch.no_grad()
def polish_in_passes(
    model: FactorAnalysisModel,
    one_pass: Chunks,
    *,
    n_iter: int = 4,
    max_step: float = 1.0,
    parts: Sequence[str] = PARTS,
) -> list[PolishStep]:
    r"""ECM iterations over chunks from a callable (out-of-core surveys; module docstring).

    Args:
        model: a :class:`FactorAnalysisModel` (any loading and scatter options). Updated
            in place.
        one_pass: returns a fresh iterable of ``(flux, ivar, context, context_err)`` chunks
            covering the training stars once (anything at masked pixels: standardisation
            zeroes them; ``context_err`` None, or the labels' one-sigma errors to
            marginalise).
        n_iter: ECM iterations (each is one pass per updated part).
        max_step: largest root-mean-square change of :math:`\log(\tau^2 - \tau_{min}^2)`
            per pixel and iteration.
        parts: what to update, a subset of :data:`PARTS` (``"mean_loading"``: mean
            coefficients and loadings; ``"intrinsic_var"``: the per-pixel scatter and its
            label slopes; ``"latent_scale"``: the label-dependence of the latent
            directions' scales, a no-op for models without ``label_dependent_variance``).
            The scale step keeps each star's regressors and latent second moments, `(n,
            n_terms + k)` numbers, for its exact Newton solve.

    Returns:
        One :class:`PolishStep` per iteration. With ``n_iter > 0`` the model's stored
        coefficient variance (:func:`estimate_coefficient_variance`) is dropped: it
        belonged to the previous fit.

    Raises:
        FlowInputError: unsupported model or part, ``n_iter < 0`` or ``max_step <= 0``.
    """
    model = check_polishable(model)
    parts = _check_parts(parts)
    if n_iter < 0 or max_step <= 0:
        raise FlowInputError(f"need n_iter >= 0 and max_step > 0, got {n_iter}, {max_step}")
    steps = []
    if n_iter:
        model.drop_estimation_var()  # the refit makes it stale (and the E-step must not see it)
    for _ in range(n_iter):
        change = 0.0
        if "mean_loading" in parts:
            sums, n_stars = None, 0
            for flux, ivar, context, context_err in one_pass():
                new = _normal_equations(_e_step(model, flux, ivar, context, context_err))
                sums = _accumulate(sums, new)
                n_stars += flux.shape[0]
            if sums is not None:
                lhs, rhs, z_second = sums
                change = _solve_mean_loading(model, lhs, rhs, z_second / n_stars)
        tau_change, scale_change = 0.0, 0.0
        tau = "intrinsic_var" in parts
        scales = "latent_scale" in parts and model.latent_scale_slopes is not None
        if tau or scales:  # one E-step serves both CM-steps (module docstring, 2 and 3)
            sums, bases, moments = None, [], []
            for flux, ivar, context, context_err in one_pass():
                post = _e_step(model, flux, ivar, context, context_err)
                if tau:
                    sums = _accumulate(sums, _variance_sums(model, post))
                if scales and post.labels is not None:
                    bases.append(post.features)
                    moments.append(_scale_moments(post))
            if sums is not None:
                grad, info, moment = sums
                n_stars = moment[0, 0]
                tau_change = _step_intrinsic_var(model, grad, info, moment / n_stars, max_step)
            if bases:
                scale_change = _step_latent_scales(model, torch.cat(bases), torch.cat(moments))
        steps.append(PolishStep(tau_change, change, scale_change))
    return steps


@torch.no_grad()
def estimate_coefficient_variance(model: FactorAnalysisModel, one_pass: Chunks) -> None:
    r"""Store the fitted mean coefficients' estimation covariance in the model.

    One pass of the mean-and-loading normal equations at the current parameters (an E-step,
    no update); per pixel the inverse of :math:`\sum_n D_{np}^{-1} E[g_n g_n^T]`, the
    information of the coefficients given the latent vectors (the complete-data
    information: it ignores what the latent vectors' own uncertainty adds, so it is a lower
    bound on the variance, close where the training stars' latents are well determined).
    The mean block of that inverse (the mean coefficients' covariance with the loadings
    estimated jointly) goes to ``mean_coef_var``, and
    :meth:`FactorAnalysisModel.estimation_var` adds it to the intrinsic variance of every
    star the model predicts (it also says why the loadings' block is not used). Pixels
    without data get 0. Call it after the last ECM iteration: ECM steps make it stale.

    Args:
        model: a :class:`FactorAnalysisModel`. Its buffer ``mean_coef_var`` is replaced.
        one_pass: the training chunks, as for :func:`polish_in_passes`.
    """
    model = check_polishable(model)
    model.drop_estimation_var()  # the E-step must not see it
    lhs = None
    for flux, ivar, context, context_err in one_pass():
        new = _normal_equations(_e_step(model, flux, ivar, context, context_err))[:1]
        lhs = _accumulate(lhs, new)
    if lhs is None:
        return
    chol, factorised = _ridged_cholesky(lhs[0])
    cov = torch.cholesky_inverse(chol)
    usable = factorised & torch.isfinite(cov).flatten(1).all(-1)
    cov = torch.where(usable[:, None, None], cov, torch.zeros_like(cov))
    n_terms = model.mean.theta.shape[0]
    model.mean_coef_var = cov[:, :n_terms, :n_terms].to(model.loading.dtype).contiguous()


def _in_memory(
    model: FactorAnalysisModel,
    flux: Tensor,
    ivar: Tensor,
    context: Tensor | None,
    context_err: Tensor | None,
    chunk_size: int,
) -> Chunks:
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
    model._check_context_err(context_err, context)

    def one_pass() -> Iterator[Chunk]:
        for part in star_chunks(flux.shape[0], chunk_size):
            yield (
                flux[part],
                ivar[part],
                None if context is None else context[part],
                None if context_err is None else context_err[part],
            )

    return one_pass


@torch.no_grad()
def polish_factor_analysis(
    model: FactorAnalysisModel,
    flux: Tensor,
    ivar: Tensor,
    context: Tensor | None,
    *,
    n_iter: int = 4,
    chunk_size: int = 256,
    max_step: float = 1.0,
    parts: Sequence[str] = PARTS,
    context_err: Tensor | None = None,
    coefficient_variance: bool = False,
) -> list[PolishStep]:
    r"""ECM iterations on a factor-analysis model's mean, loadings and scatter, in place.

    Args:
        model: a :class:`FactorAnalysisModel` (trained, or just warm-started by
            ``initialize_from_data``).
        flux: `(n_stars, n_pixels)` training flux; anything at masked pixels.
        ivar: `(n_stars, n_pixels)` inverse variance, 0 = masked.
        context: `(n_stars, n_context)` labels in physical units, or None.
        n_iter: ECM iterations.
        chunk_size: stars per chunk (memory ~ chunk x pixels x k numbers, plus
            pixels x d^2 for the normal equations, module docstring).
        max_step: see :func:`polish_in_passes`.
        parts: see :func:`polish_in_passes`.
        context_err: `(n_stars, n_context)` one-sigma label errors, physical units, or
            None: marginalised exactly as in the model's likelihood (the latent vector is
            ``[z; e]``; module docstring). Needs ``mean_hidden = 0``.
        coefficient_variance: afterwards, store the fitted coefficients' estimation
            covariance (:func:`estimate_coefficient_variance`, one more pass) so that the
            model's predictions for new stars include it.

    Returns:
        One :class:`PolishStep` per iteration.

    Raises:
        FlowInputError: unsupported model or part, or inputs of the wrong shape.
    """
    one_pass = _in_memory(model, flux, ivar, context, context_err, chunk_size)
    steps = polish_in_passes(model, one_pass, n_iter=n_iter, max_step=max_step, parts=parts)
    if coefficient_variance:
        estimate_coefficient_variance(model, one_pass)
    return steps


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
    r"""ECM steps on :math:`\tau^2` only (mean and loadings fixed); session 6's polish.

    Arguments as :func:`polish_factor_analysis`. Returns, per iteration, the largest change
    of :math:`\log \tau^2` made (pixels held at ``var_floor`` count as unchanged).
    """
    steps = polish_factor_analysis(
        model,
        flux,
        ivar,
        context,
        n_iter=n_iter,
        chunk_size=chunk_size,
        max_step=max_step,
        parts=("intrinsic_var",),
    )
    return [step.max_log_tau2_change for step in steps]
