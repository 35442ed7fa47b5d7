"""The mock H-band line list: atoms, CN/CO/OH bands and Brackett lines, with withheld lines.

:func:`make_mock_linelist` returns a deterministic (from its seed) table of a few thousand
features between 15,100 and 17,000 Angstrom (vacuum), in the canonical line-list columns of
:mod:`stellarflow.io.linelist` plus the columns the mock's line formation needs:

============  =======  ===========================================================
column        type     meaning
============  =======  ===========================================================
line_id       int64    stable index of the line in the full list
wavelength    float64  vacuum Angstrom
species       str      ``"Fe 1"``, ``"Ce 2"``, ``"CN"``, ``"CO"``, ``"OH"``, ``"H 1"``
element       str      element the feature measures (CN -> N, CO -> C, OH -> O)
ion           int64    1 neutral, 2 singly ionised, 0 molecule
loggf         float64  log10 gf, derived from ``log_ew_ref`` with the mock's ionisation
                       model (plausible in ordering, not literature values)
chi           float64  lower-level excitation potential, eV
log_ew_ref    float64  log10 weak-line equivalent width at the reference star, km/s
log_damping   float64  log10 Voigt damping parameter ``a`` at the reference star
wing_hwhm     float64  half width of the fixed damping-wing profile, km/s (0 = no wings)
depth_ref     float64  approximate central depth at the reference star
withheld      bool     True for the lines hidden from the published list
source        str      ``"anchor"`` (modelled on a known H-band line), ``"random"``,
                       ``"band"`` (molecular band structure) or ``"hydrogen"``
============  =======  ===========================================================

Atomic lines are a set of anchors loosely modelled on well-known APOGEE lines (Mg I 15,770,
Al I 16,723/16,755, K I 15,167, Si I, Ca I, Ce II, Nd II, ...) plus random lines whose
excitation and strength follow per-species distributions (Fe I most numerous). CO lines are
the second-overtone (Delta v = 3) P and R branches computed from the CO vibration-rotation
constants, so the bandheads fall near 15,580, 15,780, 15,980 ... Angstrom; OH lines are the
Delta v = 2 P/R branches as Lambda doublets; CN lines are Fortrat-parabola branches of the
red system. Withheld lines are detectable, isolated atomic lines of a few elements (about
``withheld_fraction`` of each such element's detectable lines; by default ~20 lines of Fe,
Si, Ni, Ti and Ce).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
from astropy.table import Table
from scipy.special import voigt_profile

from stellarflow.data.grid import APOGEE_CHIP_SLICES, apogee_full_wavelength
from stellarflow.errors import DataValidationError
from stellarflow.io.linelist import air_to_vacuum
from stellarflow.mock.constants import ELEMENT_DATA, REFERENCE_STAR, SPEED_OF_LIGHT_KMS
from stellarflow.mock.physics import (
    MAX_LINE_DEPTH,
    MOLECULE_DATA,
    curve_of_growth,
    doppler_width,
    log_continuum_opacity,
    log_electron_pressure,
    log_stage_fraction,
    reference_sigma,
    theta,
)

__all__ = ["WAVELENGTH_RANGE", "make_mock_linelist", "species_mass"]

WAVELENGTH_RANGE: Final = (15100.0, 17000.0)
_EV_PER_INVCM: Final = 1.0 / 8065.544
_LOG_C_ATOM: Final = 3.4  # zero point of the derived atomic log gf
# log gf zero points of species outside the atomic ionisation model (molecules, H I).
_LOG_C_SPECIAL: Final = {"CO": -5.0, "CN": -1.0, "OH": -4.0, "H 1": -4.0}

# Anchors: (air Angstrom, species, chi eV, log10 weak-line EW at the reference star, km/s,
# log10 damping a). Modelled on prominent APOGEE lines; strengths tuned by eye.
# fmt: off
_ANCHORS: Final = (
    (15740.72, "Mg 1", 5.93, 2.35, -0.4), (15748.99, "Mg 1", 5.93, 2.55, -0.4),
    (15765.84, "Mg 1", 5.93, 2.75, -0.4), (15879.52, "Mg 1", 5.95, 1.10, -1.2),
    (15886.18, "Mg 1", 5.95, 1.40, -1.2), (15954.48, "Mg 1", 6.00, 1.75, -1.2),
    (16364.75, "Mg 1", 5.75, 1.00, -1.3),
    (16718.96, "Al 1", 4.09, 2.55, -0.4), (16750.56, "Al 1", 4.09, 2.75, -0.4),
    (16763.36, "Al 1", 4.09, 2.05, -0.7),
    (15376.83, "Si 1", 6.22, 1.20, -1.3), (15888.41, "Si 1", 5.08, 1.40, -1.2),
    (15960.06, "Si 1", 5.98, 2.25, -0.7), (16060.01, "Si 1", 5.95, 1.75, -1.2),
    (16094.79, "Si 1", 5.96, 2.05, -0.7), (16215.67, "Si 1", 5.95, 1.40, -1.2),
    (16380.18, "Si 1", 5.98, 1.40, -1.2), (16680.77, "Si 1", 5.98, 1.85, -1.2),
    (15163.07, "K 1", 2.67, 1.0, -1.4), (15168.38, "K 1", 2.67, 0.8, -1.4),
    (16150.76, "Ca 1", 4.53, 1.2, -1.3), (16155.24, "Ca 1", 4.53, 1.0, -1.3),
    (16157.36, "Ca 1", 4.55, 0.9, -1.3), (16197.07, "Ca 1", 4.54, 1.3, -1.3),
    (16373.86, "Na 1", 3.75, 0.6, -1.5), (16388.85, "Na 1", 3.75, 0.8, -1.5),
    (15543.78, "Ti 1", 1.88, 0.8, -1.8), (15602.84, "Ti 1", 2.27, 0.4, -1.8),
    (15698.98, "Ti 1", 1.89, 0.7, -1.8), (15715.57, "Ti 1", 1.89, 0.8, -1.8),
    (16330.53, "Ti 1", 3.11, 0.4, -1.8), (15873.84, "Ti 2", 3.12, 0.2, -1.8),
    (15924.79, "V 1", 2.14, 0.3, -1.8), (15680.06, "Cr 1", 4.70, 0.6, -1.6),
    (15860.21, "Cr 1", 4.70, 0.5, -1.6), (15159.10, "Mn 1", 4.89, 1.0, -1.4),
    (15217.70, "Mn 1", 4.89, 1.1, -1.4), (15262.40, "Mn 1", 4.89, 0.9, -1.4),
    (16757.64, "Co 1", 3.41, 0.5, -1.7), (15605.68, "Ni 1", 5.30, 0.9, -1.4),
    (16584.44, "Ni 1", 5.30, 0.8, -1.4), (16673.71, "Ni 1", 6.03, 0.9, -1.4),
    (16815.47, "Ni 1", 5.30, 0.8, -1.4), (16005.60, "Cu 1", 5.35, 0.1, -1.8),
    (15469.82, "S 1", 8.05, 0.8, -1.4), (15478.48, "S 1", 8.05, 0.7, -1.4),
    (15422.28, "S 1", 8.05, 0.5, -1.4),
    (15277.65, "Ce 2", 0.61, 0.1, -2.0), (15784.75, "Ce 2", 0.32, -0.1, -2.0),
    (15977.12, "Ce 2", 0.66, -0.2, -2.0), (16376.48, "Ce 2", 0.12, 0.0, -2.0),
    (16595.18, "Ce 2", 0.12, 0.0, -2.0), (16722.51, "Ce 2", 0.47, -0.1, -2.0),
    (15368.14, "Nd 2", 1.26, 0.0, -2.0), (15912.25, "Nd 2", 0.98, -0.1, -2.0),
    (16053.63, "Nd 2", 0.74, 0.0, -2.0), (16262.04, "Nd 2", 0.99, -0.1, -2.0),
    (15207.53, "Fe 1", 5.39, 2.05, -0.7), (15294.56, "Fe 1", 5.31, 2.55, -0.4),
    (15490.34, "Fe 1", 2.20, 1.20, -1.3), (15501.32, "Fe 1", 6.29, 1.20, -1.2),
    (15621.65, "Fe 1", 5.54, 2.15, -0.7), (15631.95, "Fe 1", 5.35, 1.75, -1.2),
    (15662.02, "Fe 1", 5.83, 1.40, -1.2), (15692.75, "Fe 1", 5.39, 2.25, -0.7),
    (16009.61, "Fe 1", 5.43, 1.20, -1.2), (16040.65, "Fe 1", 5.87, 1.30, -1.2),
    (16153.25, "Fe 1", 5.35, 1.40, -1.2), (16486.67, "Fe 1", 5.83, 1.30, -1.2),
    (16517.22, "Fe 1", 6.29, 1.40, -1.2), (16524.47, "Fe 1", 6.34, 1.30, -1.2),
    (16021.70, "C 1", 9.63, 0.6, -1.5), (16890.38, "C 1", 9.00, 0.7, -1.5),
)

# Random atomic lines: species -> (count, chi range eV, log EW lower end, e-folding scale,
# upper cap (log10 km/s), log damping range).
_RANDOM: Final = {
    "Fe 1": (1000, (3.0, 6.6), -0.85, 0.40, 1.6, (-2.0, -1.0)),
    "Ni 1": (55, (4.0, 6.3), -0.9, 0.35, 1.0, (-2.0, -1.2)),
    "Si 1": (35, (5.0, 7.2), -0.8, 0.40, 1.2, (-1.8, -1.1)),
    "Mg 1": (18, (5.1, 6.8), -0.8, 0.40, 1.0, (-1.8, -1.1)),
    "Ti 1": (40, (1.4, 2.6), -1.0, 0.35, 0.6, (-2.2, -1.6)),
    "Ti 2": (3, (2.6, 3.2), -1.0, 0.25, 0.1, (-2.2, -1.6)),
    "Ca 1": (16, (3.9, 5.0), -0.9, 0.35, 0.8, (-2.0, -1.2)),
    "Cr 1": (22, (3.3, 5.2), -1.0, 0.30, 0.5, (-2.0, -1.4)),
    "Mn 1": (12, (4.8, 5.5), -0.9, 0.30, 0.6, (-2.0, -1.4)),
    "Co 1": (18, (2.3, 4.2), -1.1, 0.25, 0.3, (-2.2, -1.6)),
    "V 1": (14, (1.0, 2.5), -1.1, 0.25, 0.2, (-2.2, -1.6)),
    "Al 1": (6, (4.0, 4.7), -0.9, 0.35, 0.6, (-2.0, -1.2)),
    "Na 1": (4, (3.6, 4.3), -0.9, 0.30, 0.3, (-2.0, -1.4)),
    "K 1": (3, (2.6, 3.4), -1.0, 0.30, 0.3, (-2.0, -1.4)),
    "S 1": (10, (6.5, 9.0), -0.8, 0.30, 0.4, (-2.0, -1.4)),
    "Cu 1": (3, (3.8, 5.4), -1.0, 0.20, 0.0, (-2.2, -1.6)),
    "C 1": (15, (7.5, 9.7), -0.9, 0.30, 0.4, (-2.0, -1.4)),
    "Ce 2": (12, (0.3, 1.4), -1.2, 0.30, 0.2, (-2.4, -2.0)),
    "Nd 2": (12, (0.2, 1.5), -1.3, 0.20, -0.2, (-2.4, -2.0)),
}
# fmt: on

_MOLECULE_ELEMENT: Final = {"CO": "C", "CN": "N", "OH": "O"}
_DETECTABLE_DEPTH: Final = 0.04  # reference-star depth a withheld line must exceed
_WING_THRESHOLD: Final = 0.3  # km/s of damping equivalent width that earns a wing profile
# HWHM of the intrinsic damping profile d (1 - exp(-c / v^2)) per km/s of its equivalent
# width: 1 / (2 d sqrt(pi ln 2)).
_WING_SCALE: Final = 1.0 / (2.0 * MAX_LINE_DEPTH * np.sqrt(np.pi * np.log(2.0)))


def species_mass(species: str) -> float:
    """Mass of a species' absorber, amu (``"Fe 1"`` -> 55.8, ``"CN"`` -> 26)."""
    if species in MOLECULE_DATA:
        return MOLECULE_DATA[species].mass
    return ELEMENT_DATA[species.split()[0]].mass


