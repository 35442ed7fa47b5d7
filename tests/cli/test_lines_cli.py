"""`stellarflow lines` end to end on a tiny trained model (in-process): files, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from stellarflow.analysis.correlation import read_correlation
from stellarflow.analysis.lines import model_correlation
from stellarflow.cli.main import main
from stellarflow.errors import DataValidationError, LabelError
from stellarflow.io.hdf5 import open_survey
from stellarflow.io.linelist import write_linelist
from stellarflow.mock import MockConfig
from stellarflow.train.checkpoint import load_model
from tests.conftest import train_on_mock

POINT = "TEFF=4750,LOGG=2.5,FE_H=-0.1"
COLUMNS = {"wavelength", "element", "score", "significance", "depth", "known"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lines_cli")
    survey = folder / "mock.h5"
    # 160 pixels, 16,016-16,051 Å: published Fe, C, N, O lines (enough for templates)
    mock = MockConfig(n_stars=300, n_pixels=160, pixel_offset=3700, seed=3)
    train_on_mock(folder, mock, n_latent=4, epochs=3, batch_size=64)
    with open_survey(survey) as data:
        published = data.read_table("linelist")
    linelist = write_linelist(published, folder / "known.ecsv")
    return folder / "model", survey, linelist


def _leftovers(folder, name: str) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(f".{name}.")]


def test_lines_writes_candidates_matrix_and_figures(inputs, tmp_path, capsys) -> None:
    model, survey, linelist = inputs
    out = tmp_path / "lines"
    argv = ["-q", "lines", str(model), "--at", POINT, "--linelist", str(linelist)]
    argv += ["--n-samples", "600", "--out", str(out), "--survey", str(survey)]
    assert main(argv) == 0
    assert "candidate new" in capsys.readouterr().out
    table = Table.read(out / "candidates.ecsv")
    assert COLUMNS | {"nearest_known", "offset", "kind"} <= set(table.colnames)
    assert len(table) > 0 and np.all(np.diff(table["significance"]) <= 0)
    assert set(table["kind"]) <= {"known", "misidentified", "unlisted"}
    assert np.array_equal(table["kind"] == "known", table["known"])
    assert table.meta["n_samples"] == 600 and table.meta["mode"] == "joint"
    base = Table.read(out / "baseline_candidates.ecsv")
    assert set(table.colnames) == set(base.colnames)
    corr = read_correlation(out / "correlation.h5")
    assert corr.correlation.shape == (160, 160) and corr.n_samples == 600
    assert np.allclose(np.diag(corr.correlation), 1.0)
    for name in ("correlation_blocks.png", "mean_spectrum.png", "candidate_zooms.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert _leftovers(tmp_path, "lines") == []

    # kept unless --overwrite; the known lines may come from the survey file
    before = (out / "candidates.ecsv").read_bytes()
    argv = ["-q", "lines", str(model), "--at", POINT, "--survey", str(survey)]
    argv += ["--n-samples", "300", "--out", str(out)]
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "candidates.ecsv").read_bytes() == before
    assert main([*argv, "--overwrite", "--mode", "shared_mode"]) == 0
    assert Table.read(out / "candidates.ecsv").meta["mode"] == "shared_mode"
    assert _leftovers(tmp_path, "lines") == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--at", "TEFF=4750,LOGG"], "NAME=VALUE"),
        (["--at", "TEFF=4750,LOGG=2.5"], "FE_H"),
        (["--at", POINT, "--n-samples", "1"], "--n-samples"),
        (["--at", POINT, "--box", "VMICRO=1"], "half-widths"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(inputs, tmp_path, capsys, extra, message):
    model, _, linelist = inputs
    out = tmp_path / "bad"
    argv = ["-q", "lines", str(model), "--linelist", str(linelist), "--out", str(out)]
    assert main([*argv, "--n-samples", "50", *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("stellarflow lines: error:") and message in err
    assert "\n" not in err
    assert not out.exists() and _leftovers(tmp_path, "bad") == []


def test_missing_line_list_is_refused(inputs, tmp_path, capsys) -> None:
    model, _, _ = inputs
    assert main(["-q", "lines", str(model), "--at", POINT, "--out", str(tmp_path / "x")]) == 1
    assert "--linelist" in capsys.readouterr().err


def test_failure_while_writing_leaves_no_half_written_folder(
    inputs, tmp_path, capsys, monkeypatch
) -> None:
    import stellarflow.plot.lines as plots

    def broken(*args, **kwargs):
        raise DataValidationError("figure failed")

    monkeypatch.setattr(plots, "plot_candidate_zooms", broken)
    model, _, linelist = inputs
    out = tmp_path / "half"
    argv = ["-q", "lines", str(model), "--at", POINT, "--linelist", str(linelist)]
    assert main([*argv, "--n-samples", "100", "--out", str(out)]) == 1
    assert "figure failed" in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path, "half") == []


def test_model_correlation_is_reproducible_and_the_box_spreads_labels(inputs) -> None:
    model, _, _ = inputs
    trained = load_model(model)
    point = {"TEFF": 4750.0, "LOGG": 2.5, "FE_H": -0.1}
    a = model_correlation(trained, point, 300, chunk_size=64, seed=5)
    b = model_correlation(trained, point, 300, chunk_size=64, seed=5)
    assert np.array_equal(a.correlation, b.correlation) and np.array_equal(a.mean, b.mean)
    boxed = model_correlation(trained, point, 300, box={"FE_H": 0.3}, seed=5)
    # a spread in metallicity adds a shared mode: the lines' scatter grows
    assert np.median(boxed.std) > np.median(a.std)
    assert boxed.meta["box_FE_H"] == 0.3
    with pytest.raises(LabelError):
        model_correlation(trained, {"TEFF": 4750.0}, 10)
