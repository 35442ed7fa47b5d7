"""Hidden-line search: chunked correlation, templates, association, features, cross-match."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from astropy.table import Table

from stellarflow.analysis.correlation import (
    CorrelationAccumulator,
    correlation_sampling_noise,
    read_correlation,
    write_correlation,
)
from stellarflow.analysis.lines import (
    associate,
    cross_match,
    element_templates,
    empirical_correlation,
    find_lines,
)
from stellarflow.errors import DataValidationError, FileFormatError, OutputExistsError

WAVE = np.geomspace(16000.0, 16045.0, 200)  # ~0.22 Å pixels, like APOGEE
FE_PIXELS = (20.3, 50.6, 80.1, 110.4, 140.0, 170.7)
SI_PIXELS = (35.2, 65.8, 95.5, 125.3, 155.9)
HIDDEN_SI = 185.35  # a Si line missing from the published list


def _at(pixel: float) -> float:
    return float(np.interp(pixel, np.arange(WAVE.size), WAVE))


def _published() -> Table:
    lines = [(_at(p), "Fe") for p in FE_PIXELS] + [(_at(p), "Si") for p in SI_PIXELS]
    return Table(rows=lines, names=("wavelength", "element"))


def _synthetic(n: int = 4000, shared: float = 0.25, seed: int = 1) -> np.ndarray:
    """Spectra whose lines deepen with their element's abundance and a shared mode.

    depth_l = 0.2 (1 + 0.1 a_e + shared m), a_Fe, a_Si, m ~ N(0, 1); Gaussian lines of
    1.2-pixel sigma; white noise of 1e-4 so that continuum pixels have some scatter.
    """
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 2))
    m = rng.normal(size=(n, 1))
    x = np.arange(WAVE.size)
    flux = np.ones((n, WAVE.size))
    lines = [(p, 0) for p in FE_PIXELS] + [(p, 1) for p in (*SI_PIXELS, HIDDEN_SI)]
    for centre, element in lines:
        depth = 0.2 * (1.0 + 0.1 * a[:, [element]] + shared * m)
        flux -= depth * np.exp(-0.5 * ((x - centre) / 1.2) ** 2)
    return flux + 1e-4 * rng.normal(size=flux.shape)


def _correlation(flux: np.ndarray, chunk: int = 500):
    acc = CorrelationAccumulator(flux.shape[1])
    for start in range(0, flux.shape[0], chunk):
        acc.update(flux[start : start + chunk])
    return acc.finish(WAVE[: flux.shape[1]] if flux.shape[1] <= WAVE.size else None)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_accumulator_equals_numpy_corrcoef_for_any_chunk_size(chunk: int) -> None:
    rng = np.random.default_rng(0)
    flux = 3.0 + rng.normal(size=(300, 9)) @ rng.normal(size=(9, 9))
    flux[:, 4] = 0.5  # no scatter: correlation 0 with everything, 1 with itself
    acc = CorrelationAccumulator(9)
    for start in range(0, 300, chunk):
        acc.update(flux[start : start + chunk].astype(np.float32 if chunk == 7 else np.float64))
    result = acc.finish(np.arange(9.0) + 16000)
    reference = np.corrcoef(np.delete(flux, 4, axis=1).T)
    tol = 1e-6 if chunk == 7 else 1e-12
    got = np.delete(np.delete(result.correlation, 4, 0), 4, 1)
    assert np.abs(got - reference).max() < tol
    assert np.all(result.correlation[4, np.arange(9) != 4] == 0) and result.correlation[4, 4] == 1
    assert np.allclose(result.mean, flux.mean(0), atol=10 * tol)
    assert np.allclose(result.std, flux.std(0, ddof=1), atol=10 * tol)
    assert np.array_equal(result.correlation, result.correlation.T)
    assert result.n_samples == 300
    cov = result.covariance(np.array([0, 1, 2]))
    assert np.allclose(cov, np.cov(flux[:, :3].T), atol=1e-5)


def test_accumulator_rejects_bad_chunks_and_finished_use() -> None:
    acc = CorrelationAccumulator(3)
    with pytest.raises(DataValidationError, match=r"\(n, 3\)"):
        acc.update(np.zeros((2, 4)))
    with pytest.raises(DataValidationError, match="NaN"):
        acc.update(np.full((2, 3), np.nan))
    with pytest.raises(DataValidationError, match="at least 2"):
        acc.finish(np.arange(3.0))
    acc.update(np.random.default_rng(0).normal(size=(5, 3)))
    acc.finish(np.arange(3.0))
    with pytest.raises(DataValidationError, match="finished"):
        acc.update(np.zeros((1, 3)))


def test_sampling_noise_matches_the_scatter_of_repeated_estimates() -> None:
    rng = np.random.default_rng(3)
    n, r = 200, 0.5
    cov = np.array([[1.0, r], [r, 1.0]])
    estimates = [np.corrcoef(rng.multivariate_normal([0, 0], cov, n).T)[0, 1] for _ in range(800)]
    predicted = correlation_sampling_noise(np.array(r), n)
    assert np.std(estimates) == pytest.approx(float(predicted), rel=0.12)


def test_correlation_hdf5_round_trip_and_refusals(tmp_path) -> None:
    result = _correlation(_synthetic(300))
    result.meta.update({"label_TEFF": 4750.0, "source": "test"})
    path = tmp_path / "corr.h5"
    write_correlation(path, result)
    back = read_correlation(path)
    assert np.array_equal(back.correlation, result.correlation)
    assert np.array_equal(back.mean, result.mean) and back.n_samples == 300
    assert back.meta == {"label_TEFF": 4750.0, "source": "test"}
    with h5py.File(path) as handle:
        sigma = handle["correlation_sigma"][:5, :5]
    assert np.allclose(sigma, correlation_sampling_noise(result.correlation[:5, :5], 300))
    with pytest.raises(OutputExistsError):
        write_correlation(path, result)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["x"] = 1
    with pytest.raises(FileFormatError, match="not a stellarflow-correlation"):
        read_correlation(other)


@pytest.mark.parametrize("mode", ["joint", "plain", "shared_mode"])
def test_hidden_line_recovered_with_centre_and_element(mode: str) -> None:
    result = _correlation(_synthetic())
    search = find_lines(result, _published(), mode=mode, template_min_lines=3)
    table = search.candidates
    assert search.templates.elements == ("Fe", "Si")
    new = table[~table["known"]]
    assert len(new) == 1, new
    pixel = np.interp(new["wavelength"][0], WAVE, np.arange(WAVE.size))
    assert abs(pixel - HIDDEN_SI) < 0.25
    assert new["element"][0] == "Si" and new["significance"][0] > 5
    assert new["depth"][0] == pytest.approx(0.2, abs=0.03)
    # every published line is found, known, with its own element
    known = table[table["known"]]
    assert len(known) == len(FE_PIXELS) + len(SI_PIXELS)
    centres = np.interp(known["wavelength"], WAVE, np.arange(WAVE.size))
    expected = dict(zip((*FE_PIXELS, *SI_PIXELS), ["Fe"] * 6 + ["Si"] * 5, strict=True))
    for centre, element in zip(centres, known["element"], strict=True):
        nearest = min(expected, key=lambda p: abs(p - centre))
        assert abs(nearest - centre) < 0.25 and element == expected[nearest]
    for name in ("wavelength", "element", "score", "significance", "depth", "known"):
        assert name in table.colnames
    assert {"nearest_known", "offset"} <= set(table.colnames)


def test_removing_the_shared_mode_leaves_the_element_specific_correlation() -> None:
    result = _correlation(_synthetic(shared=0.4))
    templates = element_templates(WAVE, 1 - result.mean, result.std, _published(), min_lines=3)
    fe_line = round(FE_PIXELS[0])
    plain = associate(result, templates, mode="plain")
    partial = associate(result, templates, mode="shared_mode")
    si = templates.elements.index("Si")
    fe = templates.elements.index("Fe")
    # the shared mode makes a Fe line correlate almost as strongly with Si as with Fe ...
    assert plain.score[fe_line, si] > 0.8 and plain.score[fe_line, fe] > 0.8
    assert plain.score[fe_line, fe] - plain.score[fe_line, si] < 0.1
    # ... removing it separates them. (The leading eigenvector also carries part of each
    # element's own variance, so the other element's residual turns anti-correlated.)
    assert partial.score[fe_line, fe] > 0.5 and partial.score[fe_line, si] < 0
    assert partial.score[fe_line, fe] - partial.score[fe_line, si] > 1.0


def test_cross_match_uses_the_features_own_element_within_half_a_resolution_element() -> None:
    published = Table(
        rows=[(16000.0, "Fe"), (16010.0, "Si"), (16020.0, "N"), (16030.0, "Al")],
        names=("wavelength", "element"),
    )
    features = Table(
        rows=[
            (16000.3, "Fe", ""),  # own line 0.3 Å away: known
            (16000.5, "Fe", ""),  # 0.5 Å: beyond lambda / 2R = 0.356 Å, no line: unlisted
            (16010.1, "Fe", ""),  # only a Si line near: misidentified (or blended)
            (16010.1, "Fe", "Fe,Si"),  # ... unless the feature also moves with Si
            (16020.2, "Fe", ""),  # a CN line of a tested element does not explain an Fe line
            (16030.2, "Fe", ""),  # Al has no template: its line cannot be tested, it explains
        ],
        names=("wavelength", "element", "associated"),
    )
    out = cross_match(features, published, resolution=22_500.0, tested_elements=("Fe", "Si", "N"))
    assert list(out["known"]) == [True, False, False, True, False, True]
    assert list(out["kind"]) == [
        "known", "unlisted", "misidentified", "known", "misidentified", "known",
    ]  # fmt: skip
    assert list(out["explained_by"]) == ["Fe", "", "", "Si", "", "Al"]
    assert np.allclose(out["offset"], [0.3, 0.5, 10.1, 10.1, 20.2, 30.2])
    assert list(out["nearest_other_element"]) == ["Si", "Si", "Si", "Si", "N", "Al"]
    # the whole resolution element (the previous default) also takes the 0.5 Å line
    wide = cross_match(features, published, resolution=22_500.0, window=1.0)
    assert list(wide["known"][:2]) == [True, True]
    with pytest.raises(DataValidationError, match="window > 0"):
        cross_match(features, published, window=0.0)


def test_strong_lines_and_hydrogen_become_nuisance_indices() -> None:
    result = _correlation(_synthetic(300))
    depth = 1 - result.mean
    strong_fe = round(FE_PIXELS[1])
    depth[strong_fe] = 0.35  # pretend one Fe line was deep, and three H lines were there
    depth[[5, 10, 190]] = 0.1
    lines = _published()
    for p in (5.0, 10.0, 190.0):
        lines.add_row((_at(p), "H"))
    templates = element_templates(
        WAVE, depth, result.std, lines, min_lines=3, strong_depth=0.3, nuisance_elements=("H",)
    )
    assert templates.elements == ("Fe", "Si") and templates.nuisance == ("H",)
    fe = templates.pixels[0]
    assert strong_fe not in fe and fe.size == len(FE_PIXELS) - 1
    assert np.array_equal(templates.nuisance_pixels[0], [5, 10, 190])
    assert templates.nuisance_matrix.shape == (WAVE.size, 1)
    h_rows = [5, 10, 190]
    assert np.allclose(templates.nuisance_matrix[h_rows, 0], 1 / (3 * result.std[h_rows]))
    # with min_lines strong pixels (here 3 deep H lines + the Fe line) they form "strong"
    depth[[5, 10, 190]] = 0.35
    deep = element_templates(WAVE, depth, result.std, lines, min_lines=3, strong_depth=0.3)
    assert deep.nuisance == ("strong",) and "H" not in deep.elements
    assert np.array_equal(deep.nuisance_pixels[0], [5, 10, strong_fe, 190])
    with pytest.raises(DataValidationError, match="strong_depth"):
        element_templates(WAVE, depth, result.std, lines, strong_depth=0.01)


def test_a_nuisance_index_keeps_a_shared_mode_line_from_taking_an_element() -> None:
    """Fe and Si lines both deepen with a shared (broadening-like) mode b; H lines follow b
    only, and so does a hidden line at pixel 185. Without the H lines it correlates with
    Fe or Si (each index carries b); with H as an element it is given H; with H as a
    nuisance index it is given nothing.
    """
    rng = np.random.default_rng(5)
    n = 4000
    a = rng.normal(size=(n, 2))
    b = rng.normal(size=(n, 1))
    x = np.arange(WAVE.size)
    flux = np.ones((n, WAVE.size))
    h_pixels = (5.0, 10.0, 15.0, 190.0, 195.0)
    lines = [(p, 0.1 * a[:, [0]] + 0.3 * b) for p in FE_PIXELS]
    lines += [(p, 0.1 * a[:, [1]] + 0.3 * b) for p in SI_PIXELS]
    lines += [(p, 0.3 * b) for p in (*h_pixels, HIDDEN_SI)]
    for centre, change in lines:
        flux -= 0.15 * (1.0 + change) * np.exp(-0.5 * ((x - centre) / 1.2) ** 2)
    result = _correlation(flux + 1e-4 * rng.normal(size=flux.shape))
    depth = 1 - result.mean
    published = _published()
    no_h = associate(result, element_templates(WAVE, depth, result.std, published, min_lines=3))
    for p in h_pixels:
        published.add_row((_at(p), "H"))
    as_element = element_templates(
        WAVE, depth, result.std, published, min_lines=3, nuisance_elements=()
    )
    nuisance = element_templates(WAVE, depth, result.std, published, min_lines=3)
    assert as_element.elements == ("Fe", "H", "Si") and nuisance.elements == ("Fe", "Si")
    hidden = round(HIDDEN_SI)
    assert no_h.significance[hidden].max() > 5
    h_element = associate(result, as_element)
    assert np.argmax(h_element.score[hidden]) == 1 and h_element.significance[hidden, 1] > 5
    with_h = associate(result, nuisance)
    assert np.all(np.abs(with_h.score[hidden]) < 0.05)
    # ... while the Fe and Si lines keep their own element
    for pixels, j in ((FE_PIXELS, 0), (SI_PIXELS, 1)):
        rows = [round(p) for p in pixels]
        assert np.all(np.argmax(with_h.score[rows], axis=1) == j)
        assert np.all(with_h.significance[rows, j] > 5)


def test_templates_refuse_a_list_off_the_grid() -> None:
    result = _correlation(_synthetic(300))
    far = Table(rows=[(15200.0, "Fe")] * 3, names=("wavelength", "element"))
    with pytest.raises(DataValidationError, match="no element"):
        element_templates(WAVE, 1 - result.mean, result.std, far)
    with pytest.raises(DataValidationError, match="'wavelength' and 'element'"):
        element_templates(WAVE, 1 - result.mean, result.std, Table({"wave": [1.0]}))


def test_empirical_baseline_uses_residuals_in_the_bin(dataset) -> None:
    result = empirical_correlation(
        dataset, {"TEFF": 4600.0, "LOGG": 2.2, "FE_H": -0.2}, min_stars=8
    )
    assert result.correlation.shape == (dataset.n_pixels, dataset.n_pixels)
    assert result.meta["n_stars"] >= 8 and result.meta["source"] == "survey residuals"
    assert np.all(np.isfinite(result.correlation)) and np.all(result.mean > 0.5)
    with pytest.raises(DataValidationError, match="TEFF"):
        empirical_correlation(dataset, {"FE_H": 0.0})


@pytest.fixture(scope="module")
def tiny_mock_search(tmp_path_factory):
    """A factor-analysis model trained on a small mock around the withheld Fe 16,852.8 Å."""
    from stellarflow.analysis.lines import model_correlation
    from stellarflow.io.hdf5 import open_survey
    from stellarflow.mock import MockConfig, write_mock_survey
    from stellarflow.train.checkpoint import load_model
    from stellarflow.train.config import TrainConfig
    from stellarflow.train.loop import train_model

    folder = tmp_path_factory.mktemp("lines_mock")
    # 16,650-16,915 Å: enough published Fe, C, N, O lines for templates, and withheld
    # Fe 16,813.1 / 16,839.3 / 16,852.8 and Si 16,910.7 Å lines.
    config = MockConfig(n_stars=2000, n_pixels=1000, pixel_offset=6374, seed=4)
    write_mock_survey(folder / "mock.h5", config)
    train = TrainConfig(
        label_names=("TEFF", "LOGG", "FE_H"),
        model="factor_analysis",
        model_options={"n_latent": 8},
        epochs=15,
        batch_size=256,
        device="cpu",
        seed=0,
    )
    with open_survey(folder / "mock.h5") as survey:
        train_model(survey.load(), train, folder / "model")
        truth = survey.read_table("truth/linelist")
        published = survey.read_table("linelist")
    point = {"TEFF": 4750.0, "LOGG": 2.5, "FE_H": -0.1}
    result = model_correlation(load_model(folder / "model"), point, 4000, seed=0)
    return result, truth, published


@pytest.mark.slow  # ~30 s idle (mock + training); the synthetic known-answer tests run in CI
def test_withheld_line_is_recovered_from_a_trained_model(tiny_mock_search) -> None:
    result, truth, published = tiny_mock_search
    target = truth[np.asarray(truth["withheld"]) & (np.abs(truth["wavelength"] - 16852.78) < 0.1)]
    assert len(target) == 1 and target["element"][0] == "Fe"
    assert 16852.78 not in np.round(np.asarray(published["wavelength"]), 2)
    search = find_lines(result, published)
    new = search.candidates[~search.candidates["known"]]
    line = float(target["wavelength"][0])
    hit = new[np.abs(new["wavelength"] - line) <= line / 22_500.0]
    assert len(hit) == 1 and hit["element"][0] == "Fe" and hit["significance"][0] > 5
    pixel_size = float(np.interp(line, result.wavelength[1:], np.diff(result.wavelength)))
    assert abs(hit["wavelength"][0] - line) < 0.5 * pixel_size
    # every template pixel sits on a published line of its element (none on a withheld one)
    step = np.gradient(result.wavelength)
    for element, pixels in zip(search.templates.elements, search.templates.pixels, strict=True):
        lines = np.asarray(published["wavelength"][published["element"] == element])
        gap = np.abs(result.wavelength[pixels][:, None] - lines[None, :]).min(axis=1)
        assert np.all(gap <= step[pixels])
    assert np.all(np.abs(search.templates.pixels[search.templates.elements.index("Fe")]
                         - np.searchsorted(result.wavelength, line)) > 1)  # fmt: skip
