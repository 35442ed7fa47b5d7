r"""Distributions of spectra returned by the models (``model(context, ivar=...)``).

Each is a :class:`torch.distributions.Distribution` with batch shape `(n_stars,)` and event
shape `(n_pixels,)`, flux in its own (continuum-normalised) units:

* :class:`DiagonalGaussianSpectra`: :math:`x_i \sim N(\mu_i, v_i)` independently (exact);
* :class:`LatentGaussianSpectra`: :math:`x = m + s \odot (\mu + W z + \epsilon)` with a
  Gaussian prior on z (exact, closed form) or a flow prior on z (importance-sampled
  estimate).

Conventions shared by all:

* ``ivar`` given: the distribution is that of the *observed* spectrum, the intrinsic one plus
  :math:`N(0, 1/\mathrm{ivar})` per pixel; pixels with ``ivar == 0`` are marginalised out
  (``log_prob`` ignores whatever flux they hold, NaN included) and ``sample`` returns NaN
  there. Without ``ivar`` it is the distribution of the noise-free spectra.
* ``temperature`` T scales the intrinsic randomness (the latent base Gaussian's standard
  deviation and the intrinsic scatter :math:`\tau`), never the observational noise; the
  tempered distribution is exactly what ``log_prob`` evaluates, so a sample and its density
  stay consistent.
* ``log_prob_is_exact`` says whether ``log_prob`` is exact or a stochastic estimate.
* ``sample``/``rsample`` take an optional ``generator`` (default: the one given at
  construction) so that a fixed seed gives identical samples.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Size, Tensor
from torch.distributions import Distribution, constraints

from stellarflow.flows.linear_gaussian import (
    LOG_2PI,
    GaussianReference,
    LatentPosterior,
    latent_posterior,
    noise_model,
    project,
    sample_posterior,
)
from stellarflow.flows.results import LogProbEstimate, PosteriorPrediction

__all__ = [
    "DiagonalGaussianSpectra",
    "LatentGaussianSpectra",
    "LatentPrior",
    "SpectralDistribution",
]


class LatentPrior(Protocol):
    """A (tempered) distribution on z with batch shape broadcastable to the stars'."""

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z | c), `(..., k)` -> `(...)`, nats."""
        ...

    def transform_base(self, eps: Tensor) -> Tensor:
        """Map standard normal draws `(..., k)` to draws of z (temperature applied)."""
        ...


def _weighted_moments(
    post: LatentPosterior, log_w: Tensor | None, z: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Posterior mean and covariance of z: exact (Gaussian prior, ``log_w`` None) or from the
    self-normalised importance weights."""
    if log_w is None or z is None:
        k = post.mean.shape[-1]
        return post.mean, torch.cholesky_inverse(post.chol).expand(*post.mean.shape, k)
    w = torch.softmax(log_w, dim=0)[..., None]
    mean = (w * z).sum(0)
    dz = z - mean
    return mean, (w[..., None] * dz[..., :, None] * dz[..., None, :]).sum(0)


def _fallback(new: GaussianReference, old: GaussianReference) -> GaussianReference:
    """``new`` where it is finite, ``old`` for the stars where it is not (e.g. bad data)."""
    precision, mean = new.precision, new.mean
    if not isinstance(precision, Tensor) or mean is None:
        return new
    ok = torch.isfinite(precision).all(-1).all(-1) & torch.isfinite(mean).all(-1)
    if bool(ok.all()):
        return new
    k = mean.shape[-1]
    eye = torch.eye(k, dtype=mean.dtype, device=mean.device)
    old_precision = old.precision if isinstance(old.precision, Tensor) else old.precision * eye
    old_mean = torch.zeros_like(mean) if old.mean is None else old.mean.expand_as(mean)
    precision = torch.where(ok[..., None, None], precision, old_precision.expand_as(precision))
    return GaussianReference(precision, torch.where(ok[..., None], mean, old_mean))


def _observe(x: Tensor, ivar: Tensor | None, eps: Tensor) -> Tensor:
    """Add N(0, 1/ivar) noise; NaN at masked pixels (ivar == 0)."""
    if ivar is None:
        return x
    observed = ivar > 0
    sigma = torch.where(observed, ivar, torch.ones_like(ivar)).rsqrt()
    return torch.where(observed, x + sigma * eps, torch.full_like(x, math.nan))


