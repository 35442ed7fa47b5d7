"""stellarflow's HDF5 survey file: round trips, chunked reading, atomicity, refusal."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from astropy.table import Table

from stellarflow import DataValidationError, FileFormatError, OutputExistsError
from stellarflow.errors import GridMismatchError
from stellarflow.io.hdf5 import (
    FORMAT_VERSION,
    SurveyWriter,
    open_survey,
    read_survey,
    write_survey,
)
from tests.conftest import make_dataset


def test_round_trip_exact(tmp_path) -> None:
    data = make_dataset(n_stars=30, n_pixels=64)
    data.labels["KIND"] = ["giant"] * 30
    truth = np.asarray(data.flux * 0.99, dtype=np.float32)
    extra = Table({"wavelength": [15200.0, 16000.0], "species": ["Fe 1", "CN"]})
    path = write_survey(data, tmp_path / "s.h5", truth_flux=truth, tables={"linelist": extra})
    back = read_survey(path)
    for key in ("flux", "ivar", "mask", "wavelength"):
        np.testing.assert_array_equal(getattr(back, key), getattr(data, key))
    assert back.labels.colnames == data.labels.colnames
    for name in data.labels.colnames:
        np.testing.assert_array_equal(back.labels[name], data.labels[name])
    assert back.labels["KIND"][0] == "giant"
    assert back.meta == {"survey": "test"}
    with open_survey(path) as survey:
        assert survey.format_version == FORMAT_VERSION
        assert survey.has_truth and survey.table_names == ["linelist"]
        np.testing.assert_array_equal(survey.read_truth_flux(5, 9), truth[5:9])
        assert list(survey.read_table("linelist")["species"]) == ["Fe 1", "CN"]
        with pytest.raises(FileFormatError, match="no table 'nope'"):
            survey.read_table("nope")


def test_chunked_reading_matches_memory(tmp_path) -> None:
    data = make_dataset(n_stars=23, n_pixels=16)
    path = tmp_path / "s.h5"
    with SurveyWriter(path, data.wavelength, data.meta) as writer:
        for chunk in data.iter_chunks(7):  # written in uneven chunks
            writer.append(chunk)
    with open_survey(path) as survey:
        assert (survey.n_stars, survey.n_pixels) == (23, 16)
        chunks = list(survey.iter_chunks(5, start=2, stop=21))
        assert [c.n_stars for c in chunks] == [5, 5, 5, 4]
        np.testing.assert_array_equal(np.concatenate([c.flux for c in chunks]), data.flux[2:21])
        np.testing.assert_array_equal(survey.read(4, 6).star_id, data.star_id[4:6])
        with pytest.raises(DataValidationError, match="select no stars"):
            survey.read(30, 40)


def test_refuses_to_overwrite_and_overwrites_when_asked(tmp_path) -> None:
    data = make_dataset()
    path = write_survey(data, tmp_path / "s.h5")
    with pytest.raises(OutputExistsError, match="already exists"):
        write_survey(data, path)
    write_survey(data[:3], path, overwrite=True)
    assert read_survey(path).n_stars == 3


def test_failed_write_leaves_nothing(tmp_path) -> None:
    data = make_dataset()
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError, match="boom"), SurveyWriter(path, data.wavelength) as writer:
        writer.append(data[:5])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # an existing file is untouched by a failed overwrite
    write_survey(data, path)
    with pytest.raises(RuntimeError), SurveyWriter(path, data.wavelength, overwrite=True) as w:
        w.append(data[:2])
        raise RuntimeError("boom")
    assert read_survey(path).n_stars == data.n_stars
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_writer_checks(tmp_path) -> None:
    data = make_dataset()
    with pytest.raises(DataValidationError, match="no spectra"):
        with SurveyWriter(tmp_path / "a.h5", data.wavelength):
            pass
    with (
        pytest.raises(GridMismatchError),
        SurveyWriter(tmp_path / "b.h5", data.wavelength * 2) as w,
    ):
        w.append(data)
    with pytest.raises(DataValidationError, match="every chunk or with none"):
        with SurveyWriter(tmp_path / "c.h5", data.wavelength) as w:
            w.append(data[:2], truth_flux=data.flux[:2])
            w.append(data[2:4])
    with pytest.raises(DataValidationError, match="more than once"):
        with SurveyWriter(tmp_path / "d.h5", data.wavelength) as w:
            w.append(data[:2])
            w.append(data[:2])
    with pytest.raises(DataValidationError, match="reserved"):
        with SurveyWriter(tmp_path / "e.h5", data.wavelength) as w:
            w.add_table("labels", data.labels)
    assert list(tmp_path.iterdir()) == []


def test_files_that_are_not_surveys(tmp_path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("star_id,TEFF\n1,4500\n")
    with pytest.raises(FileFormatError, match="not a readable HDF5"):
        open_survey(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["flux"] = np.ones((2, 3))
    with pytest.raises(FileFormatError, match="not a stellarflow survey"):
        open_survey(other)
    with pytest.raises(FileFormatError, match="does not exist"):
        open_survey(tmp_path / "missing.h5")


def test_corrupted_contents_are_reported(tmp_path) -> None:
    data = make_dataset()
    path = write_survey(data, tmp_path / "s.h5")
    with h5py.File(path, "r+") as handle:
        handle["ivar"][2, 3] = -5.0
        handle.attrs["format_version"] = FORMAT_VERSION
    with open_survey(path) as survey, pytest.raises(DataValidationError, match="negative"):
        survey.load()
    with h5py.File(path, "r+") as handle:
        handle.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(FileFormatError, match="not supported"):
        open_survey(path)
    with h5py.File(path, "r+") as handle:
        handle.attrs["format_version"] = FORMAT_VERSION
        del handle["mask"]
    with pytest.raises(FileFormatError, match="lacks the datasets"):
        open_survey(path)
