from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from stellarflow.errors import OutputExistsError
from stellarflow.mock import (
    MockConfig,
    MockSurvey,
    SpectrumModel,
    StarParameters,
    make_mock,
    write_mock_survey,
)

hdf5 = pytest.importorskip("stellarflow.io.hdf5")


def _assert_same(a: MockSurvey, b: MockSurvey, rows: slice = slice(None)) -> None:
    np.testing.assert_array_equal(a.dataset.flux[rows], b.dataset.flux[rows])
    np.testing.assert_array_equal(a.dataset.ivar[rows], b.dataset.ivar[rows])
    np.testing.assert_array_equal(a.dataset.mask[rows], b.dataset.mask[rows])
    np.testing.assert_array_equal(a.truth_flux[rows], b.truth_flux[rows])
    for name in a.truth.colnames:
        np.testing.assert_array_equal(a.truth[name][rows], b.truth[name][rows])


def test_deterministic_from_seed(small_config: MockConfig, small_mock: MockSurvey) -> None:
    _assert_same(make_mock(small_config), small_mock)
    other = make_mock(dataclasses.replace(small_config, seed=12))
    assert not np.array_equal(other.dataset.flux, small_mock.dataset.flux)


def test_stars_do_not_depend_on_n_stars(small_config: MockConfig, small_mock: MockSurvey) -> None:
    fewer = make_mock(dataclasses.replace(small_config, n_stars=100))
    _assert_same(fewer, small_mock, slice(0, 100))


def test_population_does_not_depend_on_the_grid(small_config: MockConfig) -> None:
    a = make_mock(dataclasses.replace(small_config, n_stars=40, n_pixels=64))
    b = make_mock(dataclasses.replace(small_config, n_stars=40, n_pixels=128, pixel_offset=3000))
    for name in ("TEFF", "LOGG", "FE_H", "MG_FE", "SNR", "A_AGB", "outlier_kind"):
        np.testing.assert_array_equal(a.truth[name], b.truth[name])
    np.testing.assert_array_equal(a.dataset.labels["CE_FE"], b.dataset.labels["CE_FE"])


def test_truth_flux_is_the_synthesis_of_the_true_labels(small_mock: MockSurvey) -> None:
    model = SpectrumModel(small_mock.linelist, small_mock.dataset.wavelength)
    flux = model.flux(StarParameters.from_labels(small_mock.truth[:20]))
    np.testing.assert_allclose(small_mock.truth_flux[:20], flux, atol=2e-6)


def test_withheld_lines_in_full_list_only(small_mock: MockSurvey) -> None:
    full, published = small_mock.linelist, small_mock.published_linelist
    withheld = full[full["withheld"]]
    assert len(withheld) >= 1
    assert len(published) == len(full) - len(withheld)
    assert "withheld" not in published.colnames
    for wave in withheld["wavelength"]:
        assert not np.any(np.isclose(published["wavelength"], wave, rtol=0, atol=1e-9))


def test_outlier_spectra_depart_in_the_right_direction() -> None:
    config = MockConfig(
        n_stars=256, n_pixels=7514, outlier_fraction=0.3, seed=2, outlier_kinds=("Ce_rich",)
    )
    mock = make_mock(config)
    model = SpectrumModel(mock.linelist, mock.dataset.wavelength)
    rows = np.flatnonzero(mock.truth["outlier_kind"] == "Ce_rich")[:10]
    truth = mock.truth[rows]
    normal = truth.copy()
    normal["CE_FE"] -= 0.6 + truth["outlier_amplitude"] * 0.5
    ce = np.asarray(model.linelist["species"]) == "Ce 2"
    w_out, _ = model.line_strengths(StarParameters.from_labels(truth))
    w_norm, _ = model.line_strengths(StarParameters.from_labels(normal))
    ratio = w_out[:, ce] / w_norm[:, ce]
    assert np.all(ratio > 1.2) and np.median(ratio) > 2.5
    assert np.allclose(w_out[:, ~ce], w_norm[:, ~ce])