class SpectralDistribution(Distribution):
    """Common base: shapes, generator-aware ``sample``, ``log_prob_is_exact``."""

    has_rsample = True
    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012
    support = constraints.real_vector

    def __init__(
        self,
        batch_shape: Size,
        n_pixels: int,
        *,
        temperature: float,
        generator: torch.Generator | None,
        log_prob_is_exact: bool,
    ) -> None:
        super().__init__(Size(batch_shape), Size([n_pixels]), validate_args=False)
        self.temperature = temperature
        self.generator = generator
        self.log_prob_is_exact = log_prob_is_exact

    def _randn(self, shape: Size, like: Tensor, generator: torch.Generator | None) -> Tensor:
        generator = self.generator if generator is None else generator
        return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)

    def sample(
        self, sample_shape: Size | tuple[int, ...] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw spectra `(*sample_shape, *batch_shape, n_pixels)` without gradients."""
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def rsample(
        self, sample_shape: Size | tuple[int, ...] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        """Reparametrised draws `(*sample_shape, *batch_shape, n_pixels)`."""
        raise NotImplementedError


class DiagonalGaussianSpectra(SpectralDistribution):
    r"""Independent Gaussian pixels: :math:`x_i \sim N(\mu_i, v_i)`, exact.

    :math:`v_i = T^2 \sigma_{int,i}^2 + 1/\mathrm{ivar}_i` on observed pixels;

    .. math:: \log p(x_O) = -\frac12 \sum_{i \in O} \left[\frac{(x_i - \mu_i)^2}{v_i}
              + \log 2\pi v_i\right].

    Args:
        loc: `(*batch, n_pixels)` flux units, :math:`\mu`.
        scale: `(n_pixels,)` or `(*batch, n_pixels)` flux units, the intrinsic standard
            deviation :math:`\sigma_{int}` (temperature not yet applied).
        ivar: `(*batch, n_pixels)` 1 / flux units squared, 0 = masked; None: noise-free.
        temperature: T.
        generator: default random source for sampling.
    """

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor,
        ivar: Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        shapes = [loc.shape[:-1], scale.shape[:-1]] + ([] if ivar is None else [ivar.shape[:-1]])
        super().__init__(
            torch.broadcast_shapes(*shapes),
            loc.shape[-1],
            temperature=temperature,
            generator=generator,
            log_prob_is_exact=True,
        )
        self.loc = loc
        self.scale = temperature * scale
        self.ivar = ivar
        intrinsic = self.scale**2
        self._noise = noise_model(intrinsic.expand(self.batch_shape + self.event_shape), ivar)

    @property
    def mean(self) -> Tensor:
        """`(*batch, n_pixels)`, flux units."""
        return self.loc.expand(self.batch_shape + self.event_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact log-density `(*sample, *batch)`, nats, of flux `(*sample, *batch, n_pixels)`."""
        observed, _, precision, log_det = self._noise
        clean = torch.where(observed, value, self.loc)
        r = clean - self.loc
        return -0.5 * ((precision * r * r).sum(-1) + log_det)

    def rsample(
        self, sample_shape: Size | tuple[int, ...] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        r"""Draws :math:`\mu + T\sigma_{int}\varepsilon` (+ noise, NaN at masked pixels)."""
        shape = Size(sample_shape) + self.batch_shape + self.event_shape
        x = self.loc + self.scale * self._randn(shape, self.loc, generator)
        if self.ivar is None:
            return x
        return _observe(x, self.ivar, self._randn(shape, self.loc, generator))

    def posterior(self, value: Tensor) -> PosteriorPrediction:
        r"""Posterior of the noise-free spectrum given flux `(*batch, n_pixels)`.

        With :math:`g_i = T^2\sigma_{int,i}^2 / v_i` on observed pixels (0 on masked):
        mean :math:`\mu + g (x - \mu)`, variance :math:`T^2 \sigma_{int}^2 (1 - g)`.
        """
        observed, _, precision, _ = self._noise
        intrinsic = self.scale**2
        gain = torch.where(observed, intrinsic * precision, torch.zeros_like(precision))
        clean = torch.where(observed, value, self.loc)
        safe = torch.where(observed, precision, torch.ones_like(precision))
        spread = torch.where(observed, safe.rsqrt(), self.scale)
        empty = value.new_zeros((*value.shape[:-1], 0))
        return PosteriorPrediction(
            mean=self.loc + gain * (clean - self.loc),
            std=(intrinsic * (1 - gain)).sqrt().expand_as(clean),
            predicted=self.mean,
            predicted_std=spread.expand_as(clean),
            latent_mean=empty,
            latent_cov=empty[..., None],
        )


class LatentGaussianSpectra(SpectralDistribution):
    r"""Linear-Gaussian spectra with a latent vector: :math:`x = m + s \odot u`,

    .. math:: u = \mu + W z + \epsilon, \quad \epsilon \sim N(0, T^2 \tau^2 + \sigma_u^2),

    (DESIGN-NOTES 2b), with z from ``prior`` (a tempered flow) or, when ``prior`` is None,
    :math:`z \sim N(0, T^2 I)` (factor analysis). Writing the posterior of z under a Gaussian
    reference prior :math:`N(\mu_r, \Lambda^{-1})` as :math:`N(m_z, Q^{-1})`,
    :math:`Q = W_O^T D_O^{-1} W_O + \Lambda` (see :mod:`~stellarflow.flows.linear_gaussian`),

    .. math::

        \log p(x_O) = -\frac{q}{2} - \frac12 \log|2\pi D_O| + \frac k2 \log 2\pi
            - \frac12 \log|Q| - \sum_{i\in O}\log s_i
            + \log E_{z \sim N(m_z, Q^{-1})}\left[p(z)\,
              e^{(z - \mu_r)^T \Lambda (z - \mu_r)/2}\right].

    For the Gaussian prior (reference :math:`N(0, T^2 I)`, the prior itself) the expectation
    is the constant :math:`|\Lambda / 2\pi|^{1/2}` and ``log_prob`` is exact (Woodbury /
    determinant lemma). For a flow prior it is estimated with ``n_importance`` draws
    (log-mean-exp): an unbiased estimate of p for *any* reference, hence a lower bound on
    log p in expectation, exact as :math:`M \to \infty`; the reference only sets the variance.
    ``log_prob_is_exact`` is False and :meth:`log_prob_estimate` returns the estimate's
    standard error. :math:`\Lambda = 0` gives the likelihood proposal
    :math:`N(\hat z, P^{-1})` of DESIGN-NOTES 2b.

    Args:
        flux_loc, flux_scale: `(n_pixels,)` flux units, :math:`m`, :math:`s`.
        mean: `(*batch, n_pixels)` or `(n_pixels,)`, :math:`\mu`, standardised units.
        loading: `(n_pixels, k)` or `(*batch, n_pixels, k)`, :math:`W`, standardised units.
        intrinsic_var: `(n_pixels,)`, :math:`\tau^2`, standardised units (T not applied).
        ivar: `(*batch, n_pixels)`, 1 / flux units squared, 0 = masked; None: noise-free.
        prior: the latent prior (already tempered), or None for :math:`N(0, T^2 I)`.
        reference: the proposal's Gaussian reference for a flow prior (default
            :math:`N(0, T^2 I)`); ignored for the Gaussian prior.
        n_importance: M, draws per star for the flow prior.
        refinements: Laplace refinements of the proposal (flow prior only; see
            :meth:`_posterior_draws`).
        temperature: T.
        generator: default random source for sampling and importance draws.
        n_label_errors: the last ``n_label_errors`` latent coordinates are the labels'
            errors (:mod:`~stellarflow.flows.gaussian`); their standard normal draws are
            taken after all others, so that zero label errors reproduce exactly the
            samples and importance draws made without them.
    """

    def __init__(
        self,
        flux_loc: Tensor,
        flux_scale: Tensor,
        mean: Tensor,
        loading: Tensor,
        intrinsic_var: Tensor,
        ivar: Tensor | None = None,
        prior: LatentPrior | None = None,
        reference: GaussianReference | None = None,
        n_importance: int = 32,
        refinements: int = 0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        n_label_errors: int = 0,
    ) -> None:
        shapes = [mean.shape[:-1], loading.shape[:-2]]
        if ivar is not None:
            shapes.append(ivar.shape[:-1])
        super().__init__(
            torch.broadcast_shapes(*shapes),
            flux_loc.shape[-1],
            temperature=temperature,
            generator=generator,
            log_prob_is_exact=prior is None,
        )
        self.flux_loc, self.flux_scale = flux_loc, flux_scale
        self.loc, self.loading, self.ivar = mean, loading, ivar
        self.intrinsic_var = temperature**2 * intrinsic_var
        self.prior = prior
        if prior is None or reference is None:
            reference = GaussianReference(1 / temperature**2)
        self.reference = reference
        self.refinements = refinements
        self.n_importance = n_importance
        self.n_latent = loading.shape[-1]
        self.n_label_errors = n_label_errors
        ivar_std = None if ivar is None else ivar * flux_scale**2
        full = self.batch_shape + self.event_shape
        self._noise = noise_model(self.intrinsic_var.expand(full), ivar_std)
        self._log_jacobian = -(self._noise.weight @ torch.log(flux_scale))

    @property
    def mean(self) -> Tensor:
        r"""`(*batch, n_pixels)`, flux units: :math:`m + s \mu` (Gaussian prior only: E[z] = 0)."""
        if self.prior is not None:
            raise NotImplementedError(
                "the mean of a flow prior has no closed form; average model samples instead"
            )
        return (self.flux_loc + self.flux_scale * self.loc).expand(
            self.batch_shape + self.event_shape
        )

    def _residual(self, value: Tensor) -> Tensor:
        clean = torch.where(self._noise.observed, value, self.flux_loc)
        return (clean - self.flux_loc) / self.flux_scale - self.loc

    def log_prob(self, value: Tensor) -> Tensor:
        """log p(flux) `(*sample, *batch)`, nats (an estimate unless ``log_prob_is_exact``)."""
        return self.log_prob_estimate(value).log_prob

    def log_prob_estimate(
        self,
        value: Tensor,
        n_importance: int | None = None,
        generator: torch.Generator | None = None,
    ) -> LogProbEstimate:
        """log p(flux) with its standard error and effective sample size.

        Args:
            value: flux `(*sample, *batch, n_pixels)`, flux units.
            n_importance: M (default: the distribution's).
            generator: random source for the importance draws.

        Returns:
            The :class:`LogProbEstimate` (std_error 0 and ess M when exact).
        """
        post, log_w, z = self._posterior_draws(value, n_importance, generator)
        latent_mean, latent_cov = _weighted_moments(post, log_w, z)
        k = self.n_latent
        closed = -0.5 * (post.quad + self._noise.log_det + post.log_det_q) + 0.5 * k * LOG_2PI
        closed = closed + self._log_jacobian
        if log_w is None:
            lp = closed + 0.5 * k * (math.log(self.reference.precision) - LOG_2PI)
            zero = torch.zeros_like(lp)
            return LogProbEstimate(lp, zero, zero + 1, latent_mean, latent_cov)
        m = log_w.shape[0]
        norm = torch.softmax(log_w, dim=0)
        sum_sq = (norm * norm).sum(0)
        lp = closed + torch.logsumexp(log_w, dim=0) - math.log(m)
        error = (sum_sq - 1 / m).clamp(min=0).sqrt()
        return LogProbEstimate(lp, error, 1 / sum_sq, latent_mean, latent_cov)

    def _posterior_draws(
        self, value: Tensor, n_importance: int | None, generator: torch.Generator | None
    ) -> tuple[LatentPosterior, Tensor | None, Tensor | None]:
        r"""Proposal, then (flow prior only) draws z `(M, ..., k)` and log weights `(M, ...)`.

        :math:`\log w = \log p(z) + \tfrac12 (z - \mu_r)^T \Lambda (z - \mu_r)`. With
        ``refinements`` > 0 and a prior that offers ``gaussian_approximation``, the reference
        is replaced (per star, without gradient) by the prior's local Gaussian approximation
        at the current posterior mean, and the posterior recomputed: a Laplace-style proposal
        that follows the prior where the data do not constrain z.
        """
        residual = self._residual(value)
        precision = self._noise.precision
        reference = self.reference
        post = latent_posterior(residual, self.loading, precision, reference)
        if self.prior is None:
            return post, None, None
        approximate = getattr(self.prior, "gaussian_approximation", None)
        for _ in range(self.refinements if approximate is not None else 0):
            with torch.no_grad():
                reference = _fallback(approximate(post.mean.detach()), reference)
            post = latent_posterior(residual, self.loading, precision, reference)
        m = self.n_importance if n_importance is None else n_importance
        shape = Size([m]) + post.mean.shape[:-1]
        n_errors = self.n_label_errors
        eps = self._randn(Size((*shape, self.n_latent - n_errors)), post.mean, generator)
        if n_errors:
            tail = self._randn(Size((*shape, n_errors)), post.mean, generator)
            eps = torch.cat([eps, tail], dim=-1)
        z = sample_posterior(post, eps)
        log_w = self.prior.log_prob(z)
        if reference.is_proper():
            log_w = log_w + 0.5 * reference.quadratic(z)
        return post, log_w, z

    def rsample(
        self, sample_shape: Size | tuple[int, ...] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        r"""Draws :math:`m + s(\mu + W z + T\tau\varepsilon)` (+ noise; NaN at masked)."""
        return self._draw(sample_shape, generator)[0]

    @torch.no_grad()
    def sample_with_chi2(
        self, sample_shape: Size | tuple[int, ...] = (), generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""Draws (as :meth:`sample`) and the :math:`\chi^2` of their independent part.

        The independent part of a draw is :math:`\eta = s(T\tau\varepsilon) +` noise, of
        variance :math:`D_i` per pixel; :math:`q = \sum_{i \in O} \eta_i^2 / D_i` over the
        observed pixels is exactly :math:`\chi^2_n`-distributed and independent of z: a
        control variate for statistics of the draws dominated by that sum (calibration,
        :mod:`stellarflow.analysis.calibrate`).

        Returns:
            Spectra `(*sample_shape, *batch_shape, n_pixels)` and q `(*sample_shape,
            *batch_shape)`, same draws as :meth:`sample` with the same generator state.
        """
        draws, fit = self._draw(sample_shape, generator)
        observed = self._noise.observed
        residual = torch.where(observed, (draws - self.flux_loc) / self.flux_scale - fit, 0.0)
        return draws, (self._noise.precision * residual * residual).sum(-1)

    def _draw(
        self, sample_shape: Size | tuple[int, ...], generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        r"""Draws (flux units) and their latent part :math:`\mu + W z` (standardised)."""
        shape = Size(sample_shape) + self.batch_shape
        ref = self.flux_loc
        n_errors = self.n_label_errors
        eps = self._randn(Size((*shape, self.n_latent - n_errors)), ref, generator)
        intrinsic = self._randn(shape + self.event_shape, ref, generator)
        noise = None if self.ivar is None else self._randn(intrinsic.shape, ref, generator)
        if n_errors:
            tail = self._randn(Size((*shape, n_errors)), ref, generator)
            eps = torch.cat([eps, tail], dim=-1)
        if self.prior is None:
            z = self.temperature * eps
        else:
            z = self.prior.transform_base(eps)
        fit = self.loc + project(self.loading, z)
        x = self.flux_loc + self.flux_scale * (fit + self.intrinsic_var.sqrt() * intrinsic)
        if noise is None:
            return x, fit
        return _observe(x, self.ivar, noise), fit

    def posterior(
        self,
        value: Tensor,
        n_importance: int | None = None,
        generator: torch.Generator | None = None,
    ) -> PosteriorPrediction:
        r"""Posterior of z and of the noise-free spectrum given flux `(*batch, n_pixels)`.

        Gaussian prior: exact, :math:`z | x \sim N(m_z, Q^{-1})`. Flow prior: moments of the
        self-normalised importance weights. Per pixel, with gain
        :math:`g_i = \tau_i^2 / D_i` (0 at masked pixels) and :math:`f = \mu + W E[z]`:
        :math:`E[u_{int}] = f + g (u - f)`,
        :math:`Var[u_{int}] = \tau^2 (1 - g) + (1 - g)^2 w_i^T Cov[z] w_i`.
        """
        residual = self._residual(value)
        observed, _, precision, _ = self._noise
        estimate = self.log_prob_estimate(value, n_importance, generator)
        z_mean, z_cov = estimate.latent_mean, estimate.latent_cov
        fit = self.loc + project(self.loading, z_mean)
        spread = ((self.loading @ z_cov) * self.loading).sum(-1)  # diag(W Cov[z] W^T)
        tau2 = self.intrinsic_var
        gain = torch.where(observed, tau2 * precision, torch.zeros_like(precision))
        u = residual + self.loc
        s = self.flux_scale
        noise = torch.zeros_like(gain)
        if self.ivar is not None:
            ivar_std = torch.where(observed, self.ivar * s**2, torch.ones_like(gain))
            noise = torch.where(observed, 1 / ivar_std, noise)
        return PosteriorPrediction(
            mean=self.flux_loc + s * (fit + gain * (u - fit)),
            std=s * (tau2 * (1 - gain) + (1 - gain) ** 2 * spread).sqrt(),
            predicted=self.flux_loc + s * fit,
            predicted_std=s * (tau2 + spread + noise).sqrt(),
            latent_mean=z_mean,
            latent_cov=z_cov,
        )
