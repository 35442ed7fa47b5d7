"""The labels' own uncertainties (``context_err``): extra Gaussian latent columns J diag(err).

References are built by hand, with J from autograd: a dense multivariate normal with
covariance S (T^2 W W^T + T^2 diag tau^2 + J Sigma_l J^T) S + diag(1 / ivar) over the
observed pixels (label errors are not tempered).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.distributions import MultivariateNormal

from stellarflow.flows import FlowInputError, LatentFlowModel, SpectralModel
from stellarflow.flows.base import QuadraticMean
from stellarflow.flows.latent import FlowPrior, ProductPrior, identity_init
from tests.flows._helpers import NOISE_AWARE, perturbed_model, random_batch

P, L, N = 8, 2, 6
NOISE_CASES = pytest.mark.parametrize(
    ("case", "kind", "options"), NOISE_AWARE, ids=[c[0] for c in NOISE_AWARE]
)


def _label_errors(seed: int = 5) -> torch.Tensor:
    """Errors in physical units, of the size of each label's scale (some exactly 0)."""
    generator = torch.Generator().manual_seed(seed)
    err = 0.5 * torch.rand(N, L, generator=generator)
    err[0, 1] = 0.0
    return err


def _autograd_jacobian(model: SpectralModel, labels: torch.Tensor) -> torch.Tensor:
    """d mu / d l `(N, P, L)` by reverse-mode autograd, one star at a time."""
    rows = [torch.autograd.functional.jacobian(model.mean, labels[n]) for n in range(N)]
    return torch.stack(rows)


def _dense_log_prob(
    model: SpectralModel,
    flux: torch.Tensor,
    ivar: torch.Tensor | None,
    context: torch.Tensor,
    err: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    labels = (context - model.context_loc) / model.context_scale
    s = model.flux_scale
    mean = model.flux_loc + s * model.mean(labels)
    jac = _autograd_jacobian(model, labels) * (err / model.context_scale)[:, None, :]
    cov = jac @ jac.transpose(-1, -2) + temperature**2 * torch.diag(model.intrinsic_var())
    if hasattr(model, "loading_at"):
        w = model.loading_at(labels).expand(N, P, -1)
        cov = cov + temperature**2 * w @ w.transpose(-1, -2)
    cov = s[:, None] * cov * s[None, :]
    out = []
    for n in range(N):
        o = torch.ones(P, dtype=torch.bool) if ivar is None else ivar[n] > 0
        c = cov[n][o][:, o]
        if ivar is not None:
            c = c + torch.diag(1 / ivar[n, o])
        out.append(MultivariateNormal(mean[n, o], c).log_prob(flux[n, o]))
    return torch.stack(out)


@pytest.mark.parametrize("hidden", [0, 4])
def test_mean_jacobian_matches_autograd(hidden: int) -> None:
    mean = QuadraticMean(P, 3, hidden)
    with torch.no_grad():
        mean.theta.normal_(generator=torch.Generator().manual_seed(0))
    labels = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(1))
    got = mean.jacobian(labels)
    assert got.shape == (4, 5, P, 3)
    flat = labels.reshape(-1, 3)
    want = torch.stack([torch.autograd.functional.jacobian(mean, x) for x in flat])
    torch.testing.assert_close(got.reshape(-1, P, 3), want, rtol=0, atol=1e-12)


