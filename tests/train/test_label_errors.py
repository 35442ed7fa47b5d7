"""Training and scoring with the labels' own uncertainties (``TrainConfig.label_errors``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stellarflow.analysis.score import score_survey
from stellarflow.cli.main import main
from stellarflow.errors import LabelError
from stellarflow.io.hdf5 import write_survey
from stellarflow.train.batches import iter_batches
from stellarflow.train.checkpoint import load_model
from stellarflow.train.config import TrainConfig, TrainingError
from stellarflow.train.loop import train_model
from tests.train._data import LABELS, tiny_config, training_set

ERRORS = ("TEFF_ERR", "LOGG_ERR", "FE_H_ERR")


def test_config_round_trip_and_old_configs() -> None:
    config = tiny_config("factor_analysis", label_errors=True)
    assert config.error_names == ERRORS
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = config.to_dict()
    del old["label_errors"]  # a config.json written before the option existed
    assert TrainConfig.from_dict(old).label_errors is False
    assert TrainConfig.from_dict(old).error_names == ()
    with pytest.raises(ValueError, match="true or false"):
        tiny_config("factor_analysis", label_errors="yes")
    with pytest.raises(ValueError, match="needs labels"):
        tiny_config("factor_analysis", label_names=(), label_errors=True)


def test_batches_carry_the_label_errors() -> None:
    data = training_set()
    blocks = np.array([[0, data.n_stars]])
    batch = next(iter(iter_batches(data, blocks, 10, LABELS, error_names=ERRORS)))
    np.testing.assert_array_equal(batch.label_errors, data.label_array(ERRORS)[batch.rows])
    plain = next(iter(iter_batches(data, blocks, 10, LABELS)))
    assert plain.label_errors is None


@pytest.mark.parametrize("model", ["factor_analysis", "latent_flow"])
def test_train_and_score_with_label_errors(model: str, tmp_path) -> None:
    data = training_set()
    result = train_model(data, tiny_config(model, label_errors=True), tmp_path / "m")
    assert all(np.isfinite(h["validation"]) for h in result.history)
    trained = load_model(tmp_path / "m")
    assert trained.config.label_errors is True
    scores = score_survey(trained, data)
    assert scores.meta["label_errors"] is True
    assert np.isfinite(scores["log_prob"]).all()
    # the errors are used: the same stars with exact labels score differently
    exact = data[np.arange(data.n_stars)]
    for name in ERRORS:
        exact.labels[name] = 0.0
    assert not np.allclose(score_survey(trained, exact)["log_prob"], scores["log_prob"])
    # a model trained before the option existed (no key in config.json) loads as exact
    config_path = tmp_path / "m" / "config.json"
    payload = json.loads(config_path.read_text())
    del payload["train"]["label_errors"]
    config_path.write_text(json.dumps(payload))
    assert load_model(tmp_path / "m").config.label_errors is False
    # scoring a survey without the error columns under a model that needs them
    with pytest.raises(LabelError, match="TEFF_ERR"):
        score_survey(trained, training_set(with_errors=False))


def test_label_errors_fail_cleanly_when_absent_or_invalid(tmp_path) -> None:
    config = tiny_config("factor_analysis", label_errors=True)
    with pytest.raises(TrainingError, match=r"lacks \['TEFF_ERR', 'LOGG_ERR', 'FE_H_ERR'\]"):
        train_model(training_set(with_errors=False), config, tmp_path / "a")
    data = training_set()
    data.labels["LOGG_ERR"][3] = np.nan
    with pytest.raises(TrainingError, match="LOGG_ERR has 1 NaN or infinite"):
        train_model(data, config, tmp_path / "b", overwrite=True)
    data = training_set()
    data.labels["FE_H_ERR"][5] = -0.1
    with pytest.raises(TrainingError, match="FE_H_ERR has 0 NaN or infinite and 1 negative"):
        train_model(data, config, tmp_path / "c", overwrite=True)
    data.labels["FE_H"][5] = np.nan  # a star with a missing label is skipped anyway
    train_model(data, tiny_config("cannon", label_errors=True, epochs=1), tmp_path / "d")
    coupling = TrainConfig(LABELS, model="coupling", label_errors=True, device="cpu")
    with pytest.raises(TrainingError, match="has none"):
        train_model(training_set(), coupling, tmp_path / "e")


def test_cli_label_errors_flag(tmp_path) -> None:
    survey = write_survey(training_set(), tmp_path / "s.h5")
    argv = ["-q", "train", str(survey), "--out", str(tmp_path / "m"), "--model", "cannon",
            "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--label-errors"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["train"]["label_errors"] is True
    out = tmp_path / "scores.ecsv"
    assert main(["-q", "score", str(tmp_path / "m"), str(survey), "--out", str(out)]) == 0
