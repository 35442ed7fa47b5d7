r"""Line formation of the mock: line strengths, curve of growth and broadening.

Every line ``l`` of species ``s`` is specified by its weak-line equivalent width at the
reference star (:data:`~stellarflow.mock.constants.REFERENCE_STAR`), ``W_ref`` (km/s),
its lower-level excitation ``chi`` (eV) and a damping constant. For a star with
``theta = 5040 / Teff`` the weak-line equivalent width is

.. math::

    \log_{10} W_w = \log_{10} W_{ref} - (\theta - \theta_{ref})\,\chi + \Delta_s,

where the species term :math:`\Delta_s` (relative to the reference star) is

* atoms: :math:`[X/H] + \Delta\log f_{stage} - \Delta\log\kappa_c`, with the ionisation
  fraction ``f_stage`` from the Saha equation,
  :math:`\log(N_{II}/N_I) = \log(2u_{II}/u_I) + 2.5\log T - \theta\chi_{ion} - 0.48
  - \log P_e`, the H\ :sup:`-` continuum opacity
  :math:`\log\kappa_c = \log P_e - 2.5\log T + 0.754\,\theta`, and the electron pressure
  :math:`\log P_e = \log P_{e,ref} + (\log g - 2.5)/3 + 0.5\,[Fe/H]`. So neutral lines of
  mostly ionised elements (Fe I, Mg I) are nearly gravity-independent and strengthen in
  cooler stars, lines of ions (Ce II, Nd II) and of mostly neutral elements (S I, C I)
  scale as ``g**(-1/3)``;
* molecules: :math:`\Delta\log n_{mol} + (\theta - \theta_{ref}) D_{eff}
  + \gamma_{mol}(\log g - 2.5)`, with molecule numbers from a one-layer C/N/O equilibrium:
  CO locks up carbon, ``n_CO = x`` with ``K (eps_C - x)(eps_O - x) = x``; OH forms from the
  free oxygen ``eps_O - x`` and CN from the free carbon ``eps_C - x`` times ``eps_N``. An
  effective dissociation energy ``D_eff`` makes all three stronger in cooler giants (OH most).

The saturated equivalent width follows a Voigt curve of growth (Rodgers & Williams 1974
interpolation) with the intrinsic Doppler width :math:`b = \sqrt{2kT/m + \xi^2}`. In the
infrared the line source function keeps cores from going black, so the intrinsic absorption
is ``d (1 - exp(-tau(v) / d))`` with a maximum depth ``d`` (:data:`MAX_LINE_DEPTH`):

.. math::

    \tau_0 = \frac{W_w}{\sqrt{\pi} b},\quad W_D = d\,b\,F(\tau_0 / d),\quad
    F(t) = \int (1 - e^{-t e^{-x^2}})\,dx,

.. math::

    W_L = 2\pi d \gamma\,L\Big(\frac{W_w}{2\pi d \gamma}\Big),\quad
    L(x) = x e^{-x} [I_0(x) + I_1(x)],\quad \gamma = a b

(the pure-Doppler and pure-Lorentz curves of growth; ``L`` is the Ladenburg-Reiche
function), combined as

.. math::

    W = \sqrt{W_D^2 + W_L^2 - (W_D W_L / W_w)^2},

which is exactly linear in abundance for weak lines (``W -> W_w``), flat
(``~ b sqrt(ln tau0)``) once saturated and ``~ sqrt(tau0)`` on the damping part: strong
lines grow wide, not deep. The fraction ``eta = W_L^2 (1 - (W_D/W_w)^2) / W^2``
of the equivalent width sits in damping wings.

Broadening after saturation is Gaussian with
:math:`\sigma_{obs}^2 = \sigma_{LSF}^2 + \zeta^2/2 + \xi^2/2 + kT/\bar m`,
:math:`\sigma_{LSF} = c / (2.3548 R)` (macroturbulence ``zeta`` approximated by a Gaussian).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Final

import numpy as np
from scipy.special import i0e, i1e

from stellarflow.mock.constants import ELEMENT_DATA, REFERENCE_STAR, SPEED_OF_LIGHT_KMS

__all__ = [
    "MAX_LINE_DEPTH",
    "MOLECULE_DATA",
    "MoleculeData",
    "curve_of_growth",
    "doppler_width",
    "log_continuum_opacity",
    "log_electron_pressure",
    "log_stage_fraction",
    "molecular_numbers",
    "observed_sigma",
    "theta",
]

_TWO_K_OVER_AMU: Final = 2.0 * 1.380649e-23 / 1.66053907e-27 * 1e-6  # km^2 s^-2 K^-1
_FWHM_PER_SIGMA: Final = 2.0 * np.sqrt(2.0 * np.log(2.0))
_MEAN_MASS: Final = 40.0  # amu; thermal term of the common observed width
_LOG_PE_REF: Final = 0.0  # log10 electron pressure (dyn cm^-2) of the reference star
_CO_EQUILIBRIUM: Final = 300.0  # K * eps_O(sun): carbon is >99% in CO in the reference star
_MAX_C_TO_O: Final = 0.95  # C/O is clipped below 1 (the mock has no carbon stars)
MAX_LINE_DEPTH: Final = 0.7
"""Largest intrinsic depth of a line core (H-band source-function limit)."""


@dataclass(frozen=True)
class MoleculeData:
    """Parameters of one molecule's band strength.

    Attributes:
        mass: molecular mass, amu.
        d_eff: effective temperature sensitivity, eV: strength ~ 10**(theta * d_eff).
        gamma: gravity exponent: strength ~ g**gamma.
    """

    mass: float
    d_eff: float
    gamma: float


MOLECULE_DATA: Final = MappingProxyType(
    {
        "CO": MoleculeData(mass=28.0, d_eff=4.0, gamma=-0.25),
        "CN": MoleculeData(mass=26.0, d_eff=3.5, gamma=-0.15),
        "OH": MoleculeData(mass=17.0, d_eff=4.4, gamma=-0.10),
    }
)


def theta(teff: np.ndarray | float) -> np.ndarray:
    """Inverse temperature ``theta = 5040 / Teff``.

    Args:
        teff: `(n_stars,)`, K.

    Returns:
        theta: `(n_stars,)`, eV^-1 (so that ``10**(-theta chi)`` is the Boltzmann factor).
    """
    return 5040.0 / np.asarray(teff, dtype=np.float64)


def log_electron_pressure(logg: np.ndarray, fe_h: np.ndarray) -> np.ndarray:
    """Photospheric electron pressure, ``log Pe = log Pe_ref + (logg - 2.5)/3 + 0.5 [Fe/H]``.

    Args:
        logg: `(n_stars,)`, dex (cgs).
        fe_h: `(n_stars,)`, dex.

    Returns:
        log_pe: `(n_stars,)`, log10 dyn cm^-2.
    """
    return _LOG_PE_REF + (np.asarray(logg) - 2.5) / 3.0 + 0.5 * np.asarray(fe_h)


def log_continuum_opacity(teff: np.ndarray, log_pe: np.ndarray) -> np.ndarray:
    """H- continuum opacity up to a constant, ``log Pe - 2.5 log T + 0.754 theta``.

    Args:
        teff: `(n_stars,)`, K.
        log_pe: `(n_stars,)`, log10 dyn cm^-2.

    Returns:
        `(n_stars,)`, dex (arbitrary zero point).
    """
    teff = np.asarray(teff, dtype=np.float64)
    return log_pe - 2.5 * np.log10(teff) + 0.754 * theta(teff)


def log_stage_fraction(teff: np.ndarray, log_pe: np.ndarray, element: str, ion: int) -> np.ndarray:
    """log10 of the fraction of an element in a given ionisation stage (Saha, two stages).

    Args:
        teff: `(n_stars,)`, K.
        log_pe: `(n_stars,)`, log10 dyn cm^-2.
        element: element symbol.
        ion: 1 neutral, 2 singly ionised.

    Returns:
        `(n_stars,)`, dex (<= 0).
    """
    data = ELEMENT_DATA[element]
    teff = np.asarray(teff, dtype=np.float64)
    ratio = data.log_partition + 2.5 * np.log10(teff) - theta(teff) * data.chi_ion - 0.48 - log_pe
    log_total = np.logaddexp(0.0, ratio * np.log(10.0)) / np.log(10.0)
    return (ratio if ion == 2 else 0.0) - log_total


def molecular_numbers(c_h: np.ndarray, n_h: np.ndarray, o_h: np.ndarray) -> dict[str, np.ndarray]:
    """log10 numbers of CO, CN and OH relative to the solar mixture (one-layer equilibrium).

    CO: ``x`` with ``K (eps_C - x)(eps_O - x) = x``; OH ~ ``eps_O - x``; CN ~
    ``(eps_C - x) eps_N``. C/O is clipped at 0.95.

    Args:
        c_h, n_h, o_h: `(n_stars,)`, [C/H], [N/H], [O/H] in dex.

    Returns:
        ``{"CO": ..., "CN": ..., "OH": ...}``, each `(n_stars,)`, dex relative to a star of
        solar composition.
    """
    current = _molecule_logs(np.asarray(c_h), np.asarray(n_h), np.asarray(o_h))
    solar = _molecule_logs(np.zeros(1), np.zeros(1), np.zeros(1))
    return {name: current[name] - solar[name] for name in current}


def _molecule_logs(c_h: np.ndarray, n_h: np.ndarray, o_h: np.ndarray) -> dict[str, np.ndarray]:
    eps_o = 10.0 ** (ELEMENT_DATA["O"].solar - 12.0 + o_h)
    eps_c = np.minimum(10.0 ** (ELEMENT_DATA["C"].solar - 12.0 + c_h), _MAX_C_TO_O * eps_o)
    eps_n = 10.0 ** (ELEMENT_DATA["N"].solar - 12.0 + n_h)
    k = _CO_EQUILIBRIUM / 10.0 ** (ELEMENT_DATA["O"].solar - 12.0)
    b = k * (eps_c + eps_o) + 1.0
    x = (b - np.sqrt(b * b - 4.0 * k * k * eps_c * eps_o)) / (2.0 * k)
    return {
        "CO": np.log10(x),
        "CN": np.log10(eps_c - x) + np.log10(eps_n),
        "OH": np.log10(eps_o - x),
    }


def doppler_width(teff: np.ndarray, vmicro: np.ndarray, mass: np.ndarray | float) -> np.ndarray:
    """Intrinsic Doppler width ``b = sqrt(2 k T / m + xi**2)``.

    Args:
        teff: K, any shape broadcastable with the others.
        vmicro: microturbulence ``xi``, km/s.
        mass: particle mass, amu.

    Returns:
        b: km/s, the broadcast shape.
    """
    return np.sqrt(_TWO_K_OVER_AMU * np.asarray(teff) / np.asarray(mass) + np.square(vmicro))


def observed_sigma(
    teff: np.ndarray, vmicro: np.ndarray, vmacro: np.ndarray, resolution: np.ndarray
) -> np.ndarray:
    """Gaussian width of a line after macroturbulence and the instrument.

    ``sigma_obs**2 = (c / (2.3548 R))**2 + vmacro**2 / 2 + vmicro**2 / 2 + k T / m_mean``.

    Args:
        teff: `(n_stars,)`, K.
        vmicro: `(n_stars,)`, km/s.
        vmacro: `(n_stars,)`, km/s.
        resolution: `(n_stars,)`, resolving power ``lambda / FWHM``.

    Returns:
        sigma: `(n_stars,)`, km/s.
    """
    sigma_lsf = SPEED_OF_LIGHT_KMS / (_FWHM_PER_SIGMA * np.asarray(resolution, dtype=np.float64))
    thermal = 0.5 * _TWO_K_OVER_AMU * np.asarray(teff) / _MEAN_MASS
    return np.sqrt(sigma_lsf**2 + 0.5 * np.square(vmacro) + 0.5 * np.square(vmicro) + thermal)


def reference_sigma() -> float:
    """``observed_sigma`` of the reference star, km/s."""
    ref = REFERENCE_STAR
    return float(
        observed_sigma(
            np.array([ref["TEFF"]]),
            np.array([ref["VMICRO"]]),
            np.array([ref["VMACRO"]]),
            np.array([ref["RESOLUTION"]]),
        )[0]
    )


_COG_LOG_TAU: Final = (-4.0, 9.0, 0.01)  # table start, end, step in log10 tau0


@lru_cache(maxsize=1)
def _doppler_cog_table() -> np.ndarray:
    """``F(tau0) / (sqrt(pi) tau0)`` of the Gaussian curve of growth on a uniform log grid."""
    lo, hi, step = _COG_LOG_TAU
    log_tau = np.arange(lo, hi + 0.5 * step, step)
    x = np.linspace(0.0, 11.0, 1201)
    tau = 10.0 ** log_tau[:, None]
    integrand = -np.expm1(-tau * np.exp(-(x[None, :] ** 2)))
    integral = 2.0 * np.trapezoid(integrand, x, axis=1)
    return integral / (np.sqrt(np.pi) * 10.0**log_tau)


_LORENTZ_LOG_X: Final = (-4.0, 14.0, 0.01)


@lru_cache(maxsize=1)
def _lorentz_cog_table() -> np.ndarray:
    """``L(x) / x = e^-x (I0(x) + I1(x))`` on a uniform log10 x grid."""
    lo, hi, step = _LORENTZ_LOG_X
    x = 10.0 ** np.arange(lo, hi + 0.5 * step, step)
    return i0e(x) + i1e(x)


def _interpolate(
    table: np.ndarray, grid: tuple[float, float, float], value: np.ndarray
) -> np.ndarray:
    """Linear interpolation on a uniform grid, clamped at both ends."""
    lo, _, step = grid
    position = np.clip((value - lo) / step, 0.0, table.size - 1.000001)
    index = position.astype(np.intp)
    frac = position - index
    return table[index] + frac * (table[index + 1] - table[index])


def curve_of_growth(
    log_w_weak: np.ndarray, b: np.ndarray, log_damping: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Saturated equivalent width of a Voigt line and the fraction of it in damping wings.

    See the module docstring for the formulae.

    Args:
        log_w_weak: log10 weak-line (optically thin) equivalent width, km/s; any shape.
        b: Doppler width, km/s; broadcastable.
        log_damping: log10 of the damping parameter ``a = gamma / b``; broadcastable.

    Returns:
        (w, eta): equivalent width (km/s) and damping fraction in [0, 1], broadcast shape.
    """
    log_w_weak = np.asarray(log_w_weak, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    w_weak = 10.0**log_w_weak
    log_tau = log_w_weak - np.log10(np.sqrt(np.pi) * MAX_LINE_DEPTH * b)
    doppler = _interpolate(_doppler_cog_table(), _COG_LOG_TAU, log_tau)  # W_D / W_w
    log_gamma = np.log10(2.0 * np.pi * MAX_LINE_DEPTH * b) + np.asarray(log_damping)
    lorentz = _interpolate(_lorentz_cog_table(), _LORENTZ_LOG_X, log_w_weak - log_gamma)
    damping_part = w_weak * w_weak * lorentz * lorentz * (1.0 - doppler * doppler)
    w_doppler = w_weak * doppler
    w = np.sqrt(w_doppler * w_doppler + damping_part)
    eta = damping_part / np.maximum(w * w, 1e-300)
    return w, np.clip(eta, 0.0, 1.0)
