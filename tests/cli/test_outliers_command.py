"""`stellarflow outliers` end to end on a tiny mock (in-process): files, gallery, bad inputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from astropy.table import Table

from stellarflow.cli.main import main
from stellarflow.io.hdf5 import open_survey
from stellarflow.mock import MockConfig, write_mock_survey
from tests.conftest import train_on_mock


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outliers_cli")
    mock = MockConfig(n_stars=240, n_pixels=128, pixel_offset=5260, seed=2, outlier_fraction=0.05)
    survey, _ = train_on_mock(folder, mock, n_latent=3, epochs=2, batch_size=64)
    other = folder / "other_grid.h5"
    write_mock_survey(other, MockConfig(n_stars=20, n_pixels=64, pixel_offset=100, seed=2))
    return folder / "model", survey, other


def _leftovers(folder, name: str) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(f".{name}.")]


def test_outliers_writes_table_figures_and_gallery(inputs, tmp_path, capsys) -> None:
    model, survey, _ = inputs
    out = tmp_path / "found"
    assert main(["-q", "outliers", str(model), str(survey), "--out", str(out), "--top", "3"]) == 0
    printed = capsys.readouterr().out
    assert "top 3" in printed and "'1 in N' recalibrated: none" in printed
    table = Table.read(out / "outliers.ecsv")
    assert len(table) == 240 and table["rank"][0] == 1
    assert {"p_tail", "one_in", "top_element", "element_summary", "flag"} <= set(table.colnames)
    assert (out / "score_distribution.png").read_bytes()[:4] == b"\x89PNG"
    gallery = sorted(p.name for p in (out / "gallery").iterdir())
    assert gallery == [f"{k:02d}_{table['star_id'][k - 1]}.png" for k in (1, 2, 3)]
    page = (out / "index.html").read_text()
    links = set(re.findall(r'(?:src|href)="([^"#]+)"', page))
    assert links == {"score_distribution.png", *(f"gallery/{name}" for name in gallery)}
    assert all((out / link).is_file() for link in links)
    assert "<script" not in page and "http" not in page
    # 240 stars and ~24 validation stars: neither reference exists, "1 in N" is the model's
    assert table.meta["recalibration"] == "none" and "recalibrated: none" in page
    assert _leftovers(tmp_path, "found") == []

    # an existing folder is kept unless --overwrite
    before = (out / "outliers.ecsv").read_bytes()
    argv = ["-q", "outliers", str(model), str(survey), "--out", str(out), "--top", "1"]
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "outliers.ecsv").read_bytes() == before and len(gallery) == 3
    assert main([*argv, "--overwrite"]) == 0
    assert len(list((out / "gallery").iterdir())) == 1
    assert _leftovers(tmp_path, "found") == []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_model", "not a complete stellarflow model directory"),
        ("other_grid", "pixels"),
        ("labels_missing", "FE_H"),
        ("bad_top", "--top"),
        ("no_reference", "has no reference.json"),
    ],
)
def test_bad_inputs_fail_cleanly(inputs, tmp_path, capsys, case, message) -> None:
    model, survey, other = inputs
    out = tmp_path / "found"
    argv = ["-q", "outliers", str(model), str(survey), "--out", str(out)]
    if case == "missing_model":
        argv[2] = str(tmp_path / "no_model")
    elif case == "other_grid":
        argv[3] = str(other)
    elif case == "labels_missing":
        with open_survey(survey) as data:
            labels = data.labels[["star_id", "TEFF", "LOGG"]]
        labels.write(tmp_path / "labels.ecsv")
        argv += ["--labels", str(tmp_path / "labels.ecsv")]
    elif case == "bad_top":
        argv += ["--top", "-1"]
    elif case == "no_reference":
        argv += ["--recalibrate", "reference"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("stellarflow outliers: error:") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and _leftovers(tmp_path, "found") == []


def test_labels_table_replaces_the_survey_labels(inputs, tmp_path) -> None:
    model, survey, _ = inputs
    with open_survey(survey) as data:
        labels = data.labels[["star_id", "TEFF", "LOGG", "FE_H"]].copy()
    labels["TEFF"][:] = np.asarray(labels["TEFF"]) + 10.0
    labels.write(tmp_path / "labels.csv")
    out = tmp_path / "found"
    argv = ["-q", "outliers", str(model), str(survey), "--out", str(out), "--top", "0",
            "--labels", str(tmp_path / "labels.csv"), "--recalibrate", "neighbours",
            "--expectation", "latent_fit"]  # fmt: skip
    assert main(argv) == 0
    table = Table.read(out / "outliers.ecsv")
    assert table.meta["recalibration"].startswith("neighbours")
    assert table.meta["expectation"] == "latent_fit"
    teff = dict(zip(labels["star_id"], labels["TEFF"], strict=True))
    assert all(row["TEFF"] == pytest.approx(teff[row["star_id"]]) for row in table)
    assert list((out / "gallery").iterdir()) == []


def test_rank_by_option(inputs, tmp_path) -> None:
    model, survey, _ = inputs
    tables = {}
    keys = {"lines": "log_p_lines", "combined": "log_p_combined", "omnibus": "log_p_tail"}
    for rank_by in ("auto", "lines", "combined", "omnibus"):
        out = tmp_path / rank_by
        argv = ["-q", "outliers", str(model), str(survey), "--out", str(out), "--top", "2"]
        assert main([*argv, "--rank-by", rank_by]) == 0
        table = Table.read(out / "outliers.ecsv")
        used = "lines" if rank_by == "auto" else rank_by  # the mock survey has a line list
        assert table.meta["rank_by"] == used
        ranked = table[table["flag"] == ""]
        assert np.all(np.diff(np.asarray(ranked[keys[used]])) >= 0)
        tables[rank_by] = table
    # the same stars and scores, only the order differs
    by_id = dict(zip(tables["omnibus"]["star_id"], tables["omnibus"]["p_tail"], strict=True))
    for star, p in zip(tables["combined"]["star_id"], tables["combined"]["p_tail"], strict=True):
        assert by_id[star] == p or (np.isnan(by_id[star]) and np.isnan(p))
