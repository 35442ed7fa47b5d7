"""Calibrated scores: exact chi2 tails for Gaussian models, reference draws for a flow prior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from stellarflow.analysis import calibrate
from stellarflow.analysis.calibrate import (
    calibrate_log_prob,
    combine_tails,
    strongest_tail,
    tail_from_chi2,
)
from stellarflow.flows import build_model

N_PIXELS, N_CONTEXT, N_LATENT = 24, 2, 2


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _factor_analysis(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model("factor_analysis", N_PIXELS, N_CONTEXT, n_latent=N_LATENT)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))
        model.flux_loc.copy_(1 + 0.1 * torch.randn(N_PIXELS, generator=generator))
        model.flux_scale.copy_(0.05 * (1 + torch.rand(N_PIXELS, generator=generator)))
    return model.eval()


def _observed(model, n_stars: int, seed: int):
    """Spectra drawn from the model itself with heteroscedastic noise and some masks."""
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(n_stars, N_CONTEXT, generator=generator)
    snr = 20 + 200 * torch.rand(n_stars, 1, generator=generator)
    ivar = (snr**2) * (0.5 + torch.rand(n_stars, N_PIXELS, generator=generator))
    ivar[torch.rand(n_stars, N_PIXELS, generator=generator) < 0.15] = 0
    ivar[:, 0] = snr[:, 0] ** 2
    flux = model(context, ivar=ivar).sample(generator=generator)
    return flux.numpy(), ivar.numpy(), context.numpy()


def _dense_chi2(model, flux, ivar, context) -> np.ndarray:
    """Mahalanobis distance over the observed pixels with the dense covariance."""
    out = []
    with torch.no_grad():
        noise_free = model(torch.as_tensor(context))
        mean = noise_free.mean.numpy()
        factors = model.covariance(torch.as_tensor(context))
        for i in range(len(flux)):
            w = factors.loading[i].numpy()
            cov = w @ w.T + np.diag(factors.intrinsic_var.numpy())
            o = ivar[i] > 0
            c = cov[np.ix_(o, o)] + np.diag(1 / ivar[i][o])
            r = flux[i][o] - mean[i][o]
            out.append(r @ np.linalg.solve(c, r))
    return np.array(out)


def test_gaussian_chi2_is_exact_mahalanobis():
    model = _factor_analysis()
    flux, ivar, context = _observed(model, 20, seed=1)
    scores = calibrate_log_prob(model, flux, ivar, context)
    assert scores.method == "exact-chi2"
    np.testing.assert_allclose(scores.chi2, _dense_chi2(model, flux, ivar, context), rtol=1e-8)
    np.testing.assert_array_equal(scores.dof, (ivar > 0).sum(1))


def test_gaussian_tail_probability_is_uniform_for_model_draws():
    model = _factor_analysis()
    flux, ivar, context = _observed(model, 3000, seed=2)
    p_tail = calibrate_log_prob(model, flux, ivar, context).p_tail
    assert stats.kstest(p_tail, "uniform").pvalue > 1e-3
    # and it does not follow the noise level
    snr = np.sqrt(np.nanmedian(np.where(ivar > 0, ivar, np.nan), axis=1))
    assert abs(stats.spearmanr(snr, p_tail).statistic) < 0.1


def test_masked_garbage_changes_nothing():
    model = _factor_analysis()
    flux, ivar, context = _observed(model, 50, seed=3)
    clean = calibrate_log_prob(model, np.where(ivar > 0, flux, 0.0), ivar, context)
    for garbage in (1e6, math.nan, -math.inf):
        spoiled = calibrate_log_prob(model, np.where(ivar > 0, flux, garbage), ivar, context)
        np.testing.assert_array_equal(spoiled.z, clean.z)


def test_flow_prior_reference_matches_exact_when_flow_is_identity():
    """A fresh latent flow is factor analysis: its fitted tails agree with the exact ones."""
    fa = _factor_analysis()
    latent = build_model("latent_flow", N_PIXELS, N_CONTEXT, n_latent=N_LATENT).eval()
    missing, _ = latent.load_state_dict(fa.state_dict(), strict=False)
    assert all(name.startswith("flow") or "prior" in name for name in missing), missing
    flux, ivar, context = _observed(fa, 400, seed=4)
    exact = calibrate_log_prob(fa, flux, ivar, context)
    fitted = calibrate_log_prob(latent, flux, ivar, context, n_reference=16, seed=5)
    assert fitted.method == "reference-chi2"
    assert fitted.n_reference == 16
    # without the control variate alpha's standard error would be sqrt(2 dof / 16) in chi2
    # units (~0.35 in z); with it, that of the latent part only
    naive_error = np.sqrt(2 * fitted.dof / 16)
    assert np.median(fitted.offset_error / naive_error) < 0.5
    assert np.median(np.abs(fitted.z - exact.z)) < 0.1
    assert 0.6 < np.median(fitted.spread_ratio) < 1.5
    # reproducible given the seed
    again = calibrate_log_prob(latent, flux, ivar, context, n_reference=16, seed=5)
    np.testing.assert_array_equal(again.z, fitted.z)
    assert np.all(np.isnan(exact.offset_error))


def test_reference_draws_in_small_groups_agree(monkeypatch):
    """Scoring the reference draws a few at a time (bounded memory) changes nothing but noise."""
    fa = _factor_analysis()
    latent = build_model("latent_flow", N_PIXELS, N_CONTEXT, n_latent=N_LATENT).eval()
    latent.load_state_dict(fa.state_dict(), strict=False)
    flux, ivar, context = _observed(fa, 200, seed=6)
    exact = calibrate_log_prob(fa, flux, ivar, context)
    monkeypatch.setattr(calibrate, "_REFERENCE_BUDGET", 1)  # one draw at a time
    grouped = calibrate_log_prob(latent, flux, ivar, context, n_reference=16, seed=5)
    assert np.median(np.abs(grouped.z - exact.z)) < 0.1


def test_sample_with_chi2_control_variate():
    """q of the draws is chi2 with the observed pixels as dof; the draws are sample()'s."""
    fa = _factor_analysis()
    _, ivar, context = _observed(fa, 4, seed=7)
    dist = fa(torch.as_tensor(context), ivar=torch.as_tensor(ivar))
    draws, q = dist.sample_with_chi2((4000,), generator=torch.Generator().manual_seed(1))
    same = dist.sample((4000,), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(draws, same, equal_nan=True)
    dof = torch.as_tensor((ivar > 0).sum(-1), dtype=q.dtype)
    torch.testing.assert_close(q.mean(0), dof, rtol=0.02, atol=0.0)
    torch.testing.assert_close(q.var(0), 2 * dof, rtol=0.12, atol=0.0)


def test_tail_from_chi2_far_tail_and_known_values():
    log_p, z = tail_from_chi2(np.array([0.0, 1.0, 3.841458820694124, 4000.0]), np.ones(4))
    _, z_big = tail_from_chi2(np.array([9000.0, 30000.0, 60000.0]), np.full(3, 7000.0))
    assert np.all(np.isfinite(z_big)) and np.all(np.diff(z_big) > 0)
    np.testing.assert_allclose(np.exp(log_p[:3]), [1.0, 0.31731050786291415, 0.05], rtol=1e-9)
    # far below float64's 1e-308: log erfc(sqrt(2000)) = -2004.3 (asymptotic series)
    x = 2000.0
    expected = -x - 0.5 * math.log(math.pi * x) + math.log1p(-1 / (2 * x))
    np.testing.assert_allclose(log_p[3], expected, rtol=1e-6)
    assert np.all(np.diff(z) > 0)
    np.testing.assert_allclose(z[2], stats.norm.isf(0.05), rtol=1e-9)


def test_rejects_models_without_noise_and_bad_arguments():
    coupling = build_model("coupling", 8, 1)
    with pytest.raises(ValueError, match="noise-aware"):
        calibrate_log_prob(coupling, np.ones((2, 8)), np.ones((2, 8)), np.zeros((2, 1)))
    model = _factor_analysis()
    with pytest.raises(ValueError, match="n_reference"):
        ones = np.ones((2, N_PIXELS))
        calibrate_log_prob(model, ones, ones, None, n_reference=1)


def test_strongest_tail_is_a_tight_upper_bound_for_independent_tests() -> None:
    rng = np.random.default_rng(3)
    n_tests = 20
    z = rng.standard_normal((200_000, n_tests))
    z[:, :3] = 0.0  # tests without data do not count
    log_p = strongest_tail(z)
    assert np.all(log_p <= 0.0)
    for alpha in (0.05, 0.01, 0.001):
        rate = np.mean(log_p <= np.log(alpha))
        # conservative, and nearly exact in the tail for independent tests
        assert 0.85 * alpha < rate <= alpha * 1.1
    # exactly: 1 - (1 - 2 Phi(-m))^E for E = 17 independent tests
    m = np.array([[3.0] + [0.5] * 16 + [0.0] * 3])
    exact = 1 - (1 - 2 * stats.norm.sf(3.0)) ** 17
    assert np.exp(strongest_tail(m)[0]) >= exact
    np.testing.assert_allclose(np.exp(strongest_tail(m)[0]), 34 * stats.norm.sf(3.0))
    assert strongest_tail(np.zeros((2, 5)))[0] == 0.0  # no test: p = 1


def test_combine_tails() -> None:
    log_a = np.log([0.5, 1e-300, 0.01, np.nan])
    log_b = np.log([0.2, 0.3, np.nan, 0.1])
    out = combine_tails(log_a, log_b)
    np.testing.assert_allclose(out[:2], np.log([0.4, 2e-300]))
    assert out[2] == log_a[2]  # no second test: the first unchanged
    assert np.isnan(out[3])  # an unscored star stays unscored
    assert combine_tails(np.array([-1e-3]), np.array([-1e-3]))[0] == 0.0  # capped at p = 1
    # three tests: the factor is the number present for each star
    three = combine_tails(np.array([-30.0, -30.0, np.nan]), np.array([-40.0, np.nan, -5.0]),
                          np.array([-50.0, np.nan, np.nan]))  # fmt: skip
    np.testing.assert_allclose(three[:2], [np.log(3) - 50.0, -30.0])
    assert np.isnan(three[2])
