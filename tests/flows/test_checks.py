"""Argument checks at the public boundary: clear FlowInputError (a ValueError), never assert."""

from __future__ import annotations

import math

import pytest
import torch

from stellarflow.flows import FlowInputError, build_model
from tests.flows._helpers import perturbed_model, random_batch

P, L, N = 6, 2, 3


def test_error_is_a_value_error() -> None:
    assert issubclass(FlowInputError, ValueError)


@pytest.mark.parametrize("kind", ["cannon", "factor_analysis", "latent_flow", "coupling"])
def test_bad_inputs_are_rejected_with_a_clear_message(kind: str) -> None:
    options = {"n_latent": 2} if kind in ("factor_analysis", "latent_flow") else {}
    model = perturbed_model(kind, P, L, options)
    flux, ivar, context = random_batch(N, P, L)
    with pytest.raises(FlowInputError, match="7 pixels but the model was built for 6"):
        model.observed_log_prob(torch.ones(N, 7), ivar, context)
    with pytest.raises(FlowInputError, match="ivar must have shape"):
        model.observed_log_prob(flux, torch.ones(N, 7), context)
    with pytest.raises(FlowInputError, match="context must have shape"):
        model.observed_log_prob(flux, ivar, torch.ones(N, 3))
    with pytest.raises(FlowInputError, match="context is None"):
        model(None)
    with pytest.raises(FlowInputError, match="float32"):
        model.observed_log_prob(flux.float(), ivar, context)
    with pytest.raises(FlowInputError, match="NaN or infinite labels"):
        model(torch.full((N, L), math.nan))
    with pytest.raises(FlowInputError, match="temperature"):
        model(context, temperature=0.0)
    for bad in (-1.0, math.nan, math.inf):
        spoiled = ivar.clone()
        spoiled[0, 0] = bad
        with pytest.raises(FlowInputError, match="ivar must be finite and >= 0"):
            model.observed_log_prob(flux, spoiled, context)
    observed_nan = flux.clone()
    observed_nan[ivar > 0] = math.nan
    with pytest.raises(FlowInputError, match="non-finite values at observed pixels"):
        model.observed_log_prob(observed_nan, ivar, context)
    with pytest.raises(FlowInputError, match=r"torch\.Tensor"):
        model.observed_log_prob(flux.numpy(), ivar, context)


def test_coupling_flow_refuses_a_noise_model() -> None:
    model = perturbed_model("coupling", P, L, {})
    _, ivar, context = random_batch(N, P, L)
    with pytest.raises(FlowInputError, match="no noise model"):
        model(context, ivar=ivar)
    assert not model.noise_aware


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("nope", {}, "unknown model kind"),
        ("cannon", {"n_latent": 2}, "invalid option"),
        ("factor_analysis", {"n_latent": 7}, "must not exceed n_pixels"),
        ("factor_analysis", {"n_latent": 0}, "n_latent must be > 0"),
        ("latent_flow", {"n_latent": 2, "proposal": "prior"}, "proposal must be one of"),
        ("latent_flow", {"n_latent": 2, "flow_bins": 1}, "flow_bins must be >= 2"),
        ("latent_flow", {"n_latent": 2, "n_importance": 0}, "n_importance must be > 0"),
        ("coupling", {"conv_kernel": 4}, "conv_kernel must be odd"),
        ("coupling", {"bins": 1}, "bins must be >= 2"),
        ("cannon", {"var_floor": -1.0}, "var_floor must be >= 0"),
    ],
)
def test_invalid_configs_are_rejected(kind: str, options: dict, message: str) -> None:
    with pytest.raises(FlowInputError, match=message):
        build_model(kind, P, L, **options)


def test_coupling_needs_two_pixels() -> None:
    with pytest.raises(FlowInputError, match="n_pixels >= 2"):
        build_model("coupling", 1, 0)
