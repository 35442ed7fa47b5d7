"""``TrainConfig.polish_iterations`` (``train --polish``): ECM after or instead of Adam."""

from __future__ import annotations

import json

import pytest
import torch

from stellarflow.train.batches import split_blocks
from stellarflow.train.checkpoint import load_model
from stellarflow.train.config import TrainConfig, TrainingError
from stellarflow.train.loop import evaluate, train_model
from tests.train._data import tiny_config, training_set


def test_polish_is_recorded_and_never_worsens_validation(tmp_path) -> None:
    data = training_set()
    config = tiny_config("factor_analysis", epochs=2, polish_iterations=3)
    result = train_model(data, config, tmp_path / "fa")
    meta = json.loads((tmp_path / "fa" / "metadata.json").read_text())
    polish = meta["polish"]
    assert polish["iterations"] == 3
    n_run = len(polish["validation"])
    assert 1 <= n_run <= 3 and len(polish["max_log_tau2_change"]) == n_run
    assert len(polish["mean_loading_change"]) == n_run
    # iterations are kept while validation improves; the first that does not ends the polish
    kept, best = polish["iterations_kept"], polish["validation_before"]
    for value in polish["validation"][:kept]:
        assert value < best
        best = value
    assert polish["validation"][kept:] == [] or polish["validation"][kept] >= best
    assert len(polish["validation"][kept:]) <= 1
    assert min(polish["validation_before"], polish["validation_after"]) == pytest.approx(
        meta["best_validation_nats_per_pixel"]
    )
    assert result.best_validation == pytest.approx(meta["best_validation_nats_per_pixel"])
    assert result.polished == polish["kept"]
    assert polish["validation_before"] == pytest.approx(
        meta["history"][meta["best_epoch"]]["validation"]
    )
    # the saved weights are the ones whose validation loss is recorded
    trained = load_model(tmp_path / "fa")
    _, val_blocks = split_blocks(
        data.n_stars, config.block_size, config.validation_fraction, config.seed
    )
    with torch.no_grad():
        loss = evaluate(trained.model, data, val_blocks, config, torch.device("cpu"))
    assert loss == pytest.approx(meta["best_validation_nats_per_pixel"], rel=1e-5, abs=1e-6)
    # then the coefficients' estimation variance, kept only if validation agrees
    estimate = polish["coefficient_variance"]
    carries = trained.model.estimation_var() is not None
    assert carries == estimate["kept"]
    if estimate["kept"]:
        assert estimate["validation"] == pytest.approx(polish["validation_after"])
    else:
        assert estimate["validation"] >= polish["validation_after"]


def test_polish_of_an_unsupported_model_is_refused_before_training(tmp_path) -> None:
    config = tiny_config("latent_flow", polish_iterations=2)
    with pytest.raises(TrainingError, match="cannot polish"):
        train_model(training_set(), config, tmp_path / "lf")
    assert not (tmp_path / "lf" / "model.pt").exists()


def test_polish_settings_are_validated() -> None:
    base = tiny_config("factor_analysis").to_dict()
    with pytest.raises(ValueError, match="polish_iterations"):
        TrainConfig.from_dict({**base, "polish_iterations": -1})


def test_ecm_alone_fits_factor_analysis_with_label_dependent_terms(tmp_path) -> None:
    """``epochs = 0``: the warm start is measured, then ECM iterations improve on it."""
    data = training_set()
    config = tiny_config(
        "factor_analysis",
        epochs=0,
        polish_iterations=4,
        model_options={
            "n_latent": 2,
            "label_dependent_loading": True,
            "label_dependent_variance": True,
        },
    )
    result = train_model(data, config, tmp_path / "ecm")
    meta = json.loads((tmp_path / "ecm" / "metadata.json").read_text())
    assert result.epochs_run == 0 and result.best_epoch == -1 and meta["history"] == []
    polish = meta["polish"]
    assert result.polished and polish["iterations_kept"] >= 1
    assert polish["validation_after"] < polish["validation_before"]
    assert result.best_validation == pytest.approx(polish["validation_after"])
    trained = load_model(tmp_path / "ecm")
    _, val_blocks = split_blocks(
        data.n_stars, config.block_size, config.validation_fraction, config.seed
    )
    with torch.no_grad():
        loss = evaluate(trained.model, data, val_blocks, config, torch.device("cpu"))
    assert loss == pytest.approx(result.best_validation, rel=1e-5, abs=1e-6)


def test_zero_epochs_need_the_polish() -> None:
    base = tiny_config("factor_analysis").to_dict()
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig.from_dict({**base, "epochs": 0})


def test_ecm_with_label_errors_improves_the_marginal_likelihood(tmp_path) -> None:
    """With ``label_errors`` the polish fits the model whose likelihood marginalises them."""
    data = training_set()
    config = tiny_config("factor_analysis", label_errors=True, polish_iterations=3)
    result = train_model(data, config, tmp_path / "errors")
    polish = json.loads((tmp_path / "errors" / "metadata.json").read_text())["polish"]
    assert result.polished and polish["validation_after"] < polish["validation_before"]


def test_the_time_limit_ends_the_polish_after_the_iteration_under_way(tmp_path) -> None:
    data = training_set()
    config = tiny_config("factor_analysis", epochs=0, polish_iterations=5, time_limit=1e-6)
    train_model(data, config, tmp_path / "timed")
    polish = json.loads((tmp_path / "timed" / "metadata.json").read_text())["polish"]
    assert len(polish["validation"]) == 1
    assert polish["stopped_by_time_limit"] == polish["kept"]  # a kept first iteration, then stop
