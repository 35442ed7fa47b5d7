"""The closed-form tau^2 polish of factor analysis: ascent, stationarity, masks, refusals."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from stellarflow.flows import FlowInputError, build_model
from stellarflow.flows.polish import polish_intrinsic_variance

N_STARS, N_PIXELS, N_LATENT = 2000, 12, 2


def _survey(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Factor-analysis spectra with a label-dependent mean and S/N spread over 10x."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.rand(N_STARS, 1, generator=gen, dtype=torch.float64)
    loading = 0.05 * torch.randn(N_PIXELS, N_LATENT, generator=gen, dtype=torch.float64)
    tau = 0.01 + 0.03 * torch.rand(N_PIXELS, generator=gen, dtype=torch.float64)
    mean = 1 - 0.3 * labels * torch.linspace(0.2, 1, N_PIXELS, dtype=torch.float64)
    z = torch.randn(N_STARS, N_LATENT, generator=gen, dtype=torch.float64)
    intrinsic = (
        mean
        + z @ loading.T
        + tau * torch.randn(N_STARS, N_PIXELS, generator=gen, dtype=torch.float64)
    )
    sigma = (0.003 + 0.05 * torch.rand(N_STARS, 1, generator=gen, dtype=torch.float64)).expand(
        -1, N_PIXELS
    )
    flux = intrinsic + sigma * torch.randn(N_STARS, N_PIXELS, generator=gen, dtype=torch.float64)
    ivar = 1 / sigma**2
    ivar = torch.where(torch.rand(ivar.shape, generator=gen) < 0.05, 0.0, ivar)
    return flux, ivar, labels * 1000 + 4000


def _model(flux, ivar, labels):
    torch.manual_seed(0)
    model = build_model("factor_analysis", N_PIXELS, 1, n_latent=N_LATENT).double()
    model.initialize_from_data(flux, ivar, labels)
    with torch.no_grad():
        model.log_intrinsic_var.add_(math.log(4.0))  # a poorly converged tau^2: too large
    return model


def _mean_log_prob(model, flux, ivar, labels) -> float:
    with torch.no_grad():
        return float(model.observed_log_prob(flux, ivar, labels).mean())


def test_polish_raises_the_likelihood_every_iteration():
    flux, ivar, labels = _survey()
    model = _model(flux, ivar, labels)
    values = [_mean_log_prob(model, flux, ivar, labels)]
    for _ in range(5):
        polish_intrinsic_variance(model, flux, ivar, labels, n_iter=1)
        values.append(_mean_log_prob(model, flux, ivar, labels))
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(values))
    assert values[-1] > values[0] + 0.1  # nats per star: a real improvement


def test_polish_converges_to_a_stationary_point_of_the_exact_likelihood():
    flux, ivar, labels = _survey(1)
    model = _model(flux, ivar, labels)

    def gradient() -> torch.Tensor:
        model.zero_grad()
        model.loss(flux, ivar, labels).backward()
        return model.log_intrinsic_var.grad.detach().clone()

    before = gradient().abs().max()
    polish_intrinsic_variance(model, flux, ivar, labels, n_iter=25)
    after = gradient().abs().max()
    assert after < 1e-3 * before


def test_masked_pixels_do_not_change_the_polish():
    flux, ivar, labels = _survey(2)
    results = []
    for garbage in (0.0, 1e6, math.nan):
        model = _model(flux, ivar, labels)
        dirty = torch.where(ivar > 0, flux, torch.full_like(flux, garbage))
        polish_intrinsic_variance(model, dirty, ivar, labels, n_iter=2)
        results.append(model.log_intrinsic_var.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    torch.testing.assert_close(results[0], results[2], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("latent_flow", {"n_latent": 2, "flow_hidden": 8, "flow_transforms": 2}),
        ("factor_analysis", {"n_latent": 2, "label_dependent_variance": True}),
        ("factor_analysis", {"n_latent": 2, "label_dependent_loading": True}),
    ],
)
def test_unsupported_models_are_refused(kind, options):
    model = build_model(kind, N_PIXELS, 1, **options)
    flux = torch.ones(4, N_PIXELS)
    with pytest.raises(FlowInputError, match=r"factor_analysis|label-independent"):
        polish_intrinsic_variance(model, flux, torch.ones_like(flux), torch.ones(4, 1))


def test_ivar_of_the_wrong_shape_is_refused():
    model = build_model("factor_analysis", N_PIXELS, 1, n_latent=2)
    flux = torch.ones(4, N_PIXELS)
    with pytest.raises(FlowInputError):
        polish_intrinsic_variance(model, flux, torch.ones(3, N_PIXELS), torch.ones(4, 1))