@NOISE_CASES
def test_zero_label_errors_change_nothing(case: str, kind: str, options: dict[str, Any]) -> None:
    model = perturbed_model(kind, P, L, options)
    flux, ivar, context = random_batch(N, P, L)
    zeros = torch.zeros(N, L)

    def run(err: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        log_prob = model.observed_log_prob(
            flux, ivar, context, generator=torch.Generator().manual_seed(0), context_err=err
        )
        dist = model(context, ivar=ivar, context_err=err)
        return log_prob, dist.sample((2,), generator=torch.Generator().manual_seed(1))

    log_prob, sample = run(None)
    log_prob0, sample0 = run(zeros)
    torch.testing.assert_close(log_prob0, log_prob, rtol=0, atol=1e-10)
    torch.testing.assert_close(sample0, sample, rtol=0, atol=1e-12, equal_nan=True)
    # and a real error changes the likelihood, with gradients to every parameter
    model.loss(flux, ivar, context, context_err=_label_errors()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        pytest.param("cannon", {}, id="cannon"),
        pytest.param("factor_analysis", {"n_latent": 3}, id="factor_analysis"),
        pytest.param(
            "factor_analysis", {"n_latent": 3, "label_dependent_loading": True}, id="fa_labelW"
        ),
    ],
)
@pytest.mark.parametrize("noisy", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_log_prob_with_label_errors_equals_dense_gaussian(
    kind: str, options: dict, noisy: bool, temperature: float
) -> None:
    model = perturbed_model(kind, P, L, options)
    flux, ivar, context = random_batch(N, P, L)
    ivar = ivar if noisy else None
    err = _label_errors()
    dist = model(context, ivar=ivar, temperature=temperature, context_err=err)
    assert dist.log_prob_is_exact
    expected = _dense_log_prob(model, flux, ivar, context, err, temperature)
    torch.testing.assert_close(dist.log_prob(flux), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("refinements", [0, 1])
def test_identity_latent_flow_equals_factor_analysis_with_label_errors(refinements: int) -> None:
    options = {"n_latent": 3, "flow_hidden": 8, "mean_hidden": 4, "n_importance": 8}
    model = perturbed_model("latent_flow", P, L, {**options, "proposal_refinements": refinements})
    assert isinstance(model, LatentFlowModel)
    identity_init(model.prior_flow)  # prior exactly N(0, I): the posterior proposal is exact
    flux, ivar, context = random_batch(N, P, L)
    err = _label_errors()
    estimate = model.log_prob_estimate(flux, ivar, context, context_err=err)
    expected = _dense_log_prob(model, flux, ivar, context, err, 1.0)
    torch.testing.assert_close(estimate.std_error, torch.zeros(N), rtol=0, atol=1e-6)
    torch.testing.assert_close(estimate.log_prob, expected, rtol=0, atol=1e-8)
    assert estimate.latent_mean.shape == (N, 3 + L)


def test_likelihood_proposal_with_label_errors_converges() -> None:
    options = {"n_latent": 2, "flow_hidden": 8, "proposal": "likelihood", "n_importance": 4096}
    model = perturbed_model("latent_flow", P, L, options)
    identity_init(model.prior_flow)
    flux, ivar, context = random_batch(N, P, L)
    err = _label_errors()  # one zero error: the reference must keep Q invertible
    estimate = model.log_prob_estimate(
        flux, ivar, context, generator=torch.Generator().manual_seed(0), context_err=err
    )
    expected = _dense_log_prob(model, flux, ivar, context, err, 1.0)
    assert torch.all((estimate.log_prob - expected).abs() < 5 * estimate.std_error + 1e-3)


def test_factor_analysis_posterior_with_label_errors_equals_gaussian_conditioning() -> None:
    model = perturbed_model("factor_analysis", P, L, {"n_latent": 3})
    flux, ivar, context = random_batch(N, P, L)
    err = _label_errors()
    prediction = model.posterior_mean(flux, ivar, context, context_err=err)
    labels = (context - model.context_loc) / model.context_scale
    s = model.flux_scale
    mean = model.flux_loc + s * model.mean(labels)
    jac = _autograd_jacobian(model, labels) * (err / model.context_scale)[:, None, :]
    w = torch.cat([model.loading.expand(N, P, 3), jac], dim=-1)
    cov = w @ w.transpose(-1, -2) + torch.diag(model.intrinsic_var())
    cov = s[:, None] * cov * s[None, :]
    for n in range(N):
        o = ivar[n] > 0
        gain = cov[n][:, o] @ torch.linalg.inv(cov[n][o][:, o] + torch.diag(1 / ivar[n, o]))
        torch.testing.assert_close(prediction.mean[n], mean[n] + gain @ (flux[n, o] - mean[n, o]))
        torch.testing.assert_close(
            prediction.std[n], torch.diagonal(cov[n] - gain @ cov[n][o, :]).sqrt()
        )
    assert prediction.latent_mean.shape == (N, 3 + L)
    assert prediction.latent_cov.shape == (N, 3 + L, 3 + L)


def test_samples_spread_by_the_label_errors() -> None:
    """The sample covariance of noise-free draws is S (W W^T + tau^2 + J Sigma J^T) S."""
    model = perturbed_model("cannon", P, L, {})
    _, _, context = random_batch(1, P, L)
    err = torch.tensor([[0.8, 0.5]])
    draws = model(context, context_err=err).sample(
        (40_000,), generator=torch.Generator().manual_seed(0)
    )[:, 0]
    labels = (context - model.context_loc) / model.context_scale
    jac = torch.autograd.functional.jacobian(model.mean, labels[0])
    jac = jac * (err[0] / model.context_scale)
    cov = jac @ jac.T + torch.diag(model.intrinsic_var())
    cov = model.flux_scale[:, None] * cov * model.flux_scale[None, :]
    got = torch.cov(draws.T)
    scale = torch.diagonal(cov).sqrt()
    torch.testing.assert_close(got / (scale[:, None] * scale), cov / (scale[:, None] * scale),
                               rtol=0, atol=0.04)  # fmt: skip
    assert (torch.diagonal(got) / model.flux_scale**2 > 1.5 * model.intrinsic_var()).any()


def test_product_prior_is_the_flow_times_a_gaussian() -> None:
    model = perturbed_model("latent_flow", P, L, {"n_latent": 3, "flow_hidden": 8})
    labels = torch.randn(N, L, generator=torch.Generator().manual_seed(2))
    flow = FlowPrior(model.prior_flow(labels), temperature=0.7)
    prior = ProductPrior(flow, 2, temperature=0.7)
    z = torch.randn(4, N, 5, generator=torch.Generator().manual_seed(3))
    gaussian = -0.5 * (z[..., 3:] / 0.7) ** 2 - math.log(0.7) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(prior.log_prob(z), flow.log_prob(z[..., :3]) + gaussian.sum(-1))
    draws = prior.transform_base(z)
    torch.testing.assert_close(draws[..., :3], flow.transform_base(z[..., :3]))
    torch.testing.assert_close(draws[..., 3:], 0.7 * z[..., 3:])
    approx = prior.gaussian_approximation(z[0])
    inner = flow.gaussian_approximation(z[0, :, :3])
    assert isinstance(approx.precision, torch.Tensor)
    torch.testing.assert_close(approx.precision[:, :3, :3], inner.precision)
    torch.testing.assert_close(approx.precision[:, 3:, 3:], torch.eye(2).expand(N, 2, 2) / 0.49)
    assert approx.precision[:, :3, 3:].abs().max() == 0
    assert approx.mean is not None and inner.mean is not None
    torch.testing.assert_close(approx.mean, torch.cat([inner.mean, torch.zeros(N, 2)], -1))


@NOISE_CASES
def test_bad_label_errors_are_rejected(case: str, kind: str, options: dict[str, Any]) -> None:
    model = perturbed_model(kind, P, L, options)
    flux, ivar, context = random_batch(N, P, L)
    err = _label_errors()
    bad = {
        "shape of context": err[:, :1],
        "finite and >= 0": torch.where(err > 0.2, -err, err),
    }
    nan = err.clone()
    nan[1, 0] = math.nan
    bad["finite and >= 0 "] = nan
    inf = err.clone()
    inf[2, 1] = math.inf
    bad[" finite and >= 0"] = inf
    for message, value in bad.items():
        with pytest.raises(FlowInputError, match=message.strip()):
            model.observed_log_prob(flux, ivar, context, context_err=value)
    with pytest.raises(FlowInputError, match="floating-point"):
        model(context, context_err=torch.ones(N, L, dtype=torch.int64))
    with pytest.raises(FlowInputError, match="float32"):
        model(context, context_err=err.float())


def test_label_errors_need_labels_and_a_linear_gaussian_model() -> None:
    unconditional = perturbed_model("factor_analysis", P, 0, {"n_latent": 2})
    with pytest.raises(FlowInputError, match="context is None"):
        unconditional(None, context_err=torch.zeros(N, 0))
    coupling = perturbed_model("coupling", P, L, {"n_layers": 2, "hidden": 8, "projection": 4})
    flux, ivar, context = random_batch(N, P, L)
    with pytest.raises(FlowInputError, match="cannot use label errors"):
        coupling(context, context_err=_label_errors())
    with pytest.raises(FlowInputError, match="cannot use label errors"):
        coupling.observed_log_prob(flux, ivar, context, context_err=_label_errors())