def _vibration_rotation_lines(
    we: float,
    wexe: float,
    be: float,
    ae: float,
    dv: int,
    v_lower: Sequence[int],
    j_max: int,
    half_integer: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """P and R branch wavenumbers (cm^-1), lower-state energies (eV), lower J, v''."""

    def g(v: np.ndarray | int) -> np.ndarray:
        return we * (np.asarray(v) + 0.5) - wexe * (np.asarray(v) + 0.5) ** 2

    j = np.arange(0, j_max + 1, dtype=np.float64) + (0.5 if half_integer else 0.0)
    nus, chis, js, vs = [], [], [], []
    for v in v_lower:
        b_low, b_up = be - ae * (v + 0.5), be - ae * (v + dv + 0.5)
        origin = g(v + dv) - g(v)
        f_low = b_low * j * (j + 1)
        for j_up in (j + 1, j - 1):  # R then P branch
            ok = j_up >= (0.5 if half_integer else 0.0)
            nus.append((origin + b_up * j_up * (j_up + 1) - f_low)[ok])
            chis.append(((g(v) - g(0) + f_low) * _EV_PER_INVCM)[ok])
            js.append(j[ok])
            vs.append(np.full(int(ok.sum()), v))
    return np.concatenate(nus), np.concatenate(chis), np.concatenate(js), np.concatenate(vs)


def _co_lines() -> dict[str, np.ndarray]:
    """CO second-overtone bands (3-0 ... 9-6)."""
    nu, chi, j, v = _vibration_rotation_lines(2169.81, 13.29, 1.9313, 0.0175, 3, range(7), 90)
    log_ew = -1.15 + np.log10(j + 1.0) + 0.10 * v - theta(REFERENCE_STAR["TEFF"]) * chi
    return {"wavenumber": nu, "chi": chi, "log_ew": log_ew, "log_damping": np.full_like(nu, -2.5)}


def _oh_lines() -> dict[str, np.ndarray]:
    """OH Delta v = 2 bands as Lambda doublets of two spin components."""
    nu, chi, j, v = _vibration_rotation_lines(3737.8, 84.9, 18.91, 0.724, 2, range(5), 30, True)
    parts_nu, parts_chi, parts_j, parts_v = [], [], [], []
    for spin_shift in (0.0, 1.0):  # F2 components sit ~ (A / J) above F1, A ~ 140 cm^-1
        for lam in (-1.0, 1.0):  # Lambda doubling grows as J^2
            parts_nu.append(nu + spin_shift * 140.0 / (j + 1.0) + lam * 0.012 * j * (j + 1))
            parts_chi.append(chi + spin_shift * 0.017)
            parts_j.append(j)
            parts_v.append(v)
    nu, chi = np.concatenate(parts_nu), np.concatenate(parts_chi)
    j, v = np.concatenate(parts_j), np.concatenate(parts_v)
    log_ew = 0.45 + np.log10(j) - 0.15 * v - theta(REFERENCE_STAR["TEFF"]) * chi
    return {"wavenumber": nu, "chi": chi, "log_ew": log_ew, "log_damping": np.full_like(nu, -2.2)}


def _cn_lines(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """CN red-system-like branches: Fortrat parabolas of four bands, eight branches each."""
    nus, chis, log_ews = [], [], []
    j = np.arange(1, 71, dtype=np.float64)
    for v, origin in enumerate((6620.0, 6470.0, 6320.0, 6170.0)):
        for _ in range(8):
            b_up, b_low = rng.uniform(1.66, 1.74), rng.uniform(1.86, 1.90)
            shift = rng.uniform(-25.0, 25.0)
            m = j + 1.0 if rng.random() < 0.5 else -j
            nus.append(origin + shift + (b_up + b_low) * m + (b_up - b_low) * m * m)
            chi = (v * 2042.0 + b_low * j * (j + 1)) * _EV_PER_INVCM
            chis.append(chi)
            log_ews.append(
                -0.9
                + np.log10(j)
                - 0.2 * v
                - theta(REFERENCE_STAR["TEFF"]) * chi
                + rng.normal(0.0, 0.15, j.size)
            )
    nu = np.concatenate(nus)
    return {
        "wavenumber": nu,
        "chi": np.concatenate(chis),
        "log_ew": np.concatenate(log_ews),
        "log_damping": np.full_like(nu, -2.5),
    }


def _random_atomic(rng: np.random.Generator) -> list[tuple[float, str, float, float, float]]:
    """Random atomic lines, vacuum wavelengths."""
    rows: list[tuple[float, str, float, float, float]] = []
    lo_w, hi_w = WAVELENGTH_RANGE
    for species, (count, (chi_lo, chi_hi), w_lo, w_scale, w_hi, (d_lo, d_hi)) in _RANDOM.items():
        wave = rng.uniform(lo_w, hi_w, count)
        chi = rng.uniform(chi_lo, chi_hi, count)
        log_ew = np.minimum(w_lo + rng.exponential(w_scale, count), w_hi)
        damping = rng.uniform(d_lo, d_hi, count)
        rows.extend(zip(wave, [species] * count, chi, log_ew, damping, strict=True))
    return rows


def _loggf(species: np.ndarray, chi: np.ndarray, log_ew: np.ndarray) -> np.ndarray:
    """log gf consistent with the reference-star strength under the mock's physics."""
    ref = REFERENCE_STAR
    theta_ref = float(theta(ref["TEFF"]))
    log_pe = log_electron_pressure(np.array([ref["LOGG"]]), np.array([ref["FE_H"]]))
    log_kappa = float(log_continuum_opacity(np.array([ref["TEFF"]]), log_pe)[0])
    out = np.empty(species.size)
    for name in np.unique(species):
        sel = species == name
        base = log_ew[sel] + theta_ref * chi[sel]
        if name in _LOG_C_SPECIAL:
            out[sel] = base + _LOG_C_SPECIAL[name]
            continue
        element, stage = name.split()
        frac = float(log_stage_fraction(np.array([ref["TEFF"]]), log_pe, element, int(stage))[0])
        out[sel] = base - (ELEMENT_DATA[element].solar - 12.0) - frac + log_kappa - _LOG_C_ATOM
    return out


def _reference_profile_columns(
    species: np.ndarray, log_ew: np.ndarray, log_damping: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate central depth and wing HWHM (km/s) of each line at the reference star."""
    ref = REFERENCE_STAR
    mass = np.array([species_mass(s) for s in species])
    b = doppler_width(ref["TEFF"], ref["VMICRO"], mass)
    w, eta = curve_of_growth(log_ew, b, log_damping)
    wing = np.where(w * eta > _WING_THRESHOLD, _WING_SCALE * w * np.sqrt(eta), 0.0)
    wing[species == "H 1"] = 45.0  # Stark-broadened Brackett lines
    sigma = reference_sigma()
    in_wings = np.where(wing > 0, eta, 0.0)
    peak = w * (1.0 - in_wings) / (np.sqrt(2.0 * np.pi) * sigma) + w * in_wings * voigt_profile(
        0.0, sigma, np.maximum(wing, 1e-3)
    )
    return -np.expm1(-peak), wing


def _on_apogee_grid(wavelength: np.ndarray, margin_pixels: int = 6) -> np.ndarray:
    """True for wavelengths on the 7,514-pixel APOGEE grid, away from chip edges."""
    full = apogee_full_wavelength()
    ok = np.zeros(wavelength.size, dtype=bool)
    for chip in APOGEE_CHIP_SLICES:
        lo, hi = full[chip.start + margin_pixels], full[chip.stop - 1 - margin_pixels]
        ok |= (wavelength > lo) & (wavelength < hi)
    return ok


def _choose_withheld(
    table: Table, fraction: float, elements: Sequence[str], rng: np.random.Generator
) -> np.ndarray:
    """Isolated atomic lines of ``elements``: ``round(fraction * n_detectable)`` of each.

    ``n_detectable`` counts the element's lines deeper than 4% at the reference star on the
    APOGEE grid; the withheld ones are drawn among those that are also isolated (other lines
    within +-3 sigma add less than 35% of its depth) and not anchors (well-known lines).
    """
    withheld = np.zeros(len(table), dtype=bool)
    if fraction <= 0:
        return withheld
    wave = np.asarray(table["wavelength"])
    depth = np.asarray(table["depth_ref"])
    sigma_a = wave * reference_sigma() / SPEED_OF_LIGHT_KMS
    # Depth of everything else within +-2.5 sigma, weighted by Gaussian overlap.
    order = np.argsort(wave)
    neighbour = np.zeros(len(table))
    for offset in range(1, 40):
        a, b = order[:-offset], order[offset:]
        sep = wave[b] - wave[a]
        weight = np.exp(-0.25 * (sep / sigma_a[a]) ** 2) * (sep < 3.0 * sigma_a[a])
        neighbour[a] += weight * depth[b]
        neighbour[b] += weight * depth[a]
    detectable = (
        (np.asarray(table["ion"]) > 0) & (depth > _DETECTABLE_DEPTH) & _on_apogee_grid(wave)
    )
    candidate = detectable & (np.asarray(table["source"]) == "random") & (neighbour < 0.35 * depth)
    element_col = np.asarray(table["element"])
    for element in elements:
        n_detectable = int(np.sum(detectable & (element_col == element)))
        n_take = max(1, round(fraction * n_detectable)) if n_detectable else 0
        pool = np.flatnonzero((element_col == element) & candidate)
        take = rng.choice(pool, size=min(n_take, pool.size), replace=False)
        withheld[take] = True
    return withheld


def make_mock_linelist(
    seed: int = 0,
    *,
    withheld_fraction: float = 0.1,
    withheld_elements: Sequence[str] = ("Fe", "Si", "Ni", "Ti", "Ce"),
) -> Table:
    """The mock survey's full line list (see the module docstring for the columns).

    Args:
        seed: seed of the line list (independent of the stars' seed).
        withheld_fraction: fraction of each withheld element's detectable lines (deeper
            than 4% at the reference star, on the APOGEE grid) to hide, rounded, at least
            one; they are drawn among the isolated, non-anchor ones, so fewer are hidden if
            too few qualify.
        withheld_elements: element symbols whose lines may be withheld.

    Returns:
        Table sorted by wavelength, ``meta["medium"] == "vacuum"``; ``~table["withheld"]``
        selects the published list.

    Raises:
        DataValidationError: for a fraction outside [0, 0.5] or an unknown element.
    """
    if not 0.0 <= withheld_fraction <= 0.5:
        raise DataValidationError(f"withheld_fraction must be in [0, 0.5], got {withheld_fraction}")
    atomic = {name.split()[0] for name in _RANDOM}
    unknown = sorted(set(withheld_elements) - atomic)
    if unknown:
        raise DataValidationError(
            f"withheld_elements {unknown} have no atomic lines in the mock; choose from "
            f"{sorted(atomic)}"
        )
    seq = np.random.SeedSequence(seed)
    rng_lines, rng_cn, rng_withheld = (np.random.default_rng(s) for s in seq.spawn(3))

    anchors = list(_ANCHORS)
    anchor_wave = air_to_vacuum(np.array([a[0] for a in anchors]))
    rows = [(w, *a[1:], "anchor") for w, a in zip(anchor_wave, anchors, strict=True)]
    rows += [(*r, "random") for r in _random_atomic(rng_lines)]
    n_upper = np.arange(11, 23)
    brackett = 1e8 / (109677.58 * (1.0 / 16.0 - 1.0 / n_upper**2))
    rows += [
        (float(w), "H 1", 12.75, 0.1 - 0.08 * (n - 11), 0.5, "hydrogen")
        for w, n in zip(brackett, n_upper, strict=True)
    ]
    for name, lines in (("CO", _co_lines()), ("OH", _oh_lines()), ("CN", _cn_lines(rng_cn))):
        wave = 1e8 / lines["wavenumber"]
        rows += [
            (float(w), name, float(c), float(e), float(d), "band")
            for w, c, e, d in zip(
                wave, lines["chi"], lines["log_ew"], lines["log_damping"], strict=True
            )
        ]
    wave = np.array([r[0] for r in rows])
    keep = (wave >= WAVELENGTH_RANGE[0]) & (wave <= WAVELENGTH_RANGE[1])
    rows = [r for r, k in zip(rows, keep, strict=True) if k]
    rows.sort(key=lambda r: r[0])

    species = np.array([r[1] for r in rows])
    chi = np.array([r[2] for r in rows], dtype=np.float64)
    log_ew = np.array([r[3] for r in rows], dtype=np.float64)
    log_damping = np.array([r[4] for r in rows], dtype=np.float64)
    depth, wing = _reference_profile_columns(species, log_ew, log_damping)
    element = np.array([_MOLECULE_ELEMENT.get(s, s.split()[0]) for s in species])
    ion = np.array([0 if s in _MOLECULE_ELEMENT else int(s.split()[1]) for s in species])
    table = Table(
        {
            "line_id": np.arange(len(rows), dtype=np.int64),
            "wavelength": np.array([r[0] for r in rows], dtype=np.float64),
            "species": species,
            "element": element,
            "ion": ion.astype(np.int64),
            "loggf": _loggf(species, chi, log_ew),
            "chi": chi,
            "log_ew_ref": log_ew,
            "log_damping": log_damping,
            "wing_hwhm": wing,
            "depth_ref": depth,
            "source": np.array([r[5] for r in rows]),
        }
    )
    table["withheld"] = _choose_withheld(
        table, withheld_fraction, tuple(withheld_elements), rng_withheld
    )
    table.meta.update(
        {
            "medium": "vacuum",
            "seed": int(seed),
            "withheld_fraction": float(withheld_fraction),
            "withheld_elements": list(withheld_elements),
            "reference_star": dict(REFERENCE_STAR),
        }
    )
    return table
