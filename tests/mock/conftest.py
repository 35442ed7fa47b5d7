"""Shared mock-survey fixtures: small grids and few stars so the whole folder runs fast."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from stellarflow.mock import MockConfig, MockSurvey, make_mock, make_mock_linelist


@pytest.fixture(scope="session")
def linelist() -> Table:
    """The default full mock line list."""
    return make_mock_linelist(0)


@pytest.fixture(scope="session")
def small_config() -> MockConfig:
    """300 stars on 512 APOGEE pixels (15,360-15,600 A: withheld lines, persistence)."""
    return MockConfig(n_stars=300, n_pixels=512, pixel_offset=600, seed=11, outlier_fraction=0.05)


@pytest.fixture(scope="session")
def small_mock(small_config: MockConfig) -> MockSurvey:
    return make_mock(small_config)


def one_line_list(
    species: str,
    wavelength: float = 16000.0,
    chi: float = 5.0,
    log_ew_ref: float = -0.5,
    log_damping: float = -1.5,
    wing_hwhm: float = 0.0,
) -> Table:
    """A line list with a single line (formation columns only)."""
    element = {"CN": "N", "CO": "C", "OH": "O"}.get(species, species.split()[0])
    return Table(
        {
            "wavelength": [wavelength],
            "species": [species],
            "element": [element],
            "ion": [0 if species in ("CN", "CO", "OH") else int(species.split()[1])],
            "chi": [chi],
            "log_ew_ref": [log_ew_ref],
            "log_damping": [log_damping],
            "wing_hwhm": [wing_hwhm],
        }
    )


def local_grid(centre: float = 16000.0, n_pixels: int = 201) -> np.ndarray:
    """A log-lambda grid with APOGEE sampling centred on ``centre``."""
    step = 6e-6
    return 10.0 ** (np.log10(centre) + step * (np.arange(n_pixels) - n_pixels // 2))


@pytest.fixture(scope="session")
def full_mock() -> MockSurvey:
    """One block of stars on the full 7,514-pixel grid."""
    return make_mock(MockConfig(n_stars=256, seed=21))
