"""The closed-form ECM polish of factor analysis: ascent, stationarity, truth, masks, refusals."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from stellarflow.flows import FlowInputError, build_model
from stellarflow.flows.polish import (
    PARTS,
    PolishStep,
    polish_factor_analysis,
    polish_intrinsic_variance,
)

N_STARS, N_PIXELS, N_LATENT = 2000, 12, 2


def _survey(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Factor-analysis spectra with a label-dependent mean and S/N spread over 10x."""
    flux, ivar, labels, _ = _survey_with_truth(seed)
    return flux, ivar, labels


def _survey_with_truth(
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_survey` and the sample covariance of its noise-free spectra about their mean."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.rand(N_STARS, 1, generator=gen, dtype=torch.float64)
    loading = 0.05 * torch.randn(N_PIXELS, N_LATENT, generator=gen, dtype=torch.float64)
    tau = 0.01 + 0.03 * torch.rand(N_PIXELS, generator=gen, dtype=torch.float64)
    mean = 1 - 0.3 * labels * torch.linspace(0.2, 1, N_PIXELS, dtype=torch.float64)
    z = torch.randn(N_STARS, N_LATENT, generator=gen, dtype=torch.float64)
    scatter = z @ loading.T + tau * torch.randn(
        N_STARS, N_PIXELS, generator=gen, dtype=torch.float64
    )
    intrinsic = mean + scatter
    sigma = (0.003 + 0.05 * torch.rand(N_STARS, 1, generator=gen, dtype=torch.float64)).expand(
        -1, N_PIXELS
    )
    flux = intrinsic + sigma * torch.randn(N_STARS, N_PIXELS, generator=gen, dtype=torch.float64)
    ivar = 1 / sigma**2
    ivar = torch.where(torch.rand(ivar.shape, generator=gen) < 0.05, 0.0, ivar)
    return flux, ivar, labels * 1000 + 4000, scatter.T.cov()


def _model(flux, ivar, labels, **options):
    torch.manual_seed(0)
    model = build_model("factor_analysis", N_PIXELS, 1, n_latent=N_LATENT, **options).double()
    model.initialize_from_data(flux, ivar, labels)
    with torch.no_grad():
        model.log_intrinsic_var.add_(math.log(4.0))  # a poorly converged tau^2: too large
        model.loading.mul_(1.5)  # and loadings too large, as Adam leaves them
    return model


def _mean_log_prob(model, flux, ivar, labels) -> float:
    with torch.no_grad():
        return float(model.observed_log_prob(flux, ivar, labels).mean())


def test_polish_raises_the_likelihood_every_iteration():
    flux, ivar, labels = _survey()
    model = _model(flux, ivar, labels)
    values = [_mean_log_prob(model, flux, ivar, labels)]
    for _ in range(5):
        polish_intrinsic_variance(model, flux, ivar, labels, n_iter=1)
        values.append(_mean_log_prob(model, flux, ivar, labels))
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(values))
    assert values[-1] > values[0] + 0.1  # nats per star: a real improvement


def test_polish_converges_to_a_stationary_point_of_the_exact_likelihood():
    flux, ivar, labels = _survey(1)
    model = _model(flux, ivar, labels)

    def gradient() -> torch.Tensor:
        model.zero_grad()
        model.loss(flux, ivar, labels).backward()
        return model.log_intrinsic_var.grad.detach().clone()

    before = gradient().abs().max()
    polish_intrinsic_variance(model, flux, ivar, labels, n_iter=25)
    after = gradient().abs().max()
    assert after < 1e-3 * before


def test_masked_pixels_do_not_change_the_polish():
    flux, ivar, labels = _survey(2)
    results = []
    for garbage in (0.0, 1e6, math.nan):
        model = _model(flux, ivar, labels)
        dirty = torch.where(ivar > 0, flux, torch.full_like(flux, garbage))
        polish_intrinsic_variance(model, dirty, ivar, labels, n_iter=2)
        results.append(model.log_intrinsic_var.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    torch.testing.assert_close(results[0], results[2], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("latent_flow", {"n_latent": 2, "flow_hidden": 8, "flow_transforms": 2}),
        ("cannon", {}),
    ],
)
def test_models_without_a_gaussian_latent_are_refused(kind, options):
    model = build_model(kind, N_PIXELS, 1, **options)
    flux = torch.ones(4, N_PIXELS)
    with pytest.raises(FlowInputError, match=r"factor_analysis"):
        polish_factor_analysis(model, flux, torch.ones_like(flux), torch.ones(4, 1))


def test_unknown_parts_are_refused():
    model = build_model("factor_analysis", N_PIXELS, 1, n_latent=2)
    flux = torch.ones(4, N_PIXELS)
    with pytest.raises(FlowInputError, match="parts"):
        polish_factor_analysis(
            model, flux, torch.ones_like(flux), torch.ones(4, 1), parts=("loading",)
        )


def test_ivar_of_the_wrong_shape_is_refused():
    model = build_model("factor_analysis", N_PIXELS, 1, n_latent=2)
    flux = torch.ones(4, N_PIXELS)
    with pytest.raises(FlowInputError):
        polish_intrinsic_variance(model, flux, torch.ones(3, N_PIXELS), torch.ones(4, 1))


OPTIONS = [
    {},
    {"label_dependent_loading": True},
    {"label_dependent_variance": True},
    {"label_dependent_loading": True, "loading_degree": 2, "label_dependent_variance": True},
]


@pytest.mark.parametrize("options", OPTIONS)
def test_full_ecm_raises_the_likelihood_every_iteration(options):
    flux, ivar, labels = _survey(3)
    model = _model(flux, ivar, labels, **options)
    values = [_mean_log_prob(model, flux, ivar, labels)]
    steps = []
    for _ in range(6):
        steps += polish_factor_analysis(model, flux, ivar, labels, n_iter=1)
        values.append(_mean_log_prob(model, flux, ivar, labels))
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(values)), values
    assert values[-1] > values[0] + 0.5  # nats per star
    assert all(isinstance(step, PolishStep) for step in steps)
    assert steps[0].mean_loading_change > steps[-1].mean_loading_change > 0


@pytest.mark.parametrize("options", OPTIONS[:3])
def test_full_ecm_converges_to_a_stationary_point_in_every_parameter(options):
    flux, ivar, labels = _survey(4)
    model = _model(flux, ivar, labels, **options)

    def gradient() -> float:
        model.zero_grad()
        model.loss(flux, ivar, labels).backward()
        return max(
            float(p.grad.abs().max()) for name, p in model.named_parameters() if p.grad is not None
        )

    before = gradient()
    polish_factor_analysis(model, flux, ivar, labels, n_iter=60)
    assert gradient() < 1e-2 * before


def test_full_ecm_recovers_the_intrinsic_covariance():
    """Maximum likelihood from a poor start: the deconvolved covariance is the sample's.

    The noise-free spectra's own sample covariance is the answer (not the population's: at
    2,000 stars their variances differ by a few per cent).
    """
    flux, ivar, labels, truth = _survey_with_truth(5)
    model = _model(flux, ivar, labels)
    polish_factor_analysis(model, flux, ivar, labels, n_iter=40)
    with torch.no_grad():
        factors = model.covariance(labels[:1])
        loading = factors.loading[0]
        fitted = loading @ factors.latent_cov[0] @ loading.T + torch.diag(factors.intrinsic_var)
    ratio = fitted.diagonal() / truth.diagonal()
    assert float((ratio - 1).abs().max()) < 0.08, ratio  # noise: a few per cent per pixel
    scale = truth.diagonal().sqrt()
    corr_error = (fitted - truth) / (scale[:, None] * scale[None, :])
    assert float(corr_error.abs().max()) < 0.08


def test_masked_pixels_do_not_change_the_full_ecm():
    flux, ivar, labels = _survey(6)
    results = []
    for garbage in (0.0, 1e6, math.nan):
        model = _model(flux, ivar, labels, label_dependent_loading=True)
        dirty = torch.where(ivar > 0, flux, torch.full_like(flux, garbage))
        polish_factor_analysis(model, dirty, ivar, labels, n_iter=2)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    torch.testing.assert_close(results[0], results[2], rtol=0, atol=0)


def test_a_pixel_masked_in_every_star_keeps_its_mean_and_scatter():
    """No data, no update (its loading only follows the shared re-scaling of the latents)."""
    flux, ivar, labels = _survey(7)
    ivar[:, 3] = 0.0
    model = _model(flux, ivar, labels)
    before = (model.mean.theta[:, 3].clone(), model.log_intrinsic_var[3].clone())
    polish_factor_analysis(model, flux, ivar, labels, n_iter=2)
    torch.testing.assert_close(model.mean.theta[:, 3], before[0], rtol=0, atol=0)
    torch.testing.assert_close(model.log_intrinsic_var[3], before[1], rtol=0, atol=0)
    assert torch.isfinite(torch.cat([p.detach().flatten() for p in model.parameters()])).all()


def test_full_ecm_with_label_errors_converges_on_their_marginal_likelihood():
    """The CM-step for [z; e]: ascent and stationarity of the label-error likelihood."""
    flux, ivar, labels = _survey(8)
    errors = torch.full_like(labels, 30.0)  # K, on labels spread over 1,000 K
    model = _model(flux, ivar, labels)

    def loss() -> torch.Tensor:
        return model.loss(flux, ivar, labels, context_err=errors)

    def value() -> float:
        with torch.no_grad():
            return float(loss())

    def gradient() -> float:
        model.zero_grad()
        loss().backward()
        return max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)

    values, before = [value()], gradient()
    for _ in range(3):
        polish_factor_analysis(model, flux, ivar, labels, n_iter=1, context_err=errors)
        values.append(value())
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(values)), values
    polish_factor_analysis(model, flux, ivar, labels, n_iter=60, context_err=errors)
    assert gradient() < 1e-2 * before


def test_quadratic_loadings_fit_a_curved_truth_with_three_labels():
    """Three labels (pairs ordered as in ``loading_at``): degree 2 beats degree 1 held out."""
    gen = torch.Generator().manual_seed(9)
    n, p, k = 3000, 16, 3
    lab = torch.rand(n, 3, generator=gen, dtype=torch.float64)

    def draw(*shape):
        return 0.05 * torch.randn(*shape, generator=gen, dtype=torch.float64)

    loading = draw(p, k) + torch.einsum("nl,lpk->npk", lab, draw(3, p, k))
    loading = loading + (lab[:, 0] * lab[:, 2])[:, None, None] * draw(p, k)  # curvature
    z = torch.randn(n, k, generator=gen, dtype=torch.float64)
    mean = 1 - 0.2 * lab @ torch.rand(3, p, generator=gen, dtype=torch.float64)
    scatter = 0.01 * torch.randn(n, p, generator=gen, dtype=torch.float64)
    intrinsic = mean + (loading @ z[:, :, None]).squeeze(-1) + scatter
    sigma = 0.003 + 0.02 * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    flux = intrinsic + sigma * torch.randn(n, p, generator=gen, dtype=torch.float64)
    ivar = (1 / sigma**2).expand(n, p).clone()
    context = lab * torch.tensor([1000.0, 2.0, 1.0], dtype=torch.float64)
    train, test = slice(0, 2000), slice(2000, n)
    held_out = {}
    for degree in (1, 2):
        torch.manual_seed(0)
        model = build_model(
            "factor_analysis", p, 3, n_latent=k, label_dependent_loading=True,
            loading_degree=degree,
        ).double()  # fmt: skip
        model.initialize_from_data(flux[train], ivar[train], context[train])
        values = []
        for _ in range(6):
            polish_factor_analysis(model, flux[train], ivar[train], context[train], n_iter=1)
            values.append(_mean_log_prob(model, flux[train], ivar[train], context[train]))
        assert all(b >= a - 1e-9 for a, b in itertools.pairwise(values)), values
        held_out[degree] = _mean_log_prob(model, flux[test], ivar[test], context[test])
    assert held_out[2] > held_out[1] + 0.5  # nats per star


def test_latent_scales_recover_a_scatter_that_grows_towards_the_label_edge():
    """Latent amplitude e^{1.2 l} (l standardised): the scale step finds the slope.

    Without it (``parts`` lacking ``"latent_scale"``) the scales stay at zero and held-out
    stars at the edges are under-predicted; with it, the fitted slope is the truth's to
    within its sampling error and the held-out likelihood is higher.
    """
    gen = torch.Generator().manual_seed(10)
    n, p, k, slope = 4000, 16, 2, 1.2
    lab = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    loading = 0.05 * torch.randn(p, k, generator=gen, dtype=torch.float64)
    z = torch.randn(n, k, generator=gen, dtype=torch.float64) * torch.exp(slope * lab)
    mean = 1 - 0.2 * lab * torch.linspace(0.2, 1, p, dtype=torch.float64)
    scatter = 0.01 * torch.randn(n, p, generator=gen, dtype=torch.float64)
    sigma = 0.003 + 0.02 * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    noise = sigma * torch.randn(n, p, generator=gen, dtype=torch.float64)
    flux = mean + z @ loading.T + scatter + noise
    ivar = (1 / sigma**2).expand(n, p).clone()
    context = 4500 + 300 * lab
    train, test = slice(0, 3000), slice(3000, n)
    held_out, slopes = {}, {}
    for parts in (("mean_loading", "intrinsic_var"), PARTS):
        torch.manual_seed(0)
        model = build_model(
            "factor_analysis", p, 1, n_latent=k, label_dependent_variance=True
        ).double()
        model.initialize_from_data(flux[train], ivar[train], context[train])
        values = []
        for _ in range(30):
            polish_factor_analysis(
                model, flux[train], ivar[train], context[train], n_iter=1, parts=parts
            )
            values.append(_mean_log_prob(model, flux[train], ivar[train], context[train]))
        assert all(b >= a - 1e-9 for a, b in itertools.pairwise(values)), values
        held_out[parts] = _mean_log_prob(model, flux[test], ivar[test], context[test])
        # the model's slope is per standardised label, (T - loc) / scale: per 300 K here
        std = float(model.context_scale[0])
        slopes[parts] = model.latent_scale_slopes[0].detach() * 300 / std
    assert torch.all(slopes[("mean_loading", "intrinsic_var")] == 0)
    torch.testing.assert_close(slopes[PARTS], torch.full((k,), slope, dtype=torch.float64),
                               atol=0.1, rtol=0)  # fmt: skip
    assert held_out[PARTS] > held_out[("mean_loading", "intrinsic_var")] + 1.0


def _fitted_with_variance(seed: int, n: int = 400):
    """Factor analysis fitted by ECM to ``n`` stars of :func:`_survey`, with the estimate."""
    flux, ivar, labels = _survey(seed)
    flux, ivar, labels = flux[:n], ivar[:n], labels[:n]
    model = _model(flux, ivar, labels)
    polish_factor_analysis(model, flux, ivar, labels, n_iter=25, coefficient_variance=True)
    return model


def _mahalanobis(model, flux, ivar, labels) -> torch.Tensor:
    """r^T C^-1 r per star with C built by hand from the model's parts (predictive variance
    included), checked against the model's own log_prob on the way."""
    std = model.standardize_context(labels)
    u, ivar_std = model.standardized(flux, ivar)
    loading = model.loading_at(std).expand(len(flux), -1, -1)
    var = model.predictive_var(std).expand(len(flux), -1) + 1 / ivar_std
    cov = loading @ loading.mT + torch.diag_embed(var)
    r = u - model.mean(std)
    chol = torch.linalg.cholesky(cov)
    maha = torch.cholesky_solve(r[..., None], chol)[..., 0].mul(r).sum(-1)
    logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    own = -0.5 * (maha + logdet + r.shape[-1] * math.log(2 * math.pi))
    own = own - model.flux_scale.log().sum()  # standardisation's Jacobian
    torch.testing.assert_close(model.observed_log_prob(flux, ivar, labels), own)
    return maha


@torch.no_grad()
def test_mean_variance_removes_its_share_of_the_held_out_chi2_excess():
    """Few training stars per coefficient: held-out stars sit further from a plug-in model
    than its covariance says. With the estimated variance of the fitted mean, the mean's
    share of the held-out excess of the Mahalanobis distance over its dof goes."""
    gen = torch.Generator().manual_seed(11)
    p, k, n_train, n_test = 48, 2, 150, 4000
    loading = 0.05 * torch.randn(p, k, generator=gen, dtype=torch.float64)
    tau = 0.005 + 0.01 * torch.rand(p, generator=gen, dtype=torch.float64)
    slope = torch.linspace(0.2, 1, p, dtype=torch.float64)

    def draw(n):
        lab = torch.rand(n, 1, generator=gen, dtype=torch.float64)
        z = torch.randn(n, k, generator=gen, dtype=torch.float64)
        sigma = 0.003 + 0.01 * torch.rand(n, 1, generator=gen, dtype=torch.float64)
        eps = torch.randn(n, p, generator=gen, dtype=torch.float64)
        flux = 1 - 0.3 * lab * slope + z @ loading.T + torch.sqrt(tau**2 + sigma**2) * eps
        return flux, (1 / sigma**2).expand(n, p).clone(), 4000 + 1000 * lab

    train, test = draw(n_train), draw(n_test)
    torch.manual_seed(0)
    model = build_model("factor_analysis", p, 1, n_latent=k).double()
    model.initialize_from_data(*train)
    polish_factor_analysis(model, *train, n_iter=40)
    excess = {"plug-in": float(_mahalanobis(model, *test).mean()) - p}
    polish_factor_analysis(model, *train, n_iter=0, coefficient_variance=True)
    excess["predictive"] = float(_mahalanobis(model, *test).mean()) - p
    # 5 coefficients per pixel (3 of the mean) from 150 stars, 48 pixels: excess 2.3,
    # standard error of each held-out mean ~0.15. The mean's share (~3/5) goes; the
    # loadings' part, which the model leaves out (FactorAnalysisModel.estimation_var), stays.
    assert excess["plug-in"] > 1.0, excess
    assert 0.3 * excess["plug-in"] < excess["plug-in"] - excess["predictive"], excess
    assert excess["predictive"] > 0, excess  # never over-corrected


def test_coefficient_variance_widens_predictions_and_survives_a_checkpoint(tmp_path):
    model = _fitted_with_variance(0)
    labels = torch.tensor([[4200.0], [4800.0]], dtype=torch.float64)
    std = model.standardize_context(labels)
    extra = model.estimation_var(std)
    assert extra.shape == (2, N_PIXELS) and bool((extra > 0).all())
    torch.testing.assert_close(model.predictive_var(std), model.intrinsic_var(std) + extra)
    larger = _fitted_with_variance(0, n=1600)  # four times the stars: ~a quarter the variance
    shrink = larger.estimation_var(larger.standardize_context(labels)) / extra
    assert 0.15 < float(shrink.median()) < 0.4, shrink
    refit = _fitted_with_variance(0)
    polish_factor_analysis(refit, *_survey(0), n_iter=1)  # a refit drops the stale estimate
    assert refit.estimation_var() is None
    torch.save(model.state_dict(), tmp_path / "model.pt")
    fresh = build_model("factor_analysis", N_PIXELS, 1, n_latent=N_LATENT).double()
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    torch.testing.assert_close(fresh.estimation_var(std), extra)
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("coef_var")}
    fresh.load_state_dict(old)  # a checkpoint from before the estimate: none, and no error
    assert fresh.estimation_var(std) is None
