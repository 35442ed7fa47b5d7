"""Models whose density is a known Gaussian equal torch's MultivariateNormal to float64
precision (DESIGN-NOTES 1), with masks, noise, label-dependent loadings and temperature."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from stellarflow.flows import (
    CannonModel,
    FactorAnalysisModel,
    LatentFlowModel,
    SpectralCouplingFlow,
)
from stellarflow.flows.base import SpectralModel
from stellarflow.flows.latent import identity_init
from stellarflow.flows.registry import build_model
from tests.flows._helpers import perturbed_model, random_batch

P, L, N = 8, 2, 6


def _reference_covariance(
    model: SpectralModel, context: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean `(N, P)` and noise-free covariance `(N, P, P)` in flux units, built by hand."""
    labels = (context - model.context_loc) / model.context_scale
    s = model.flux_scale
    mean = model.flux_loc + s * model.mean(labels)
    var = temperature**2 * s**2 * model.intrinsic_var()
    cov = torch.diag_embed(var.expand(N, P))
    if isinstance(model, FactorAnalysisModel | LatentFlowModel):
        w = s[:, None] * model.loading_at(labels)
        w = w.expand(N, P, w.shape[-1])
        cov = cov + temperature**2 * w @ w.transpose(-1, -2)
    return mean, cov


def _mvn_log_prob(
    mean: torch.Tensor, cov: torch.Tensor, flux: torch.Tensor, ivar: torch.Tensor | None
) -> torch.Tensor:
    out = []
    for n in range(flux.shape[0]):
        o = torch.ones(P, dtype=torch.bool) if ivar is None else ivar[n] > 0
        c = cov[n][o][:, o]
        if ivar is not None:
            c = c + torch.diag(1 / ivar[n, o])
        out.append(MultivariateNormal(mean[n, o], c).log_prob(flux[n, o]))
    return torch.stack(out)


GAUSSIAN_MODELS = [
    pytest.param("cannon", {}, id="cannon"),
    pytest.param("factor_analysis", {"n_latent": 3}, id="factor_analysis"),
    pytest.param(
        "factor_analysis", {"n_latent": 3, "label_dependent_loading": True}, id="fa_labelW"
    ),
    pytest.param("latent_flow", {"n_latent": 3, "flow_hidden": 8}, id="latent_identity_prior"),
    pytest.param(
        "latent_flow",
        {"n_latent": 3, "flow_hidden": 8, "label_dependent_loading": True, "mean_hidden": 4},
        id="latent_identity_prior_labelW_mlp",
    ),
]


