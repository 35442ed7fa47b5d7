r"""How many elements matter: abundance residuals at fixed conditioning abundances.

Ting & Weinberg's question: after conditioning on a few abundances (and Teff, logg), is what
remains in the other elements measurement noise, or real structure? For a conditioning set
:math:`c` (e.g. FE_H, MG_FE, plus TEFF, LOGG) and targets :math:`y` (the other [X/Fe]):

1. the conditional mean :math:`m(c) = E[y \mid c]` is fitted on the stars with good
   measurements of every column used (a polynomial of degree ``degree`` in the standardised
   conditions by least squares; or the mean of a conditional normalising flow,
   :mod:`stellarflow.analysis.abundance_flow`);
2. per element, the residual :math:`r = y - m(c)` has scatter :math:`\sigma_r` (standard
   deviation; also :math:`1.4826\,\mathrm{MAD}`), the noise alone would give
   :math:`\sigma_{noise}^2 = \langle e^2 \rangle + \langle \sum_j e_j^2 g_j^2 \rangle`
   (own error plus the propagated errors of the conditioning quantities,
   :math:`g_j = \partial m / \partial c_j`), and the **intrinsic scatter** is
   :math:`\sqrt{\max(0, \sigma_r^2 - \sigma_{noise}^2)}` with a bootstrap-over-stars
   uncertainty (refitting :math:`m` each time). Its significance is the
   :math:`\chi^2 = \sum_n r_n^2 / \sigma_{noise,n}^2` against :math:`n` degrees of freedom
   (``excess_significance`` is the Gaussian-equivalent :math:`(\chi^2 - n)/\sqrt{2n}`);
3. the residual correlation matrix, the correlation the errors alone produce, and the
   null model of :mod:`stellarflow.analysis.residual_structure` (errors plus independent
   intrinsic scatter of every element, conditioning elements included), whose
   ``independent_scatter`` per target is the scatter no conditioning can remove, and whose
   excess eigenvalue measures the shared structure left.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations_with_replacement

import numpy as np
from astropy.table import Table
from scipy import stats

from stellarflow.analysis.residual_structure import NullFit, NullModel, error_covariance
from stellarflow.errors import DataValidationError

__all__ = [
    "AbundanceCatalogue",
    "ElementsResult",
    "MeanModel",
    "PolynomialMean",
    "abundance_catalogue",
    "abundance_columns",
    "analyse_elements",
    "condition_residuals",
    "polynomial_fitter",
]

logger = logging.getLogger(__name__)

SENTINEL = -9000.0
"""Values at or below this (APOGEE's -9999) count as missing."""
_STELLAR = ("TEFF", "LOGG")


def abundance_columns(table: Table) -> list[str]:
    """Abundance columns of an allStar-like table: ``FE_H`` and every ``X_FE`` with ``_ERR``."""
    names = set(table.colnames)
    out = [n for n in table.colnames if n == "FE_H" or (n.endswith("_FE") and len(n) > 3)]
    return [n for n in out if f"{n}_ERR" in names]


@dataclass(frozen=True)
class AbundanceCatalogue:
    """Abundances and stellar parameters of the stars good in every column used.

    Attributes:
        names: column names, e.g. ``("FE_H", "MG_FE", "TEFF")``.
        values: `(n_stars, n_columns)`, dex (K for TEFF).
        errors: `(n_stars, n_columns)`, reported errors in the same units (0 where a
            stellar parameter has no ``_ERR`` column).
        abundance: `(n_columns,)` bool, True for abundance columns.
        n_input: rows of the input table.
        row_index: `(n_stars,)`, input rows kept.
    """

    names: tuple[str, ...]
    values: np.ndarray
    errors: np.ndarray
    abundance: np.ndarray
    n_input: int
    row_index: np.ndarray

    def columns(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Values and errors of ``names``, each `(n_stars, len(names))`."""
        idx = [self.names.index(n) for n in names]
        return self.values[:, idx], self.errors[:, idx]

    def subset(self, rows: np.ndarray) -> AbundanceCatalogue:
        """The catalogue restricted to (or resampled at) ``rows``."""
        return AbundanceCatalogue(
            self.names,
            self.values[rows],
            self.errors[rows],
            self.abundance,
            self.n_input,
            self.row_index[rows],
        )


def _column(table: Table, name: str) -> np.ndarray:
    data = np.ma.asarray(table[name]).astype(np.float64).filled(np.nan)
    return np.where(data <= SENTINEL, np.nan, data)


def abundance_catalogue(table: Table, names: Sequence[str]) -> AbundanceCatalogue:
    """Check and extract ``names`` (with errors and flags) from an allStar-like table.

    A star is kept when, for every column, the value and its ``_ERR`` are finite, not the
    -9999 sentinel, the error is positive, and a ``<NAME>_FLAG`` column (if present) is 0.
    Abundance columns (``FE_H``, ``X_FE``) must have an ``_ERR`` column; ``TEFF``/``LOGG``
    without one are taken as exact.

    Raises:
        DataValidationError: unknown or duplicated columns (the message lists those that
            exist), a missing error column, or fewer than 50 good stars.
    """
    names = tuple(names)
    if len(set(names)) != len(names):
        raise DataValidationError(f"columns {list(names)} name one column twice")
    missing = [n for n in names if n not in table.colnames]
    if missing:
        raise DataValidationError(
            f"columns {missing} are not in the catalogue; abundance columns with errors there: "
            f"{abundance_columns(table)}; all columns: {table.colnames}"
        )
    abundance = np.array([n not in _STELLAR for n in names])
    no_err = [
        n for n, a in zip(names, abundance, strict=True) if a and f"{n}_ERR" not in table.colnames
    ]
    if no_err:
        raise DataValidationError(
            f"abundance columns {no_err} have no _ERR column; the analysis compares residuals "
            "with the measurement errors, so each X_FE needs X_FE_ERR"
        )
    values = np.column_stack([_column(table, n) for n in names])
    errors = np.column_stack(
        [
            _column(table, f"{n}_ERR") if f"{n}_ERR" in table.colnames else np.zeros(len(table))
            for n in names
        ]
    )
    good = np.all(np.isfinite(values), axis=1) & np.all(np.isfinite(errors), axis=1)
    good &= np.all((errors > 0) | ~abundance, axis=1)
    for n in names:
        if f"{n}_FLAG" in table.colnames:
            good &= _column(table, f"{n}_FLAG") == 0
    if good.sum() < 50:
        raise DataValidationError(
            f"only {int(good.sum())} of {len(table)} stars have good {list(names)} (finite, not "
            "-9999, error > 0, flag 0); need at least 50"
        )
    rows = np.flatnonzero(good)
    return AbundanceCatalogue(names, values[rows], errors[rows], abundance, len(table), rows)


# (prediction (n, k), gradient (n, k, n_condition)) for conditions (n, n_condition)
MeanModel = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class PolynomialMean:
    r"""Conditional mean :math:`m(c) = \sum_\alpha \beta_\alpha z^\alpha`, a polynomial of
    total degree ``degree`` in :math:`z = (c - \mu)/\sigma`, with its analytic gradient.

    Attributes:
        center, scale: `(n_condition,)` standardisation.
        coefficients: `(n_terms, k)`.
        powers: `(n_terms, n_condition)` integer exponents of each term.
    """

    center: np.ndarray
    scale: np.ndarray
    coefficients: np.ndarray
    powers: np.ndarray

    @staticmethod
    def _powers(n_condition: int, degree: int) -> np.ndarray:
        rows = [np.zeros(n_condition, int)]
        for d in range(1, degree + 1):
            for combo in combinations_with_replacement(range(n_condition), d):
                rows.append(np.bincount(combo, minlength=n_condition))
        return np.array(rows)

    @classmethod
    def fit(cls, conditions: np.ndarray, targets: np.ndarray, degree: int = 3) -> PolynomialMean:
        """Least-squares fit: conditions `(n, n_condition)`, targets `(n, k)`."""
        center, scale = conditions.mean(axis=0), conditions.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        powers = cls._powers(conditions.shape[1], degree)
        if powers.shape[0] >= conditions.shape[0] // 2:
            raise DataValidationError(
                f"a degree-{degree} polynomial in {conditions.shape[1]} conditions has "
                f"{powers.shape[0]} terms, too many for {conditions.shape[0]} stars; lower the "
                "degree or condition on fewer columns"
            )
        basis = _basis(((conditions - center) / scale), powers)
        coefficients, *_ = np.linalg.lstsq(basis, targets, rcond=None)
        return cls(center, scale, coefficients, powers)

    def __call__(self, conditions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prediction `(n, k)` and gradient :math:`\\partial m_i/\\partial c_j` `(n, k, n_c)`."""
        z = (conditions - self.center) / self.scale
        prediction = _basis(z, self.powers) @ self.coefficients
        grads = []
        for j in range(z.shape[1]):
            lowered = self.powers.copy()
            lowered[:, j] = np.maximum(lowered[:, j] - 1, 0)
            d_basis = _basis(z, lowered) * (self.powers[:, j] / self.scale[j])
            grads.append(d_basis @ self.coefficients)
        return prediction, np.stack(grads, axis=2)


def _basis(z: np.ndarray, powers: np.ndarray) -> np.ndarray:
    """Monomials :math:`\\prod_j z_j^{p_{tj}}`.

    Args:
        z: `(n, n_c)` standardised conditions.
        powers: `(n_terms, n_c)` integer exponents.

    Returns:
        `(n, n_terms)`.
    """
    degree = int(powers.max(initial=0))
    pows = [np.ones_like(z)]
    for _ in range(degree):
        pows.append(pows[-1] * z)
    out = np.ones((z.shape[0], powers.shape[0]))
    for t, row in enumerate(powers):
        for j in np.flatnonzero(row):
            out[:, t] *= pows[row[j]][:, j]
    return out


def polynomial_fitter(degree: int = 3) -> Callable[[np.ndarray, np.ndarray], MeanModel]:
    """A ``fitter`` for :func:`analyse_elements`: a degree-``degree`` :class:`PolynomialMean`."""
    return lambda c, y: PolynomialMean.fit(c, y, degree)


@dataclass(frozen=True)
class Residuals:
    """Residuals of the targets at one conditioning set (each array over good stars)."""

    residual: np.ndarray  # (n, k) dex
    gradient: np.ndarray  # (n, k, n_condition)
    target_err: np.ndarray  # (n, k)
    condition_err: np.ndarray  # (n, n_condition)
    fit_condition: np.ndarray  # (n_condition,) bool

    def null_model(self) -> NullModel:
        """The null model of these residuals (errors, gradients)."""
        return NullModel(self.target_err, self.condition_err, self.gradient, self.fit_condition)

    def covariance(self) -> np.ndarray:
        """Residual covariance :math:`\\langle r r^T \\rangle`, `(k, k)`, dex²."""
        return self.residual.T @ self.residual / self.residual.shape[0]

    def null(self) -> NullFit:
        """The null model fitted to these residuals."""
        return self.null_model().fit(self.covariance())


def condition_residuals(
    catalogue: AbundanceCatalogue,
    condition: Sequence[str],
    targets: Sequence[str],
    fitter: Callable[[np.ndarray, np.ndarray], MeanModel] | None = None,
) -> Residuals:
    """Fit the conditional mean of ``targets`` given ``condition`` and return the residuals.

    Args:
        catalogue: the good stars.
        condition: conditioning columns (abundances and/or TEFF, LOGG).
        targets: columns whose residuals are wanted.
        fitter: ``(conditions, targets) -> MeanModel``; default a degree-3 polynomial.
    """
    fitter = fitter or polynomial_fitter(3)
    c, c_err = catalogue.columns(condition)
    y, y_err = catalogue.columns(targets)
    model = fitter(c, y)
    prediction, gradient = model(c)
    fit_condition = np.array([n not in _STELLAR for n in condition])
    return Residuals(y - prediction, gradient, y_err, c_err, fit_condition)


@dataclass(frozen=True)
class ElementsResult:
    """The analysis of one conditioning set.

    Attributes:
        condition: conditioning columns.
        targets: target columns (the rows of ``table``).
        table: per element: ``element, n_stars, residual_scatter, residual_scatter_robust,
            median_error, noise_scatter, intrinsic_scatter, intrinsic_scatter_err,
            independent_scatter, independent_scatter_err, chi2_per_dof,
            excess_significance, p_value``.
        correlation: `(k, k)` residual correlation matrix.
        error_correlation: `(k, k)` correlation the errors alone would give (error
            covariance over the observed residual standard deviations; 1 on the diagonal
            only when the residual is all noise).
        null: the null-model fit (its ``excess``, ``statistic``, ``condition_scatter``).
        null_statistics: `(n_null,)` the statistic under the null (parametric bootstrap).
        significance: p-value of the shared-structure statistic under the null.
        excess_over_null: statistic minus its null mean (shared structure left, in units
            of one element's residual variance; compare with ``min_excess``).
    """

    condition: tuple[str, ...]
    targets: tuple[str, ...]
    table: Table
    correlation: np.ndarray
    error_correlation: np.ndarray
    null: NullFit
    null_statistics: np.ndarray
    significance: float
    excess_over_null: float


def _per_element(res: Residuals) -> dict[str, np.ndarray]:
    r = res.residual
    noise_var = res.target_err**2 + np.einsum("nic,nc->ni", res.gradient**2, res.condition_err**2)
    var = np.mean(r**2, axis=0)
    chi2 = np.sum(r**2 / noise_var, axis=0)
    n = r.shape[0]
    return {
        "residual_scatter": np.sqrt(var),
        "residual_scatter_robust": 1.4826 * np.median(np.abs(r - np.median(r, axis=0)), axis=0),
        "median_error": np.median(res.target_err, axis=0),
        "noise_scatter": np.sqrt(np.mean(noise_var, axis=0)),
        "intrinsic_scatter": np.sqrt(np.clip(var - np.mean(noise_var, axis=0), 0.0, None)),
        "chi2_per_dof": chi2 / n,
        "excess_significance": (chi2 - n) / np.sqrt(2.0 * n),
        "p_value": stats.chi2.sf(chi2, n),
    }


def _spread(draws: list[np.ndarray], k: int) -> np.ndarray:
    """Bootstrap standard deviation per element (NaN with fewer than two draws)."""
    return np.std(np.array(draws), axis=0, ddof=1) if len(draws) > 1 else np.full(k, np.nan)


def analyse_elements(
    catalogue: AbundanceCatalogue,
    condition: Sequence[str],
    targets: Sequence[str],
    *,
    n_bootstrap: int = 20,
    n_null: int = 50,
    min_excess: float = 0.1,
    fitter: Callable[[np.ndarray, np.ndarray], MeanModel] | None = None,
    bootstrap_fitter: Callable[[np.ndarray, np.ndarray], MeanModel] | None = None,
    rng: np.random.Generator | None = None,
) -> ElementsResult:
    """Residual scatter, intrinsic scatter and residual correlations at one conditioning set.

    Args:
        catalogue: from :func:`abundance_catalogue` with every column used.
        condition: conditioning columns, e.g. ``("FE_H", "MG_FE", "TEFF", "LOGG")``.
        targets: the elements to report (not in ``condition``).
        n_bootstrap: resamples of the stars (with refits) for the scatter uncertainties.
        n_null: parametric-bootstrap draws for the shared-structure significance.
        min_excess: excess eigenvalue (above the null's mean top eigenvalue) below which
            the shared structure is deemed negligible (``shared_consistent_with_null``).
        fitter: conditional-mean fitter (default degree-3 polynomial).
        bootstrap_fitter: fitter for the bootstrap refits (default ``fitter``; pass the
            polynomial when ``fitter`` is an expensive flow).
        rng: randomness for the bootstraps.
    """
    condition, targets = tuple(condition), tuple(targets)
    overlap = sorted(set(condition) & set(targets))
    if overlap or not targets or not condition:
        raise DataValidationError(
            f"need non-empty, disjoint condition and targets; got condition {list(condition)}, "
            f"targets {list(targets)}"
        )
    if n_bootstrap < 0 or n_null < 2:
        raise DataValidationError(
            f"need n_bootstrap >= 0 and n_null >= 2; got {n_bootstrap}, {n_null}"
        )
    rng = rng if rng is not None else np.random.default_rng()
    res = condition_residuals(catalogue, condition, targets, fitter)
    per = _per_element(res)
    model = res.null_model()
    null = model.fit(res.covariance())
    boot_intr, boot_indep = [], []
    n = catalogue.values.shape[0]
    for _ in range(n_bootstrap):
        sample = condition_residuals(
            catalogue.subset(rng.integers(0, n, n)), condition, targets, bootstrap_fitter or fitter
        )
        boot_intr.append(_per_element(sample)["intrinsic_scatter"])
        boot_indep.append(sample.null().target_scatter)
    null_eig = model.draws(null, n_null, rng)
    top = null_eig[:, 0]
    significance = float((1 + np.sum(top >= null.statistic)) / (n_null + 1))

    table = Table()
    table["element"] = list(targets)
    table["n_stars"] = np.full(len(targets), n)
    for key in ("residual_scatter", "residual_scatter_robust", "median_error", "noise_scatter"):
        table[key] = per[key]
    table["intrinsic_scatter"] = per["intrinsic_scatter"]
    table["intrinsic_scatter_err"] = _spread(boot_intr, len(targets))
    table["independent_scatter"] = null.target_scatter
    table["independent_scatter_err"] = _spread(boot_indep, len(targets))
    for key in ("chi2_per_dof", "excess_significance", "p_value"):
        table[key] = per[key]
    for key in table.colnames[2:]:
        if "scatter" in key or "error" in key:
            table[key].unit = "dex"
    table.meta.update(
        {
            "condition": list(condition),
            "n_input": catalogue.n_input,
            "shared_statistic": null.statistic,
            "shared_significance": significance,
            "shared_excess_over_null": float(null.statistic - top.mean()),
            "shared_consistent_with_null": bool(
                significance > 0.05 or null.statistic - top.mean() < min_excess
            ),
            "condition_scatter": dict(zip(condition, null.condition_scatter.tolist(), strict=True)),
        }
    )
    sd = np.sqrt(np.mean(res.residual**2, axis=0))
    correlation = (res.residual.T @ res.residual / n) / np.outer(sd, sd)
    error_corr = error_covariance(res.target_err, res.condition_err, res.gradient) / np.outer(
        sd, sd
    )
    return ElementsResult(
        condition=condition,
        targets=targets,
        table=table,
        correlation=correlation,
        error_correlation=error_corr,
        null=null,
        null_statistics=top,
        significance=significance,
        excess_over_null=float(null.statistic - top.mean()),
    )
