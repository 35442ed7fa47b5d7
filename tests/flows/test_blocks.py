"""Evaluating many stars in row blocks (``in_row_blocks``, ``SpectralModel.block_rows``)
gives the same numbers as one block: blocks are a speed device, never a change of result."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch

from stellarflow.flows import SpectralModel, build_model
from stellarflow.flows.base import in_row_blocks
from tests.flows._helpers import NOISE_AWARE, perturbed_model, random_batch

P, L, N = 9, 2, 11
NOISE_CASES = pytest.mark.parametrize(
    ("case", "kind", "options"), NOISE_AWARE, ids=[c[0] for c in NOISE_AWARE]
)


class _Pair(NamedTuple):
    first: torch.Tensor
    second: torch.Tensor


def test_in_row_blocks_concatenates_tensors_and_named_tuples() -> None:
    x = torch.arange(20.0).reshape(10, 2)
    calls: list[int] = []

    def fn(a: torch.Tensor, b: None) -> _Pair:
        assert b is None
        calls.append(a.shape[0])
        return _Pair(a.sum(-1), 2 * a)

    out = in_row_blocks(fn, 4, x, None)
    assert calls == [4, 4, 2]
    assert isinstance(out, _Pair)
    assert torch.equal(out.first, x.sum(-1))
    assert torch.equal(out.second, 2 * x)
    assert torch.equal(in_row_blocks(lambda a: a + 1, 3, x), x + 1)


def test_in_row_blocks_calls_once_when_rows_suffice_or_shapes_do_not_align() -> None:
    calls: list[int] = []

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(a.shape[0])
        return a + b

    x = torch.ones(6, 3)
    in_row_blocks(fn, 6, x, x)
    in_row_blocks(fn, 2, x, torch.ones(3))  # a broadcast operand: no blocking
    assert calls == [6, 6]


def _blocked(model: SpectralModel, rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(type(model), "block_rows", lambda self, *args: rows)


@NOISE_CASES
def test_blocked_scores_equal_one_block(
    case: str, kind: str, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exact models give identical log_prob and posteriors; the latent flow with its
    importance draws gives the same value up to the estimate's noise (made tiny here by
    an identity flow, for which the log_prob estimate is exact)."""
    model = perturbed_model(kind, P, L, options)
    if kind == "latent_flow":
        options = {**options, "proposal": "posterior"}
        model = build_model(kind, P, L, **options)  # identity flow: the estimate is exact
        model.load_state_dict(
            {
                k: v
                for k, v in perturbed_model(kind, P, L, options).state_dict().items()
                if "prior_flow" not in k
            },
            strict=False,
        )
    flux, ivar, context = random_batch(N, P, L)
    errors = 0.3 * torch.rand(N, L, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = model.observed_log_prob(flux, ivar, context, context_err=errors)
        post_whole = model.posterior_mean(flux, ivar, context, context_err=errors)
        _blocked(model, 4, monkeypatch)
        blocked = model.observed_log_prob(flux, ivar, context, context_err=errors)
        post_blocked = model.posterior_mean(flux, ivar, context, context_err=errors)
    torch.testing.assert_close(blocked, whole, rtol=1e-10, atol=1e-8)
    if kind == "latent_flow":
        return  # its posterior moments are importance averages: other draws, other numbers
    torch.testing.assert_close(post_blocked.mean, post_whole.mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(post_blocked.std, post_whole.std, rtol=1e-10, atol=1e-10)


def test_blocked_gradients_equal_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    model = perturbed_model("factor_analysis", P, L, {"n_latent": 2})
    flux, ivar, context = random_batch(N, P, L)

    def gradients() -> list[torch.Tensor]:
        model.zero_grad()
        model.loss(flux, ivar, context).backward()
        return [p.grad.clone() for p in model.parameters()]

    whole = gradients()
    _blocked(model, 3, monkeypatch)
    for a, b in zip(gradients(), whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_block_rows_shrink_with_per_star_loadings() -> None:
    shared = build_model("factor_analysis", 7514, 3, n_latent=16)
    per_star = build_model("factor_analysis", 7514, 3, n_latent=16, label_dependent_loading=True)
    assert 64 <= shared.block_rows() <= 256
    assert 8 <= per_star.block_rows() < shared.block_rows() / 2
    assert shared.block_rows(label_errors=True) < shared.block_rows()
    # Training with one shared loading is fastest unblocked; per-star loadings still block.
    assert shared.block_rows(gradient=True) > 10**9
    assert per_star.block_rows(gradient=True) == per_star.block_rows()


def test_quadratic_loadings_start_at_the_linear_model() -> None:
    """loading_degree=2 adds terms that start at zero: a degree-1 model's weights load into
    it (as ``init_from`` does) and give the same log_prob; nonzero curvature changes it."""
    linear = perturbed_model(
        "factor_analysis", P, L, {"n_latent": 2, "label_dependent_loading": True}
    )
    quadratic = build_model(
        "factor_analysis", P, L, n_latent=2, label_dependent_loading=True, loading_degree=2
    )
    missing, unexpected = quadratic.load_state_dict(linear.state_dict(), strict=False)
    assert missing == ["loading_curvature"] and unexpected == []
    flux, ivar, context = random_batch(N, P, L)
    with torch.no_grad():
        torch.testing.assert_close(
            quadratic.observed_log_prob(flux, ivar, context),
            linear.observed_log_prob(flux, ivar, context),
        )
        quadratic.loading_curvature.normal_(0, 0.3)
        assert not torch.allclose(
            quadratic.observed_log_prob(flux, ivar, context),
            linear.observed_log_prob(flux, ivar, context),
        )
