"""Bijections: inverse, log|det J| against autograd, coupling sparsity, normalisation."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.distributions import Transform

from stellarflow.flows.coupling import SpectralCouplingFlow, coupling_masks
from stellarflow.flows.latent import FlowPrior, LatentFlowModel
from stellarflow.flows.splines import RationalQuadraticSpline
from stellarflow.flows.transforms import PixelAffineTransform
from tests.flows._helpers import MODEL_CASES, perturbed_model, random_batch

COUPLING_OPTIONS = next(case[2] for case in MODEL_CASES if case[1] == "coupling")
LATENT_OPTIONS = next(case[2] for case in MODEL_CASES if case[1] == "latent_flow")


def _check_bijection(transform: Transform, x: torch.Tensor) -> torch.Tensor:
    """inverse(forward(x)) == x and ladj == slogdet(autograd Jacobian); returns the Jacobian."""
    y, ladj = transform.call_and_ladj(x)
    torch.testing.assert_close(transform.inv(y), x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(transform(x), y)
    jac = jacobian(lambda v: transform(v), x)
    sign, logdet = torch.linalg.slogdet(jac)
    assert sign > 0
    torch.testing.assert_close(ladj, logdet, rtol=1e-9, atol=1e-9)
    return jac


def test_pixel_affine() -> None:
    shift, scale = torch.randn(6), torch.rand(6) + 0.1
    _check_bijection(PixelAffineTransform(shift, scale), torch.randn(6))


def test_spline_jacobian_inverse_and_identity_outside_bound() -> None:
    generator = torch.Generator().manual_seed(0)
    widths, heights = torch.randn(2, 9, 5, generator=generator)
    slopes = torch.randn(9, 4, generator=generator)
    spline = RationalQuadraticSpline(widths, heights, slopes, bound=3.0)
    x = torch.linspace(-4, 4, 9)
    y, ladj = spline.call_and_ladj(x)
    torch.testing.assert_close(spline.inv(y), x)
    derivative = torch.diagonal(jacobian(lambda v: spline(v), x))
    torch.testing.assert_close(ladj, derivative.log())
    torch.testing.assert_close(y[[0, -1]], x[[0, -1]])  # |x| > bound: identity


def test_zero_parameter_spline_is_identity() -> None:
    spline = RationalQuadraticSpline(torch.zeros(5, 8), torch.zeros(5, 8), torch.zeros(5, 7))
    x = torch.linspace(-6, 6, 5)
    y, ladj = spline.call_and_ladj(x)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(ladj, torch.zeros(5))


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_coupling_layer_jacobian_and_sparsity(layer: int) -> None:
    n_pixels = 9
    model = perturbed_model("coupling", n_pixels, 2, COUPLING_OPTIONS)
    assert isinstance(model, SpectralCouplingFlow)
    context = torch.randn(2)
    embedding = model.embedding(model.standardize_context(context))
    coupling = model.layers[layer]
    jac = _check_bijection(coupling(embedding), torch.randn(n_pixels))
    const, moved = coupling.mask, ~coupling.mask
    # Constant half: identity rows. Moved half: diagonal among moved pixels, dense on const.
    torch.testing.assert_close(jac[const], torch.eye(n_pixels)[const])
    block = jac[moved][:, moved]
    assert torch.count_nonzero(block - torch.diag(torch.diagonal(block))) == 0
    assert (torch.diagonal(block) > 0).all()
    assert (jac[moved][:, const] != 0).all()


def test_coupling_masks_alternate_and_balance() -> None:
    masks = coupling_masks(11, 6, seed=3)
    assert torch.equal(masks[0], torch.arange(11) % 2 == 0)
    for pair in range(3):
        assert torch.equal(masks[2 * pair], ~masks[2 * pair + 1])
        assert masks[2 * pair].sum() == 6
    assert not torch.equal(masks[2], masks[0])
    assert not torch.equal(masks[2], ~masks[0])


def test_full_coupling_flow_is_a_bijection_with_exact_log_prob() -> None:
    n_pixels = 8
    model = perturbed_model("coupling", n_pixels, 2, COUPLING_OPTIONS)
    context = torch.randn(2)
    transform = model.transform(context)
    x = model.flux_loc + model.flux_scale * torch.randn(n_pixels)
    jac = _check_bijection(transform, x)
    y = transform(x)
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = normal.log_prob(y).sum() + torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(model(context[None]).log_prob(x[None])[0], expected)


def test_latent_prior_flow_jacobian_and_sample_density() -> None:
    model = perturbed_model("latent_flow", 5, 2, {**LATENT_OPTIONS, "n_latent": 3})
    assert isinstance(model, LatentFlowModel)
    context = torch.randn(2)
    flow = model.prior_flow(model.standardize_context(context))
    _check_bijection(flow.transform, torch.randn(3))
    prior = FlowPrior(flow, temperature=0.7)
    eps = torch.randn(10, 3)
    z = prior.transform_base(eps)
    z_again, ladj = flow.transform.inv.call_and_ladj(0.7 * eps)
    torch.testing.assert_close(z_again, z)
    expected = torch.distributions.Normal(0.0, 0.7).log_prob(0.7 * eps).sum(-1) - ladj
    torch.testing.assert_close(prior.log_prob(z), expected)


def test_coupling_sample_density_equals_log_prob() -> None:
    model = perturbed_model("coupling", 7, 2, COUPLING_OPTIONS)
    _, _, context = random_batch(4, 7, 2)
    for temperature in (1.0, 0.5):
        dist = model(context, temperature=temperature)
        x, log_prob = dist.rsample_and_log_prob((3,), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(log_prob, dist.log_prob(x))


def _trapezoid_weights(axes: list[torch.Tensor]) -> torch.Tensor:
    """Weights of the product trapezoid rule on the grid ``cartesian_prod(*axes)``."""
    weights = []
    for axis in axes:
        w = torch.zeros_like(axis)
        step = axis[1:] - axis[:-1]
        w[1:] += step / 2
        w[:-1] += step / 2
        weights.append(w)
    return torch.cartesian_prod(*weights).reshape(-1, len(axes)).prod(-1)


def _normalisation(kind: str, options: dict[str, Any], n_pixels: int, n_grid: int) -> None:
    """Quadrature of exp(log_prob) on a grid, noise-free and (noise-aware models) with noise
    and, in 2-D, one masked pixel. For estimated densities exp(estimate) is unbiased for p;
    the tolerance adds 4x the quadrature of the estimate's reported standard errors."""
    if kind == "latent_flow":
        options = {**options, "n_importance": 256 if n_pixels == 1 else 128}
    model = perturbed_model(kind, n_pixels, 1, options)
    with torch.no_grad():
        model.flux_loc.fill_(1.0)
        model.flux_scale.fill_(0.1)
        if kind == "latent_flow":  # an informative likelihood keeps the estimate's noise low
            model.loading.mul_(3)
    axis = torch.linspace(-2.0, 4.0, n_grid)
    grid = torch.cartesian_prod(*[axis] * n_pixels).reshape(-1, n_pixels)
    context = torch.full((grid.shape[0], 1), 0.3)
    ivars = [None] if kind == "coupling" else [None, torch.full((grid.shape[0], n_pixels), 300.0)]
    for ivar in ivars:
        axes = [axis] * n_pixels
        if ivar is not None and n_pixels == 2:
            ivar[:, 1] = 0  # pixel 1 masked: the density is over pixel 0 only
            axes = [axis]
        log_prob, error = [], []
        for part in torch.split(torch.arange(grid.shape[0]), 2000):
            kwargs = {} if ivar is None else {"ivar": ivar[part]}
            generator = torch.Generator().manual_seed(int(part[0]))
            with torch.no_grad():
                dist = model(context[part], generator=generator, **kwargs)
                if dist.log_prob_is_exact:
                    log_prob.append(dist.log_prob(grid[part]))
                    error.append(torch.zeros(len(part)))
                else:
                    estimate = dist.log_prob_estimate(grid[part])
                    log_prob.append(estimate.log_prob)
                    error.append(estimate.std_error)
        density, rel_error = torch.cat(log_prob).exp(), torch.cat(error)
        if len(axes) < n_pixels:  # one value of the masked pixel (any would do)
            keep = grid[:, 1] == axis[0]
            density, rel_error = density[keep], rel_error[keep]
        weights = _trapezoid_weights(axes)
        total = float((weights * density).sum())
        noise = float((weights * density * rel_error).pow(2).sum().sqrt())
        assert abs(total - 1) < 0.003 + 4 * noise, (kind, ivar is not None, total, noise)
        assert noise < 0.03, noise  # the check has power


