"""Quick fits on synthetic linear-Gaussian spectra with a known density (the oracle)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from stellarflow.flows import SpectralModel, build_model
from tests.flows._helpers import linear_gaussian_mock, oracle_log_prob

N_PIXELS, N_CONTEXT, N_LATENT = 24, 2, 2
N_STARS = 2600
TRAIN, TEST = slice(0, 2000), slice(2000, 2600)
STEPS, LR = 150, 3e-2


def _fit(model: SpectralModel, mock: dict[str, Any]) -> SpectralModel:
    """initialize_from_data, then full-batch Adam on ``loss`` (a stand-in for train/)."""
    flux, ivar, context = mock["flux"][TRAIN], mock["ivar"][TRAIN], mock["context"][TRAIN]
    model.initialize_from_data(flux, ivar, context, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameter_groups(LR))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(STEPS):
            optimizer.zero_grad()
            model.loss(flux, ivar, context).backward()
            optimizer.step()
    return model


def _held_out(model: SpectralModel, mock: dict[str, Any], index: slice = TEST) -> float:
    """Mean held-out log-likelihood, nats per star."""
    flux, ivar, context = mock["flux"][index], mock["ivar"][index], mock["context"][index]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if model.kind == "latent_flow":
            return float(
                model.log_prob_estimate(flux, ivar, context, 256, generator).log_prob.mean()
            )
        return float(model.observed_log_prob(flux, ivar, context).mean())


def _latent_flow() -> SpectralModel:
    options = {"n_latent": N_LATENT, "flow_hidden": 32, "flow_transforms": 2, "n_importance": 4}
    return build_model("latent_flow", N_PIXELS, N_CONTEXT, **options)


def _gaps(mock: dict[str, Any], *models: SpectralModel) -> list[float]:
    """Held-out gap to the oracle, nats per pixel, for each model after fitting."""
    oracle = float(oracle_log_prob(mock, TEST).mean())
    return [(oracle - _held_out(_fit(m, mock), mock)) / N_PIXELS for m in models]


def test_warm_start_recovers_the_generating_parameters() -> None:
    mock = linear_gaussian_mock(N_STARS, N_PIXELS, N_CONTEXT, N_LATENT, seed=0)
    model = build_model("factor_analysis", N_PIXELS, N_CONTEXT, n_latent=N_LATENT)
    flux, ivar, context = mock["flux"][TRAIN], mock["ivar"][TRAIN], mock["context"][TRAIN]
    model.initialize_from_data(flux, ivar, context, generator=torch.Generator().manual_seed(0))
    model.requires_grad_(False)
    labels = model.standardize_context(context)
    mean = model.flux_loc + model.flux_scale * model.mean(labels)
    assert (mean - mock["mean"][TRAIN]).abs().mean() < 2e-3
    loading = model.flux_scale[:, None] * model.loading
    # Principal angles between the fitted and true loading subspaces.
    q_fit = torch.linalg.qr(loading).Q
    q_true = torch.linalg.qr(mock["loading"]).Q
    cosines = torch.linalg.svdvals(q_fit.T @ q_true)
    assert cosines.min() > 0.95
    tau = model.flux_scale * model.intrinsic_var().sqrt()
    ratio = tau / mock["tau"]
    assert 0.7 < float(ratio.median()) < 1.4, ratio


def test_gaussian_latent_factor_analysis_reaches_the_oracle_and_latent_flow_matches() -> None:
    mock = linear_gaussian_mock(N_STARS, N_PIXELS, N_CONTEXT, N_LATENT, seed=1)
    fa = build_model("factor_analysis", N_PIXELS, N_CONTEXT, n_latent=N_LATENT)
    cannon = build_model("cannon", N_PIXELS, N_CONTEXT)
    gap_fa, gap_cannon, gap_flow = _gaps(mock, fa, cannon, _latent_flow())
    assert -0.002 < gap_fa < 0.004, gap_fa  # nats per pixel; ~0.0017 when fully converged
    assert gap_cannon > 5 * max(gap_fa, 0.004), (gap_cannon, gap_fa)
    assert gap_flow < gap_fa + 0.0015, (gap_flow, gap_fa)


def test_latent_flow_beats_factor_analysis_on_a_bimodal_latent() -> None:
    mock = linear_gaussian_mock(N_STARS, N_PIXELS, N_CONTEXT, N_LATENT, seed=2, bimodal=True)
    fa = build_model("factor_analysis", N_PIXELS, N_CONTEXT, n_latent=N_LATENT)
    gap_fa, gap_flow = _gaps(mock, fa, _latent_flow())
    assert gap_flow < 0.5 * gap_fa, (gap_flow, gap_fa)
    assert gap_flow < 0.007, gap_flow


def test_coupling_flow_learns_pixel_correlations() -> None:
    """Noise-free correlated spectra: the coupling flow must close most of the gap between
    its own diagonal (Cannon-like) warm start and the exact density."""
    mock = linear_gaussian_mock(N_STARS, N_PIXELS, N_CONTEXT, N_LATENT, seed=3)
    flux = mock["intrinsic"]
    data = {**mock, "flux": flux, "ivar": torch.full_like(flux, 1e12)}  # noise-free oracle
    options = {"n_layers": 4, "projection": 16, "hidden": 32, "head_rank": 8}
    model = build_model("coupling", N_PIXELS, N_CONTEXT, **options)
    flux_train, context = flux[:1000], mock["context"][:1000]
    model.initialize_from_data(flux_train, None, context)
    test = (flux[TEST], None, mock["context"][TEST])
    with torch.no_grad():
        start = float(model.observed_log_prob(*test).mean())
    optimizer = torch.optim.Adam(model.parameter_groups(1e-2))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(100):
            optimizer.zero_grad()
            model.loss(flux_train, None, context).backward()
            optimizer.step()
    with torch.no_grad():
        end = float(model.observed_log_prob(*test).mean())
    oracle = float(oracle_log_prob(data, TEST).mean())
    assert end - start > 0.8 * (oracle - start), (start, end, oracle)  # measured: 0.95


@pytest.mark.slow
def test_held_out_likelihood_near_the_oracle_at_larger_size() -> None:
    """200 pixels, 6,000 training stars, mini-batch Adam with a cosine schedule (~2 min).

    Measured: factor analysis 0.0033 nats/pixel from the exact held-out log-likelihood (its
    Gaussian latent cannot represent the bimodal direction), the latent flow 0.0017.
    """
    n_pixels, n_train, n_test, steps, batch = 200, 6000, 1000, 600, 1000
    mock = linear_gaussian_mock(n_train + n_test, n_pixels, 3, 4, seed=4, bimodal=True)
    train, test = slice(0, n_train), slice(n_train, n_train + n_test)
    oracle = float(oracle_log_prob(mock, test).mean())
    flux, ivar, context = mock["flux"][train], mock["ivar"][train], mock["context"][train]
    gaps = {}
    for kind in ("factor_analysis", "latent_flow"):
        model = build_model(kind, n_pixels, 3, n_latent=4)
        model.initialize_from_data(flux, ivar, context, generator=torch.Generator().manual_seed(0))
        optimizer = torch.optim.Adam(model.parameter_groups(1e-2))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            for step in range(steps):
                part = slice((step * batch) % n_train, (step * batch) % n_train + batch)
                optimizer.zero_grad()
                model.loss(flux[part], ivar[part], context[part]).backward()
                optimizer.step()
                schedule.step()
        gaps[kind] = (oracle - _held_out(model, mock, test)) / n_pixels
    assert gaps["factor_analysis"] < 0.005, gaps
    assert gaps["latent_flow"] < 0.6 * gaps["factor_analysis"], gaps
    assert gaps["latent_flow"] < 0.0025, gaps
