from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from astropy.table import Table

from stellarflow.data.grid import APOGEE_CHIP_SLICES, apogee_full_wavelength
from stellarflow.errors import DataValidationError
from stellarflow.mock import make_mock_linelist
from stellarflow.mock.constants import ABUNDANCE_ELEMENTS, SPEED_OF_LIGHT_KMS
from stellarflow.mock.physics import reference_sigma


def test_deterministic_from_seed(linelist: Table) -> None:
    again = make_mock_linelist(0)
    for name in linelist.colnames:
        np.testing.assert_array_equal(again[name], linelist[name])
    other = make_mock_linelist(1)
    assert not np.array_equal(other["wavelength"][:100], linelist["wavelength"][:100])


def test_size_species_and_columns(linelist: Table) -> None:
    assert 2000 < len(linelist) < 8000
    for column in ("wavelength", "species", "element", "ion", "loggf", "chi", "withheld"):
        assert column in linelist.colnames
    assert linelist.meta["medium"] == "vacuum"
    assert np.all(np.diff(linelist["wavelength"]) >= 0)
    counts = Counter(np.asarray(linelist["species"]).astype(str))
    assert {"CN", "CO", "OH"} <= set(counts)
    atoms = {k: v for k, v in counts.items() if k not in ("CN", "CO", "OH", "H 1")}
    assert max(atoms, key=atoms.get) == "Fe 1"
    elements = set(np.asarray(linelist["element"]).astype(str))
    # Every labelled element has features (C, N, O through the molecules).
    assert set(ABUNDANCE_ELEMENTS) | {"Fe"} <= elements
    molecule = np.isin(linelist["species"], ["CN", "CO", "OH"])
    assert np.all(linelist["ion"][molecule] == 0)
    assert set(linelist["element"][linelist["species"] == "CN"]) == {"N"}


def test_co_bandheads(linelist: Table) -> None:
    co = np.asarray(linelist["wavelength"][linelist["species"] == "CO"])
    # The 3-0 head is the bluest CO line, near 15,580 Angstrom; 4-1 near 15,780.
    assert 15570 < co.min() < 15590
    assert np.sum((co > 15580) & (co < 15600)) > 10  # lines pile up at the head


def test_withheld_lines_are_detectable_isolated_atomic_lines(linelist: Table) -> None:
    withheld = linelist[linelist["withheld"]]
    assert 10 <= len(withheld) <= 40
    assert set(withheld["element"]) <= {"Fe", "Si", "Ni", "Ti", "Ce"}
    assert np.all(withheld["ion"] > 0)
    assert np.all(withheld["depth_ref"] > 0.04)
    wave = np.asarray(linelist["wavelength"])
    sigma_a = wave * reference_sigma() / SPEED_OF_LIGHT_KMS
    for row in withheld:
        near = np.abs(wave - row["wavelength"]) < 1.5 * sigma_a[row["line_id"]]
        near[row["line_id"]] = False
        assert np.sum(linelist["depth_ref"][near]) < 0.5 * row["depth_ref"]
    full = apogee_full_wavelength()
    on_grid = np.zeros(len(linelist), dtype=bool)
    for chip in APOGEE_CHIP_SLICES:
        on_grid |= (wave > full[chip.start + 6]) & (wave < full[chip.stop - 7])
    detectable = (linelist["element"] == "Fe") & (linelist["depth_ref"] > 0.04) & on_grid
    assert np.sum(withheld["element"] == "Fe") == round(0.1 * np.sum(detectable))
    assert set(withheld["source"]) == {"random"}


def test_withheld_fraction_zero_and_errors() -> None:
    table = make_mock_linelist(0, withheld_fraction=0.0)
    assert not np.any(table["withheld"])
    with pytest.raises(DataValidationError):
        make_mock_linelist(0, withheld_fraction=0.7)
    with pytest.raises(DataValidationError, match="no atomic lines"):
        make_mock_linelist(0, withheld_elements=("N",))
