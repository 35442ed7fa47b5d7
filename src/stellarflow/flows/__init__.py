r"""Normalising-flow and Gaussian models of spectra, pure PyTorch (imports nothing of ours).

Every model is called like a zuko flow: ``model(context, ivar=None, temperature=1.0)``
returns a :class:`torch.distributions.Distribution` over flux `(n_stars, n_pixels)` with
``log_prob`` (nats, flux in its own units, standardisation Jacobian included), ``sample`` and
``rsample``, and ``log_prob_is_exact``. For training: ``model.initialize_from_data(flux, ivar,
context)`` then minimise ``model.loss(flux, ivar, context)``. The linear-Gaussian families
also take the labels' own one-sigma errors, ``model(context, ivar=ivar, context_err=err)``
(and in ``observed_log_prob``, ``loss``, ``posterior_mean``): they are marginalised as extra
latent columns :math:`J\,\mathrm{diag}(\sigma_l)` (see :mod:`stellarflow.flows.gaussian`).

Models (``build_model(kind, n_pixels, n_context, **config)``):

* ``"cannon"`` :class:`CannonModel`: per-pixel Gaussian, quadratic mean (exact).
* ``"factor_analysis"`` :class:`FactorAnalysisModel`: quadratic mean + low-rank Gaussian +
  per-pixel scatter + each star's noise (exact).
* ``"latent_flow"`` :class:`LatentFlowModel` (default): flow prior on k latent coefficients
  under the same linear-Gaussian observation model (importance-sampled estimate).
* ``"coupling"`` :class:`SpectralCouplingFlow`: spline coupling flow over all pixels (exact,
  no noise model).

After (or instead of) gradient training, :func:`polish_factor_analysis` takes a factor-analysis
model to its maximum likelihood by closed-form ECM steps on the mean, loadings and per-pixel
scatter (:func:`polish_intrinsic_variance`: the scatter only; see
:mod:`stellarflow.flows.polish`).
"""

from __future__ import annotations

from stellarflow.flows._checks import FlowInputError
from stellarflow.flows.base import SpectralModel
from stellarflow.flows.coupling import SpectralCouplingFlow
from stellarflow.flows.distributions import DiagonalGaussianSpectra, LatentGaussianSpectra
from stellarflow.flows.gaussian import CannonModel, FactorAnalysisModel
from stellarflow.flows.latent import LatentFlowModel
from stellarflow.flows.polish import (
    PolishStep,
    estimate_coefficient_variance,
    polish_factor_analysis,
    polish_intrinsic_variance,
)
from stellarflow.flows.registry import DEFAULT_KIND, MODEL_KINDS, build_model
from stellarflow.flows.results import CovarianceFactors, LogProbEstimate, PosteriorPrediction

__all__ = [
    "DEFAULT_KIND",
    "MODEL_KINDS",
    "CannonModel",
    "CovarianceFactors",
    "DiagonalGaussianSpectra",
    "FactorAnalysisModel",
    "FlowInputError",
    "LatentFlowModel",
    "LatentGaussianSpectra",
    "LogProbEstimate",
    "PolishStep",
    "PosteriorPrediction",
    "SpectralCouplingFlow",
    "SpectralModel",
    "build_model",
    "estimate_coefficient_variance",
    "polish_factor_analysis",
    "polish_intrinsic_variance",
]
