"""`stellarflow mock` and `stellarflow demo` end to end (tiny sizes)."""

from __future__ import annotations

import json

import numpy as np

from stellarflow.cli.main import main
from stellarflow.io.hdf5 import open_survey


def test_mock_command_writes_a_survey_with_truth(tmp_path, capsys) -> None:
    out = tmp_path / "mock.h5"
    argv = ["-q", "mock", "--n-stars", "300", "--n-pixels", "128", "--seed", "3",
            "--outlier-fraction", "0.05", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    with open_survey(out) as survey:
        assert (survey.n_stars, survey.n_pixels) == (300, 128)
        assert survey.has_truth
        truth = survey.read_table("truth/labels")
        n_outliers = int(np.sum(np.asarray(truth["outlier_kind"]).astype(str) != ""))
        assert 5 <= n_outliers <= 30  # 5 % of 300, binomial
        assert {"TEFF", "LOGG", "FE_H", "MG_FE", "SNR"} <= set(survey.label_names)
    assert main(argv) == 1  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    bad = ["mock", "--n-stars", "0", "--out", str(tmp_path / "bad.h5")]
    assert main(bad) == 1
    assert "n_stars" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5").exists()


def test_demo_runs_and_resumes(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    argv = ["-q", "demo", "--out", str(run), "--n-stars", "200", "--n-pixels", "256"]
    assert main(argv) == 0
    for name in ("survey.h5", "summary.txt", "mock_spectra.png", "mock_population.png"):
        assert (run / name).stat().st_size > 0
    stages = json.loads((run / "stages.json").read_text())["stages"]
    assert {"mock", "summary", "figures"} <= set(stages)
    assert "stars:            200" in (run / "summary.txt").read_text()
    capsys.readouterr()
    before = (run / "survey.h5").stat().st_mtime_ns
    assert main(argv) == 0
    assert "[mock] already done" in capsys.readouterr().out
    assert (run / "survey.h5").stat().st_mtime_ns == before
    # the same folder with other settings is refused, not silently mixed
    assert main(["-q", "demo", "--out", str(run), "--n-stars", "300", "--n-pixels", "256"]) == 1
    assert "holds a demo run with settings" in capsys.readouterr().err