@pytest.mark.parametrize(("kind", "options"), GAUSSIAN_MODELS)
@pytest.mark.parametrize("noisy", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_log_prob_equals_multivariate_normal(
    kind: str, options: dict, noisy: bool, temperature: float
) -> None:
    model = perturbed_model(kind, P, L, options)
    if isinstance(model, LatentFlowModel):  # identity flow: the prior is exactly N(0, I)
        identity_init(model.prior_flow)
    flux, ivar, context = random_batch(N, P, L)
    ivar = ivar if noisy else None
    dist = model(context, ivar=ivar, temperature=temperature)
    mean, cov = _reference_covariance(model, context, temperature)
    expected = _mvn_log_prob(mean, cov, flux, ivar)
    if isinstance(model, LatentFlowModel):
        estimate = dist.log_prob_estimate(flux)
        torch.testing.assert_close(estimate.std_error, torch.zeros(N), rtol=0, atol=1e-6)
        torch.testing.assert_close(estimate.log_prob, expected, rtol=0, atol=1e-10)
    else:
        assert dist.log_prob_is_exact
        torch.testing.assert_close(dist.log_prob(flux), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["factor_analysis", "latent_flow"])
@pytest.mark.parametrize("noisy", [False, True])
def test_label_dependent_variance_is_the_hand_built_normal(kind: str, noisy: bool) -> None:
    """W(l) = W diag exp(a'(l) A), tau^2(l) = exp(eta + a'(l) B) + floor, built by hand."""
    options = {"n_latent": 3, "label_dependent_variance": True}
    if kind == "latent_flow":
        options |= {"flow_hidden": 8, "label_dependent_loading": True}
    model = perturbed_model(kind, P, L, options)
    if isinstance(model, LatentFlowModel):
        identity_init(model.prior_flow)
    flux, ivar, context = random_batch(N, P, L)
    ivar = ivar if noisy else None
    labels = (context - model.context_loc) / model.context_scale
    l1, l2 = labels[:, 0], labels[:, 1]
    features = torch.stack([l1, l2, l1 * l1, l1 * l2, l2 * l2], dim=-1)  # a'(l), no constant
    with torch.no_grad():
        loading = model.loading
        if model.loading_slopes is not None:
            loading = loading + l1[:, None, None] * model.loading_slopes[0]
            loading = loading + l2[:, None, None] * model.loading_slopes[1]
        scale = torch.exp(features @ model.latent_scale_slopes)
        w = model.flux_scale[:, None] * loading * scale[:, None, :]
        log_var = model.log_intrinsic_var + features @ model.intrinsic_var_slopes
        var = model.flux_scale**2 * (log_var.exp() + model.options.var_floor)
        cov = torch.diag_embed(var) + w @ w.transpose(-1, -2)
        mean = model.flux_loc + model.flux_scale * model.mean(labels)
    expected = _mvn_log_prob(mean, cov, flux, ivar)
    got = model(context, ivar=ivar).log_prob(flux)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
    if kind == "factor_analysis":  # (a flow prior's Cov[z] is a sample estimate)
        factors = model.covariance(context)
        torch.testing.assert_close(factors.covariance(), cov, rtol=1e-9, atol=1e-12)
    assert var.std(0).min() > 0  # the variance really changes from star to star


def test_zero_variance_slopes_are_the_label_independent_model() -> None:
    plain = perturbed_model("factor_analysis", P, L, {"n_latent": 2})
    varying = build_model("factor_analysis", P, L, n_latent=2, label_dependent_variance=True)
    state = plain.state_dict()
    missing = varying.load_state_dict(state, strict=False).missing_keys
    assert sorted(missing) == ["intrinsic_var_slopes", "latent_scale_slopes"]
    with torch.no_grad():
        varying.intrinsic_var_slopes.zero_()
        varying.latent_scale_slopes.zero_()
    flux, ivar, context = random_batch(N, P, L)
    torch.testing.assert_close(
        varying(context, ivar=ivar).log_prob(flux), plain(context, ivar=ivar).log_prob(flux)
    )


def test_label_dependent_loading_changes_with_labels() -> None:
    model = perturbed_model(
        "factor_analysis", P, L, {"n_latent": 2, "label_dependent_loading": True}
    )
    assert isinstance(model, FactorAnalysisModel)
    labels = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    w = model.loading_at(labels)
    assert w.shape == (2, P, 2)
    torch.testing.assert_close(w[0], model.loading)
    torch.testing.assert_close(w[1] - w[0], model.loading_slopes[0])


def test_identity_coupling_flow_is_the_diagonal_gaussian() -> None:
    options = {"n_layers": 2, "projection": 4, "hidden": 8, "head_rank": 2, "conv_channels": 2}
    model = perturbed_model("coupling", P, L, options)
    assert isinstance(model, SpectralCouplingFlow)
    with torch.no_grad():  # zero spline parameters: every coupling layer is the identity
        for layer in model.layers:
            layer.head.weight.zero_()
            layer.head.bias.zero_()
            layer.pixel_bias.zero_()
            layer.conv_out.zero_()
    flux, ivar, context = random_batch(N, P, L)
    labels = (context - model.context_loc) / model.context_scale
    mean = model.flux_loc + model.flux_scale * model.mean(labels)
    std = model.flux_scale * model.log_scale.exp()
    cov = torch.diag_embed((0.7 * std).pow(2).expand(N, P))
    expected = _mvn_log_prob(mean, cov, flux, None)
    torch.testing.assert_close(model(context, temperature=0.7).log_prob(flux), expected)
    # ...and then the mask-only approximation is exact: the marginal over observed pixels.
    cov = torch.diag_embed(std.pow(2).expand(N, P))
    marginal = _mvn_log_prob(mean, cov, flux, torch.where(ivar > 0, torch.inf, 0.0))
    torch.testing.assert_close(model.observed_log_prob(flux, ivar, context), marginal)


def test_factor_analysis_posterior_equals_gaussian_conditioning() -> None:
    model = perturbed_model("factor_analysis", P, L, {"n_latent": 3})
    flux, ivar, context = random_batch(N, P, L)
    prediction = model.posterior_mean(flux, ivar, context)
    mean, cov = _reference_covariance(model, context, 1.0)
    for n in range(N):
        o = ivar[n] > 0
        cov_oo = cov[n][o][:, o] + torch.diag(1 / ivar[n, o])
        gain = cov[n][:, o] @ torch.linalg.inv(cov_oo)
        post_mean = mean[n] + gain @ (flux[n, o] - mean[n, o])
        post_var = torch.diagonal(cov[n] - gain @ cov[n][o, :])
        torch.testing.assert_close(prediction.mean[n], post_mean)
        torch.testing.assert_close(prediction.std[n], post_var.sqrt())
    assert prediction.latent_mean.shape == (N, 3)
    assert prediction.latent_cov.shape == (N, 3, 3)
    residual = (flux - prediction.predicted) / prediction.predicted_std
    assert torch.isfinite(residual[ivar > 0]).all()


def test_cannon_posterior_equals_gaussian_conditioning() -> None:
    model = perturbed_model("cannon", P, L, {})
    assert isinstance(model, CannonModel)
    flux, ivar, context = random_batch(N, P, L)
    prediction = model.posterior_mean(flux, ivar, context)
    mean, cov = _reference_covariance(model, context, 1.0)
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    observed = ivar > 0
    gain = torch.where(observed, var / (var + 1 / ivar.clamp(min=1e-30)), 0.0)
    flux = torch.where(observed, flux, mean)
    torch.testing.assert_close(prediction.mean, mean + gain * (flux - mean))
    torch.testing.assert_close(prediction.std, (var * (1 - gain)).sqrt())


def test_latent_flow_posterior_matches_factor_analysis_with_identity_prior() -> None:
    options = {"n_latent": 3, "flow_hidden": 8, "n_importance": 4096}
    model = perturbed_model("latent_flow", P, L, options)
    assert isinstance(model, LatentFlowModel)
    identity_init(model.prior_flow)
    reference = perturbed_model("factor_analysis", P, L, {"n_latent": 3})
    reference.load_state_dict(model.state_dict(), strict=False)
    flux, ivar, context = random_batch(N, P, L)
    got = model.posterior_mean(flux, ivar, context, generator=torch.Generator().manual_seed(0))
    want = reference.posterior_mean(flux, ivar, context)
    scale = model.flux_scale
    torch.testing.assert_close((got.mean - want.mean) / scale, torch.zeros(N, P), atol=0.05, rtol=0)
    torch.testing.assert_close(got.latent_cov, want.latent_cov, atol=0.05, rtol=0.1)


def test_covariance_factors() -> None:
    fa = perturbed_model("factor_analysis", P, L, {"n_latent": 3, "label_dependent_loading": True})
    _, _, context = random_batch(N, P, L)
    factors = fa.covariance(context, temperature=0.5)
    _, cov = _reference_covariance(fa, context, 0.5)
    torch.testing.assert_close(factors.covariance(), cov)
    pixels = torch.tensor([1, 4, 6])
    torch.testing.assert_close(factors.covariance(pixels), cov[:, pixels][:, :, pixels])
    corr = factors.correlation(pixels)
    torch.testing.assert_close(torch.diagonal(corr, dim1=-2, dim2=-1), torch.ones(N, 3))
    assert factors.n_samples == 0

    latent = perturbed_model("latent_flow", P, L, {"n_latent": 3, "flow_hidden": 8})
    identity_init(latent.prior_flow)
    factors = latent.covariance(
        context, n_samples=20000, generator=torch.Generator().manual_seed(0)
    )
    assert factors.n_samples == 20000
    eye = torch.eye(3).expand(N, 3, 3)
    torch.testing.assert_close(factors.latent_cov, eye, atol=0.05, rtol=0)
    torch.testing.assert_close(factors.latent_mean, torch.zeros(N, 3), atol=0.05, rtol=0)


def test_latent_flow_prior_moments_in_slices(monkeypatch) -> None:
    """The prior's moments are the sample moments of its draws, however they are sliced."""
    from stellarflow.flows import latent

    model = perturbed_model("latent_flow", P, L, {"n_latent": 3})
    _, _, context = random_batch(N, P, L)
    labels = model.standardize_context(context)

    def moments() -> tuple[torch.Tensor, torch.Tensor]:
        return model._latent_moments(labels, 0.8, 500, torch.Generator().manual_seed(3))

    whole_mean, whole_cov = moments()
    monkeypatch.setattr(latent, "_MOMENT_ROWS", 1)  # one draw per slice
    mean, cov = moments()
    torch.testing.assert_close(mean, whole_mean)
    torch.testing.assert_close(cov, whole_cov)
    # the same numbers as the textbook estimate from all draws at once
    eps = torch.randn((500, N, 3), generator=torch.Generator().manual_seed(3), dtype=mean.dtype)
    z = model._prior(labels, 0.8).transform_base(eps)
    torch.testing.assert_close(mean, z.mean(0))
    dz = z - z.mean(0)
    torch.testing.assert_close(cov, torch.einsum("nsi,nsj->sij", dz, dz) / 499)


def test_per_star_matmul_equals_broadcast_matmul() -> None:
    from stellarflow.flows.linear_gaussian import per_star_matmul

    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(4, 6, 2, generator=generator, dtype=torch.float64)
    for shape in ((4, 6), (3, 4, 6), (2, 3, 4, 6), (3, 1, 6)):
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
        expected = torch.einsum("...sa,sab->...sb", x.expand(*shape[:-2], 4, 6), matrix)
        torch.testing.assert_close(per_star_matmul(x, matrix), expected)
    # a matrix shared by several batch dimensions
    matrix = torch.randn(2, 4, 6, 3, generator=generator, dtype=torch.float64)
    x = torch.randn(5, 2, 4, 6, generator=generator, dtype=torch.float64)
    expected = torch.einsum("nija,ijab->nijb", x, matrix)
    torch.testing.assert_close(per_star_matmul(x, matrix), expected)
