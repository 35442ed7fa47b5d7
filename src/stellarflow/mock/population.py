r"""The mock population: giants of a two-sequence disc with a few-process chemistry.

Chemistry (Weinberg et al. 2019, 2022 style): four processes with amplitudes ``A_p``
(``A_p = 1`` for the Sun) and per-element solar fractions ``q_pX``
(:data:`~stellarflow.mock.constants.PROCESS_VECTORS`),

.. math::

    [X/H] = \log_{10} \sum_p A_p q_{pX} + \epsilon_X,\quad
    \epsilon_X \sim N(0, s_X^2),

with ``s_X`` ~0.01-0.03 dex (:attr:`ElementData.scatter`). ``cc`` (core collapse) and
``ia`` (Type Ia) set [Fe/H] and [Mg/Fe]: a star's ([Fe/H], [Mg/Fe]) is drawn on its
sequence and converted exactly, ``r = A_ia / A_cc = 2 * 10**(-[Mg/Fe]) - 1``,
``A_cc = 10**[Fe/H] / (0.5 (1 + r))``. Sequences: low-alpha disc ([Fe/H] ~ N(-0.1, 0.2),
[Mg/Fe] = -0.15 [Fe/H]), high-alpha disc ([Fe/H] ~ N(-0.5, 0.25), [Mg/Fe] = 0.29 - 0.25
max([Fe/H] + 0.5, 0)) and a metal-poor tail ([Fe/H] ~ N(-1.3, 0.4), plateau 0.28), each with
0.025 dex scatter in [Mg/Fe]. ``agb`` (s-process: Ce, Nd, some C, N, Na) has
``A_agb = A_cc 10**(-0.15 + 0.2 min(r, 1.5) + N(0, 0.08))`` (more s-process in younger,
higher-``r`` stars); ``odd`` (metallicity-dependent odd-Z yields: Na, Al, K, V, Co, Cu) has
``A_odd = A_cc**1.2 10**N(0, 0.05)``. So the abundances span four dimensions plus scatter.

Stellar parameters: red giant branch with ``p(logg) ~ 10**(0.45 logg)`` on [0.8, 3.5] and
``Teff = 4680 + 380 (logg - 2.5) - 250 [Fe/H] + N(0, 50)``; red clump (for [Fe/H] > -1)
at ``logg ~ N(2.45 + 0.1 (M - 1.2), 0.07)``, ``Teff = 4780 - 250 [Fe/H] + N(0, 60)``.
Masses are log-normal around 1.25 Msun (low-alpha) or ~0.95 Msun (older populations).

Internal mixing (surface C and N, documented so that it is part of the truth): first
dredge-up lowers [C/Fe] by ``0.10 + 0.10 m`` and raises [N/Fe] by ``0.25 + 0.25 m`` with
``m = clip((M - 1) / 1.5, 0, 1)``; low-mass (M < 1.5) stars above the RGB bump (logg < 2.2)
and in the clump lose up to 0.15 dex more C and gain half that in N. ``C_FE``/``N_FE`` are
surface values; the truth table also has the birth values.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from astropy.table import Table
from scipy.special import ndtr, ndtri

from stellarflow.mock.config import MockConfig
from stellarflow.mock.constants import (
    ABUNDANCE_ELEMENTS,
    ELEMENT_DATA,
    LABEL_ERRORS,
    PROCESS_VECTORS,
    PROCESSES,
    abundance_label,
)
from stellarflow.mock.outliers import apply_outlier_shifts, draw_outlier_kinds
from stellarflow.mock.spectra import default_vmacro, default_vmicro

__all__ = ["STAR_ID_FORMAT", "label_errors", "observe_labels", "sample_population"]

STAR_ID_FORMAT: Final = "MOCK-{:08d}"
_TEFF_RANGE: Final = (3700.0, 5400.0)
_LOGG_RANGE: Final = (0.6, 3.6)


def _truncated_lognormal(
    rng: np.random.Generator, n: int, median: float, sigma: float, lo: float, hi: float
) -> np.ndarray:
    """Log-normal draws truncated to [lo, hi] by inverse-CDF sampling."""
    a, b = ndtr(np.log(lo / median) / sigma), ndtr(np.log(hi / median) / sigma)
    u = a + (b - a) * rng.random(n)
    return np.clip(median * np.exp(sigma * ndtri(u)), lo, hi)


def _sequences(
    rng: np.random.Generator, n: int, config: MockConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Population component (0 low-alpha, 1 high-alpha, 2 halo), [Fe/H] and [Mg/Fe]."""
    u = rng.random(n)
    component = np.where(
        u < config.halo_fraction,
        2,
        np.where(u < config.halo_fraction + config.high_alpha_fraction, 1, 0),
    )
    z = rng.standard_normal((n, 2))
    fe_h = np.select(
        [component == 0, component == 1],
        [-0.1 + 0.2 * z[:, 0], -0.5 + 0.25 * z[:, 0]],
        -1.3 + 0.4 * z[:, 0],
    )
    fe_h = np.clip(fe_h, -2.5, 0.55)
    locus = np.select(
        [component == 0, component == 1],
        [-0.15 * fe_h, 0.29 - 0.25 * np.maximum(fe_h + 0.5, 0.0)],
        0.28,
    )
    mg_fe = np.clip(locus + 0.025 * z[:, 1], -0.25, 0.295)
    return component, fe_h, mg_fe


