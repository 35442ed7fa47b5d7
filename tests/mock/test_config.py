from __future__ import annotations

import numpy as np
import pytest

from stellarflow.data.grid import apogee_wavelength
from stellarflow.errors import DataValidationError
from stellarflow.mock import MockConfig


def test_default_grid_is_apogee() -> None:
    config = MockConfig()
    assert config.grid_pixels == 7514
    np.testing.assert_array_equal(config.wavelength(), apogee_wavelength())


def test_sub_grid_is_a_contiguous_apogee_range() -> None:
    config = MockConfig(n_pixels=256, pixel_offset=1000)
    np.testing.assert_array_equal(config.wavelength(), apogee_wavelength()[1000:1256])


def test_dict_round_trip() -> None:
    config = MockConfig(n_stars=10, n_pixels=64, outlier_kinds=("Ce_rich",))
    again = MockConfig.from_dict(config.to_dict())
    assert again == config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_stars": 0},
        {"n_stars": 2.5},
        {"n_pixels": 8},
        {"n_pixels": 100, "pixel_offset": 7500},
        {"outlier_fraction": 1.5},
        {"outlier_kinds": ("Li_rich",)},
        {"withheld_fraction": 0.9},
        {"withheld_elements": ("O",)},
        {"snr_min": 200.0},
        {"snr_log_sigma": 0.0},
        {"high_alpha_fraction": 0.8, "halo_fraction": 0.5},
        {"seed": -1},
        {"resolution": 100.0},
    ],
)
def test_invalid_configs_raise(kwargs: dict) -> None:
    with pytest.raises(DataValidationError, match="MockConfig"):
        MockConfig(**kwargs)


def test_unknown_field_in_dict_raises() -> None:
    with pytest.raises(DataValidationError, match="unknown fields"):
        MockConfig.from_dict({"n_star": 3})
