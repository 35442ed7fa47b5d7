"""Configuration of a mock survey: one frozen, validated dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stellarflow.data.grid import APOGEE_N_PIXELS, apogee_wavelength
from stellarflow.errors import DataValidationError
from stellarflow.mock.outliers import OUTLIER_KINDS

__all__ = ["MockConfig"]

_WITHHELD_CANDIDATES = (
    "Fe",
    "Ni",
    "Si",
    "Mg",
    "Ti",
    "Ca",
    "Cr",
    "Mn",
    "Co",
    "V",
    "Al",
    "Na",
    "K",
    "S",
    "Cu",
    "C",
    "Ce",
    "Nd",
)


def _fail(message: str) -> None:
    raise DataValidationError(f"MockConfig: {message}")


@dataclass(frozen=True)
class MockConfig:
    """Everything that defines a mock survey; the same config gives the same file.

    Attributes:
        n_stars: number of stars.
        n_pixels: ``None`` for the full 7,514-pixel APOGEE grid; otherwise the contiguous
            sub-range ``apogee_wavelength()[pixel_offset:pixel_offset + n_pixels]`` of it
            (the same pixels, sampling and resolution; it may straddle a chip gap).
        pixel_offset: first APOGEE pixel of a sub-range grid (0 = 15,152 Angstrom).
        seed: seed of the stars (population, labels, noise, masks).
        linelist_seed: seed of the line list (kept separate so that populations can vary
            over one fixed line list).
        outlier_fraction: probability that a star is a chemical outlier.
        outlier_kinds: kinds of outlier to draw (uniformly) from
            :data:`~stellarflow.mock.outliers.OUTLIER_KINDS`.
        withheld_fraction: fraction of each withheld element's detectable lines hidden from
            the published line list (see :func:`~stellarflow.mock.make_mock_linelist`).
        withheld_elements: elements whose lines may be withheld.
        snr_median, snr_log_sigma, snr_min, snr_max: per-star S/N (continuum S/N per pixel
            at unit throughput) is log-normal with this median and natural-log width,
            truncated to ``[snr_min, snr_max]``.
        red_clump_fraction: fraction of (metal-rich) giants in the red clump.
        high_alpha_fraction, halo_fraction: fractions of the high-alpha disc and of the
            metal-poor halo-like tail (the rest is the low-alpha disc).
        intrinsic_scatter_scale: multiplies every element's intrinsic [X/Fe] scatter.
        label_noise: add Gaussian measurement noise to the survey labels (the truth table
            keeps the true values either way).
        bad_pixels_per_star: mean number (Poisson) of random bad pixels per star.
        persistence_fraction: fraction of stars with a persistence-masked blue-chip region.
        sky_residual_probability: probability that the brightest sky line leaves a masked
            residual in a star (fainter lines proportionally less often).
        resolution, resolution_scatter: mean and standard deviation (over fibres) of the
            line-spread function's resolving power.
    """

    n_stars: int = 1000
    n_pixels: int | None = None
    pixel_offset: int = 0
    seed: int = 0
    linelist_seed: int = 0
    outlier_fraction: float = 0.005
    outlier_kinds: tuple[str, ...] = field(default=OUTLIER_KINDS)
    withheld_fraction: float = 0.1
    withheld_elements: tuple[str, ...] = ("Fe", "Si", "Ni", "Ti", "Ce")
    snr_median: float = 140.0
    snr_log_sigma: float = 0.55
    snr_min: float = 30.0
    snr_max: float = 500.0
    red_clump_fraction: float = 0.25
    high_alpha_fraction: float = 0.22
    halo_fraction: float = 0.03
    intrinsic_scatter_scale: float = 1.0
    label_noise: bool = True
    bad_pixels_per_star: float = 3.0
    persistence_fraction: float = 0.10
    sky_residual_probability: float = 0.9
    resolution: float = 22_500.0
    resolution_scatter: float = 800.0

    def __post_init__(self) -> None:
        for name in ("n_stars", "pixel_offset", "seed", "linelist_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                _fail(f"{name} must be an integer, got {value!r}")
        object.__setattr__(self, "outlier_kinds", tuple(self.outlier_kinds))
        object.__setattr__(self, "withheld_elements", tuple(self.withheld_elements))
        if self.n_stars < 1:
            _fail(f"n_stars must be >= 1, got {self.n_stars}")
        if self.seed < 0 or self.linelist_seed < 0:
            _fail("seed and linelist_seed must be >= 0")
        if not 0 <= self.pixel_offset < APOGEE_N_PIXELS:
            _fail(f"pixel_offset must be in [0, {APOGEE_N_PIXELS}), got {self.pixel_offset}")
        if self.n_pixels is not None:
            if isinstance(self.n_pixels, bool) or not isinstance(self.n_pixels, (int, np.integer)):
                _fail(f"n_pixels must be an integer or None, got {self.n_pixels!r}")
            room = APOGEE_N_PIXELS - self.pixel_offset
            if not 16 <= self.n_pixels <= room:
                _fail(
                    f"n_pixels must be in [16, {room}] with pixel_offset={self.pixel_offset} "
                    f"(the APOGEE grid has {APOGEE_N_PIXELS} pixels), got {self.n_pixels}"
                )
        unknown = sorted(set(self.outlier_kinds) - set(OUTLIER_KINDS))
        if unknown:
            _fail(f"unknown outlier kinds {unknown}; choose from {list(OUTLIER_KINDS)}")
        unknown = sorted(set(self.withheld_elements) - set(_WITHHELD_CANDIDATES))
        if unknown:
            _fail(
                f"withheld_elements {unknown} have no atomic lines; choose from "
                f"{list(_WITHHELD_CANDIDATES)}"
            )
        for name in (
            "outlier_fraction",
            "red_clump_fraction",
            "high_alpha_fraction",
            "halo_fraction",
            "persistence_fraction",
            "sky_residual_probability",
        ):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                _fail(f"{name} must be in [0, 1], got {value}")
        if self.high_alpha_fraction + self.halo_fraction > 1.0:
            _fail("high_alpha_fraction + halo_fraction must be <= 1")
        if not 0.0 <= self.withheld_fraction <= 0.5:
            _fail(f"withheld_fraction must be in [0, 0.5], got {self.withheld_fraction}")
        if not 0 < self.snr_min < self.snr_median < self.snr_max:
            _fail(
                "need 0 < snr_min < snr_median < snr_max, got "
                f"{self.snr_min}, {self.snr_median}, {self.snr_max}"
            )
        if self.snr_log_sigma <= 0:
            _fail(f"snr_log_sigma must be > 0, got {self.snr_log_sigma}")
        if self.intrinsic_scatter_scale < 0 or self.bad_pixels_per_star < 0:
            _fail("intrinsic_scatter_scale and bad_pixels_per_star must be >= 0")
        if not 5_000 <= self.resolution <= 100_000 or self.resolution_scatter < 0:
            _fail(
                f"resolution must be in [5000, 100000] and resolution_scatter >= 0, got "
                f"{self.resolution}, {self.resolution_scatter}"
            )

    @property
    def grid_pixels(self) -> int:
        """Number of pixels of the grid (7,514 when ``n_pixels`` is None)."""
        return APOGEE_N_PIXELS if self.n_pixels is None else int(self.n_pixels)

    def wavelength(self) -> np.ndarray:
        """The mock's wavelength grid: `(n_pixels,)`, vacuum Angstrom."""
        grid = apogee_wavelength()
        if self.n_pixels is None:
            return grid
        return grid[self.pixel_offset : self.pixel_offset + self.n_pixels].copy()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary of the fields (tuples become lists)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MockConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`DataValidationError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            _fail(f"unknown fields {unknown}; known fields: {sorted(names)}")
        return cls(**values)
