"""find_outliers on a tiny mock with a trained model: columns, ranking, flags, explanations."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from scipy import stats

from stellarflow.analysis.explain import element_profiles
from stellarflow.analysis.outliers import (
    FLAGS,
    explain_stars,
    find_outliers,
    recalibrate_by_neighbours,
)
from stellarflow.data.dataset import SpectralDataset
from stellarflow.errors import DataValidationError, LabelError
from stellarflow.io.hdf5 import open_survey
from stellarflow.mock import MockConfig
from stellarflow.train.checkpoint import load_model
from tests.conftest import train_on_mock

LABELS = ("TEFF", "LOGG", "FE_H")
# 256 pixels around 16,380 Å: Mg 16,369, Na 16,378/16,393 and Ce II 16,381/16,392 lines
CONFIG = MockConfig(n_stars=300, n_pixels=256, pixel_offset=5200, seed=5, outlier_fraction=0.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outliers")
    survey, model = train_on_mock(folder, CONFIG, n_latent=4, epochs=3, batch_size=64)
    with open_survey(survey) as data:
        data, linelist = data.load(), data.read_table("linelist")
    trained = load_model(model)
    return trained, data, linelist, find_outliers(trained, data, linelist=linelist)


def _with(data: SpectralDataset, flux=None, mask=None, labels=None) -> SpectralDataset:
    flux = data.flux.copy() if flux is None else flux
    mask = data.mask.copy() if mask is None else mask
    ivar = np.where(mask, 0.0, data.ivar)
    labels = data.labels.copy() if labels is None else labels
    return SpectralDataset(flux, ivar, data.wavelength, labels, mask=mask, meta=data.meta)


def _quiet_stars(table: Table, n: int) -> list[str]:
    """Ranked, well-fitted, high-S/N-ish stars (middle of the ranking)."""
    ranked = table[table["flag"] == ""]
    middle = ranked[len(ranked) // 3 : 2 * len(ranked) // 3]
    return list(middle["star_id"][:n])


def test_columns_sorting_and_ranks(setup) -> None:
    _, data, _, table = setup
    for name in ("rank", "star_id", *LABELS, "flag", "log_prob", "log_p_tail", "p_tail",
                 "one_in", "z", "supported", "top_element", "top_element_direction",
                 "element_summary", "n_unexplained"):  # fmt: skip
        assert name in table.colnames
    assert len(table) == data.n_stars
    assert sorted(table["star_id"]) == sorted(data.star_id)
    ranked = table["flag"] == ""
    n = int(ranked.sum())
    assert n > 0.9 * len(table) and not np.any(ranked[n:])  # ranked first
    np.testing.assert_array_equal(table["rank"][:n], np.arange(1, n + 1))
    assert table.meta["rank_by"] == "lines"  # "auto" with a line list
    assert np.all(np.diff(table["log_p_lines"][:n]) >= 0)
    np.testing.assert_allclose(table["one_in"][:n] * table["p_tail"][:n], 1.0, rtol=1e-9)
    assert np.all((table["p_tail"][:n] > 0) & (table["p_tail"][:n] <= 1))
    # the line-list test: chi2 with one dof per element on the grid, its z under the model
    n_elements = len(table.meta["elements"])
    assert set(table["dof_lines"][:n]) == {n_elements}
    p_model = stats.chi2.sf(table["chi2_lines"][:n], n_elements)
    np.testing.assert_allclose(stats.norm.isf(p_model), table["z_lines_model"][:n], rtol=1e-6)
    # the Bonferroni combination of the whole-spectrum, line-list and strongest-element tests
    smallest = np.minimum.reduce([table[c][:n] for c in ("p_tail", "p_lines", "p_element")])
    np.testing.assert_allclose(table["p_combined"][:n], np.minimum(1.0, 3 * smallest), rtol=1e-9)
    assert np.all(np.asarray(table["p_element"][:n]) <= 1.0)
    assert set(table["flag"]) <= set(FLAGS)
    assert table["log_prob"].unit == "nat"
    assert table.meta["calibration"] == "exact-chi2"
    assert {"Ce", "Mg", "Na"} <= set(table.meta["elements"])
    assert set(table["top_element_direction"][:n]) <= {"enhanced", "depleted"}


def test_flagged_stars_are_not_ranked(setup) -> None:
    trained, data, linelist, _ = setup
    labels = data.labels.copy()
    labels["TEFF"][0] = 9000.0  # far outside the training labels
    labels["LOGG"][1] = np.nan
    mask = data.mask.copy()
    mask[2, : int(0.95 * data.n_pixels)] = True
    table = find_outliers(trained, _with(data, mask=mask, labels=labels), linelist=linelist)
    flag = dict(zip(table["star_id"], table["flag"], strict=True))
    ids = data.star_id
    assert flag[ids[0]] == flag[ids[1]] == "unsupported_labels"
    assert flag[ids[2]] == "too_few_pixels"
    flagged = table[table["flag"] != ""]
    assert len(flagged) >= 3 and np.all(flagged["rank"].mask)
    assert list(table["flag"][-len(flagged) :]) == list(flagged["flag"])  # sorted last
    row = table[table["star_id"] == ids[2]][0]
    assert np.isnan(row["log_prob"]) and row["top_element"] == ""
    # the unsupported star is still scored, for information
    assert np.isfinite(table[table["star_id"] == ids[0]]["log_p_tail"][0])


def test_injected_line_changes_are_ranked_and_attributed(setup) -> None:
    trained, data, linelist, table = setup
    profiles = element_profiles(data.wavelength, linelist)
    g = dict(zip(profiles.elements, profiles.profiles, strict=True))
    ce_star, mg_star = _quiet_stars(table, 2)
    rows = {s: i for i, s in enumerate(data.star_id)}
    flux = data.flux.copy()
    flux[rows[ce_star]] *= 1.0 - 0.15 * g["Ce"]  # Ce II lines deeper
    depth = 1.0 - flux[rows[mg_star]]
    flux[rows[mg_star]] = 1.0 - depth * (1.0 - 0.5 * g["Mg"])  # Mg line half as deep
    result = find_outliers(trained, _with(data, flux=flux), linelist=linelist)
    top = {row["star_id"]: row for row in result[:3]}
    assert ce_star in top and mg_star in top
    assert (top[ce_star]["top_element"], top[ce_star]["top_element_direction"]) == (
        "Ce",
        "enhanced",
    )
    assert (top[mg_star]["top_element"], top[mg_star]["top_element_direction"]) == (
        "Mg",
        "depleted",
    )
    assert top[ce_star]["element_summary"].startswith("Ce:+")
    assert top[ce_star]["one_in"] > 1e6
    # the conditional explanation (given the star's latent fit) agrees on both
    details = explain_stars(
        trained, _with(data, flux=flux), [ce_star, mg_star], linelist=linelist,
        expectation="latent_fit",
    )  # fmt: skip
    tops = [d.elements[int(np.argmax(np.abs(d.evidence)))] for d in details]
    assert tops == ["Ce", "Mg"]


def test_garbage_at_masked_pixels_changes_nothing(setup) -> None:
    trained, data, linelist, table = setup
    flux = data.flux.copy()
    rng = np.random.default_rng(0)
    flux[data.mask] = rng.uniform(-1e3, 1e3, int(data.mask.sum()))
    assert data.mask.any()
    result = find_outliers(trained, _with(data, flux=flux), linelist=linelist)
    for name in ("star_id", "flag", "top_element", "element_summary", "n_unexplained"):
        assert list(result[name]) == list(table[name])
    np.testing.assert_array_equal(result["log_p_tail"], table["log_p_tail"])
    np.testing.assert_array_equal(result["log_p_lines"], table["log_p_lines"])


def test_unexplained_feature_is_reported(setup) -> None:
    trained, data, linelist, table = setup
    atoms = linelist[np.isin(linelist["element"], ["Ce", "Mg", "Na"])]
    lines = np.asarray(atoms["wavelength"])
    distance = np.min(np.abs(data.wavelength[:, None] - lines[None, :]), axis=1)
    pixel = int(np.flatnonzero((distance > 3.0) & (np.arange(data.n_pixels) > 10))[0])
    (star,) = _quiet_stars(table, 1)
    i = list(data.star_id).index(star)
    flux, mask = data.flux.copy(), data.mask.copy()
    mask[i, pixel - 2 : pixel + 3] = False
    flux[i, pixel - 1 : pixel + 2] -= [0.15, 0.3, 0.15]
    result = find_outliers(trained, _with(data, flux=flux, mask=mask), linelist=atoms)
    row = result[result["star_id"] == star][0]
    assert row["n_unexplained"] >= 1
    found = np.array(row["unexplained_wavelength"].split(), dtype=float)
    assert np.min(np.abs(found - data.wavelength[pixel])) < 0.5


def test_labels_from_a_separate_table(setup) -> None:
    trained, data, linelist, _ = setup
    labels = data.labels[["star_id", *LABELS]].copy()
    labels["FE_H"] += 0.05
    result = find_outliers(trained, data, linelist=linelist, labels=labels[::-1])
    by_id = dict(zip(result["star_id"], result["FE_H"], strict=True))
    expected = dict(zip(labels["star_id"], labels["FE_H"], strict=True))
    assert all(by_id[s] == pytest.approx(expected[s]) for s in data.star_id)
    with pytest.raises(LabelError, match="lacks 1 of the survey's stars"):
        find_outliers(trained, data, labels=labels[1:])
    with pytest.raises(LabelError, match="FE_H"):
        find_outliers(trained, data, labels=labels[["star_id", "TEFF", "LOGG"]])


def test_neighbour_recalibration(setup) -> None:
    _, data, _, table = setup
    assert table.meta["recalibration"] == "none"
    np.testing.assert_array_equal(table["z"], table["z_model"])
    assert np.all(table["snr"][table["flag"] == ""] > 10)
    recal = recalibrate_by_neighbours(table[::-1], LABELS, n_neighbours=40)
    assert recal.meta["recalibration"].startswith("neighbours(k=40")
    n = int(np.sum(recal["flag"] == ""))
    np.testing.assert_array_equal(recal["rank"][:n], np.arange(1, n + 1))
    assert np.all(np.diff(recal["log_p_lines"][:n]) >= 0)
    for name in ("z", "z_lines"):  # both tests standardised within neighbourhoods
        z = np.asarray(recal[name][:n])
        mad = 1.4826 * np.median(np.abs(z - np.median(z)))
        assert abs(np.median(z)) < 0.2 and 0.8 < mad < 1.25, name
    # same stars, same model scores; only the calibration differs
    model_z = dict(zip(table["star_id"], table["z_model"], strict=True))
    assert all(model_z[s] == v for s, v in zip(recal["star_id"], recal["z_model"], strict=True))
    with pytest.raises(DataValidationError, match="recalibrate must be one of"):
        find_outliers(setup[0], data, recalibrate="empirical")


def test_omnibus_ranking_and_no_line_list(setup) -> None:
    trained, data, _, table = setup
    omnibus = find_outliers(trained, data, linelist=None, rank_by="omnibus")
    n = int(np.sum(omnibus["flag"] == ""))
    assert omnibus.meta["rank_by"] == "omnibus"
    assert np.all(np.diff(omnibus["log_p_tail"][:n]) >= 0)
    # no line list: no element test, and the combination is the whole-spectrum test itself
    assert np.all(np.isnan(omnibus["log_p_element"]))
    np.testing.assert_array_equal(omnibus["log_p_combined"][:n], omnibus["log_p_tail"][:n])
    # the same stars and scores whatever the ranking
    by_id = dict(zip(table["star_id"], table["log_p_tail"], strict=True))
    assert all(
        by_id[s] == v
        for s, v in zip(omnibus["star_id"], omnibus["log_p_tail"], strict=True)
        if np.isfinite(v)
    )
    with pytest.raises(DataValidationError, match="rank_by must be one of"):
        find_outliers(trained, data, rank_by="element")
    with pytest.raises(DataValidationError, match="rank_by='lines' needs a line list"):
        find_outliers(trained, data, linelist=None, rank_by="lines")
    auto = find_outliers(trained, data[:40], linelist=None)  # "auto" falls back to omnibus
    assert auto.meta["rank_by"] == "omnibus" and np.all(np.isnan(auto["log_p_lines"]))


def test_score_distribution_draws_the_ranking_statistic(setup) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stellarflow.plot.outliers import plot_score_distribution

    table = setup[3]
    ranked = table[table["flag"] == ""]
    for rank_by, column in (("lines", "p_lines"), ("combined", "p_combined")):
        view = table.copy(copy_data=False)
        view.meta["rank_by"] = rank_by
        capped = int(np.sum(np.asarray(ranked["log_" + column]) == 0.0))
        figure = plot_score_distribution(view, top_k=5)
        ax = figure.axes[0]
        drawn = sum(patch.get_height() for patch in ax.patches)
        assert drawn == len(ranked) - capped  # every ranked star, except those at p = 1
        labels = [text.get_text() for text in ax.get_legend().get_texts()]
        assert (f"{capped} more at {column} = 1" in labels[0]) == (capped > 0)
        assert column in ax.get_xlabel()
        plt.close(figure)