ONE_D = [
    pytest.param("cannon", {}, id="cannon"),
    pytest.param("factor_analysis", {"n_latent": 1}, id="factor_analysis"),
    pytest.param("latent_flow", {**LATENT_OPTIONS, "n_latent": 1}, id="latent_flow"),
    pytest.param(
        "latent_flow",
        {**LATENT_OPTIONS, "n_latent": 1, "proposal": "likelihood"},
        id="latent_flow_likelihood",
    ),
]
TWO_D = [
    pytest.param("cannon", {}, id="cannon"),
    pytest.param("factor_analysis", {"n_latent": 2}, id="factor_analysis"),
    pytest.param("coupling", {**COUPLING_OPTIONS, "conv_kernel": 1}, id="coupling"),
    pytest.param("latent_flow", {**LATENT_OPTIONS, "n_latent": 2}, id="latent_flow"),
    pytest.param(
        "latent_flow",
        {**LATENT_OPTIONS, "n_latent": 1, "proposal": "likelihood"},
        id="latent_flow_likelihood",
    ),
]


@pytest.mark.parametrize(("kind", "options"), ONE_D)
def test_density_integrates_to_one_in_1d(kind: str, options: dict[str, Any]) -> None:
    _normalisation(kind, options, n_pixels=1, n_grid=1001)


@pytest.mark.parametrize(("kind", "options"), TWO_D)
def test_density_integrates_to_one_in_2d(kind: str, options: dict[str, Any]) -> None:
    _normalisation(kind, options, n_pixels=2, n_grid=81 if kind == "latent_flow" else 241)
