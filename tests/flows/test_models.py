"""Invariants every model class must satisfy (STYLE.md), parametrised over the classes."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from stellarflow.flows import MODEL_KINDS, SpectralModel, build_model
from tests.flows._helpers import (
    CASE_IDS,
    MODEL_CASES,
    NOISE_AWARE,
    perturbed_model,
    random_batch,
)

P, L, N = 7, 2, 5
CASES = pytest.mark.parametrize(("case", "kind", "options"), MODEL_CASES, ids=CASE_IDS)
NOISE_CASES = pytest.mark.parametrize(
    ("case", "kind", "options"), NOISE_AWARE, ids=[c[0] for c in NOISE_AWARE]
)


def _log_prob(
    model: SpectralModel,
    flux: torch.Tensor,
    ivar: torch.Tensor | None,
    context: torch.Tensor,
    seed: int = 0,
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return model.observed_log_prob(flux, ivar, context, generator=generator)


def test_registry_covers_every_class() -> None:
    assert {case[1] for case in MODEL_CASES} == set(MODEL_KINDS)


@CASES
def test_distribution_shapes(case: str, kind: str, options: dict[str, Any]) -> None:
    model = perturbed_model(kind, P, L, options)
    flux, _, context = random_batch(N, P, L)
    dist = model(context)
    assert dist.batch_shape == (N,)
    assert dist.event_shape == (P,)
    assert isinstance(dist.log_prob_is_exact, bool)
    log_prob = dist.log_prob(flux)
    assert log_prob.shape == (N,)
    assert torch.isfinite(log_prob).all()
    draws = dist.sample((3,))
    assert draws.shape == (3, N, P)
    assert torch.isfinite(draws).all()
    assert dist.log_prob(draws).shape == (3, N)
    assert dist.rsample((2,)).requires_grad


@NOISE_CASES
def test_noisy_samples_are_nan_exactly_at_masked_pixels(
    case: str, kind: str, options: dict[str, Any]
) -> None:
    model = perturbed_model(kind, P, L, options)
    _, ivar, context = random_batch(N, P, L)
    draws = model(context, ivar=ivar).sample((4,))
    assert torch.equal(torch.isnan(draws), (ivar == 0).expand(4, N, P))


@CASES
def test_stars_are_independent_in_a_batch(case: str, kind: str, options: dict[str, Any]) -> None:
    model = perturbed_model(kind, P, L, options)
    flux, ivar, context = random_batch(N, P, L)
    flux = flux.requires_grad_(True)
    log_prob = _log_prob(model, flux, ivar, context)
    (grad,) = torch.autograd.grad(log_prob[0], flux)
    assert grad[1:].abs().max() == 0
    assert grad[0].abs().max() > 0

    others_flux, others_ivar, others_context = random_batch(N, P, L, seed=9)
    flux2 = torch.cat([flux[:1].detach(), others_flux[1:]])
    ivar2 = torch.cat([ivar[:1], others_ivar[1:]])
    context2 = torch.cat([context[:1], others_context[1:]])
    log_prob2 = _log_prob(model, flux2, ivar2, context2)
    torch.testing.assert_close(log_prob2[0], log_prob[0].detach(), rtol=0, atol=1e-12)

    sample = model(context).sample(generator=torch.Generator().manual_seed(3))
    sample2 = model(context2).sample(generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sample2[0], sample[0], rtol=0, atol=1e-12)


@CASES
def test_every_parameter_receives_a_gradient(case: str, kind: str, options: dict[str, Any]) -> None:
    model = perturbed_model(kind, P, L, options)
    flux, ivar, context = random_batch(N, P, L)
    model.loss(flux, ivar, context).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().max() > 0, name


@CASES
@pytest.mark.parametrize("garbage", [0.0, 1e6, math.nan, -math.inf])
def test_masked_pixels_have_no_influence(
    case: str, kind: str, options: dict[str, Any], garbage: float
) -> None:
    model = perturbed_model(kind, P, L, options)
    flux, ivar, context = random_batch(N, P, L)
    masked = ivar == 0
    assert masked.any()

    def value_and_grads(f: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        log_prob = _log_prob(model, f, ivar, context)
        log_prob.sum().backward()
        return log_prob.detach(), [p.grad.clone() for p in model.parameters()]

    reference, grads = value_and_grads(torch.where(masked, 1.0, flux))
    spoiled, spoiled_grads = value_and_grads(torch.where(masked, garbage, flux))
    torch.testing.assert_close(spoiled, reference, rtol=0, atol=1e-12)
    for g, h in zip(spoiled_grads, grads, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, h, rtol=0, atol=1e-12)


@CASES
def test_save_and_load_round_trip(
    case: str, kind: str, options: dict[str, Any], tmp_path: Any
) -> None:
    model = perturbed_model(kind, P, L, options)
    flux, ivar, context = random_batch(N, P, L)
    config = json.loads(json.dumps(model.config))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    clone = build_model(**config)
    clone.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    assert clone.config == model.config
    torch.testing.assert_close(
        _log_prob(clone, flux, ivar, context), _log_prob(model, flux, ivar, context), rtol=0, atol=0
    )


@CASES
def test_fixed_seed_gives_identical_samples(case: str, kind: str, options: dict[str, Any]) -> None:
    model = perturbed_model(kind, P, L, options)
    _, _, context = random_batch(N, P, L)

    def draw(seed: int) -> torch.Tensor:
        return model(context, generator=torch.Generator().manual_seed(seed)).sample((2,))

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


@CASES
def test_temperature_shrinks_the_spread(case: str, kind: str, options: dict[str, Any]) -> None:
    model = perturbed_model(kind, P, L, options)
    _, _, context = random_batch(1, P, L)
    draws = {}
    for temperature in (1.0, 0.3):
        dist = model(context, temperature=temperature)
        draws[temperature] = dist.sample((400,), generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(dist.log_prob(draws[temperature])).all()
    spread = {t: d.std(0).mean() for t, d in draws.items()}
    assert spread[0.3] < 0.6 * spread[1.0]
    if kind in ("cannon", "factor_analysis"):  # linear in the base draws: exact scaling
        mean = model(context).mean
        torch.testing.assert_close(draws[0.3] - mean, 0.3 * (draws[1.0] - mean))


@CASES
def test_float32_works(case: str, kind: str, options: dict[str, Any]) -> None:
    model = perturbed_model(kind, P, L, options)
    flux, ivar, context = random_batch(N, P, L)
    reference = _log_prob(model, flux, ivar, context)
    model = model.float()
    log_prob = _log_prob(model, flux.float(), ivar.float(), context.float())
    assert log_prob.dtype == torch.float32
    if model(context.float()).log_prob_is_exact:
        torch.testing.assert_close(log_prob.double(), reference.detach(), rtol=1e-4, atol=1e-3)
    else:  # float32 and float64 draw different importance samples: agree within the noise
        estimates = []
        for dtype in (torch.float32, torch.float64):
            model = model.to(dtype)
            estimates.append(
                model.log_prob_estimate(flux.to(dtype), ivar.to(dtype), context.to(dtype), 4096)
            )
        difference = (estimates[0].log_prob.double() - estimates[1].log_prob).abs()
        error = estimates[0].std_error.double() + estimates[1].std_error
        assert (difference < 6 * error + 1e-3).all()
        model.float()
    model.loss(flux.float(), ivar.float(), context.float()).backward()
    assert model(context.float()).sample().dtype == torch.float32


@CASES
def test_unconditional_models(case: str, kind: str, options: dict[str, Any]) -> None:
    model = perturbed_model(kind, P, 0, options)
    flux, ivar, _ = random_batch(N, P, 0)
    dist = model()
    assert dist.batch_shape == ()
    assert dist.log_prob(flux).shape == (N,)
    assert dist.sample((3,)).shape == (3, P)
    assert torch.isfinite(model.loss(flux, ivar, None))
    if model.noise_aware:
        noisy = model(ivar=ivar)
        assert noisy.batch_shape == (N,)
        assert noisy.sample().shape == (N, P)


@CASES
def test_initialize_from_data_sets_buffers(case: str, kind: str, options: dict[str, Any]) -> None:
    model = build_model(kind, P, L, **options)
    flux, ivar, context = random_batch(200, P, L, masked_fraction=0.1)
    flux = torch.where(ivar == 0, math.nan, flux)
    model.initialize_from_data(flux, ivar, 1000 + 10 * context)
    observed = ivar > 0
    mean = torch.where(observed, flux, 0.0).sum(0) / observed.sum(0)
    torch.testing.assert_close(model.flux_loc, mean)
    torch.testing.assert_close(model.context_loc, (1000 + 10 * context).mean(0))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model.loss(flux, ivar, 1000 + 10 * context))
    inside = model.context_in_support(torch.tensor([[1000.0, 1000.0], [5000.0, 1000.0]]))
    assert inside.tolist() == [True, False]