def test_withheld_lines_are_findable_from_pixel_correlations(small_mock: MockSurvey) -> None:
    """At fixed Teff/logg/[Fe/H], flux at a withheld line tracks its element's abundance."""
    lines = small_mock.linelist
    row = lines[lines["withheld"]][0]
    label = {"Fe": "FE_H"}.get(row["element"], f"{row['element'].upper()}_FE")
    rng = np.random.default_rng(0)
    n = 200
    labels = {"TEFF": np.full(n, 4600.0), "LOGG": np.full(n, 2.4), "FE_H": np.zeros(n)}
    for name in ("MG_FE", "SI_FE", "NI_FE", "TI_FE", "CE_FE", "C_FE", "N_FE", "O_FE"):
        labels[name] = rng.normal(0.0, 0.1, n)
    labels[label] = rng.normal(0.0, 0.1, n)
    model = SpectrumModel(lines, small_mock.dataset.wavelength)
    flux = model.flux(StarParameters.from_labels(labels))
    pixel = int(np.argmin(np.abs(small_mock.dataset.wavelength - row["wavelength"])))
    assert np.corrcoef(flux[:, pixel], labels[label])[0, 1] < -0.9


def test_write_round_trip(tmp_path: Path, small_config: MockConfig, small_mock: MockSurvey) -> None:
    path = tmp_path / "mock.h5"
    calls: list[tuple[int, int]] = []
    summary = write_mock_survey(
        path, small_config, chunk_size=128, progress=lambda done, total: calls.append((done, total))
    )
    assert calls[-1] == (300, 300) and [c[0] for c in calls] == [128, 256, 300]
    assert summary.n_stars == 300 and summary.n_pixels == 512
    assert sum(summary.outlier_counts.values()) == np.sum(small_mock.truth["outlier_kind"] != "")
    with hdf5.open_survey(path) as survey:
        assert survey.n_stars == 300
        data = survey.load()
        np.testing.assert_array_equal(data.flux, small_mock.dataset.flux)
        np.testing.assert_array_equal(data.ivar, small_mock.dataset.ivar)
        np.testing.assert_array_equal(data.mask, small_mock.dataset.mask)
        np.testing.assert_array_equal(survey.read_truth_flux(), small_mock.truth_flux)
        assert {"truth/labels", "truth/linelist", "linelist"} <= set(survey.table_names)
        truth = survey.read_table("truth/labels")
        np.testing.assert_array_equal(truth["log_prob_oracle"], small_mock.truth["log_prob_oracle"])
        np.testing.assert_array_equal(truth["outlier_kind"], small_mock.truth["outlier_kind"])
        np.testing.assert_array_equal(survey.labels["FE_H"], small_mock.dataset.labels["FE_H"])
        assert int(np.sum(survey.read_table("truth/linelist")["withheld"])) == summary.n_withheld
        assert len(survey.read_table("linelist")) == summary.n_lines - summary.n_withheld
        meta = survey.meta
        assert meta["survey"] == "mock" and meta["n_processes"] == 4
        assert "Ce" in meta["process_elements"]["agb"]
        assert meta["mock_config"]["seed"] == small_config.seed
        # The oracle recomputed from what is on disk.
        flux, ivar = data.flux.astype(np.float64), data.ivar.astype(np.float64)
        resid = flux - survey.read_truth_flux().astype(np.float64)
        with np.errstate(divide="ignore"):
            terms = -0.5 * resid**2 * ivar + 0.5 * np.log(ivar) - 0.5 * np.log(2 * np.pi)
        np.testing.assert_allclose(
            truth["log_prob_oracle"], np.where(data.mask, 0.0, terms).sum(axis=1), rtol=1e-12
        )


def test_chunk_size_does_not_change_the_file(tmp_path: Path) -> None:
    config = MockConfig(n_stars=300, n_pixels=64, seed=4)
    write_mock_survey(tmp_path / "a.h5", config, chunk_size=7)
    write_mock_survey(tmp_path / "b.h5", config, chunk_size=1000)
    with hdf5.open_survey(tmp_path / "a.h5") as a, hdf5.open_survey(tmp_path / "b.h5") as b:
        da, db = a.load(), b.load()
        np.testing.assert_array_equal(da.flux, db.flux)
        np.testing.assert_array_equal(da.mask, db.mask)
        np.testing.assert_array_equal(a.read_truth_flux(), b.read_truth_flux())
        ta, tb = a.read_table("truth/labels"), b.read_table("truth/labels")
        for name in ta.colnames:
            np.testing.assert_array_equal(ta[name], tb[name])


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    config = MockConfig(n_stars=3, n_pixels=32)
    path = tmp_path / "mock.h5"
    write_mock_survey(path, config)
    with pytest.raises(OutputExistsError):
        write_mock_survey(path, config)
    write_mock_survey(path, config, overwrite=True)
    with pytest.raises(ValueError, match="chunk_size"):
        write_mock_survey(tmp_path / "x.h5", config, chunk_size=0)
    assert not (tmp_path / "x.h5").exists()
