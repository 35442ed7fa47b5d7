from __future__ import annotations

import numpy as np
import pytest

from stellarflow.data.grid import apogee_chip_index, apogee_wavelength
from stellarflow.mock import MockSurvey, observe_spectra, oracle_log_prob, throughput


def test_oracle_log_prob_matches_a_recomputation(small_mock: MockSurvey) -> None:
    data = small_mock.dataset
    use = ~data.mask
    ivar = data.ivar.astype(np.float64)
    resid = data.flux.astype(np.float64) - small_mock.truth_flux.astype(np.float64)
    with np.errstate(divide="ignore"):
        terms = -0.5 * resid**2 * ivar + 0.5 * np.log(ivar) - 0.5 * np.log(2 * np.pi)
    expected = np.where(use, terms, 0.0).sum(axis=1)
    np.testing.assert_allclose(small_mock.truth["log_prob_oracle"], expected, rtol=1e-12)
    # Equivalently: a sum of independent Gaussians (scipy's logpdf).
    from scipy.stats import norm

    i = 3
    good = use[i]
    direct = norm.logpdf(
        data.flux[i, good].astype(np.float64),
        loc=small_mock.truth_flux[i, good].astype(np.float64),
        scale=1.0 / np.sqrt(ivar[i, good]),
    ).sum()
    assert small_mock.truth["log_prob_oracle"][i] == pytest.approx(direct, rel=1e-10)


def test_noise_is_gaussian_with_the_saved_ivar(small_mock: MockSurvey) -> None:
    data = small_mock.dataset
    pull = (data.flux - small_mock.truth_flux) * np.sqrt(data.ivar)
    pull = pull[~data.mask]
    assert np.std(pull) == pytest.approx(1.0, abs=0.01)
    assert abs(np.mean(pull)) < 0.01
    assert np.mean(np.abs(pull) > 4) < 1e-3


def test_masked_fraction_and_masked_flux(full_mock: MockSurvey) -> None:
    small_mock = full_mock
    data = small_mock.dataset
    assert 0.005 < data.mask.mean() < 0.06
    assert np.median(data.mask.mean(axis=1)) < 0.03
    assert np.all(data.ivar[data.mask] == 0)
    # Masked pixels keep realistic (noisy) values.
    assert np.all(np.abs(data.flux[data.mask] - small_mock.truth_flux[data.mask]) < 0.5)
    per_star = data.mask.mean(axis=1)
    persistent = np.asarray(small_mock.truth["PERSISTENCE"])
    assert 0.03 < persistent.mean() < 0.2
    assert per_star[persistent].mean() > per_star[~persistent].mean()
    np.testing.assert_array_equal(small_mock.truth["N_MASKED"], data.mask.sum(axis=1))


def test_snr_label_and_realised_snr(full_mock: MockSurvey) -> None:
    realised = full_mock.dataset.snr()
    nominal = np.asarray(full_mock.truth["SNR"])
    ratio = realised / nominal
    assert 0.7 < np.median(ratio) < 1.05  # lines lower the photon S/N below the continuum's
    assert np.corrcoef(realised, nominal)[0, 1] > 0.95


def test_throughput_profile() -> None:
    wave = apogee_wavelength()
    t = throughput(wave)
    assert np.median(t) == pytest.approx(1.0)
    chip = apogee_chip_index(wave)
    assert np.median(t[chip == 0]) < np.median(t[chip == 1])
    blue = np.flatnonzero(chip == 0)
    assert t[blue[0]] < t[blue[len(blue) // 2]] and t[blue[-1]] < t[blue[len(blue) // 2]]
    red = np.flatnonzero(chip == 2)
    assert t[red[-1]] < t[red[0]]


def test_observe_spectra_shapes_and_determinism() -> None:
    wave = apogee_wavelength()[:300]
    truth = np.full((5, 300), 0.9)
    args = (truth, wave, np.full(5, 100.0), np.zeros(5))
    a = observe_spectra(*args, np.random.default_rng(0), persistence_fraction=1.0)
    b = observe_spectra(*args, np.random.default_rng(0), persistence_fraction=1.0)
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.flux.dtype == np.float32 and a.ivar.dtype == np.float32
    assert np.all(a.persistence)
    lp = oracle_log_prob(a.flux, truth, a.ivar, a.mask)
    assert lp.shape == (5,) and np.all(np.isfinite(lp))
