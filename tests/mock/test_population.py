from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from stellarflow.mock import (
    ABUNDANCE_ELEMENTS,
    OUTLIER_KINDS,
    OUTLIER_SHIFTS,
    MockConfig,
    observe_labels,
    sample_population,
)
from stellarflow.mock.constants import abundance_label


@pytest.fixture(scope="module")
def population() -> Table:
    config = MockConfig(n_stars=20_000, outlier_fraction=0.05, seed=5)
    return sample_population(config, np.random.default_rng(123))


def test_deterministic_given_the_generator() -> None:
    config = MockConfig(n_stars=50)
    a = sample_population(config, np.random.default_rng(1))
    b = sample_population(config, np.random.default_rng(1))
    c = sample_population(config, np.random.default_rng(2))
    np.testing.assert_array_equal(a["TEFF"], b["TEFF"])
    assert not np.array_equal(a["TEFF"], c["TEFF"])


def test_giant_branch_and_clump(population: Table) -> None:
    teff, logg = np.asarray(population["TEFF"]), np.asarray(population["LOGG"])
    assert 3700 <= teff.min() and teff.max() <= 5400
    assert np.percentile(teff, 1) > 3800 and np.percentile(teff, 99) < 5350
    assert 0.6 <= logg.min() and logg.max() <= 3.6
    rgb = population["EVOL_STATE"] == "RGB"
    # Cooler at lower gravity on the RGB.
    assert np.corrcoef(teff[rgb], logg[rgb])[0, 1] > 0.8
    clump = ~rgb
    assert 0.15 < clump.mean() < 0.3
    assert np.std(logg[clump]) < 0.15


def test_metallicity_distribution(population: Table) -> None:
    fe_h = np.asarray(population["FE_H"])
    assert np.mean(fe_h) == pytest.approx(-0.22, abs=0.05)
    assert np.mean(fe_h < -1.0) > 0.01  # a metal-poor tail


def test_two_alpha_sequences(population: Table) -> None:
    fe_h, mg_fe = np.asarray(population["FE_H"]), np.asarray(population["MG_FE"])
    normal = population["outlier_kind"] == ""
    bin_ = normal & (fe_h > -0.7) & (fe_h < -0.3)
    counts, _ = np.histogram(mg_fe[bin_], bins=np.arange(-0.05, 0.40, 0.05))
    # Peaks near 0.05 (low alpha) and 0.25 (high alpha), a trough between them.
    low, trough, high = counts[1:3].max(), counts[3:5].min(), counts[5:7].max()
    assert trough < 0.3 * min(low, high)


def test_process_amplitudes_reproduce_iron_and_magnesium(population: Table) -> None:
    a_cc, a_ia = np.asarray(population["A_CC"]), np.asarray(population["A_IA"])
    np.testing.assert_allclose(population["FE_H"], np.log10(0.5 * a_cc + 0.5 * a_ia))
    normal = population["outlier_kind"] == ""
    expected_mg = np.log10(a_cc) - np.asarray(population["FE_H"])
    resid = np.asarray(population["MG_FE"])[normal] - expected_mg[normal]
    assert np.std(resid) == pytest.approx(0.01, rel=0.1)  # Mg's intrinsic scatter only


def test_abundances_have_small_intrinsic_scatter_about_the_process_model() -> None:
    config = MockConfig(n_stars=5000, outlier_fraction=0.0, intrinsic_scatter_scale=0.0)
    table = sample_population(config, np.random.default_rng(0))
    # Without scatter, Mn is a deterministic function of the amplitudes.
    a = {p: np.asarray(table[f"A_{p.upper()}"]) for p in ("cc", "ia")}
    mn = np.log10(0.3 * a["cc"] + 0.7 * a["ia"]) - np.asarray(table["FE_H"])
    np.testing.assert_allclose(table["MN_FE"], mn, atol=1e-12)


def test_snr_distribution(population: Table) -> None:
    snr = np.asarray(population["SNR"])
    assert 30 <= snr.min() and snr.max() <= 500
    assert np.median(snr) == pytest.approx(140, rel=0.05)
    assert np.mean((snr > 70) & (snr < 300)) > 0.75


def test_outliers_in_the_stated_fraction_with_their_kinds(population: Table) -> None:
    kind = np.asarray(population["outlier_kind"])
    n = len(population)
    assert np.mean(kind != "") == pytest.approx(0.05, abs=5 * np.sqrt(0.05 * 0.95 / n))
    assert set(kind) - {""} == set(OUTLIER_KINDS)
    normal = kind == ""
    for name, shifts in OUTLIER_SHIFTS.items():
        rows = kind == name
        for element, (lo, hi) in shifts.items():
            column = np.asarray(population[abundance_label(element)])
            offset = column[rows].mean() - column[normal].mean()
            assert np.sign(offset) == np.sign(lo), (name, element)
            assert abs(offset) > 0.5 * min(abs(lo), abs(hi)), (name, element)
    # TEFF, LOGG and FE_H of outliers are those of normal stars.
    for label in ("TEFF", "LOGG", "FE_H"):
        column = np.asarray(population[label])
        assert abs(column[~normal].mean() - column[normal].mean()) < 3 * column.std() / 30


def test_internal_mixing_lowers_carbon_raises_nitrogen(population: Table) -> None:
    normal = population["outlier_kind"] == ""
    d_c = population["C_FE"][normal] - population["C_FE_BIRTH"][normal]
    d_n = population["N_FE"][normal] - population["N_FE_BIRTH"][normal]
    assert np.all(d_c < 0) and np.all(d_n > 0)


def test_observed_labels_have_errors_of_the_stated_size(population: Table) -> None:
    measured = observe_labels(population, np.random.default_rng(9))
    for name in ("TEFF", "LOGG", "FE_H", "MG_FE", "CE_FE"):
        pull = (measured[name] - population[name]) / measured[f"{name}_ERR"]
        assert np.std(pull) == pytest.approx(1.0, abs=0.03)
        assert abs(np.mean(pull)) < 0.03
    low, high = population["SNR"] < 60, population["SNR"] > 250
    assert np.median(measured["FE_H_ERR"][low]) > 1.5 * np.median(measured["FE_H_ERR"][high])
    exact = observe_labels(population[:10], np.random.default_rng(9), noise=False)
    np.testing.assert_array_equal(exact["TEFF"], population["TEFF"][:10])
    assert {abundance_label(e) + "_ERR" for e in ABUNDANCE_ELEMENTS} <= set(measured.colnames)
