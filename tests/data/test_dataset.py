"""The data model: every validation rule, sanitisation, selection and chunking."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from stellarflow import DataValidationError, LabelError, SpectralDataset
from stellarflow.data.dataset import concatenate, label_array, sigma_to_ivar
from stellarflow.data.grid import (
    APOGEE_N_PIXELS,
    apogee_chip_index,
    apogee_wavelength,
    grid_hash,
    validate_wavelength,
)
from stellarflow.data.summary import summarize
from stellarflow.errors import GridMismatchError
from tests.conftest import make_dataset


def _parts(n_stars: int = 4, n_pixels: int = 6) -> dict:
    return {
        "flux": np.ones((n_stars, n_pixels)),
        "ivar": np.full((n_stars, n_pixels), 100.0),
        "wavelength": np.linspace(15000.0, 15100.0, n_pixels),
        "labels": Table({"star_id": [f"s{i}" for i in range(n_stars)], "TEFF": [4500.0] * n_stars}),
    }


def test_invariants_after_construction(dataset: SpectralDataset) -> None:
    assert dataset.flux.dtype == np.float32 and dataset.ivar.dtype == np.float32
    assert dataset.mask.dtype == bool and dataset.wavelength.dtype == np.float64
    assert np.all(np.isfinite(dataset.flux))
    np.testing.assert_array_equal(dataset.mask, dataset.ivar == 0)
    assert dataset.labels.colnames[0] == "star_id"
    assert dataset.label_names == ["TEFF", "LOGG", "FE_H"]


def test_masked_nonfinite_flux_is_sanitised() -> None:
    parts = _parts()
    parts["flux"][0, 1] = np.nan
    parts["flux"][1, 2] = np.inf
    mask = np.zeros((4, 6), dtype=bool)
    mask[0, 1] = True
    parts["ivar"][1, 2] = 0.0
    data = SpectralDataset(**parts, mask=mask)
    assert data.flux[0, 1] == 1.0 and data.flux[1, 2] == 1.0
    assert data.mask[1, 2] and data.ivar[0, 1] == 0.0


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        (lambda p: p.update(flux=np.ones(6)), "flux must be 2-D"),
        (lambda p: p.update(ivar=np.ones((4, 5))), "ivar has shape"),
        (lambda p: p.update(flux=np.ones((0, 6)), ivar=np.ones((0, 6))), "empty"),
        (lambda p: p["flux"].__setitem__((2, 3), np.nan), "non-finite values on usable"),
        (lambda p: p["ivar"].__setitem__((2, 3), -1.0), "negative"),
        (lambda p: p["ivar"].__setitem__((2, 3), np.inf), "non-finite"),
        (lambda p: p["wavelength"].__setitem__(3, 15000.0), "strictly increasing"),
        (lambda p: p.update(wavelength=np.linspace(1, 2, 5)), "wavelength has 5 pixels"),
        (lambda p: p.update(wavelength=np.ones((2, 3))), "1-D"),
        (lambda p: p["wavelength"].__setitem__(0, -1.0), "finite and positive"),
    ],
)
def test_validation_rules(edit, phrase: str) -> None:
    parts = _parts()
    edit(parts)
    with pytest.raises(DataValidationError, match=phrase):
        SpectralDataset(**parts)


def test_mask_shape_and_dtype_checked() -> None:
    with pytest.raises(DataValidationError, match="mask has shape"):
        SpectralDataset(**_parts(), mask=np.zeros((4, 5), dtype=bool))
    with pytest.raises(DataValidationError, match="boolean"):
        SpectralDataset(**_parts(), mask=np.zeros((4, 6), dtype=float))
    bitmask = np.zeros((4, 6), dtype=np.int32)
    bitmask[1, 1] = 4
    assert SpectralDataset(**_parts(), mask=bitmask).mask[1, 1]


@pytest.mark.parametrize(
    ("labels", "phrase"),
    [
        (Table({"TEFF": [1.0] * 4}), "no 'star_id' column"),
        (Table({"star_id": ["a", "b", "a", "c"]}), "more than once"),
        (Table({"star_id": ["a", "", "b", "c"]}), "empty star_id"),
        (Table({"star_id": ["a", "b", "c"]}), "3 rows but there are 4"),
        (Table({"star_id": list("abcd"), "TEFF": [1.0] * 4, "teff": [2.0] * 4}), "appear more"),
        ({"star_id": list("abcd")}, "astropy Table"),
    ],
)
def test_label_rules(labels, phrase: str) -> None:
    parts = _parts()
    parts["labels"] = labels
    with pytest.raises(LabelError, match=phrase):
        SpectralDataset(**parts)


def test_star_ids_become_str_and_first() -> None:
    parts = _parts()
    parts["labels"] = Table({"TEFF": [1.0] * 4, "star_id": [11, 12, 13, 14]})
    data = SpectralDataset(**parts)
    assert data.labels.colnames == ["star_id", "TEFF"]
    assert list(data.star_id) == ["11", "12", "13", "14"]


def test_label_array_errors_and_values(dataset: SpectralDataset) -> None:
    values = dataset.label_array(["TEFF", "FE_H"])
    assert values.shape == (dataset.n_stars, 2) and values.dtype == np.float64
    with pytest.raises(LabelError, match="MG_FE"):
        dataset.label_array(["TEFF", "MG_FE"])
    with pytest.raises(LabelError, match="duplicates"):
        dataset.label_array(["TEFF", "TEFF"])
    with pytest.raises(LabelError, match="expected numbers"):
        label_array(dataset.labels, ["star_id"])


def test_sigma_boundary() -> None:
    ivar = sigma_to_ivar(np.array([[0.1, np.inf, np.nan, 0.5]]))
    np.testing.assert_allclose(ivar, [[100.0, 0.0, 0.0, 4.0]], rtol=1e-6)
    with pytest.raises(DataValidationError, match="sigma must be > 0"):
        sigma_to_ivar(np.array([[0.1, 0.0]]))
    parts = _parts()
    sigma = np.full((4, 6), 0.1)
    sigma[0, 0] = np.inf
    data = SpectralDataset.from_sigma(parts["flux"], sigma, parts["wavelength"], parts["labels"])
    assert data.mask[0, 0] and not data.mask[0, 1]
    np.testing.assert_allclose(data.sigma[0, 1], 0.1, rtol=1e-6)
    assert np.isinf(data.sigma[0, 0])


def test_selection_and_chunks(dataset: SpectralDataset) -> None:
    chunks = list(dataset.iter_chunks(5))
    assert [c.n_stars for c in chunks] == [5, 5, 2]
    assert list(np.concatenate([c.star_id for c in chunks])) == list(dataset.star_id)
    picked = dataset[np.array([3, 1])]
    assert list(picked.star_id) == [dataset.star_id[3], dataset.star_id[1]]
    np.testing.assert_array_equal(picked.flux[0], dataset.flux[3])
    assert dataset[-1].star_id[0] == dataset.star_id[-1]
    assert dataset[dataset.labels["TEFF"] > 0].n_stars == dataset.n_stars
    with pytest.raises(DataValidationError, match="no stars"):
        dataset[dataset.labels["TEFF"] < 0]


def test_concatenate_roundtrip_and_grid_check(dataset: SpectralDataset) -> None:
    joined = concatenate(list(dataset.iter_chunks(5)))
    np.testing.assert_array_equal(joined.flux, dataset.flux)
    other = make_dataset(n_pixels=41, seed=1)
    with pytest.raises(GridMismatchError, match="different wavelength grids"):
        concatenate([dataset, other])


def test_snr_is_median_over_good_pixels() -> None:
    parts = _parts(1, 4)
    parts["ivar"] = np.array([[100.0, 400.0, 0.0, 10000.0]])
    data = SpectralDataset(**parts)
    np.testing.assert_allclose(data.snr(), [20.0])


def test_summary_counts(dataset: SpectralDataset) -> None:
    summary = summarize(dataset, chunk_size=5)
    assert summary.n_stars == dataset.n_stars
    np.testing.assert_allclose(summary.masked_fraction, dataset.mask.mean())
    teff = dataset.labels["TEFF"]
    assert summary.label_ranges["TEFF"] == pytest.approx((teff.min(), np.median(teff), teff.max()))
    assert any("masked" in line for line in summary.lines())


def test_apogee_grid() -> None:
    wave = apogee_wavelength()
    assert wave.size == APOGEE_N_PIXELS == 7514
    assert 15100 < wave[0] < 15200 and 16900 < wave[-1] < 17000
    np.testing.assert_array_equal(np.bincount(apogee_chip_index(wave)), [3028, 2495, 1991])
    # log-lambda sampling: lambda / dlambda ~ 1 / (ln 10 * 6e-6) ~ 72,000 away from the gaps
    steps = np.diff(np.log10(wave))
    assert np.median(steps) == pytest.approx(6e-6)
    assert validate_wavelength(wave.astype(np.float32)).dtype == np.float64
    assert grid_hash(wave) == grid_hash(wave * (1 + 1e-15))
    assert grid_hash(wave) != grid_hash(wave[1:])
