"""Explanations on synthetic residuals with a known answer: profiles, evidence, features."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from stellarflow.analysis.explain import (
    FWHM_PER_SIGMA,
    element_profiles,
    element_tests,
    line_depth,
    line_test_fingerprint,
    molecular_response,
    summarize_evidence,
    unexplained_features,
    whitened_residual,
)
from stellarflow.errors import DataValidationError

R = 22_500.0
WAVELENGTH = 16_000.0 * np.exp(np.arange(600) * 1.4e-5)  # APOGEE-like log sampling, ~0.22 Å


def _linelist() -> Table:
    rows = [
        (16010.0, "Ce 2", "Ce"),
        (16060.0, "Ce 2", "Ce"),
        (16090.0, "Ce 2", "Ce"),
        (16020.0, "Fe 1", "Fe"),
        (16045.0, "Fe 1", "Fe"),
        (16075.0, "Fe 1", "Fe"),
        (16100.0, "Fe 1", "Fe"),
        (16030.0, "CN", "N"),
        (16031.0, "CN", "N"),
        (15500.0, "Mg 1", "Mg"),  # off the grid: dropped
    ]
    wave, species, element = zip(*rows, strict=True)
    return Table({"wavelength": wave, "species": species, "element": element})


@pytest.fixture(scope="module")
def profiles():
    return element_profiles(WAVELENGTH, _linelist(), resolution=R)


def test_profiles_have_the_instrumental_width(profiles) -> None:
    assert profiles.elements == ("Ce", "Fe", "N")  # Mg lies off the grid
    assert profiles.profiles.shape == (3, WAVELENGTH.size)
    assert profiles.profiles.min() >= 0 and profiles.profiles.max() <= 1
    ce = profiles.profiles[0]
    # a Gaussian of FWHM = lambda / R at each pixel near the line
    sigma = 16060.0 / (FWHM_PER_SIGMA * R)
    near = np.abs(WAVELENGTH - 16060.0) < 3 * sigma
    expected = np.exp(-0.5 * ((WAVELENGTH[near] - 16060.0) / sigma) ** 2)
    assert near.sum() >= 5
    np.testing.assert_allclose(ce[near], expected, rtol=1e-12)
    # two CN lines 1 Å apart overlap but the profile stays <= 1
    assert 0.9 < profiles.profiles[2].max() <= 1.0
    np.testing.assert_allclose(np.sort(profiles.lines_of("Ce")), [16010.0, 16060.0, 16090.0])


def test_profiles_need_wavelength_and_element() -> None:
    with pytest.raises(DataValidationError, match="element"):
        element_profiles(WAVELENGTH, Table({"wavelength": [16010.0]}))


def _stars(n_stars: int, seed: int):
    rng = np.random.default_rng(seed)
    residual = rng.standard_normal((n_stars, WAVELENGTH.size))
    depth = np.full((n_stars, WAVELENGTH.size), 0.2)
    mask = rng.random((n_stars, WAVELENGTH.size)) < 0.05
    return residual, depth, mask


def test_evidence_is_a_z_score_for_pure_noise(profiles) -> None:
    residual, depth, mask = _stars(3000, seed=1)
    evidence = element_tests(residual, np.ones_like(depth), depth, profiles, mask).evidence
    assert evidence.shape == (3000, 3)
    np.testing.assert_allclose(evidence.mean(0), 0.0, atol=0.08)
    np.testing.assert_allclose(evidence.std(0), 1.0, atol=0.06)


@pytest.mark.parametrize(("sign", "direction"), [(-1.0, "enhanced"), (1.0, "depleted")])
def test_deeper_lines_mean_enhanced(profiles, sign, direction) -> None:
    residual, depth, mask = _stars(4, seed=2)
    ce = profiles.profiles[profiles.elements.index("Ce")]
    residual += sign * 6.0 * ce  # lines deeper (negative residual) or shallower
    evidence = element_tests(residual, np.ones_like(depth), depth, profiles, mask).evidence
    summary = summarize_evidence(evidence, profiles.elements)
    assert list(summary.top_element) == ["Ce"] * 4
    assert list(summary.direction) == [direction] * 4
    assert np.all(np.abs(summary.top_evidence) > 8)
    text = str(summary.summary[0]).split()
    assert len(text) == 3 and text[0].startswith("Ce:" + ("+" if sign < 0 else "-"))


def test_a_joint_fit_shares_blended_lines() -> None:
    lines = _linelist()[:3]  # Ce at 16,010, 16,060 and 16,090 Å
    lines.add_row((16010.05, "Nd 2", "Nd"))  # an Nd line blended with the first Ce line
    profiles = element_profiles(WAVELENGTH, lines, resolution=R)
    assert profiles.elements == ("Ce", "Nd")
    residual, depth, mask = _stars(200, seed=6)
    # Ce lines deeper by up to 4 sigma: at the blend, by Ce's share of its depth
    g = profiles.profiles
    ce_template = g[0] * g[0] / np.where(g.sum(0) > 0, g.sum(0), 1.0)
    assert 0.3 < ce_template.max() / g[0].max() <= 1.0
    residual -= 20.0 * ce_template * depth
    args = (residual, np.ones_like(depth), depth, profiles, mask)
    single = element_tests(*args, joint=False).evidence
    joint = element_tests(*args, joint=True).evidence
    assert np.all(single[:, 0] > 5) and np.median(single[:, 1]) > 2  # Nd claims the blend
    assert np.all(joint[:, 0] > 3) and abs(np.median(joint[:, 1])) < 1  # shared: Nd ~ 0
    # the effect's size: Ce lines 20 / depth = 100x deeper in flux units of the noise, i.e.
    # a fitted depth change of 20 (fractional), unbiased; Nd's about 0
    tests = element_tests(*args, joint=True)
    change = tests.depth_change
    assert abs(np.mean(change[:, 0]) - 20.0) < 3 * change[:, 0].std() / np.sqrt(200)
    assert abs(np.mean(change[:, 1])) < 3 * change[:, 1].std() / np.sqrt(200)
    np.testing.assert_allclose(tests.evidence, joint)
    # noise-free: exact
    one = (-0.3 * ce_template[None] * depth[:1], np.ones_like(depth[:1]), depth[:1],
           profiles, np.zeros_like(mask[:1]))  # fmt: skip
    np.testing.assert_allclose(element_tests(*one).depth_change[0], [0.3, 0.0], atol=1e-9)
    assert element_tests(*one, joint=False).depth_change[0, 0] == pytest.approx(0.3)


def _molecular_linelist() -> Table:
    """CO, OH and CN bands (each molecule's lines well apart) and a few Fe lines."""
    rows = [(16_005.0 + 6.0 * i, "CO", "C") for i in range(5)]
    rows += [(16_040.0 + 6.0 * i, "OH", "O") for i in range(5)]
    rows += [(16_075.0 + 6.0 * i, "CN", "N") for i in range(5)]
    rows += [(16_107.0, "Fe 1", "Fe"), (16_113.0, "Fe 1", "Fe")]
    wave, species, element = zip(*rows, strict=True)
    return Table({"wavelength": wave, "species": species, "element": element})


def test_the_response_is_the_linearised_equilibrium() -> None:
    # one-layer equilibrium: K (C - x)(O - x) = x with strong locking, differentiated
    # numerically against the closed form of molecular_response
    c0, o0, n0, k = 0.4e-3, 1e-3, 1e-4, 1e9

    def numbers(c, o, n):
        b = k * (c + o) + 1.0
        x = (b - np.sqrt(b * b - 4.0 * k * k * c * o)) / (2.0 * k)
        free_c = c - x
        return {"CO": np.log(x), "OH": np.log(o - x), "CN": np.log(free_c * n),
                "CH": np.log(free_c), "C2": 2.0 * np.log(free_c)}  # fmt: skip

    base, h = numbers(c0, o0, n0), 1e-6
    moved = {
        "C": numbers(c0 * np.exp(h), o0, n0),
        "O": numbers(c0, o0 * np.exp(h), n0),
        "N": numbers(c0, o0, n0 * np.exp(h)),
    }
    response = molecular_response(carbon_to_oxygen=c0 / o0)
    for molecule in ("CO", "OH", "CN", "CH", "C2"):
        for el in "CNO":
            derivative = (moved[el][molecule] - base[molecule]) / h
            assert derivative == pytest.approx(response[molecule].get(el, 0.0), abs=2e-3)
    with pytest.raises(DataValidationError, match="carbon_to_oxygen"):
        molecular_response(1.2)


def test_molecules_are_read_for_every_element_they_respond_to() -> None:
    lines = _molecular_linelist()
    q = 0.4
    profiles = element_profiles(WAVELENGTH, lines, resolution=R, carbon_to_oxygen=q)
    attributed = element_profiles(WAVELENGTH, lines, resolution=R, molecules="attributed")
    assert profiles.elements == attributed.elements == ("C", "Fe", "N", "O")
    np.testing.assert_array_equal(profiles.profiles, attributed.profiles)  # where lines are
    # a star with N up and C down, weak lines (depth change = change of ln number)
    d_c, d_n, d_o = -0.10, 0.20, 0.0
    response = molecular_response(q)
    change = {m: sum(c * {"C": d_c, "N": d_n, "O": d_o}[el] for el, c in r.items())
              for m, r in response.items()}  # fmt: skip
    assert abs(change["CN"]) < 0.05  # CN hardly moves: its N and C changes cancel
    depth = np.full((1, WAVELENGTH.size), 0.3)
    g = dict(zip(attributed.elements, attributed.profiles, strict=True))
    delta = -depth * sum(change[m] * g[el] for m, el in (("CO", "C"), ("OH", "O"), ("CN", "N")))
    args = (delta, np.ones_like(depth), depth)
    mask = np.zeros_like(depth, dtype=bool)
    read = dict(zip(profiles.elements, element_tests(*args, profiles, mask).depth_change[0],
                    strict=True))  # fmt: skip
    assert read["C"] == pytest.approx(d_c, abs=1e-6)
    assert read["N"] == pytest.approx(d_n, abs=1e-6)
    assert read["O"] == pytest.approx(d_o, abs=1e-6)
    # attributing CN to N alone reads the net CN change, a fifth of the N enhancement
    naive = dict(zip(attributed.elements, element_tests(*args, attributed, mask).depth_change[0],
                     strict=True))  # fmt: skip
    assert naive["N"] == pytest.approx(change["CN"], abs=1e-6) and naive["N"] < d_n / 4
    assert line_test_fingerprint(profiles, "labels") != line_test_fingerprint(attributed, "labels")


def test_a_molecule_counts_for_its_element_without_the_others(profiles) -> None:
    # only CN lines (and atoms): C and O have no features of their own to pin them down
    assert profiles.rule.startswith("equilibrium")
    g = profiles.profiles
    expected = g * g / np.where(g.sum(0) > 0, g.sum(0), 1.0)
    np.testing.assert_allclose(profiles.templates, expected)
    with pytest.raises(DataValidationError, match="molecules"):
        element_profiles(WAVELENGTH, _linelist(), molecules="some")


def test_masked_pixels_carry_no_weight(profiles) -> None:
    residual, depth, mask = _stars(5, seed=3)
    garbage = residual.copy()
    garbage[mask] = 1e6
    variance = np.where(mask, 0.0, 1.0 + residual**2)
    np.testing.assert_array_equal(
        element_tests(residual, variance, depth, profiles, mask).evidence,
        element_tests(garbage, variance, depth, profiles, mask).evidence,
    )
    flux = np.where(mask, np.nan, 1.0 + residual)
    white = whitened_residual(flux, np.ones_like(flux), np.ones_like(flux), mask)
    assert np.all(white[mask] == 0) and np.all(np.isfinite(white))
    np.testing.assert_allclose(white[~mask], residual[~mask])


def _gaussian_factor_model(n_pixels: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    loading = 0.02 * rng.standard_normal((n_pixels, k))
    variance = rng.uniform(1e-4, 4e-4, n_pixels)
    return rng, loading, variance


def _latent_fit(x, loading, variance, observed):
    """Exact posterior of z for x ~ N(L z, D), z ~ N(0, I), over the observed pixels."""
    w = loading[observed] / variance[observed, None]
    cov = np.linalg.inv(np.eye(loading.shape[1]) + loading[observed].T @ w)
    return cov @ (w.T @ x[observed]), cov


def test_evidence_is_the_gls_z_score_under_the_full_covariance() -> None:
    wave = WAVELENGTH[:200]
    profiles = element_profiles(wave, _linelist()[:3], resolution=R)  # Ce at 16,010
    rng, loading, variance = _gaussian_factor_model(wave.size, 3, seed=4)
    depth = np.full((1, wave.size), 0.3)
    mask = rng.random((1, wave.size)) < 0.1
    observed = ~mask[0]
    x = rng.multivariate_normal(np.zeros(wave.size), np.diag(variance) + loading @ loading.T)
    mean_z, cov_z = _latent_fit(x, loading, variance, observed)
    delta = (x - loading @ mean_z)[None]
    got = element_tests(delta, variance[None], depth, profiles, mask, loading, cov_z[None]).evidence
    # dense generalised least squares over the observed pixels
    c = (np.diag(variance) + loading @ loading.T)[np.ix_(observed, observed)]
    t = (profiles.profiles[0] * depth[0])[observed]
    expected = -(t @ np.linalg.solve(c, x[observed])) / np.sqrt(t @ np.linalg.solve(c, t))
    np.testing.assert_allclose(got[0, 0], expected, rtol=1e-9)


def test_gls_evidence_is_standard_normal_when_the_latent_fit_absorbs_lines() -> None:
    """The latent fit soaks up part of the Ce template; the z-score must stay N(0, 1)."""
    wave = WAVELENGTH[:200]
    profiles = element_profiles(wave, _linelist()[:3], resolution=R)
    rng, loading, variance = _gaussian_factor_model(wave.size, 2, seed=5)
    loading[:, 0] = 0.03 * profiles.profiles[0]  # a latent direction along the Ce lines
    n_stars = 2000
    x = rng.multivariate_normal(
        np.zeros(wave.size), np.diag(variance) + loading @ loading.T, size=n_stars
    )
    observed = np.ones(wave.size, dtype=bool)
    mean_z, cov_z = _latent_fit(x.T, loading, variance, observed)
    delta = x - (loading @ mean_z).T
    depth = np.full_like(x, 0.3)
    mask = np.zeros_like(x, dtype=bool)
    cov = np.broadcast_to(cov_z, (n_stars, 2, 2))
    gls = element_tests(delta, variance[None], depth, profiles, mask, loading, cov).evidence[:, 0]
    naive = element_tests(delta, variance[None], depth, profiles, mask).evidence[:, 0]
    assert abs(gls.mean()) < 0.08 and abs(gls.std() - 1) < 0.05
    assert naive.std() < 0.8  # ignoring what the fit absorbed understates the evidence
    # marginal evidence against the label-conditional mean (here 0), prior Cov[z | c] = I
    prior = np.broadcast_to(np.eye(2), (n_stars, 2, 2))
    marginal = element_tests(x, variance, depth, profiles, mask, loading, prior,
                             given_fit=False).evidence[:, 0]  # fmt: skip
    assert abs(marginal.mean()) < 0.08 and abs(marginal.std() - 1) < 0.05
    total = variance + (loading**2).sum(1)
    diagonal = element_tests(x, total, depth, profiles, mask).evidence[:, 0]
    assert diagonal.std() > 1.5  # correlated lines inflate an independent-pixel filter


def test_joint_chi2_is_chi2_distributed_and_exact() -> None:
    """All elements' filters together: chi2 with one dof per element with usable pixels."""
    from scipy import stats

    wave = WAVELENGTH[:400]
    profiles = element_profiles(wave, _linelist(), resolution=R)  # Ce, Fe, N on the grid
    rng, loading, variance = _gaussian_factor_model(wave.size, 3, seed=6)
    loading[:, 0] = 0.02 * (profiles.profiles[0] + profiles.profiles[1])  # Ce, Fe co-vary
    n_stars = 3000
    x = rng.multivariate_normal(
        np.zeros(wave.size), np.diag(variance) + loading @ loading.T, size=n_stars
    )
    depth = np.full_like(x, 0.3)
    mask = np.zeros_like(x, dtype=bool)
    mask[:, 150:400] = True  # hides every line but the first of Ce and Fe ...
    mask[::2, :] = False  # ... in every other star
    prior = np.broadcast_to(np.eye(3), (n_stars, 3, 3))
    args = (x, variance, depth, profiles, mask, loading, prior)
    tests = element_tests(*args, given_fit=False)
    single = element_tests(*args, given_fit=False, joint=False)
    np.testing.assert_allclose(single.chi2, tests.chi2, rtol=1e-8)  # a reparametrisation
    n_elements = profiles.profiles[:, ~mask[1]].max(axis=1) > 0
    assert set(tests.dof[::2]) == {3} and set(tests.dof[1::2]) == {int(n_elements.sum())}
    for parity in (0, 1):
        rows = slice(parity, None, 2)
        dof = int(tests.dof[rows][0])
        assert stats.kstest(tests.chi2[rows], stats.chi2(dof).cdf).pvalue > 1e-3
    # dense check of one star: n^T Cov[n]^-1 n with n = T^T V^-1 x
    t = profiles.profiles * depth[0]
    v = variance + (loading**2).sum(1)
    n = (t / v) @ x[0]
    cov = (t / v) @ (np.diag(variance) + loading @ loading.T) @ (t / v).T
    np.testing.assert_allclose(tests.chi2[0], n @ np.linalg.solve(cov, n), rtol=1e-8)
    # conditional version: residual from the star's latent fit, GLS information
    observed = np.ones(wave.size, dtype=bool)
    mean_z, cov_z = _latent_fit(x.T, loading, variance, observed)
    delta = x - (loading @ mean_z).T
    full = np.zeros_like(mask)
    cov = np.broadcast_to(cov_z, (n_stars, 3, 3))
    given = element_tests(delta, variance[None], depth, profiles, full, loading, cov)
    assert stats.kstest(given.chi2, stats.chi2(3).cdf).pvalue > 1e-3
    # Ce enhanced and Fe depleted, against the population's Ce-Fe correlation: chi2 far out
    odd = x + 0.05 * (profiles.profiles[0] - profiles.profiles[1])
    shifted = element_tests(odd, *args[1:], given_fit=False)
    assert np.median(shifted.chi2[::2]) > 10 * np.median(tests.chi2[::2])
    # the same amplitude along the correlation is a smaller surprise
    along = element_tests(x + 0.05 * (profiles.profiles[0] + profiles.profiles[1]), *args[1:],
                          given_fit=False)  # fmt: skip
    assert np.median(along.chi2[::2]) < np.median(shifted.chi2[::2]) / 2


def test_joint_chi2_drops_a_template_the_latent_fit_absorbs() -> None:
    """Conditional tests: a latent direction along one element's template leaves it
    (almost) no information; the chi2 must stay finite and count one element less."""
    from scipy import stats

    wave = WAVELENGTH[:400]
    profiles = element_profiles(wave, _linelist(), resolution=R)  # Ce, Fe, N
    rng, loading, variance = _gaussian_factor_model(wave.size, 2, seed=8)
    depth = np.full((1, wave.size), 0.3)
    loading[:, 0] = 1e4 * profiles.profiles[0] * depth[0]  # the Ce template, huge prior
    n_stars = 2000
    z = rng.standard_normal((n_stars, 2))
    x = z @ loading.T + rng.standard_normal((n_stars, wave.size)) * np.sqrt(variance)
    observed = np.ones(wave.size, dtype=bool)
    mean_z, cov_z = _latent_fit(x.T, loading, variance, observed)
    delta = x - (loading @ mean_z).T
    cov = np.broadcast_to(cov_z, (n_stars, 2, 2))
    tests = element_tests(delta, variance[None], np.broadcast_to(depth, x.shape), profiles,
                          np.zeros_like(x, dtype=bool), loading, cov)  # fmt: skip
    assert np.all(np.isfinite(tests.chi2)) and set(tests.dof) == {2}
    assert stats.kstest(tests.chi2, stats.chi2(2).cdf).pvalue > 1e-3


def test_line_depth_is_clipped() -> None:
    depth = line_depth(np.array([[1.2, 1.0, 0.7, -0.5]]), floor=0.01)
    np.testing.assert_allclose(depth, [[0.01, 0.01, 0.3, 1.0]])


def test_unexplained_features(profiles) -> None:
    residual = np.zeros((3, WAVELENGTH.size))
    mask = np.zeros_like(residual, dtype=bool)
    far = int(np.searchsorted(WAVELENGTH, 16040.0))  # 5 Å from the nearest line
    near = int(np.searchsorted(WAVELENGTH, 16060.1))  # on a Ce line
    residual[0, far : far + 3] = [-6.0, -9.0, -6.0]
    residual[0, near : near + 3] = -8.0
    residual[1, far] = -20.0  # a single pixel is not a feature
    residual[2, far : far + 3] = [-7.0, 7.0, -7.0]  # alternating signs: no run of two
    found = unexplained_features(residual, mask, WAVELENGTH, profiles.line_wavelength, R)
    assert [f.size for f in found] == [1, 0, 0]
    assert found[0][0] == pytest.approx(WAVELENGTH[far + 1])
    # masking the middle pixel breaks the run
    mask[0, far + 1] = True
    found = unexplained_features(residual, mask, WAVELENGTH, profiles.line_wavelength, R)
    assert found[0].size == 0
    # without a line list every significant feature is unexplained
    mask[:] = False
    found = unexplained_features(residual, mask, WAVELENGTH, np.zeros(0), R)
    assert found[0].size == 2
