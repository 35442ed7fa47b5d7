r"""Residual covariance of abundances against what noise and independent scatter produce.

After conditioning the abundances :math:`y` (targets, :math:`k` of them) on abundances and
stellar parameters :math:`c`, with a fitted conditional mean :math:`m(c)`, the residual of
star :math:`n` is :math:`r_n = y_n - m(c_n)`. Under the **null hypothesis** that the
conditioning set carries every shared (nucleosynthetic) dimension, each element has only
independent scatter: intrinsic :math:`s_i` plus the star's error :math:`e_{ni}`; and every
conditioning quantity :math:`c_j` is itself off its noise-free value by its error
:math:`e_{nj}` plus its own independent intrinsic scatter :math:`s_j` (a conditioning element
is a noisy proxy of the process it carries). To first order the null covariance of star
:math:`n`'s residual is

.. math::

    C_n = \mathrm{diag}(e_{n}^2 + s^2)
        + \sum_j (e_{nj}^2 + s_j^2)\, g_{nj} g_{nj}^\top,
    \qquad g_{nj} = \partial m(c_n) / \partial c_j ,

the second term being the correlation that noise in the conditioning set induces (an error
in [Fe/H] moves every predicted [X/Fe]). Its average over stars is linear in
:math:`\theta = (s_i^2, s_j^2) \ge 0`, fitted to the observed residual covariance
:math:`S = \langle r r^\top \rangle` by non-negative least squares on the entries scaled by
:math:`1/\sqrt{S_{ii} S_{jj}}` (:func:`fit_null`). The diagonal entries fix :math:`s_i`; the
off-diagonal ones fix :math:`s_j`. The **excess** is

.. math:: X = D^{-1/2} (S - \bar C) D^{-1/2}, \quad D = \mathrm{diag}(S),

and the shared-structure statistic is its largest eigenvalue :math:`\lambda_1(X)`: the
fraction of one element's residual variance, summed over elements, carried by the strongest
shared direction the null does not explain. Its null distribution comes from a parametric
bootstrap (:meth:`NullModel.draws`): Gaussian residuals drawn star by star from
:math:`C_n`, refitted the same way. The statistic's null mean is not zero (sampling noise of
a :math:`k \times k` covariance, :math:`\sim 2\sqrt{k/n}`); the effect size reported is
:math:`\lambda_1 - \langle \lambda_1 \rangle_{null}`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

__all__ = ["NullFit", "NullModel", "error_covariance", "fit_null"]


@dataclass(frozen=True)
class NullFit:
    """The null model fitted to one residual covariance.

    Attributes:
        target_scatter: `(k,)`, independent intrinsic scatter :math:`s_i` of each target, dex.
        condition_scatter: `(n_condition,)`, fitted intrinsic scatter :math:`s_j` of each
            conditioning quantity (0 for stellar parameters, which are not fitted), dex.
        covariance: `(k, k)`, the star-averaged null covariance :math:`\\bar C`, dex².
        excess: `(k, k)`, :math:`X = D^{-1/2}(S - \\bar C)D^{-1/2}`, dimensionless.
        statistic: :math:`\\lambda_1(X)`, the largest eigenvalue of the excess.
        eigenvalues: `(k,)`, eigenvalues of the excess, decreasing.
    """

    target_scatter: np.ndarray
    condition_scatter: np.ndarray
    covariance: np.ndarray
    excess: np.ndarray
    statistic: float
    eigenvalues: np.ndarray


def error_covariance(
    target_err: np.ndarray, condition_err: np.ndarray, gradient: np.ndarray
) -> np.ndarray:
    r"""Residual covariance that the measurement errors alone produce, averaged over stars.

    .. math:: \bar C_{err} = \langle \mathrm{diag}(e_n^2) \rangle
        + \langle \textstyle\sum_j e_{nj}^2 g_{nj} g_{nj}^\top \rangle

    Args:
        target_err: `(n_stars, k)`, errors of the targets, dex.
        condition_err: `(n_stars, n_condition)`, errors of the conditioning quantities, in
            their units (0 where unknown).
        gradient: `(n_stars, k, n_condition)`, :math:`\partial m_i / \partial c_j`.

    Returns:
        `(k, k)` covariance, dex².
    """
    n = target_err.shape[0]
    induced = sum(
        (gradient[:, :, j] * condition_err[:, j, None] ** 2).T @ gradient[:, :, j]
        for j in range(gradient.shape[2])
    )
    return np.diag(np.mean(target_err**2, axis=0)) + induced / n


class NullModel:
    """The null model of one set of residuals: its fixed error part and linear design.

    Built once per conditioning set (the star averages are the expensive part) and then
    fitted to any covariance of residuals with the same errors and gradients.

    Args:
        target_err: `(n_stars, k)`, target errors, dex.
        condition_err: `(n_stars, n_condition)`, conditioning errors (0 where unknown).
        gradient: `(n_stars, k, n_condition)`, gradient of the conditional mean.
        fit_condition: `(n_condition,)` bool, which conditioning quantities get a free
            intrinsic scatter (abundances yes, Teff and logg no).
    """

    def __init__(
        self,
        target_err: np.ndarray,
        condition_err: np.ndarray,
        gradient: np.ndarray,
        fit_condition: np.ndarray,
    ) -> None:
        n, k, n_cond = gradient.shape
        self.target_err, self.condition_err, self.gradient = target_err, condition_err, gradient
        self.fit_condition = np.asarray(fit_condition, bool)
        self.base = error_covariance(target_err, condition_err, gradient)
        outer = [gradient[:, :, j].T @ gradient[:, :, j] / n for j in range(n_cond)]
        columns = []
        for i in range(k):
            unit = np.zeros((k, k))
            unit[i, i] = 1.0
            columns.append(unit.ravel())
        for j in range(n_cond):
            columns.append(outer[j].ravel() if self.fit_condition[j] else np.zeros(k * k))
        self.design = np.stack(columns, axis=1)

    def fit(self, covariance: np.ndarray) -> NullFit:
        """Fit to an observed residual covariance `(k, k)`, dex² (module docstring)."""
        k = covariance.shape[0]
        scale = np.sqrt(np.clip(np.diag(covariance), 1e-30, None))
        weight = (1.0 / np.outer(scale, scale)).ravel()
        theta, _ = nnls(self.design * weight[:, None], (covariance - self.base).ravel() * weight)
        model = self.base + (self.design @ theta).reshape(k, k)
        excess = (covariance - model) / np.outer(scale, scale)
        eigenvalues = np.linalg.eigvalsh(0.5 * (excess + excess.T))[::-1]
        return NullFit(
            target_scatter=np.sqrt(theta[:k]),
            condition_scatter=np.sqrt(theta[k:]),
            covariance=model,
            excess=excess,
            statistic=float(eigenvalues[0]),
            eigenvalues=eigenvalues,
        )

    def draws(self, fit: NullFit, n_draws: int, rng: np.random.Generator) -> np.ndarray:
        """Eigenvalues of the excess under ``fit``, by parametric bootstrap.

        Each draw simulates every star's residual from its own :math:`C_n` (its errors, its
        gradient, the fitted intrinsic scatters), refits the null and records the excess
        eigenvalues.

        Returns:
            `(n_draws, k)` eigenvalues, each row decreasing.
        """
        n, k = self.target_err.shape
        sd_target = np.sqrt(self.target_err**2 + fit.target_scatter**2)
        sd_condition = np.sqrt(self.condition_err**2 + fit.condition_scatter**2)
        out = np.empty((n_draws, k))
        for b in range(n_draws):
            sim = sd_target * rng.standard_normal((n, k))
            shared = sd_condition * rng.standard_normal(sd_condition.shape)
            sim += np.sum(self.gradient * shared[:, None, :], axis=2)
            out[b] = self.fit(sim.T @ sim / n).eigenvalues
        return out


def fit_null(
    covariance: np.ndarray,
    target_err: np.ndarray,
    condition_err: np.ndarray,
    gradient: np.ndarray,
    fit_condition: np.ndarray,
) -> NullFit:
    """Fit the null model (module docstring) to an observed residual covariance.

    Shorthand for ``NullModel(target_err, condition_err, gradient, fit_condition).fit(cov)``.
    """
    return NullModel(target_err, condition_err, gradient, fit_condition).fit(covariance)
