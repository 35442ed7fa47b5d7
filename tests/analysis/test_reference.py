"""The held-out reference of the outlier score: recovery, robustness, files, training."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from stellarflow.analysis.outliers import (
    SURVEY_REFERENCE_MIN,
    find_outliers,
    recalibrate_by_reference,
    recalibrate_by_survey,
)
from stellarflow.analysis.reference import (
    MIN_REFERENCE_STARS,
    REFERENCE_FILE,
    REFERENCE_LINES_FILE,
    ReferenceCalibration,
    fit_reference,
    load_reference,
    save_reference,
)
from stellarflow.errors import DataValidationError, FileFormatError
from stellarflow.io.hdf5 import open_survey
from stellarflow.mock import MockConfig
from stellarflow.train.checkpoint import load_model
from tests.conftest import train_on_mock

NAMES = ("TEFF", "LOGG")


def _stars(rng: np.random.Generator, n: int, noise) -> tuple:
    """Model z whose centre and spread drift with Teff and S/N, as a misfitting model's do."""
    teff = rng.uniform(4000.0, 5500.0, n)
    logg = rng.uniform(1.0, 3.5, n)
    snr = 10 ** rng.uniform(1.5, 2.7, n)
    u = (teff - 4750.0) / 400.0
    v = np.log10(snr) - 2.0
    centre = 0.3 * u + 0.2 * u**2 + 0.4 * v
    spread = np.exp(0.1 + 0.15 * u + 0.5 * v)
    eps = noise(rng, n)
    return centre + spread * eps, np.column_stack([teff, logg]), snr, eps


def _gauss(rng, n):
    return rng.standard_normal(n)


def test_recovers_a_drifting_gaussian_and_calibrates_new_stars() -> None:
    rng = np.random.default_rng(0)
    z, labels, snr, eps = _stars(rng, 4000, _gauss)
    reference = fit_reference(z, labels, snr, NAMES)
    assert reference.degree == 2 and reference.n_stars == 4000
    assert reference.dof > 30  # Gaussian noise: no heavy tail invented
    standardized = reference.standardized(z, labels, snr)
    assert np.corrcoef(standardized, eps)[0, 1] > 0.995
    assert np.median(np.abs(standardized - eps)) < 0.05
    z_new, labels_new, snr_new, _ = _stars(rng, 20_000, _gauss)
    p = np.exp(reference.log_p_tail(z_new, labels_new, snr_new))
    assert stats.kstest(p, "uniform").pvalue > 0.01
    # the model's own z (centre 0, unit spread assumed) is far from uniform here
    assert stats.kstest(stats.norm.sf(z_new), "uniform").pvalue < 1e-6


def test_heavy_upper_tail_is_fitted_and_extrapolated() -> None:
    rng = np.random.default_rng(1)

    def student(rng, n):
        return rng.standard_t(4, n) * stats.norm.ppf(0.75) / stats.t.ppf(0.75, 4)

    z, labels, snr, _ = _stars(rng, 5000, student)
    reference = fit_reference(z, labels, snr, NAMES)
    assert 2.5 < reference.dof < 8
    z_new, labels_new, snr_new, _ = _stars(rng, 400_000, student)
    log_p = reference.log_p_tail(z_new, labels_new, snr_new)
    for level in (1e-2, 1e-3, 1e-4):  # 1e-4 is beyond the 5,000 reference stars: extrapolated
        assert 0.6 < np.mean(log_p < np.log(level)) / level < 1.6
    gaussian = dataclasses.replace(reference, dof=float("inf"))  # the same fit, Gaussian tail
    assert np.mean(gaussian.log_p_tail(z_new, labels_new, snr_new) < np.log(1e-4)) > 5e-4


def test_a_few_real_outliers_in_the_reference_barely_matter() -> None:
    rng = np.random.default_rng(2)
    z, labels, snr, _ = _stars(rng, 3000, _gauss)
    clean = fit_reference(z, labels, snr, NAMES)
    dirty = z.copy()
    dirty[rng.choice(z.size, 30, replace=False)] = rng.uniform(20.0, 200.0, 30)  # 1% outliers
    contaminated = fit_reference(dirty, labels, snr, NAMES)
    a = clean.standardized(z, labels, snr)
    b = contaminated.standardized(z, labels, snr)
    assert np.median(np.abs(a - b)) < 0.05  # location and scale: robust
    # the tail shape moves a little (the 97.5% point becomes the normal stars' 98.5% one),
    # towards a heavier tail: new normal stars get conservative, not alarming, p_tail
    z_new, labels_new, snr_new, _ = _stars(rng, 20_000, _gauss)
    p = np.exp(contaminated.log_p_tail(z_new, labels_new, snr_new))
    assert 0.001 < np.mean(p < 0.01) < 0.012 and np.mean(p < 1e-3) < 0.0015


