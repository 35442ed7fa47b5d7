"""Small models and synthetic data shared by the flow tests (not collected by pytest)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from stellarflow.flows import SpectralModel, build_model

# (id, kind, options) for every model class, small enough for autograd Jacobians.
MODEL_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("cannon", "cannon", {}),
    ("factor_analysis", "factor_analysis", {"n_latent": 2}),
    ("factor_analysis_labelW", "factor_analysis", {"n_latent": 2, "label_dependent_loading": True}),
    (
        "factor_analysis_labelW2",
        "factor_analysis",
        {"n_latent": 2, "label_dependent_loading": True, "loading_degree": 2},
    ),
    ("factor_analysis_mlp", "factor_analysis", {"n_latent": 2, "mean_hidden": 4}),
    (
        "factor_analysis_labelvar",
        "factor_analysis",
        {"n_latent": 2, "label_dependent_variance": True},
    ),
    (
        "latent_flow",
        "latent_flow",
        {"n_latent": 2, "flow_hidden": 8, "flow_transforms": 2, "n_importance": 4},
    ),
    (
        "latent_flow_labelW_mlp",
        "latent_flow",
        {
            "n_latent": 2,
            "flow_hidden": 8,
            "flow_transforms": 2,
            "n_importance": 4,
            "label_dependent_loading": True,
            "mean_hidden": 4,
            "proposal": "likelihood",
        },
    ),
    (
        "coupling",
        "coupling",
        {
            "n_layers": 4,
            "bins": 4,
            "projection": 4,
            "hidden": 8,
            "head_rank": 3,
            "context_embedding": 4,
            "conv_channels": 2,
            "conv_kernel": 3,
        },
    ),
]
CASE_IDS = [case[0] for case in MODEL_CASES]
NOISE_AWARE = [case for case in MODEL_CASES if case[1] != "coupling"]


def perturbed_model(
    kind: str, n_pixels: int, n_context: int, options: dict[str, Any], seed: int = 0
) -> SpectralModel:
    """A model whose every parameter and buffer is random (nothing is trivially identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # deterministic initial weights, global RNG untouched
        torch.manual_seed(seed)
        model = build_model(kind, n_pixels, n_context, **options)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))
        model.flux_loc.copy_(1 + 0.1 * torch.randn(n_pixels, generator=generator))
        model.flux_scale.copy_(0.05 * (1 + torch.rand(n_pixels, generator=generator)))
        model.context_loc.copy_(torch.randn(n_context, generator=generator))
        model.context_scale.copy_(1 + torch.rand(n_context, generator=generator))
    return model


def random_batch(
    n_stars: int, n_pixels: int, n_context: int, seed: int = 1, masked_fraction: float = 0.2
) -> tuple[Tensor, Tensor, Tensor]:
    """flux, ivar (some pixels masked, at least one observed per star) and context."""
    generator = torch.Generator().manual_seed(seed)
    flux = 1 + 0.05 * torch.randn(n_stars, n_pixels, generator=generator)
    ivar = 400 * (0.5 + torch.rand(n_stars, n_pixels, generator=generator))
    masked = torch.rand(n_stars, n_pixels, generator=generator) < masked_fraction
    masked[:, 0] = False
    ivar[masked] = 0
    context = torch.randn(n_stars, n_context, generator=generator)
    return flux, ivar, context


def linear_gaussian_mock(
    n_stars: int,
    n_pixels: int,
    n_context: int,
    n_latent: int,
    seed: int,
    bimodal: bool = False,
    masked_fraction: float = 0.05,
) -> dict[str, Any]:
    """Spectra x = mu(c) + W z + tau eps + noise with known truth.

    mu is quadratic in the labels; noise is heteroscedastic (S/N 20-200 per star, varying
    along the pixels); masked pixels carry NaN flux. With ``bimodal`` the first latent is a
    two-component mixture (means -1.2, +1.2, std 0.45) instead of N(0, 1).
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randn(n_stars, n_context, generator=g)
    context = 4000 + 500 * labels  # "physical" units, so the model must standardise
    t = 1 + n_context + n_context * (n_context + 1) // 2
    theta = 0.03 * torch.randn(t, n_pixels, generator=g)
    theta[0] = 0.9 + 0.05 * torch.rand(n_pixels, generator=g)
    i, j = torch.triu_indices(n_context, n_context)
    features = torch.cat([torch.ones(n_stars, 1), labels, labels[:, i] * labels[:, j]], dim=1)
    mean = features @ theta
    loading = 0.02 * torch.randn(n_pixels, n_latent, generator=g)
    tau = 0.004 + 0.004 * torch.rand(n_pixels, generator=g)
    z = torch.randn(n_stars, n_latent, generator=g)
    component = torch.rand(n_stars, generator=g) < 0.5
    if bimodal:
        z[:, 0] = torch.where(component, 1.2, -1.2) + 0.45 * z[:, 0]
    intrinsic = mean + z @ loading.T + tau * torch.randn(n_stars, n_pixels, generator=g)
    snr = 20 + 180 * torch.rand(n_stars, 1, generator=g)
    sigma = (1 + 0.5 * torch.rand(n_stars, n_pixels, generator=g)) / snr
    flux = intrinsic + sigma * torch.randn(n_stars, n_pixels, generator=g)
    ivar = 1 / sigma**2
    masked = torch.rand(n_stars, n_pixels, generator=g) < masked_fraction
    ivar[masked] = 0
    flux[masked] = math.nan
    return {
        "flux": flux,
        "ivar": ivar,
        "context": context,
        "mean": mean,
        "loading": loading,
        "tau": tau,
        "bimodal": bimodal,
        "intrinsic": intrinsic,
    }


def oracle_log_prob(mock: dict[str, Any], index: slice) -> Tensor:
    """Exact log p(flux_O | c) per star of the mock (mixture of MVNs when bimodal)."""
    flux, ivar = mock["flux"][index], mock["ivar"][index]
    mean, loading, tau = mock["mean"][index], mock["loading"], mock["tau"]
    if mock["bimodal"]:
        shift = torch.zeros(loading.shape[1])
        shift[0] = 1.2
        scales = torch.ones(loading.shape[1])
        scales[0] = 0.45
        parts = [(0.5, shift), (0.5, -shift)]
    else:
        scales = torch.ones(loading.shape[1])
        parts = [(1.0, torch.zeros(loading.shape[1]))]
    out = []
    for n in range(flux.shape[0]):
        o = ivar[n] > 0
        w = loading[o] * scales
        cov = w @ w.T + torch.diag(tau[o] ** 2 + 1 / ivar[n, o])
        terms = [
            math.log(weight)
            + MultivariateNormal(mean[n, o] + loading[o] @ m, cov).log_prob(flux[n, o])
            for weight, m in parts
        ]
        out.append(torch.logsumexp(torch.stack(terms), 0))
    return torch.stack(out)
