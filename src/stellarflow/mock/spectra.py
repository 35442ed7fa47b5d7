r"""Noiseless mock spectra: line strengths per star, sparse line profiles, ``exp(-tau)``.

For stars ``n`` and lines ``l`` the continuum-normalised flux at pixel ``p`` is

.. math::

    f_{np} = \exp\Big(-\sum_l W_{nl}\,[(1 - \eta_{nl})\,G_{lp}(\sigma_n)
             + \eta_{nl}\,V_{lp}]\Big),

with ``W`` and ``eta`` the saturated equivalent width (km/s) and its damping fraction from
:mod:`stellarflow.mock.physics`, ``G(sigma)`` a pixel-integrated unit-area Gaussian in
velocity of the star's observed width ``sigma_n`` (instrument, macro- and microturbulence,
thermal), and ``V`` a fixed unit-area Voigt wing profile (reference width, the line's
``wing_hwhm``) for the lines strong enough to show damping wings. The exponential is the
blending law: it keeps blends positive and saturates the deepest cores.

Speed: the profiles depend on the star only through ``sigma_n``. :class:`SpectrumModel`
precomputes sparse `(n_pixels, n_lines)` Gaussian matrices on a geometric grid of widths and
interpolates linearly between the two nearest (a linear interpolation of unit-area profiles
is itself a unit-area, smooth profile, so this *defines* the mock rather than approximating
it), so a batch costs two sparse-dense products plus the wing product.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import scipy.sparse as sp
from astropy.table import Table
from scipy.special import ndtr, voigt_profile

from stellarflow.data.grid import validate_wavelength
from stellarflow.errors import DataValidationError, LabelError
from stellarflow.mock.constants import (
    ABUNDANCE_ELEMENTS,
    ELEMENT_DATA,
    REFERENCE_STAR,
    SPEED_OF_LIGHT_KMS,
    abundance_label,
)
from stellarflow.mock.linelist import species_mass
from stellarflow.mock.physics import (
    MOLECULE_DATA,
    curve_of_growth,
    doppler_width,
    log_continuum_opacity,
    log_electron_pressure,
    log_stage_fraction,
    molecular_numbers,
    observed_sigma,
    reference_sigma,
    theta,
)

__all__ = [
    "SpectrumModel",
    "StarParameters",
    "default_vmacro",
    "default_vmicro",
    "synthesize_flux",
]

_REQUIRED_COLUMNS: Final = (
    "wavelength",
    "species",
    "chi",
    "log_ew_ref",
    "log_damping",
    "wing_hwhm",
)
_HYDROGEN_EXTRA_ENERGY: Final = 7.0  # eV; offsets the H- continuum's missing Pe(T) rise
_GAUSS_CUT: Final = 1e-7
_SIGMA_RANGE: Final = (4.5, 13.0)  # km/s; stars' observed widths are clipped to this
_N_WIDTHS: Final = 10


def default_vmicro(logg: np.ndarray) -> np.ndarray:
    """APOGEE DR14-like microturbulence relation, km/s: ``10**(0.226 - 0.0228 g + 0.0297 g^2
    - 0.0113 g^3)`` with ``g = logg``."""
    g = np.asarray(logg, dtype=np.float64)
    return 10.0 ** (0.226 - 0.0228 * g + 0.0297 * g**2 - 0.0113 * g**3)


def default_vmacro(logg: np.ndarray, fe_h: np.ndarray) -> np.ndarray:
    """APOGEE DR14-like macroturbulence relation, km/s: ``10**(0.741 - 0.0998 logg
    - 0.225 [M/H])``."""
    return 10.0 ** (0.741 - 0.0998 * np.asarray(logg) - 0.225 * np.asarray(fe_h))


@dataclass(frozen=True)
class StarParameters:
    """The stellar parameters line formation needs, as arrays.

    Attributes:
        teff: `(n_stars,)`, K.
        logg: `(n_stars,)`, dex (cgs).
        fe_h: `(n_stars,)`, dex.
        x_fe: `(n_stars, n_elements)`, [X/Fe] in dex for
            :data:`~stellarflow.mock.constants.ABUNDANCE_ELEMENTS`, in that order.
        vmicro: `(n_stars,)`, km/s.
        vmacro: `(n_stars,)`, km/s.
        resolution: `(n_stars,)`, resolving power of each star's line-spread function.
    """

    teff: np.ndarray
    logg: np.ndarray
    fe_h: np.ndarray
    x_fe: np.ndarray
    vmicro: np.ndarray
    vmacro: np.ndarray
    resolution: np.ndarray

    @property
    def n_stars(self) -> int:
        """Number of stars."""
        return int(self.teff.shape[0])

    @classmethod
    def from_labels(cls, labels: Mapping[str, object] | Table) -> StarParameters:
        """Read parameters from APOGEE-named columns (a Table or a mapping of arrays).

        ``TEFF``, ``LOGG`` and ``FE_H`` are required. Missing ``X_FE`` columns mean 0;
        missing ``VMICRO``/``VMACRO`` follow :func:`default_vmicro`/:func:`default_vmacro`;
        missing ``RESOLUTION`` means 22,500.

        Raises:
            LabelError: if a required column is missing or values are non-finite/unphysical.
        """
        names = labels.colnames if isinstance(labels, Table) else list(labels)
        missing = [n for n in ("TEFF", "LOGG", "FE_H") if n not in names]
        if missing:
            raise LabelError(
                f"line synthesis needs the labels {missing}; give TEFF (K), LOGG and FE_H"
            )

        def column(name: str) -> np.ndarray:
            return np.atleast_1d(np.asarray(labels[name], dtype=np.float64))

        n = column("TEFF").shape[0]

        def optional(name: str, default: np.ndarray | float) -> np.ndarray:
            value = column(name) if name in names else default
            try:
                return np.array(np.broadcast_to(value, (n,)), dtype=np.float64)
            except ValueError:
                raise LabelError(
                    f"label {name} has {np.size(value)} values but TEFF has {n}; give one "
                    "value per star"
                ) from None

        teff, logg, fe_h = optional("TEFF", 0.0), optional("LOGG", 0.0), optional("FE_H", 0.0)
        x_fe = np.stack([optional(abundance_label(e), 0.0) for e in ABUNDANCE_ELEMENTS], 1)
        params = cls(
            teff=teff,
            logg=logg,
            fe_h=fe_h,
            x_fe=x_fe,
            vmicro=optional("VMICRO", default_vmicro(logg)),
            vmacro=optional("VMACRO", default_vmacro(logg, fe_h)),
            resolution=optional("RESOLUTION", REFERENCE_STAR["RESOLUTION"]),
        )
        values = np.column_stack(
            [
                params.teff,
                params.logg,
                params.fe_h,
                params.x_fe,
                params.vmicro,
                params.vmacro,
                params.resolution,
            ]
        )
        if not np.all(np.isfinite(values)):
            raise LabelError("labels for synthesis must be finite; found NaN or inf")
        if np.any(params.teff < 2500) or np.any(params.teff > 8000):
            raise LabelError("TEFF must lie in 2,500-8,000 K for the mock's line formation")
        if np.any(params.vmicro < 0) or np.any(params.vmacro < 0) or np.any(params.resolution <= 0):
            raise LabelError("VMICRO and VMACRO must be >= 0 km/s and RESOLUTION > 0")
        return params


def _pixel_edges(u: np.ndarray) -> np.ndarray:
    """Edges of pixels centred on ``u`` (midpoints, ends extrapolated)."""
    mid = 0.5 * (u[1:] + u[:-1])
    return np.concatenate([[u[0] - (mid[0] - u[0])], mid, [u[-1] + (u[-1] - mid[-1])]])


class SpectrumModel:
    """Precomputed line profiles for one line list on one wavelength grid.

    Args:
        linelist: a mock line list (:func:`~stellarflow.mock.linelist.make_mock_linelist`),
            or any table with its formation columns (``wavelength``, ``species``, ``chi``,
            ``log_ew_ref``, ``log_damping``, ``wing_hwhm``).
        wavelength: `(n_pixels,)`, vacuum Angstrom, strictly increasing.

    Attributes:
        line_index: `(n_lines_used,)` rows of ``linelist`` that reach the grid (others are
            dropped: they cannot change any pixel).
        linelist: the used rows of the line list.
    """

    def __init__(self, linelist: Table, wavelength: np.ndarray) -> None:
        missing = [c for c in _REQUIRED_COLUMNS if c not in linelist.colnames]
        if missing:
            raise DataValidationError(
                f"line list lacks the columns {missing} that mock synthesis needs; build it "
                "with stellarflow.mock.make_mock_linelist"
            )
        self.wavelength = validate_wavelength(wavelength)
        u_pix = SPEED_OF_LIGHT_KMS * np.log(self.wavelength)
        edges = _pixel_edges(u_pix)
        u_line = SPEED_OF_LIGHT_KMS * np.log(np.asarray(linelist["wavelength"], np.float64))
        self.sigma_grid = np.geomspace(*_SIGMA_RANGE, _N_WIDTHS)
        gauss = [self._gaussian(u_line, edges, s) for s in self.sigma_grid]
        wing_hwhm = np.asarray(linelist["wing_hwhm"], dtype=np.float64)
        wings = self._wings(u_line, u_pix, edges, wing_hwhm)
        reach = np.asarray((abs(gauss[-1]) + abs(wings)).sum(axis=0)).ravel() > 0
        self.line_index = np.flatnonzero(reach)
        self.linelist = linelist[self.line_index]
        self._gauss = [sp.csr_matrix(g[:, self.line_index]) for g in gauss]
        self._wings_matrix = sp.csr_matrix(wings[:, self.line_index])
        self._has_wings = wing_hwhm[self.line_index] > 0
        self._setup_species()

    @property
    def n_pixels(self) -> int:
        """Number of pixels of the grid."""
        return int(self.wavelength.size)

    @property
    def n_lines(self) -> int:
        """Number of lines that reach the grid."""
        return int(self.line_index.size)

    # --- profiles -----------------------------------------------------------------------

    @staticmethod
    def _window(u_line: np.ndarray, edges: np.ndarray, half: int) -> tuple[np.ndarray, ...]:
        centre = np.searchsorted(edges, u_line) - 1
        offsets = np.arange(-half, half + 1)
        pix = centre[:, None] + offsets[None, :]
        valid = (pix >= 0) & (pix < edges.size - 1)
        pix = np.clip(pix, 0, edges.size - 2)
        cols = np.broadcast_to(np.arange(u_line.size)[:, None], pix.shape)
        return pix, cols, valid

    def _gaussian(self, u_line: np.ndarray, edges: np.ndarray, sigma: float) -> sp.csc_matrix:
        """Pixel-integrated unit-area Gaussians: `(n_pixels, n_lines)`, per km/s."""
        step = float(np.min(np.diff(edges)))
        pix, cols, valid = self._window(u_line, edges, int(np.ceil(6.0 * sigma / step)) + 1)
        lo = (edges[pix] - u_line[:, None]) / sigma
        hi = (edges[pix + 1] - u_line[:, None]) / sigma
        values = (ndtr(hi) - ndtr(lo)) / (edges[pix + 1] - edges[pix])
        keep = valid & (values > _GAUSS_CUT)
        shape = (edges.size - 1, u_line.size)
        return sp.csc_matrix((values[keep].astype(np.float32), (pix[keep], cols[keep])), shape)

    def _wings(
        self, u_line: np.ndarray, u_pix: np.ndarray, edges: np.ndarray, hwhm: np.ndarray
    ) -> sp.csc_matrix:
        """Unit-area Voigt profiles (reference sigma, ``hwhm``) of the winged lines."""
        shape = (u_pix.size, u_line.size)
        winged = np.flatnonzero(hwhm > 0)
        if winged.size == 0:
            return sp.csc_matrix(shape, dtype=np.float32)
        step = float(np.min(np.diff(edges)))
        sigma = reference_sigma()
        reach = np.clip(40.0 * (hwhm[winged] + sigma), 20.0 * step, 500.0 * step)  # km/s
        pix, _, valid = self._window(u_line[winged], edges, int(np.ceil(reach.max() / step)))
        distance = u_pix[pix] - u_line[winged, None]
        valid &= np.abs(distance) <= reach[:, None]
        values = voigt_profile(distance, sigma, hwhm[winged, None])
        cols = np.broadcast_to(winged[:, None], pix.shape)
        return sp.csc_matrix((values[valid].astype(np.float32), (pix[valid], cols[valid])), shape)

    # --- line strengths -----------------------------------------------------------------

    def _setup_species(self) -> None:
        species = np.asarray(self.linelist["species"]).astype(str)
        self._species_names, self._species_index = np.unique(species, return_inverse=True)
        self._species_mass = np.array([species_mass(s) for s in self._species_names])
        self._chi = np.asarray(self.linelist["chi"], dtype=np.float64)
        self._log_ew_ref = np.asarray(self.linelist["log_ew_ref"], dtype=np.float64)
        self._log_damping = np.asarray(self.linelist["log_damping"], dtype=np.float64)
        ref = REFERENCE_STAR
        b_ref = doppler_width(ref["TEFF"], ref["VMICRO"], self._species_mass)
        self._log_b_ref = np.log10(b_ref)[self._species_index]
        reference = StarParameters.from_labels(
            {"TEFF": [ref["TEFF"]], "LOGG": [ref["LOGG"]], "FE_H": [ref["FE_H"]]}
        )
        self._species_ref = self._species_terms(reference)[0]

    def _species_terms(self, stars: StarParameters) -> np.ndarray:
        """Per-star, per-species log10 strength terms (before the reference is removed)."""
        x_h = {e: stars.x_fe[:, i] + stars.fe_h for i, e in enumerate(ABUNDANCE_ELEMENTS)}
        x_h["Fe"] = stars.fe_h
        x_h["H"] = np.zeros(stars.n_stars)
        th = theta(stars.teff)
        log_pe = log_electron_pressure(stars.logg, stars.fe_h)
        log_kappa = log_continuum_opacity(stars.teff, log_pe)
        molecules = molecular_numbers(x_h["C"], x_h["N"], x_h["O"])
        out = np.empty((stars.n_stars, self._species_names.size))
        for k, name in enumerate(self._species_names):
            if name in MOLECULE_DATA:
                mol = MOLECULE_DATA[name]
                out[:, k] = molecules[name] + th * mol.d_eff + mol.gamma * (stars.logg - 2.5)
                continue
            element, stage = name.split()
            frac = log_stage_fraction(stars.teff, log_pe, element, int(stage))
            out[:, k] = x_h[element] + frac - log_kappa
            if element == "H":
                out[:, k] += th * _HYDROGEN_EXTRA_ENERGY
            elif element not in ELEMENT_DATA:
                raise DataValidationError(f"species {name!r} is not part of the mock")
        return out

    def line_strengths(self, stars: StarParameters) -> tuple[np.ndarray, np.ndarray]:
        """Saturated equivalent widths and damping fractions of every used line.

        Args:
            stars: parameters of ``n_stars`` stars.

        Returns:
            (w, eta): both `(n_stars, n_lines)`; ``w`` in km/s, ``eta`` in [0, 1] (0 for
            lines without a wing profile).
        """
        d_theta = theta(stars.teff) - theta(REFERENCE_STAR["TEFF"])
        species = self._species_terms(stars) - self._species_ref[None, :]
        log_w_weak = (
            self._log_ew_ref[None, :]
            - d_theta[:, None] * self._chi[None, :]
            + species[:, self._species_index]
        )
        b = doppler_width(stars.teff[:, None], stars.vmicro[:, None], self._species_mass[None, :])
        b = b[:, self._species_index]
        log_a = (
            self._log_damping[None, :]
            + 0.4 * (stars.logg[:, None] - REFERENCE_STAR["LOGG"])
            + self._log_b_ref[None, :]
            - np.log10(b)
        )
        w, eta = curve_of_growth(log_w_weak, b, log_a)
        return w, np.where(self._has_wings[None, :], eta, 0.0)

    # --- spectra ------------------------------------------------------------------------

    def optical_depth(self, stars: StarParameters) -> np.ndarray:
        """Pseudo optical depth ``tau`` with ``flux = exp(-tau)``.

        Args:
            stars: parameters of ``n_stars`` stars.

        Returns:
            tau: `(n_stars, n_pixels)` float64, >= 0.
        """
        w, eta = self.line_strengths(stars)
        core = (w * (1.0 - eta)).astype(np.float32)
        wing = np.ascontiguousarray((w * eta).T, dtype=np.float32)
        sigma = np.clip(
            observed_sigma(stars.teff, stars.vmicro, stars.vmacro, stars.resolution),
            self.sigma_grid[0],
            self.sigma_grid[-1],
        )
        j = np.clip(np.searchsorted(self.sigma_grid, sigma) - 1, 0, self.sigma_grid.size - 2)
        t = (sigma - self.sigma_grid[j]) / (self.sigma_grid[j + 1] - self.sigma_grid[j])
        t = t.astype(np.float32)
        tau = np.asarray(self._wings_matrix @ wing, dtype=np.float64)
        # Stars sharing a width bracket [sigma_j, sigma_j+1] are done together.
        for k in np.unique(j):
            rows = np.flatnonzero(j == k)
            block = np.ascontiguousarray(core[rows].T)
            lower = self._gauss[k] @ (block * (1.0 - t[rows]))
            upper = self._gauss[k + 1] @ (block * t[rows])
            tau[:, rows] += lower + upper
        return np.ascontiguousarray(np.maximum(tau, 0.0).T)

    def flux(self, stars: StarParameters) -> np.ndarray:
        """Noiseless continuum-normalised flux, ``exp(-tau)``.

        Args:
            stars: parameters of ``n_stars`` stars.

        Returns:
            flux: `(n_stars, n_pixels)` float64 in (0, 1], dimensionless.
        """
        return np.exp(-self.optical_depth(stars))


def synthesize_flux(
    labels: Mapping[str, object] | Table, linelist: Table, wavelength: np.ndarray
) -> np.ndarray:
    """Noiseless mock spectra for given labels (builds a :class:`SpectrumModel` once).

    Args:
        labels: APOGEE-named columns (see :meth:`StarParameters.from_labels`), `(n_stars,)`
            each.
        linelist: a mock line list.
        wavelength: `(n_pixels,)`, vacuum Angstrom.

    Returns:
        flux: `(n_stars, n_pixels)` float64, continuum-normalised, dimensionless.
    """
    return SpectrumModel(linelist, wavelength).flux(StarParameters.from_labels(labels))