def _amplitudes(
    rng: np.random.Generator, fe_h: np.ndarray, mg_fe: np.ndarray
) -> dict[str, np.ndarray]:
    """Process amplitudes reproducing ([Fe/H], [Mg/Fe]) exactly, plus the AGB and odd-Z ones."""
    ratio = 2.0 * 10.0 ** (-mg_fe) - 1.0
    a_cc = 10.0**fe_h / (0.5 * (1.0 + ratio))
    z = rng.standard_normal((fe_h.size, 2))
    a_agb = a_cc * 10.0 ** (-0.15 + 0.2 * np.minimum(ratio, 1.5) + 0.08 * z[:, 0])
    a_odd = a_cc**1.2 * 10.0 ** (0.05 * z[:, 1])
    return {"cc": a_cc, "ia": ratio * a_cc, "agb": a_agb, "odd": a_odd}


def _birth_abundances(
    rng: np.random.Generator, amplitudes: dict[str, np.ndarray], scale: float
) -> np.ndarray:
    """[X/Fe] at birth, `(n, n_elements)`, from the process model plus intrinsic scatter."""
    n = amplitudes["cc"].size
    fe_h = np.log10(0.5 * amplitudes["cc"] + 0.5 * amplitudes["ia"])
    noise = rng.standard_normal((n, len(ABUNDANCE_ELEMENTS)))
    out = np.empty((n, len(ABUNDANCE_ELEMENTS)))
    for i, element in enumerate(ABUNDANCE_ELEMENTS):
        q = PROCESS_VECTORS[element]
        total = sum(amplitudes[p] * q[p] for p in PROCESSES)
        scatter = scale * ELEMENT_DATA[element].scatter
        out[:, i] = np.log10(total) - fe_h + scatter * noise[:, i]
    return out


def _stellar_parameters(
    rng: np.random.Generator, component: np.ndarray, fe_h: np.ndarray, config: MockConfig
) -> dict[str, np.ndarray]:
    """Evolutionary state, mass, Teff, logg, turbulence and LSF of each giant."""
    n = fe_h.size
    u, z = rng.random((n, 2)), rng.standard_normal((n, 6))
    mass = np.where(component == 0, 1.25 * np.exp(0.25 * z[:, 0]), 0.95 * np.exp(0.08 * z[:, 0]))
    mass = np.clip(mass, 0.75, 3.0)
    clump = (u[:, 0] < config.red_clump_fraction) & (fe_h > -1.0)
    lo, hi, c = 0.8, 3.5, 0.45 * np.log(10.0)
    logg_rgb = np.log(np.exp(c * lo) + u[:, 1] * (np.exp(c * hi) - np.exp(c * lo))) / c
    logg = np.where(clump, 2.45 + 0.1 * (mass - 1.2) + 0.07 * z[:, 1], logg_rgb)
    teff = np.where(
        clump,
        4780.0 - 250.0 * fe_h + 60.0 * z[:, 2],
        4680.0 + 380.0 * (logg - 2.5) - 250.0 * fe_h + 50.0 * z[:, 2],
    )
    logg = np.clip(logg, *_LOGG_RANGE)
    teff = np.clip(teff, *_TEFF_RANGE)
    vmicro = np.clip(default_vmicro(logg) + 0.08 * z[:, 3], 0.5, 3.0)
    vmacro = np.clip(default_vmacro(logg, fe_h) * 10.0 ** (0.05 * z[:, 4]), 1.0, 15.0)
    resolution = config.resolution + config.resolution_scatter * np.clip(z[:, 5], -3.0, 3.0)
    return {
        "TEFF": teff,
        "LOGG": logg,
        "VMICRO": vmicro,
        "VMACRO": vmacro,
        "RESOLUTION": resolution,
        "MASS": mass,
        "clump": clump,
    }


def _mixing(x_fe: np.ndarray, mass: np.ndarray, logg: np.ndarray, clump: np.ndarray) -> np.ndarray:
    """Surface [C/Fe] and [N/Fe] after first dredge-up and extra mixing (module docstring)."""
    m = np.clip((mass - 1.0) / 1.5, 0.0, 1.0)
    extra = 0.15 * np.where(clump, 1.0, np.clip((2.2 - logg) / 1.2, 0.0, 1.0)) * (mass < 1.5)
    out = x_fe.copy()
    out[:, ABUNDANCE_ELEMENTS.index("C")] -= 0.10 + 0.10 * m + extra
    out[:, ABUNDANCE_ELEMENTS.index("N")] += 0.25 + 0.25 * m + 0.5 * extra
    return out


