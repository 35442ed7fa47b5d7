from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from stellarflow.errors import DataValidationError, LabelError
from stellarflow.mock import SpectrumModel, StarParameters
from tests.mock.conftest import local_grid, one_line_list


def test_lines_off_the_grid_are_dropped(linelist: Table) -> None:
    grid = local_grid(16000.0, 256)
    model = SpectrumModel(linelist, grid)
    wave = np.asarray(model.linelist["wavelength"])
    assert 0 < model.n_lines < len(linelist)
    # Only lines whose core or damping wings can reach the grid are kept.
    assert np.all((wave > grid[0] - 200.0) & (wave < grid[-1] + 200.0))
    assert np.sum((wave < grid[0] - 5.0) | (wave > grid[-1] + 5.0)) < 10


def test_width_interpolation_is_smooth_and_area_preserving() -> None:
    grid = local_grid(n_pixels=301)
    model = SpectrumModel(one_line_list("Fe 1", log_ew_ref=-1.2), grid)
    vmacro = np.linspace(2.0, 12.0, 41)
    stars = StarParameters.from_labels(
        {
            "TEFF": np.full(41, 4500.0),
            "LOGG": np.full(41, 2.5),
            "FE_H": np.zeros(41),
            "VMACRO": vmacro,
        }
    )
    flux = model.flux(stars)
    depth = 1.0 - flux.min(axis=1)
    assert np.all(np.diff(depth) < 0)  # broader line, shallower core
    area = np.sum(1.0 - flux, axis=1)
    np.testing.assert_allclose(area, area[0], rtol=2e-3)


def test_star_parameters_defaults_and_errors() -> None:
    stars = StarParameters.from_labels({"TEFF": [4500.0], "LOGG": [2.0], "FE_H": [0.1]})
    assert stars.x_fe.shape == (1, 19) and np.all(stars.x_fe == 0)
    assert 1.0 < stars.vmicro[0] < 2.5 and 3.0 < stars.vmacro[0] < 8.0
    with pytest.raises(LabelError, match="TEFF"):
        StarParameters.from_labels({"LOGG": [2.0], "FE_H": [0.0]})
    with pytest.raises(LabelError, match="finite"):
        StarParameters.from_labels({"TEFF": [np.nan], "LOGG": [2.0], "FE_H": [0.0]})
    with pytest.raises(DataValidationError, match="lacks the columns"):
        SpectrumModel(Table({"wavelength": [16000.0]}), local_grid())


def test_star_independence_within_a_batch(linelist: Table) -> None:
    model = SpectrumModel(linelist, local_grid(15600.0, 300))
    rng = np.random.default_rng(0)
    labels = {
        "TEFF": rng.uniform(3900, 5200, 20),
        "LOGG": rng.uniform(1, 3.3, 20),
        "FE_H": rng.normal(-0.2, 0.3, 20),
        "VMACRO": rng.uniform(2, 11, 20),
    }
    together = model.flux(StarParameters.from_labels(labels))
    alone = model.flux(StarParameters.from_labels({k: v[7:8] for k, v in labels.items()}))
    np.testing.assert_allclose(together[7], alone[0], rtol=1e-5, atol=1e-6)


def test_label_length_mismatch_raises() -> None:
    with pytest.raises(LabelError, match="one value per star"):
        StarParameters.from_labels({"TEFF": [4500.0, 4600.0], "LOGG": [2.0, 2.1, 2.2], "FE_H": 0.0})