def test_small_references_are_linear_and_tiny_ones_refused() -> None:
    rng = np.random.default_rng(3)
    z, labels, snr, _ = _stars(rng, 400, _gauss)
    assert fit_reference(z, labels, snr, NAMES).degree == 1
    n = MIN_REFERENCE_STARS - 1
    with pytest.raises(DataValidationError, match="at least 200 held-out stars"):
        fit_reference(z[:n], labels[:n], snr[:n], NAMES)
    with pytest.raises(DataValidationError, match="labels"):
        fit_reference(z, labels[:, :1], snr, NAMES)
    reference = fit_reference(z, labels, snr, NAMES)
    with pytest.raises(DataValidationError, match="needs 2 labels"):
        reference.log_p_tail(z, labels[:, :1], snr)


def test_file_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(4)
    z, labels, snr, _ = _stars(rng, 1000, _gauss)
    reference = fit_reference(z, labels, snr, NAMES)
    assert load_reference(tmp_path) is None
    path = save_reference(tmp_path, reference)
    assert path.name == REFERENCE_FILE
    again = load_reference(tmp_path)
    assert again == reference
    np.testing.assert_array_equal(
        again.log_p_tail(z, labels, snr), reference.log_p_tail(z, labels, snr)
    )
    lines = replace(reference, linelist="0123456789abcdef")
    assert save_reference(tmp_path, lines).name == REFERENCE_LINES_FILE
    assert load_reference(tmp_path, lines=True) == lines and load_reference(tmp_path) == again
    gaussian = ReferenceCalibration.from_dict({**reference.to_dict(), "dof": None})
    assert not np.isfinite(gaussian.dof)
    (tmp_path / REFERENCE_FILE).write_text(json.dumps({"degree": 2}))
    with pytest.raises(FileFormatError, match="not a reference calibration"):
        load_reference(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    mock = MockConfig(n_stars=2400, n_pixels=128, pixel_offset=5200, seed=9)
    survey, model = train_on_mock(
        tmp_path_factory.mktemp("reference"),
        mock,
        n_latent=4,
        epochs=2,
        batch_size=128,
        from_file=True,
    )
    with open_survey(survey) as data:
        return load_model(model), data.load()


def test_training_writes_a_reference_that_outliers_use_by_default(trained) -> None:
    model, data = trained
    record = model.metadata["reference_calibration"]
    assert record["fitted"] and record["n_stars"] >= MIN_REFERENCE_STARS
    reference = load_reference(model.path)
    assert reference.n_stars == record["n_stars"]
    table = find_outliers(model, data[:1500])  # fewer than SURVEY_REFERENCE_MIN ranked stars
    assert table.meta["recalibration"].startswith(f"reference({reference.n_stars} held-out")
    plain = find_outliers(model, data[:1500], recalibrate="none")
    assert plain.meta["recalibration"] == "none"
    ranked = plain[plain["flag"] == ""]
    np.testing.assert_array_equal(ranked["z"], ranked["z_model"])
    # the default is exactly the reference applied to the model's scores
    again = recalibrate_by_reference(plain, reference)
    by_id = dict(zip(table["star_id"], table["log_p_tail"], strict=True))
    np.testing.assert_allclose([by_id[s] for s in again["star_id"]], again["log_p_tail"])
    n = int(np.sum(table["flag"] == ""))
    np.testing.assert_array_equal(table["rank"][:n], np.arange(1, n + 1))
    assert np.all(np.diff(table["log_p_combined"][:n]) >= 0)
    assert np.all(np.isfinite(table["z"][:n]))
    # held-out normal stars (the mock has 0.5% outliers) are about standard normal now
    z = np.asarray(table["z"][:n])
    assert abs(np.median(z)) < 0.15 and 0.85 < stats.median_abs_deviation(z, scale="normal") < 1.2


def test_training_writes_a_line_list_reference_for_the_same_test(trained, caplog) -> None:
    model, data = trained
    record = model.metadata["reference_calibration"]["lines"]
    assert record["fitted"] and record["n_stars"] >= MIN_REFERENCE_STARS
    lines = load_reference(model.path, lines=True)
    assert lines.linelist == record["linelist"] and lines.n_stars == record["n_stars"]
    with open_survey(model.path.parent / "mock.h5") as survey:
        linelist = survey.read_table("linelist")
    table = find_outliers(model, data[:1500], linelist=linelist)
    assert f"line-list test: {lines.n_stars} held-out stars" in table.meta["recalibration"]
    n = int(np.sum(table["flag"] == ""))
    # about standard normal (these stars include the training stars: slightly low)
    z = np.asarray(table["z_lines"][:n])
    assert abs(np.median(z)) < 0.25 and 0.85 < stats.median_abs_deviation(z, scale="normal") < 1.2
    # the default is exactly the two references applied to the model's scores
    plain = find_outliers(model, data[:1500], linelist=linelist, recalibrate="none")
    again = recalibrate_by_reference(plain, load_reference(model.path), lines)
    by_id = dict(zip(table["star_id"], table["log_p_lines"], strict=True))
    np.testing.assert_allclose([by_id[s] for s in again["star_id"]], again["log_p_lines"])
    # another test (here another resolution) is not recalibrated by it
    with caplog.at_level("INFO", logger="stellarflow.analysis.outliers"):
        other = find_outliers(model, data[:300], linelist=linelist, resolution=15_000.0)
    assert "line-list test under the model" in other.meta["recalibration"]
    assert "fitted for another line list" in caplog.text


def test_a_bad_line_list_does_not_fail_training(trained, tmp_path) -> None:
    from astropy.table import Table

    from stellarflow.io.hdf5 import SurveyWriter
    from stellarflow.train.config import TrainConfig
    from stellarflow.train.loop import train_model

    _, data = trained
    survey = tmp_path / "bad_linelist.h5"
    with SurveyWriter(survey, data.wavelength) as writer:
        writer.append(data)
        writer.add_table("linelist", Table({"wavelength": [16_000.0]}))  # no element column
    config = TrainConfig(label_names=("TEFF", "LOGG", "FE_H"), model="factor_analysis",
                         model_options={"n_latent": 2}, epochs=1, batch_size=256,
                         device="cpu")  # fmt: skip
    with open_survey(survey) as source:
        train_model(source, config, tmp_path / "model")
    record = load_model(tmp_path / "model").metadata["reference_calibration"]
    assert record["fitted"] and not record["lines"]["fitted"]
    assert "element" in record["lines"]["reason"]
    assert load_reference(tmp_path / "model", lines=True) is None


def test_reference_mode_needs_the_file(trained, tmp_path) -> None:
    model, data = trained
    (tmp_path / "m").mkdir()
    for name in ("config.json", "metadata.json", "model.pt", "support.npz", "wavelength.npy"):
        (tmp_path / "m" / name).write_bytes((model.path / name).read_bytes())
    bare = load_model(tmp_path / "m")
    assert find_outliers(bare, data[:50]).meta["recalibration"] == "none"
    with pytest.raises(DataValidationError, match=f"has no {REFERENCE_FILE}"):
        find_outliers(bare, data[:50], recalibrate="reference")


def test_large_surveys_are_recalibrated_by_a_cross_fitted_survey_reference(trained) -> None:
    model, data = trained
    table = find_outliers(model, data)  # 2,400 stars: "auto" cross-fits on the survey
    n = int(np.sum(table["flag"] == ""))
    assert n >= SURVEY_REFERENCE_MIN
    assert table.meta["recalibration"].startswith(f"survey(5-fold cross-fitted reference over {n}")
    np.testing.assert_array_equal(table["rank"][:n], np.arange(1, n + 1))
    z = np.asarray(table["z"][:n])
    assert abs(np.median(z)) < 0.1 and 0.85 < stats.median_abs_deviation(z, scale="normal") < 1.15
    p = np.asarray(table["p_tail"][:n])
    assert stats.kstest(p, "uniform").pvalue > 1e-3  # 0.5% injected outliers among them
    # the folds follow star_id, not the table's order; the model's scores are untouched
    plain = find_outliers(model, data, recalibrate="none")
    again = recalibrate_by_survey(plain[::-1], ("TEFF", "LOGG", "FE_H"))
    by_id = dict(zip(table["star_id"], table["log_p_tail"], strict=True))
    np.testing.assert_allclose([by_id[s] for s in again["star_id"]], again["log_p_tail"])
    assert (
        find_outliers(model, data, recalibrate="reference")
        .meta["recalibration"]
        .startswith("reference(")
    )
    with pytest.raises(DataValidationError, match="at least 1000 ranked stars"):
        recalibrate_by_survey(plain[:900], ("TEFF", "LOGG", "FE_H"))
    # with a line list the line-list test is cross-fitted the same way, and ranks
    with open_survey(model.path.parent / "mock.h5") as survey:
        linelist = survey.read_table("linelist")
    lines = find_outliers(model, data, linelist=linelist)
    assert lines.meta["rank_by"] == "lines" and "p_lines t dof" in lines.meta["recalibration"]
    assert np.all(np.diff(np.asarray(lines["log_p_lines"][:n])) >= 0)
    z_lines = np.asarray(lines["z_lines"][:n])
    assert abs(np.median(z_lines)) < 0.1
    assert 0.85 < stats.median_abs_deviation(z_lines, scale="normal") < 1.15
    # exactly the cross-fit of the model's line-list z, with references of its own
    plain_lines = find_outliers(model, data, linelist=linelist, recalibrate="none")
    again = recalibrate_by_survey(plain_lines[::-1], ("TEFF", "LOGG", "FE_H"))
    by_id = dict(zip(lines["star_id"], lines["log_p_lines"], strict=True))
    np.testing.assert_allclose([by_id[s] for s in again["star_id"]], again["log_p_lines"])
    assert not np.allclose(again["z_lines"], again["z_lines_model"])  # it did recalibrate
    with pytest.raises(DataValidationError, match="n_folds must be >= 2"):
        recalibrate_by_survey(plain, ("TEFF", "LOGG", "FE_H"), n_folds=1)
