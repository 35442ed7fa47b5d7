"""The latent-flow model's importance-sampled log_prob: convergence and reported precision."""

from __future__ import annotations

import torch

from stellarflow.flows import FactorAnalysisModel, LatentFlowModel
from stellarflow.flows.latent import FlowPrior, identity_init
from tests.flows._helpers import perturbed_model, random_batch

P, L, N, K = 8, 2, 6, 3
OPTIONS = {"n_latent": K, "flow_hidden": 8, "flow_transforms": 2}


def _repeated(
    model: LatentFlowModel, batch: tuple[torch.Tensor, ...], n_importance: int, repeats: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimates `(repeats, N)` with independent seeds, and their reported std errors."""
    flux, ivar, context = batch
    values, errors = [], []
    with torch.no_grad():
        for seed in range(repeats):
            generator = torch.Generator().manual_seed(seed)
            est = model.log_prob_estimate(flux, ivar, context, n_importance, generator)
            values.append(est.log_prob)
            errors.append(est.std_error)
    return torch.stack(values), torch.stack(errors)


def test_likelihood_proposal_converges_to_the_exact_value_for_a_gaussian_prior() -> None:
    model = perturbed_model("latent_flow", P, L, {**OPTIONS, "proposal": "likelihood"})
    assert isinstance(model, LatentFlowModel)
    identity_init(model.prior_flow)  # prior exactly N(0, I): the model is factor analysis
    exact_model = FactorAnalysisModel(P, L, n_latent=K)
    exact_model.load_state_dict(model.state_dict(), strict=False)
    batch = random_batch(N, P, L)
    flux, ivar, context = batch
    with torch.no_grad():
        exact = exact_model(context, ivar=ivar).log_prob(flux)
    repeats = 40
    spread = {}
    for m in (4, 64, 1024):
        values, _ = _repeated(model, batch, m, repeats)
        spread[m] = values.std(0)
        bias = values.mean(0) - exact
        # A lower bound in expectation, and unbiased in the limit.
        assert (bias < 4 * spread[m] / repeats**0.5 + 1e-9).all()
        if m == 1024:
            assert (bias.abs() < 4 * spread[m] / repeats**0.5 + 1e-6).all()
            assert spread[m].max() < 0.1
    # The standard deviation falls like 1 / sqrt(M).
    assert (spread[1024] < spread[4] / 8).all()


def test_posterior_proposal_is_exact_for_a_gaussian_prior() -> None:
    model = perturbed_model("latent_flow", P, L, OPTIONS)
    identity_init(model.prior_flow)
    values, errors = _repeated(model, random_batch(N, P, L), 2, 3)
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=1e-10)
    assert errors.max() < 1e-6


def test_reported_std_error_matches_the_spread_of_repeated_estimates() -> None:
    model = perturbed_model("latent_flow", P, L, OPTIONS)  # non-Gaussian prior
    with torch.no_grad():
        model.loading.mul_(3)  # moderately informative data: a regime where M = 32 is enough
    values, errors = _repeated(model, random_batch(N, P, L), 32, 200)
    ratio = values.std(0) / errors.mean(0)
    assert ((ratio > 0.6) & (ratio < 1.6)).all(), ratio
    # Quadrupling M halves the noise.
    values_128, _ = _repeated(model, random_batch(N, P, L), 128, 100)
    halving = values_128.std(0) / values.std(0)
    assert ((halving > 0.3) & (halving < 0.85)).all(), halving


def test_estimate_is_a_lower_bound_in_expectation() -> None:
    model = perturbed_model("latent_flow", P, L, OPTIONS)
    batch = random_batch(N, P, L)
    few, _ = _repeated(model, batch, 2, 200)
    many, many_errors = _repeated(model, batch, 4096, 2)
    reference = many.mean(0)
    assert (few.mean(0) < reference + 4 * few.std(0) / 200**0.5 + 3 * many_errors.max()).all()


def test_effective_sample_size_is_reported() -> None:
    model = perturbed_model("latent_flow", P, L, OPTIONS)
    flux, ivar, context = random_batch(N, P, L)
    est = model.log_prob_estimate(flux, ivar, context, n_importance=16)
    assert est.ess.shape == (N,)
    assert ((est.ess >= 1 - 1e-9) & (est.ess <= 16 + 1e-9)).all()


def test_gaussian_approximation_of_the_prior() -> None:
    model = perturbed_model("latent_flow", P, L, OPTIONS)
    generator = torch.Generator().manual_seed(5)
    context = torch.randn(4, L, generator=generator)
    flow = model.prior_flow(model.standardize_context(context))
    prior = FlowPrior(flow, temperature=0.8)
    z = torch.randn(4, K, generator=generator)
    # Forward differences are exact to O(step * curvature); a perturbed spline can be sharp.
    reference = prior.gaussian_approximation(z, step=1e-6)
    jac = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda v, i=i: flow.transform(v)[i], z)[:, i]
            for i in range(4)
        ]
    )
    torch.testing.assert_close(
        reference.precision, jac.transpose(-1, -2) @ jac / 0.64, rtol=1e-4, atol=1e-4
    )
    # Its mean is where the linearised flow maps to the base origin.
    linear = flow.transform(z) + (jac @ (reference.mean - z)[..., None]).squeeze(-1)
    torch.testing.assert_close(linear, torch.zeros(4, K), rtol=0, atol=1e-4)
    identity_init(model.prior_flow)
    exact = FlowPrior(model.prior_flow(model.standardize_context(context)), 0.8)
    reference = exact.gaussian_approximation(z)
    torch.testing.assert_close(reference.precision, torch.eye(K).expand(4, K, K) / 0.64)
    torch.testing.assert_close(reference.mean, torch.zeros(4, K), rtol=0, atol=1e-9)


def test_laplace_refinement_keeps_the_estimate_unbiased() -> None:
    """Any proposal gives an unbiased estimate of p; the refinement only changes the noise
    (here, on a wiggly random prior, it raises it, which is why it is off by default)."""
    batch = random_batch(N, P, L)
    estimates = {}
    for refinements in (0, 1, 2):
        options = {**OPTIONS, "proposal_refinements": refinements}
        model = perturbed_model("latent_flow", P, L, options)
        with torch.no_grad():  # one direction well constrained, the others barely
            model.loading[:, 0].mul_(5)
            model.loading[:, 1:].mul_(0.05)
        values, errors = _repeated(model, batch, 1024, 4)
        estimates[refinements] = (values.mean(0), values.std(0) / 2 + errors.mean(0) / 2)
    reference, ref_error = estimates[0]
    for refinements in (1, 2):
        value, error = estimates[refinements]
        assert ((value - reference).abs() < 4 * (error + ref_error) + 1e-3).all()