def sample_population(
    config: MockConfig, rng: np.random.Generator, n_stars: int | None = None, *, start: int = 0
) -> Table:
    """Draw true labels, process amplitudes and outlier kinds for ``n_stars`` giants.

    Args:
        config: the mock's configuration (population fractions, S/N law, outliers).
        rng: generator for this set of stars (all draws come from it, in a fixed order).
        n_stars: number of stars (default ``config.n_stars``).
        start: index of the first star, used for the ``star_id`` column.

    Returns:
        The truth table without ``log_prob_oracle`` (see
        :mod:`stellarflow.mock.survey` for the column list).
    """
    n = config.n_stars if n_stars is None else int(n_stars)
    component, fe_h, mg_fe = _sequences(rng, n, config)
    amplitudes = _amplitudes(rng, fe_h, mg_fe)
    fe_h = np.log10(0.5 * amplitudes["cc"] + 0.5 * amplitudes["ia"])
    birth = _birth_abundances(rng, amplitudes, config.intrinsic_scatter_scale)
    params = _stellar_parameters(rng, component, fe_h, config)
    snr = _truncated_lognormal(
        rng, n, config.snr_median, config.snr_log_sigma, config.snr_min, config.snr_max
    )
    rv = 40.0 * rng.standard_normal(n)
    kind, amplitude = draw_outlier_kinds(rng, n, config.outlier_fraction, config.outlier_kinds)
    surface = _mixing(birth, params["MASS"], params["LOGG"], params["clump"])
    x_fe = apply_outlier_shifts(surface, kind, amplitude)

    table = Table()
    table["star_id"] = [STAR_ID_FORMAT.format(start + i) for i in range(n)]
    table["TEFF"], table["LOGG"], table["FE_H"] = params["TEFF"], params["LOGG"], fe_h
    for i, element in enumerate(ABUNDANCE_ELEMENTS):
        table[abundance_label(element)] = x_fe[:, i]
    for key in ("VMICRO", "VMACRO", "RESOLUTION", "MASS"):
        table[key] = params[key]
    table["SNR"] = snr
    table["RV"] = rv
    table["EVOL_STATE"] = np.where(params["clump"], "RC", "RGB")
    table["POPULATION"] = np.array(["low_alpha", "high_alpha", "halo"])[component]
    table["C_FE_BIRTH"] = birth[:, ABUNDANCE_ELEMENTS.index("C")]
    table["N_FE_BIRTH"] = birth[:, ABUNDANCE_ELEMENTS.index("N")]
    for process in PROCESSES:
        table[f"A_{process.upper()}"] = amplitudes[process]
    table["outlier_kind"] = kind.astype("<U16")
    table["outlier_amplitude"] = np.where(kind != "", amplitude, 0.0)
    return table


def label_errors(truth: Table) -> dict[str, np.ndarray]:
    """Reported measurement errors of each label (APOGEE-like, S/N and Teff dependent).

    ``err = err_100 * sqrt(0.35 + 0.65 (100 / SNR)**2) * (1 + 0.6 clip((Teff - 4500) / 800,
    -0.5, 1))`` with ``err_100`` from :data:`~stellarflow.mock.constants.LABEL_ERRORS`.

    Args:
        truth: a table with ``SNR`` and ``TEFF``.

    Returns:
        name -> `(n_stars,)` errors in the label's unit.
    """
    snr = np.asarray(truth["SNR"], dtype=np.float64)
    teff = np.asarray(truth["TEFF"], dtype=np.float64)
    factor = np.sqrt(0.35 + 0.65 * (100.0 / snr) ** 2)
    factor = factor * (1.0 + 0.6 * np.clip((teff - 4500.0) / 800.0, -0.5, 1.0))
    return {name: err * factor for name, err in LABEL_ERRORS.items()}


_NON_NEGATIVE = frozenset({"VMICRO", "VMACRO"})


def observe_labels(truth: Table, rng: np.random.Generator, *, noise: bool = True) -> Table:
    """The survey's label table: measured (noisy) labels with ``*_ERR`` columns and ``SNR``.

    Args:
        truth: table from :func:`sample_population`.
        rng: generator for the measurement noise.
        noise: add Gaussian noise of the reported errors (False: errors reported, values
            exact).

    Returns:
        Table with ``star_id``, each label of :data:`LABEL_ERRORS` and its ``_ERR``, ``SNR``.
    """
    errors = label_errors(truth)
    draws = rng.standard_normal((len(truth), len(errors)))
    out = Table()
    out["star_id"] = truth["star_id"]
    for i, (name, err) in enumerate(errors.items()):
        value = np.asarray(truth[name], dtype=np.float64)
        measured = value + (err * draws[:, i] if noise else 0.0)
        # pipelines report broadening velocities >= 0, whatever the noise
        out[name] = np.maximum(measured, 0.0) if name in _NON_NEGATIVE else measured
        out[f"{name}_ERR"] = err
    out["SNR"] = truth["SNR"]
    return out
