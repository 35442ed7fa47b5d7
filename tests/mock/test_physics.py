"""Line formation behaves physically: abundance, saturation, temperature, molecules."""

from __future__ import annotations

import numpy as np
import pytest

from stellarflow.mock import SpectrumModel, StarParameters, synthesize_flux
from stellarflow.mock.physics import (
    MAX_LINE_DEPTH,
    curve_of_growth,
    log_stage_fraction,
    molecular_numbers,
)
from tests.mock.conftest import local_grid, one_line_list


def _stars(n: int = 1, **labels: object) -> StarParameters:
    base = {"TEFF": 4500.0, "LOGG": 2.5, "FE_H": 0.0}
    base.update(labels)
    return StarParameters.from_labels({k: np.broadcast_to(v, (n,)) for k, v in base.items()})


def test_curve_of_growth_weak_limit_and_saturation() -> None:
    log_w = np.linspace(-3.0, 4.0, 71)
    w, eta = curve_of_growth(log_w, 2.0, -1.0)
    # Linear when thin, flat once saturated, ~sqrt on the damping part, and monotonic.
    np.testing.assert_allclose(w[:5] / 10.0 ** log_w[:5], 1.0, rtol=2e-3)
    slope = np.gradient(np.log10(w), log_w)
    assert slope[0] == pytest.approx(1.0, abs=1e-3)
    assert slope[40] < 0.5
    assert slope[-1] == pytest.approx(0.5, abs=0.05)
    assert np.all(np.diff(w) > 0)
    assert eta[0] < 0.1 and eta[-1] > 0.9


def test_line_depth_increases_with_abundance_and_saturates() -> None:
    grid = local_grid()
    weak = SpectrumModel(one_line_list("Mg 1", chi=5.9, log_ew_ref=-0.8), grid)
    strong = SpectrumModel(one_line_list("Mg 1", chi=5.9, log_ew_ref=2.0), grid)
    mg = np.array([-0.3, 0.0, 0.3])
    stars = _stars(3, MG_FE=mg)
    depth_weak = 1.0 - weak.flux(stars).min(axis=1)
    depth_strong = 1.0 - strong.flux(stars).min(axis=1)
    assert np.all(np.diff(depth_weak) > 0) and np.all(np.diff(depth_strong) > 0)
    w_weak, _ = weak.line_strengths(stars)
    w_strong, _ = strong.line_strengths(stars)
    # Weak line: EW grows as the abundance (10**0.3 ~ 2 per 0.3 dex); strong: much less.
    assert w_weak[2, 0] / w_weak[1, 0] == pytest.approx(10**0.3, rel=0.02)
    assert w_strong[2, 0] / w_strong[1, 0] < 1.5
    assert depth_strong.max() < MAX_LINE_DEPTH  # cores never go black
    # Other elements leave the Mg line alone.
    same = weak.flux(_stars(2, SI_FE=np.array([-0.3, 0.3])))
    np.testing.assert_allclose(same[0], same[1])


def test_equivalent_width_of_weak_line_matches_spectrum() -> None:
    grid = local_grid(n_pixels=301)
    model = SpectrumModel(one_line_list("Fe 1", log_ew_ref=-1.0), grid)
    stars = _stars()
    w, _ = model.line_strengths(stars)
    flux = model.flux(stars)[0]
    velocity_step = 299792.458 * np.log(grid[1] / grid[0])
    measured = np.sum(1.0 - flux) * velocity_step
    assert measured == pytest.approx(w[0, 0], rel=0.01)


@pytest.mark.parametrize("species", ["CN", "CO", "OH"])
def test_cooler_giants_have_stronger_molecules(species: str) -> None:
    model = SpectrumModel(one_line_list(species, chi=0.5, log_ew_ref=-0.5), local_grid())
    teff = np.array([4000.0, 4400.0, 4800.0, 5200.0])
    w, _ = model.line_strengths(_stars(4, TEFF=teff))
    assert np.all(np.diff(w[:, 0]) < 0)
    # Along the giant branch (cooler = lower gravity) too.
    w_rgb, _ = model.line_strengths(
        _stars(2, TEFF=np.array([4000.0, 4800.0]), LOGG=np.array([1.2, 2.9]))
    )
    assert w_rgb[0, 0] > w_rgb[1, 0]


def test_oh_is_the_most_temperature_sensitive_molecule() -> None:
    ratios = {}
    for species in ("CN", "CO", "OH"):
        model = SpectrumModel(one_line_list(species, chi=0.5, log_ew_ref=-1.5), local_grid())
        w, _ = model.line_strengths(_stars(2, TEFF=np.array([4000.0, 5000.0])))
        ratios[species] = w[0, 0] / w[1, 0]
    assert ratios["OH"] > ratios["CO"] and ratios["OH"] > ratios["CN"]


def test_molecules_follow_their_elements() -> None:
    zero, up = np.zeros(2), np.array([0.0, 0.2])
    by_c = molecular_numbers(up, zero, zero)
    by_n = molecular_numbers(zero, up, zero)
    by_o = molecular_numbers(zero, zero, up)
    assert by_c["CO"][1] > 0 and by_c["CN"][1] > 0 and by_c["OH"][1] < 0  # CO locks up O
    assert by_n["CN"][1] == pytest.approx(0.2) and by_n["CO"][1] == 0
    assert by_o["OH"][1] > 0.2 and by_o["CN"][1] < 0  # more O, less free C
    assert abs(by_o["CO"][1]) < 0.01  # C-limited


def test_ionisation_and_gravity() -> None:
    teff, log_pe = np.array([4000.0, 5000.0]), np.zeros(2)
    neutral = log_stage_fraction(teff, log_pe, "Fe", 1)
    ionised = log_stage_fraction(teff, log_pe, "Fe", 2)
    np.testing.assert_allclose(10**neutral + 10**ionised, 1.0)
    assert neutral[0] > neutral[1]  # Fe I fraction grows in cooler stars
    grid = local_grid()
    ion = SpectrumModel(one_line_list("Ce 2", chi=0.5), grid)
    atom = SpectrumModel(one_line_list("Fe 1", chi=5.0), grid)
    stars = _stars(2, LOGG=np.array([1.5, 3.0]))
    w_ion, _ = ion.line_strengths(stars)
    w_atom, _ = atom.line_strengths(stars)
    minority = SpectrumModel(one_line_list("K 1", chi=3.0), grid)
    w_minority, _ = minority.line_strengths(stars)
    # Ionised lines ~ g**(-1/3); neutral lines of an almost fully ionised element (K I)
    # barely depend on gravity; Fe I (partly ionised at 4,500 K) lies in between.
    assert w_ion[0, 0] / w_ion[1, 0] == pytest.approx(10 ** (1.5 / 3), rel=0.15)
    assert w_minority[0, 0] / w_minority[1, 0] == pytest.approx(1.0, abs=0.05)
    assert 1.0 < w_atom[0, 0] / w_atom[1, 0] < w_ion[0, 0] / w_ion[1, 0]


def test_synthesize_flux_on_the_full_list(linelist) -> None:
    grid = local_grid(15770.0, 400)
    flux = synthesize_flux(
        {"TEFF": [4200.0, 4800.0], "LOGG": [1.6, 2.8], "FE_H": [0.0, -0.5]}, linelist, grid
    )
    assert flux.shape == (2, 400)
    assert np.all(flux > 0) and np.all(flux <= 1)
    assert flux[0].mean() < flux[1].mean()  # cool metal-rich giant: more absorption
