"""``stellarflow elements`` end to end, in-process."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from stellarflow.cli.main import main
from tests.analysis.elements_synthetic import TARGETS, synthetic_catalogue


@pytest.fixture(scope="module")
def catalogue_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cat")
    table = synthetic_catalogue(3000, seed=4)
    table["E8_FE"][:10] = -9999.0
    table.write(folder / "allstar.ecsv", format="ascii.ecsv")
    table.write(folder / "allstar.fits", format="fits")
    return folder


@pytest.mark.parametrize("suffix", ["ecsv", "fits"])
def test_elements_writes_tables_and_figures(catalogue_files, tmp_path, suffix, capsys) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "elements",
            str(catalogue_files / f"allstar.{suffix}"),
            "--condition",
            "A_H,B_FE",
            "--also",
            "TEFF,LOGG",
            "--out",
            str(out),
            "--n-bootstrap",
            "3",
            "--n-null",
            "10",
        ]
    )
    assert code == 0, capsys.readouterr().err
    elements = Table.read(out / "elements.ecsv")
    assert list(elements["element"]) == list(TARGETS)
    assert np.all(elements["n_stars"] == 2990)  # the -9999 rows are dropped
    for name in (
        "residual_scatter",
        "median_error",
        "intrinsic_scatter",
        "intrinsic_scatter_err",
        "excess_significance",
    ):
        assert np.all(np.isfinite(elements[name]))
    assert elements.meta["condition"] == ["A_H", "B_FE", "TEFF", "LOGG"]
    pairs = Table.read(out / "residual_correlations.ecsv")
    assert len(pairs) == len(TARGETS) * (len(TARGETS) - 1) // 2
    assert np.all(np.abs(pairs["correlation"]) <= 1)
    for name in ("residual_scatter.png", "residual_correlations.png"):
        assert (out / name).stat().st_size > 1000
    assert not (out / "greedy.ecsv").exists()
    assert "wrote" in capsys.readouterr().out


def test_elements_greedy(catalogue_files, tmp_path) -> None:
    out = tmp_path / "g"
    code = main(
        [
            "elements",
            str(catalogue_files / "allstar.ecsv"),
            "--condition",
            "A_H,B_FE",
            "--elements",
            "all",
            "--greedy",
            "--out",
            str(out),
            "--n-bootstrap",
            "2",
            "--n-null",
            "20",
            "--greedy-bootstrap",
            "1",
        ]
    )
    assert code == 0
    greedy = Table.read(out / "greedy.ecsv")
    assert {"step", "added_element", "excess_statistic", "significance"} <= set(greedy.colnames)
    stop = greedy.meta["stop_step"]
    assert stop == 2
    assert (out / "greedy_path.png").exists()
    assert (out / "elements_greedy_final.ecsv").exists()


def test_bad_column_is_one_line_and_writes_nothing(catalogue_files, tmp_path, capsys) -> None:
    out = tmp_path / "bad"
    code = main(
        [
            "elements",
            str(catalogue_files / "allstar.ecsv"),
            "--condition",
            "FE_H,MG_FE",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "FE_H" in err and "A_H" in err  # names what exists
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # no temporary folder left behind either


def test_existing_output_needs_overwrite(catalogue_files, tmp_path, capsys) -> None:
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = [
        "elements",
        str(catalogue_files / "allstar.ecsv"),
        "--condition",
        "A_H,B_FE",
        "--elements",
        "E1_FE,E2_FE,E7_FE",
        "--out",
        str(out),
        "--n-bootstrap",
        "0",
        "--n-null",
        "5",
    ]
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "elements.ecsv").exists()


def test_elements_spectral_comparison(tmp_path) -> None:
    """--spectra: two models of one mock survey, variance per element against the noise."""
    from stellarflow.io.hdf5 import open_survey
    from stellarflow.mock.config import MockConfig
    from stellarflow.mock.survey import write_mock_survey
    from stellarflow.train.config import TrainConfig
    from stellarflow.train.loop import train_model

    survey = tmp_path / "survey.h5"
    write_mock_survey(survey, MockConfig(n_stars=300, n_pixels=64, pixel_offset=6000, seed=1))
    models = []
    with open_survey(survey) as opened:
        labels = opened.read(0, len(opened)).labels
        for name, names in {
            "small": ("TEFF", "LOGG", "FE_H", "MG_FE"),
            "large": ("TEFF", "LOGG", "FE_H", "MG_FE", "AL_FE", "SI_FE"),
        }.items():
            config = TrainConfig(
                label_names=names,
                model="factor_analysis",
                model_options={"n_latent": 2},
                epochs=2,
                device="cpu",
            )
            train_model(opened, config, tmp_path / name)
            models.append(str(tmp_path / name))
    labels.write(tmp_path / "labels.ecsv", format="ascii.ecsv")
    out = tmp_path / "out"
    code = main(
        [
            "elements",
            str(tmp_path / "labels.ecsv"),
            "--condition",
            "FE_H,MG_FE",
            "--elements",
            "AL_FE,SI_FE,O_FE,NI_FE,CE_FE",
            "--n-bootstrap",
            "0",
            "--n-null",
            "5",
            "--spectra",
            ",".join(models),
            "--survey",
            str(survey),
            "--at",
            "TEFF=4750,LOGG=2.5",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = Table.read(out / "spectral_by_element.ecsv")
    assert len(table) >= 1
    for name in ("small", "large"):
        assert np.all(table[f"variance_{name}"] >= 0)
        np.testing.assert_allclose(
            table[f"ratio_{name}"], table[f"variance_{name}"] / table["noise_variance"]
        )
    assert (out / "spectral_variance.png").exists()
