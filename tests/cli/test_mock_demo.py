"""`stellarflow mock` and `stellarflow demo` end to end (tiny sizes)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import numpy as np
import pytest
from astropy.table import Table

from stellarflow.cli.main import main
from stellarflow.io.hdf5 import open_survey
from stellarflow.train.checkpoint import load_model
from tests.browser import ARTIFACTS, render_in_chromium


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


def _independent_pixel_log_prob(spectra) -> np.ndarray:
    """Per-pixel log-likelihood of a label-blind baseline, nats per usable pixel.

    Every pixel independent and Gaussian: the survey's median flux there, its intrinsic
    scatter (total variance minus the mean noise variance) plus each star's own noise.
    """
    good = ~spectra.mask
    flux = np.where(good, spectra.flux, np.nan)
    noise_var = np.where(good, 1.0 / np.where(good, spectra.ivar, 1.0), np.nan)
    mean = np.nanmedian(flux, axis=0)
    intrinsic = np.maximum(np.nanvar(flux, axis=0) - np.nanmean(noise_var, axis=0), 1e-8)
    var = noise_var + intrinsic
    log_prob = np.where(good, -0.5 * (flux - mean) ** 2 / var - 0.5 * np.log(2 * np.pi * var), 0)
    return log_prob.sum(axis=1) / np.maximum(good.sum(axis=1), 1)


def test_demo_runs_and_resumes(tmp_path, capsys, monkeypatch) -> None:
    import stellarflow.train.loop as loop

    run = tmp_path / "run"
    # 400 stars: the 90 % training split must hold a whole batch of 256 stars
    # 5 % injected outliers (~20): enough for the answer key to tell ranking from chance
    argv = ["-q", "demo", "--out", str(run), "--n-stars", "400", "--n-pixels", "256",
            "--epochs", "2", "--outlier-fraction", "0.05"]  # fmt: skip

    # Ctrl-C during the second epoch: the first one is checkpointed, the stage not recorded
    calls = []

    def interrupted_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    evaluate = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", interrupted_evaluate)
    assert main(argv) == 130
    monkeypatch.setattr(loop, "evaluate", evaluate)
    for name in ("survey.h5", "summary.txt", "mock_spectra.png", "mock_population.png"):
        assert (run / name).stat().st_size > 0
    stages = json.loads((run / "stages.json").read_text())["stages"]
    assert set(stages) == {"mock", "summary", "figures"}
    assert "stars:            400" in (run / "summary.txt").read_text()
    first_epoch = json.loads((run / "model" / "metadata.json").read_text())["history"]
    assert len(first_epoch) == 1
    capsys.readouterr()

    # re-running resumes the training at epoch 2 (epoch 1 is kept, not redone)
    assert main(argv) == 0
    out = capsys.readouterr().out
    for name in ("mock", "summary", "figures"):
        assert f"[{name}] already done" in out
    assert "[train] resuming the interrupted training at epoch 2" in out
    trained = load_model(run / "model")
    assert trained.label_names == ("TEFF", "LOGG", "FE_H")
    assert trained.config.model == "latent_flow"
    history = trained.metadata["history"]
    assert len(history) == 2 and history[0] == first_epoch[0]

    record = json.loads((run / "stages.json").read_text())
    stages = record["stages"]
    assert list(stages) == ["mock", "summary", "figures", "train", "score", "samples",
                            "outliers", "lines", "elements", "report"]  # fmt: skip
    assert record["config"]["epochs"] == 2
    assert stages["train"]["epochs"] == 2 and stages["train"]["stopped"] == "epochs"
    assert stages["train"]["best_validation_nats_per_pixel"] == pytest.approx(
        min(h["validation"] for h in history), abs=1e-5
    )

    scores = Table.read(run / "scores.ecsv")
    with open_survey(run / "survey.h5") as survey:
        spectra = survey.load()
        truth = survey.read_table("truth/labels")
    assert list(scores["star_id"]) == list(spectra.star_id)
    log_prob = np.asarray(scores["log_prob"], dtype=float)
    assert np.isfinite(log_prob).mean() > 0.9
    assert stages["score"]["n_stars"] == 400 and stages["score"]["stars_per_second"] > 0
    assert stages["score"]["unsupported_fraction"] == pytest.approx(
        np.mean(~np.asarray(scores["supported"])), abs=1e-4
    )
    per_pixel = np.asarray(scores["log_prob_per_pixel"], dtype=float)
    scored = np.isfinite(per_pixel)
    # scoring agrees with training: validation loss is -log p per pixel on held-out stars
    median = float(np.median(per_pixel[scored]))
    assert median == pytest.approx(-stages["train"]["best_validation_nats_per_pixel"], abs=0.1)
    # the labels explain most of the spectral variance, so the conditional model beats a
    # label-blind independent-pixel Gaussian by far (~1 nat/pixel after two epochs)
    baseline = _independent_pixel_log_prob(spectra)
    assert median > float(np.median(baseline[scored])) + 0.5
    # but it cannot beat, on average, the oracle that knows each noiseless spectrum:
    # E[log p(flux | noiseless)] - E[log p(flux | labels)] is a mutual information, >= 0
    oracle = np.asarray(truth["log_prob_oracle"]) / np.asarray(scores["n_good_pixels"])
    assert per_pixel[scored].mean() < oracle[scored].mean()

    assert (run / "samples_vs_data.png").read_bytes()[:4] == b"\x89PNG"
    assert stages["samples"]["point"] == {"TEFF": 4750.0, "LOGG": 2.5, "FE_H": 0.0}
    assert stages["samples"]["n_stars_near"] >= 20

    # outliers: the answer key is partly recovered even after two epochs (chance would put
    # k^2/n ~ 2 injected stars in the top k and give AUC 0.5)
    key = stages["outliers"]["answer_key"]
    assert key["n_injected"] == int(np.sum(np.asarray(truth["outlier_kind"]) != ""))
    assert key["caught"] >= 5 and key["auc"] > 0.6
    assert stages["outliers"]["command"].startswith("stellarflow outliers model survey.h5")
    ranked = Table.read(run / "outliers" / "outliers.ecsv")
    assert len(ranked) == 400 and list(ranked["rank"]) == list(range(1, 401))
    assert len(list((run / "outliers" / "gallery").glob("*.png"))) == 12

    # hidden lines: the features the model's correlations find are mostly real lines of
    # the published list (the 256-pixel window holds one withheld line, too few to score)
    lines = Table.read(run / "lines" / "candidates.ecsv")
    assert {"wavelength", "element", "significance", "known", "nearest_known"} <= set(
        lines.colnames
    )
    assert len(lines) >= 5 and np.mean(np.asarray(lines["known"])) > 0.5
    assert stages["lines"]["answer_key"]["n_withheld"] >= 1

    # elements: the mock's abundances are more than noise at fixed FE_H and MG_FE (four
    # processes), and the greedy search conditions on at least one more element
    elements = Table.read(run / "elements" / "elements.ecsv")
    assert {"element", "residual_scatter", "intrinsic_scatter", "excess_significance"} <= set(
        elements.colnames
    )
    ce = elements[list(elements["element"]).index("CE_FE")]
    assert ce["intrinsic_scatter"] > 0.03  # AGB process + 0.03 dex own scatter
    assert len(stages["elements"]["answer_key"]["added"]) >= 1

    # the report shows every stage, the demo's command line and the answer key
    page = (run / "report.html").read_text()
    for anchor in ("overview", "survey", "model", "scores", "outliers", "lines", "elements"):
        assert f'<section id="{anchor}">' in page
    assert "stellarflow -q demo --out" in page and "Answer key: injected outliers" in page
    assert "<dd>latent_flow (label_dependent_variance=True)</dd>" in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    # 2 mock figures, curve, samples, score distribution, 12 gallery, 3 hidden-line figures,
    # 4 element figures
    assert len(sources) == 24
    assert all((run / source).is_file() for source in sources)
    if shutil.which("chromium") or os.environ.get("STELLARFLOW_REQUIRE_CHROMIUM"):
        dom = render_in_chromium(run / "report.html", ARTIFACTS / "demo_report.png", tmp_path)
        body = re.search(r"<body([^>]*)>", dom).group(1)
        assert f'data-images-total="{len(sources)}"' in body
        assert 'data-images-broken="0"' in body
        assert 'id="stages"' in dom and 'id="outliers"' in dom

    # a finished run is skipped stage by stage, without touching any output
    before = {name: (run / name).stat().st_mtime_ns
              for name in ("survey.h5", "model/model.pt", "scores.ecsv")}  # fmt: skip
    started = time.monotonic()
    assert main(argv) == 0
    assert time.monotonic() - started < 5.0
    out = capsys.readouterr().out
    assert out.count("already done") == 9 and "[report] done" in out
    assert {name: (run / name).stat().st_mtime_ns for name in before} == before
    # the same folder with other settings is refused, not silently mixed
    assert main(["-q", "demo", "--out", str(run), "--n-stars", "300", "--n-pixels", "256"]) == 1
    assert "holds a demo run with settings" in capsys.readouterr().err


def test_demo_accepts_a_run_started_before_new_settings(tmp_path, capsys) -> None:
    """A stages.json written before ``epochs`` existed still matches the default settings."""
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "outliers").mkdir()
    (run / "lines").mkdir()
    (run / "elements").mkdir()
    outputs = ("survey.h5", "summary.txt", "mock_spectra.png", "mock_population.png",
               "model/model.pt", "scores.ecsv", "samples_vs_data.png",
               "outliers/outliers.ecsv", "lines/candidates.ecsv",
               "elements/elements.ecsv")  # fmt: skip
    for name in outputs:
        (run / name).write_bytes(b"x")
    stages = {name: {"seconds": 1.0} for name in
              ("mock", "summary", "figures", "train", "score", "samples", "outliers",
               "lines", "elements")}  # fmt: skip
    old = {"size": "small", "seed": 0, "n_stars": 200, "n_pixels": 256}
    (run / "stages.json").write_text(json.dumps({"config": old, "stages": stages}))
    argv = ["-q", "demo", "--out", str(run), "--n-stars", "200", "--n-pixels", "256"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("already done") == 9
    # the report is always rebuilt; a stage whose files do not read is reported as such
    assert "could not read this stage" in (run / "report.html").read_text()
    assert main([*argv, "--epochs", "3"]) == 1
    assert "holds a demo run with settings" in capsys.readouterr().err
