"""Training never looks at the flux of masked pixels (ivar == 0): whatever they hold, the
trained weights are bit-for-bit the same."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stellarflow.flows import build_model
from stellarflow.train.loop import train_model
from tests.train._data import MODEL_OPTIONS, tiny_config, training_set

GARBAGE = [0.0, 1e6, math.nan]


@pytest.mark.parametrize("model", ["factor_analysis", "latent_flow"])
def test_trained_weights_do_not_depend_on_masked_flux(model: str, tmp_path) -> None:
    datasets = [training_set(masked_value=value) for value in GARBAGE]
    masked = datasets[0].mask
    assert masked.any()
    # the dataset keeps finite garbage as it came (NaN becomes the continuum, 1)
    assert np.all(datasets[0].flux[masked] == 0) and np.all(datasets[1].flux[masked] == 1e6)
    states = []
    for n, data in enumerate(datasets):
        train_model(data, tiny_config(model), tmp_path / str(n))
        states.append(torch.load(tmp_path / str(n) / "model.pt", weights_only=True))
    for state in states[1:]:
        assert state.keys() == states[0].keys()
        for name, tensor in state.items():
            assert torch.equal(tensor, states[0][name]), name


@pytest.mark.parametrize("kind", ["cannon", "factor_analysis", "latent_flow"])
def test_initialize_from_data_ignores_masked_flux(kind: str) -> None:
    data = training_set()
    flux = torch.as_tensor(data.flux)
    ivar = torch.as_tensor(data.ivar)
    context = torch.as_tensor(data.label_array(["TEFF", "LOGG", "FE_H"]), dtype=torch.float32)
    masked = ivar == 0
    states = []
    for value in GARBAGE:
        with torch.random.fork_rng(devices=[]):  # the same initial weights every time
            torch.manual_seed(0)
            model = build_model(kind, data.n_pixels, 3, **MODEL_OPTIONS[kind])
        model.initialize_from_data(
            torch.where(masked, value, flux), ivar, context, torch.Generator().manual_seed(0)
        )
        states.append(model.state_dict())
    for state in states[1:]:
        for name, tensor in state.items():
            assert torch.equal(tensor, states[0][name]), name
