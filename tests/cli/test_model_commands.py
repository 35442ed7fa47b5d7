"""`stellarflow train`, `score` and `sample` end to end on a tiny mock (in-process)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from astropy.table import Table

from stellarflow.cli.main import main
from stellarflow.io.hdf5 import open_survey, write_survey
from stellarflow.mock import MockConfig, write_mock_survey
from stellarflow.train.checkpoint import load_model


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    path = tmp_path_factory.mktemp("mock") / "mock.h5"
    write_mock_survey(path, MockConfig(n_stars=600, n_pixels=64, pixel_offset=600, seed=1))
    return path


def _train(survey, out, *extra: str) -> int:
    argv = ["-q", "train", str(survey), "--out", str(out), "--model", "factor_analysis",
            "--batch-size", "64", *extra]  # fmt: skip
    return main(argv)


def test_train_score_sample(survey, tmp_path, capsys) -> None:
    model_dir = tmp_path / "model"
    assert _train(survey, model_dir, "--epochs", "4") == 0
    for name in ("model.pt", "config.json", "metadata.json", "wavelength.npy", "support.npz",
                 "training_state.pt", "training_curve.png"):  # fmt: skip
        assert (model_dir / name).stat().st_size > 0
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["label_names"] == ["TEFF", "LOGG", "FE_H"]
    assert len(metadata["history"]) == 4 and metadata["stopped"] == "epochs"

    scores_path = tmp_path / "scores.ecsv"
    assert main(["-q", "score", str(model_dir), str(survey), "--out", str(scores_path)]) == 0
    scores = Table.read(scores_path)
    with open_survey(survey) as data:
        assert list(scores["star_id"]) == list(data.star_id)
    assert {"log_prob", "supported", "n_good_pixels"} <= set(scores.colnames)
    # this window holds the mock's persistence region: ~10% of stars have too few pixels
    # left and are flagged, not scored
    enough = np.asarray(scores["enough_pixels"])
    np.testing.assert_array_equal(np.isfinite(scores["log_prob"]), enough)
    assert 0.8 < enough.mean() < 0.99
    assert scores["supported"].mean() > 0.95

    samples = tmp_path / "samples.h5"
    argv = ["-q", "sample", str(model_dir), "--at", "TEFF=4750,LOGG=2.5,FE_H=0", "-n", "50",
            "--out", str(samples)]  # fmt: skip
    assert main(argv) == 0
    with h5py.File(samples) as handle:
        assert handle["flux"].shape == (50, 64)
        assert handle.attrs["label_TEFF"] == 4750
        assert np.all(np.isfinite(handle["flux"][()]))
    figure = tmp_path / "compare.png"
    compare = ["-q", "sample", str(model_dir), "--at", "TEFF=4750,LOGG=2.5,FE_H=0", "-n", "20",
               "--out", str(tmp_path / "s3.h5"), "--compare", str(survey),
               "--figure", str(figure)]  # fmt: skip
    assert main(compare) == 0
    assert figure.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    bad = ["-q", "sample", str(model_dir), "--at", "TEFF=4750,LOGG=2.5", "--out",
           str(tmp_path / "s2.h5")]  # fmt: skip
    assert main(bad) == 1
    assert "missing ['FE_H']" in capsys.readouterr().err
    assert not (tmp_path / "s2.h5").exists()


def test_resume_continues_exactly(survey, tmp_path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(survey, straight, "--epochs", "4") == 0
    assert _train(survey, resumed, "--epochs", "2") == 0
    assert _train(survey, resumed, "--epochs", "4", "--resume") == 0
    a = torch.load(straight / "training_state.pt", weights_only=True)
    b = torch.load(resumed / "training_state.pt", weights_only=True)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6)
    assert [h["validation"] for h in a["history"]] == pytest.approx(
        [h["validation"] for h in b["history"]], rel=1e-5
    )


def test_train_refuses_bad_runs(survey, tmp_path, capsys) -> None:
    model_dir = tmp_path / "model"
    assert _train(survey, model_dir, "--epochs", "1") == 0
    assert _train(survey, model_dir, "--epochs", "1") == 1
    assert "--resume" in capsys.readouterr().err
    assert _train(survey, tmp_path / "m2", "--labels", "TEFF,NOPE_FE") == 1
    assert "NOPE_FE" in capsys.readouterr().err
    assert _train(survey, tmp_path / "m3", "--resume") == 1
    assert "no training_state.pt" in capsys.readouterr().err
    assert main(["-q", "train", str(survey), "--out", str(tmp_path / "m4"), "--model", "x"]) == 1
    assert "unknown model kind" in capsys.readouterr().err


def test_score_refuses_other_grid_and_flags_unsupported(survey, tmp_path, capsys) -> None:
    model_dir = tmp_path / "model"
    assert _train(survey, model_dir, "--epochs", "2") == 0
    with open_survey(survey) as data:
        spectra = data.read(0, 20)
    other = tmp_path / "other.h5"
    from stellarflow import SpectralDataset

    shifted = SpectralDataset(spectra.flux, spectra.ivar, spectra.wavelength * 1.001,
                              spectra.labels, mask=spectra.mask)  # fmt: skip
    write_survey(shifted, other)
    assert main(["-q", "score", str(model_dir), str(other), "--out", str(tmp_path / "x.ecsv")]) == 1
    assert "resample" in capsys.readouterr().err
    assert not (tmp_path / "x.ecsv").exists()
    # a dwarf among giants: unsupported, flagged in its own column
    spectra.labels["LOGG"][0] = 4.6
    odd = tmp_path / "odd.h5"
    write_survey(spectra, odd)
    assert main(["-q", "score", str(model_dir), str(odd), "--out", str(tmp_path / "o.ecsv")]) == 0
    scores = Table.read(tmp_path / "o.ecsv")
    assert not scores["supported"][0] and scores["supported"][1:].mean() > 0.9
    trained = load_model(model_dir)
    assert trained.support.contains(np.array([[4750.0, 2.5, 0.0]]))[0]


def test_training_in_memory_still_fits_the_line_list_reference(tmp_path) -> None:
    """Spectra loaded whole carry none of the file's tables: the command hands the survey's
    line list on, so the line-list test gets its held-out reference either way."""
    path = tmp_path / "mock.h5"
    write_mock_survey(path, MockConfig(n_stars=2400, n_pixels=128, pixel_offset=5200, seed=9))
    for in_memory in ("yes", "no"):
        model_dir = tmp_path / in_memory
        assert _train(path, model_dir, "--epochs", "1", "--in-memory", in_memory) == 0
        record = json.loads((model_dir / "metadata.json").read_text())["reference_calibration"]
        assert record["fitted"] and record["lines"]["fitted"], record
        assert (model_dir / "reference_lines.json").is_file()


def test_a_local_model_trains_on_its_label_region_only(survey, tmp_path, capsys) -> None:
    with open_survey(survey) as data:
        labels = data.labels
        teff = np.asarray(labels["TEFF"])
        low, high = np.percentile(teff, [25, 75])
        inside = (teff >= low) & (teff <= high)
        # a survey file read in chunks and the same spectra in memory select the same stars
        ranges = {"TEFF": (low, high)}
        from stellarflow.data.dataset import select_within

        from_file = select_within(data, ranges, chunk_size=97)
        in_memory = select_within(data.load(), ranges)
    assert list(from_file.star_id) == list(in_memory.star_id) == list(data.star_id[inside])
    np.testing.assert_array_equal(from_file.flux, in_memory.flux)

    model_dir = tmp_path / "local"
    within = f"TEFF={low:.2f}:{high:.2f}"
    assert _train(survey, model_dir, "--epochs", "2", "--within", within) == 0
    config = json.loads((model_dir / "config.json").read_text())["train"]
    assert config["within"] == {"TEFF": [float(f"{low:.2f}"), float(f"{high:.2f}")]}
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["training_data"]["source"] == str(survey)
    assert metadata["training_data"]["within"] == config["within"]
    trained_on = metadata["training_data"]["n_stars"]
    assert trained_on == pytest.approx(inside.sum(), abs=2)
    # its support is that region: the survey's hottest and coolest stars are flagged
    scores_path = tmp_path / "scores.ecsv"
    assert main(["-q", "score", str(model_dir), str(survey), "--out", str(scores_path)]) == 0
    scores = Table.read(scores_path)
    supported = np.asarray(scores["supported"])
    assert supported[inside].mean() > 0.9
    extreme = (teff < np.percentile(teff, 3)) | (teff > np.percentile(teff, 97))
    assert supported[extreme].mean() < 0.2
    # resuming with another region is refused; bad ranges give one line and exit 1
    capsys.readouterr()
    other = f"TEFF={low - 50:.2f}:{high:.2f}"
    assert _train(survey, model_dir, "--epochs", "3", "--resume", "--within", other) == 1
    assert "different configuration" in capsys.readouterr().err
    for bad, message in (("TEFF=5000", "NAME=LOW:HIGH"), ("TEFF=5000:4000", "low < high"),
                         ("TEFF=10:20", "no star"), ("NOPE=1:2", "NOPE"),
                         ("TEFF=1:9000,TEFF=2:3", "twice")):  # fmt: skip
        assert _train(survey, tmp_path / "bad", "--epochs", "1", "--within", bad) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()  # nothing written
