r"""Observational effects: per-pixel noise along the chips, masks, and the oracle likelihood.

Noise is photon-like: for a star of S/N ``s`` (continuum S/N per pixel at unit throughput)

.. math::

    \sigma_{np} = \frac{\sqrt{\max(f_{np}, 0.05)}}{s_n\,t_p\,g_{n,c(p)}},\qquad
    x_{np} = f_{np} + \sigma_{np}\,z_{np},\ z \sim N(0, 1),

where ``f`` is the noiseless flux, ``t_p`` a smooth throughput profile along each chip
(:func:`throughput`: the blue chip lowest, every chip falling off towards its edges, the red
chip falling towards its red end) normalised to a median of 1 over the APOGEE grid, and
``g ~ N(1, 0.05)`` a per-star, per-chip gain. ``ivar = 1 / sigma**2`` is exact: the noise
really is Gaussian with the saved ``ivar``.

Masks (``ivar = 0``; the flux there stays the noisy value, a realistic number):

* a Poisson number of random bad pixels per star;
* sky-line residuals: a fixed list of airglow lines (observed frame) is shifted into each
  star's rest frame by its radial velocity; each line masks 3 pixels (5 for bright ones)
  with probability ``sky_residual_probability * brightness``;
* persistence: a fraction of stars have 15,250-15,450 Angstrom (blue chip) masked.

The oracle log-likelihood of a star is the exact log density of its observed spectrum given
the noiseless one, over unmasked pixels, in nats:
``sum_p [-0.5 (x - f)**2 ivar + 0.5 log ivar - 0.5 log(2 pi)]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np

from stellarflow.data.grid import APOGEE_CHIP_SLICES, apogee_chip_index, apogee_full_wavelength
from stellarflow.mock.constants import SPEED_OF_LIGHT_KMS

__all__ = ["ObservedSpectra", "observe_spectra", "oracle_log_prob", "sky_lines", "throughput"]

PERSISTENCE_RANGE: Final = (15250.0, 15450.0)
_SKY_SEED: Final = 20_130_301  # the instrument's sky-line list is a fixed part of the mock
_N_SKY: Final = 45
_FLUX_FLOOR: Final = 0.05


@lru_cache(maxsize=1)
def sky_lines() -> tuple[np.ndarray, np.ndarray]:
    """The mock's airglow lines: observed-frame vacuum wavelengths (Angstrom) and brightness.

    Returns:
        (wavelength, brightness): `(45,)` each; brightness in (0, 1], 1 = the brightest.
    """
    rng = np.random.default_rng(_SKY_SEED)
    wave = np.sort(rng.uniform(15150.0, 16950.0, _N_SKY))
    brightness = np.minimum(np.exp(rng.normal(-0.5, 0.6, _N_SKY)), 1.0)
    return wave, brightness


def throughput(wavelength: np.ndarray) -> np.ndarray:
    """Relative S/N along the detector, normalised to a median of 1 over the APOGEE grid.

    Each chip has a level (blue 0.88, green 1.05, red 1.0), a quartic fall-off of 25% towards
    both chip edges, and the red chip a further 25% linear decline towards its red end.

    Args:
        wavelength: `(n_pixels,)`, vacuum Angstrom.

    Returns:
        `(n_pixels,)`, dimensionless, > 0.
    """
    full = apogee_full_wavelength()
    keep = np.concatenate([full[s] for s in APOGEE_CHIP_SLICES])
    return _raw_throughput(np.asarray(wavelength, np.float64)) / np.median(_raw_throughput(keep))


def _raw_throughput(wavelength: np.ndarray) -> np.ndarray:
    full = apogee_full_wavelength()
    chip = apogee_chip_index(wavelength)
    lo = np.array([full[s.start] for s in APOGEE_CHIP_SLICES])[chip]
    hi = np.array([full[s.stop - 1] for s in APOGEE_CHIP_SLICES])[chip]
    x = np.clip((wavelength - lo) / (hi - lo), 0.0, 1.0)
    level = np.array([0.88, 1.05, 1.0])[chip]
    edges = 1.0 - 0.25 * (2.0 * x - 1.0) ** 4
    red = np.where(chip == 2, 1.0 - 0.25 * x, 1.0)
    return level * edges * red


@dataclass(frozen=True)
class ObservedSpectra:
    """Noisy spectra of a batch of stars.

    Attributes:
        flux: `(n_stars, n_pixels)` float32, continuum-normalised, dimensionless.
        ivar: `(n_stars, n_pixels)` float32, 0 where masked.
        mask: `(n_stars, n_pixels)` bool, True = excluded.
        persistence: `(n_stars,)` bool, star has the persistence region masked.
    """

    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    persistence: np.ndarray


def observe_spectra(
    truth_flux: np.ndarray,
    wavelength: np.ndarray,
    snr: np.ndarray,
    rv: np.ndarray,
    rng: np.random.Generator,
    *,
    bad_pixels_per_star: float = 3.0,
    persistence_fraction: float = 0.1,
    sky_residual_probability: float = 0.9,
) -> ObservedSpectra:
    """Add noise and masks to noiseless spectra (see the module docstring).

    Args:
        truth_flux: `(n_stars, n_pixels)`, noiseless continuum-normalised flux.
        wavelength: `(n_pixels,)`, vacuum Angstrom.
        snr: `(n_stars,)`, continuum S/N per pixel at unit throughput.
        rv: `(n_stars,)`, radial velocity, km/s (moves the sky lines in the rest frame).
        rng: generator for this batch (a fixed number of draws per star and pixel).
        bad_pixels_per_star: Poisson mean of random bad pixels.
        persistence_fraction: probability of a persistence-masked region.
        sky_residual_probability: masking probability of the brightest sky line.

    Returns:
        The noisy, masked spectra.
    """
    n, p = truth_flux.shape
    chip = apogee_chip_index(wavelength)
    gain = 1.0 + 0.05 * rng.standard_normal((n, 3))
    sigma = np.sqrt(np.maximum(truth_flux, _FLUX_FLOOR)) / (
        snr[:, None] * throughput(wavelength)[None, :] * gain[:, chip]
    )
    sigma = sigma.astype(np.float32)

    mask = np.zeros((n, p), dtype=bool)
    n_bad = rng.poisson(bad_pixels_per_star, n)
    where = rng.integers(0, p, (n, max(int(n_bad.max(initial=0)), 1)))
    rows = np.broadcast_to(np.arange(n)[:, None], where.shape)
    chosen = np.arange(where.shape[1])[None, :] < n_bad[:, None]
    mask[rows[chosen], where[chosen]] = True

    sky_wave, brightness = sky_lines()
    hit = rng.random((n, sky_wave.size)) < sky_residual_probability * brightness[None, :]
    rest = sky_wave[None, :] / (1.0 + rv[:, None] / SPEED_OF_LIGHT_KMS)
    centre = np.clip(np.searchsorted(wavelength, rest), 0, p - 1)
    half = np.where(brightness > 0.5, 2, 1)[None, :]
    on_grid = np.abs(np.log(wavelength[centre] / rest)) < 3e-5  # not in a gap or off the end
    for offset in range(-2, 3):
        pix = centre + offset
        ok = hit & on_grid & (np.abs(offset) <= half) & (pix >= 0) & (pix < p)
        r, c = np.nonzero(ok)
        mask[r, pix[r, c]] = True

    persistence = rng.random(n) < persistence_fraction
    region = (wavelength >= PERSISTENCE_RANGE[0]) & (wavelength <= PERSISTENCE_RANGE[1])
    mask |= persistence[:, None] & region[None, :]

    noise = rng.standard_normal((n, p), dtype=np.float32)
    flux = (truth_flux.astype(np.float32) + sigma * noise).astype(np.float32)
    ivar = (1.0 / np.square(sigma.astype(np.float64))).astype(np.float32)
    ivar[mask] = 0.0
    return ObservedSpectra(flux=flux, ivar=ivar, mask=mask, persistence=persistence)


def oracle_log_prob(
    flux: np.ndarray, truth_flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Exact log density of observed spectra given their noiseless spectra, in nats.

    ``sum over unmasked pixels of -0.5 (flux - truth)**2 ivar + 0.5 log(ivar)
    - 0.5 log(2 pi)``, computed in float64 from the arrays as given (use the stored float32
    values to reproduce the saved numbers).

    Args:
        flux: `(n_stars, n_pixels)`, observed flux, dimensionless.
        truth_flux: `(n_stars, n_pixels)`, noiseless flux, dimensionless.
        ivar: `(n_stars, n_pixels)`, inverse variance, > 0 where unmasked.
        mask: `(n_stars, n_pixels)` bool, True = excluded.

    Returns:
        log_prob: `(n_stars,)` float64, nats.
    """
    use = ~np.asarray(mask, dtype=bool) & (np.asarray(ivar) > 0)
    ivar64 = np.where(use, np.asarray(ivar, dtype=np.float64), 1.0)
    resid = np.asarray(flux, dtype=np.float64) - np.asarray(truth_flux, dtype=np.float64)
    terms = -0.5 * resid * resid * ivar64 + 0.5 * np.log(ivar64) - 0.5 * np.log(2.0 * np.pi)
    return np.sum(np.where(use, terms, 0.0), axis=1)
