"""Staged training: a latent flow started from a trained factor-analysis model."""

from __future__ import annotations

import json

import pytest
import torch

from stellarflow.flows import build_model
from stellarflow.train.checkpoint import load_model
from stellarflow.train.config import TrainConfig, TrainingError
from stellarflow.train.loop import _initialize_from_model, train_model
from tests.train._data import LABELS, MODEL_OPTIONS, tiny_config, training_set


@pytest.fixture(scope="module")
def fa_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fa")
    train_model(training_set(), tiny_config("factor_analysis", epochs=3), out)
    return out


def test_latent_flow_starts_exactly_at_the_factor_analysis_model(fa_dir) -> None:
    data = training_set()
    fa = load_model(fa_dir).model.eval()
    latent = build_model("latent_flow", data.n_pixels, len(LABELS), **MODEL_OPTIONS["latent_flow"])
    copied = _initialize_from_model(latent, fa_dir, data, tiny_config("latent_flow"))
    assert {"loading", "log_intrinsic_var", "mean.theta", "flux_loc"} <= set(copied)
    args = (
        torch.as_tensor(data.flux),
        torch.as_tensor(data.ivar),
        torch.as_tensor(data.label_array(LABELS), dtype=torch.float32),
    )
    with torch.no_grad():
        expected = fa.observed_log_prob(*args)
        got = latent.eval().observed_log_prob(*args)
    # identity flow prior + exact Gaussian posterior proposal: equal importance weights
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)


def test_train_from_factor_analysis_records_and_improves(fa_dir, tmp_path) -> None:
    data = training_set()
    best_fa = json.loads((fa_dir / "metadata.json").read_text())["best_validation_nats_per_pixel"]
    config = tiny_config("latent_flow", epochs=1, init_from=str(fa_dir))
    train_model(data, config, tmp_path / "latent")
    saved = json.loads((tmp_path / "latent" / "config.json").read_text())["train"]
    assert saved["init_from"] == str(fa_dir)
    first = json.loads((tmp_path / "latent" / "metadata.json").read_text())["history"][0]
    # one epoch from the FA start stays near the FA optimum (nats per pixel, validation)
    assert first["validation"] <= best_fa + 0.05
    assert TrainConfig.from_dict(saved).init_from == str(fa_dir)


def test_incompatible_starts_are_refused(fa_dir, tmp_path) -> None:
    config = tiny_config("latent_flow", init_from=str(fa_dir))
    with pytest.raises(TrainingError, match="cannot start from"):
        train_model(training_set(n_pixels=16), config, tmp_path / "grid")  # another grid
    two_labels = TrainConfig.from_dict({**config.to_dict(), "label_names": ["TEFF", "LOGG"]})
    with pytest.raises(TrainingError, match="conditioned on"):
        train_model(training_set(), two_labels, tmp_path / "labels")
    assert not (tmp_path / "labels" / "model.pt").exists()
