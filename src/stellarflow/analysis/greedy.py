r"""Forward selection of the conditioning set: which elements carry the shared structure.

Start from a conditioning set (e.g. FE_H, MG_FE, plus TEFF, LOGG). At each step, every
remaining element is tried as an extra condition; the one that leaves the smallest total
shared residual structure among the others is added: the sum of the positive eigenvalues
of the excess matrix of :mod:`stellarflow.analysis.residual_structure` (which already allows
for errors, for the correlations that noise in the conditioning set induces, and for
independent intrinsic scatter of every element). The sum, not the largest eigenvalue,
because with two processes left every carrier of the weaker one leaves the same largest
eigenvalue (the other process), and only the sum tells a good proxy (Ce) from a poor one
(C, with more scatter of its own). Whether to stop is decided on the largest eigenvalue
:math:`\lambda_1` after the addition. Selection stops when what is left is consistent with
the null: its parametric-bootstrap p-value exceeds ``alpha``, **or** its excess over the
null's mean is below ``min_excess`` (with :math:`10^4` stars the test detects shared
directions far too small to matter, e.g. the imperfect removal of a process through a
conditioning element that has intrinsic scatter of its own; ``min_excess`` sets the
smallest structure worth another element, in units of one element's residual variance).

Independent scatter is not chased: it is part of the null, and reported per element.
Uncertainties come from a bootstrap over stars: the statistic along the selected path is
re-evaluated on resamples, and the whole selection is rerun on ``n_bootstrap`` resamples
(how often each step picks the same element; where it stops).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from stellarflow.analysis.elements import (
    AbundanceCatalogue,
    MeanModel,
    condition_residuals,
)
from stellarflow.errors import DataValidationError

__all__ = ["GreedyResult", "greedy_selection"]

Fitter = Callable[[np.ndarray, np.ndarray], MeanModel]


@dataclass(frozen=True)
class GreedyResult:
    """The selection path.

    Attributes:
        table: one row per step (step 0 = the starting set): ``step, added_element,
            condition, excess_statistic (largest eigenvalue of the excess),
            total_excess (sum of its positive eigenvalues), excess_statistic_err, null_mean,
            null_p95,
            excess_over_null, significance, selection_frequency, stop``.
        condition: the final conditioning set (where selection stopped).
        stop_step: the step at which the residual structure became consistent with the null.
        bootstrap_stop_steps: `(n_bootstrap,)` stop step of each rerun on resampled stars.
    """

    table: Table
    condition: tuple[str, ...]
    stop_step: int
    bootstrap_stop_steps: np.ndarray


def _largest(
    cat: AbundanceCatalogue, cond: Sequence[str], targets: Sequence[str], fitter: Fitter | None
) -> float:
    return condition_residuals(cat, cond, targets, fitter).null().statistic


def _total_excess(
    cat: AbundanceCatalogue, cond: Sequence[str], targets: Sequence[str], fitter: Fitter | None
) -> float:
    eigenvalues = condition_residuals(cat, cond, targets, fitter).null().eigenvalues
    return float(np.sum(np.clip(eigenvalues, 0.0, None)))


def _assess(
    cat: AbundanceCatalogue,
    cond: Sequence[str],
    targets: Sequence[str],
    fitter: Fitter | None,
    n_null: int,
    rng: np.random.Generator,
) -> tuple[float, float, np.ndarray]:
    res = condition_residuals(cat, cond, targets, fitter)
    model = res.null_model()
    fit = model.fit(res.covariance())
    draws = model.draws(fit, n_null, rng)
    return fit.statistic, float(np.sum(np.clip(fit.eigenvalues, 0.0, None))), draws[:, 0]


def _path(
    cat: AbundanceCatalogue,
    start: Sequence[str],
    candidates: Sequence[str],
    fitter: Fitter | None,
    alpha: float,
    min_excess: float,
    max_steps: int,
    n_null: int,
    rng: np.random.Generator,
) -> list[dict]:
    cond, targets = list(start), [c for c in candidates if c not in start]
    rows: list[dict] = []
    added = ""
    for step in range(max_steps + 1):
        stat, total, null = _assess(cat, cond, targets, fitter, n_null, rng)
        p = float((1 + np.sum(null >= stat)) / (len(null) + 1))
        over = float(stat - null.mean())
        stop = p > alpha or over < min_excess or len(targets) <= 2
        rows.append(
            {
                "step": step,
                "added_element": added,
                "condition": ",".join(cond),
                "excess_statistic": stat,
                "total_excess": total,
                "null_mean": float(null.mean()),
                "null_p95": float(np.percentile(null, 95)),
                "excess_over_null": over,
                "significance": p,
                "stop": stop,
            }
        )
        if stop or step == max_steps:
            break
        trial = {
            e: _total_excess(cat, [*cond, e], [t for t in targets if t != e], fitter)
            for e in targets
        }
        added = min(trial, key=trial.get)
        cond.append(added)
        targets.remove(added)
    return rows


def greedy_selection(
    catalogue: AbundanceCatalogue,
    start: Sequence[str],
    candidates: Sequence[str],
    *,
    alpha: float = 0.05,
    min_excess: float = 0.1,
    max_steps: int | None = None,
    n_null: int = 50,
    n_bootstrap: int = 10,
    fitter: Fitter | None = None,
    rng: np.random.Generator | None = None,
) -> GreedyResult:
    """Add elements to ``start`` one at a time until the residual structure is noise.

    Args:
        catalogue: the good stars, with every column of ``start`` and ``candidates``.
        start: starting conditioning set (abundances and TEFF/LOGG), kept throughout.
        candidates: elements that may be added (and whose residuals are examined).
        alpha: stop when the shared-structure p-value exceeds this.
        min_excess: stop when the excess over the null mean falls below this.
        max_steps: at most this many additions (default: until two targets remain).
        n_null: parametric-bootstrap draws per step.
        n_bootstrap: reruns of the whole selection on resampled stars.
        fitter: conditional-mean fitter (default degree-3 polynomial).
        rng: randomness for the bootstraps.
    """
    candidates = [c for c in candidates if c not in start]
    if len(candidates) < 3:
        raise DataValidationError(
            f"greedy selection needs at least 3 candidate elements outside the conditioning "
            f"set {list(start)}; got {candidates}"
        )
    if not 0 < alpha < 1 or min_excess < 0 or n_null < 2 or n_bootstrap < 0:
        raise DataValidationError(
            f"need 0 < alpha < 1, min_excess >= 0, n_null >= 2, n_bootstrap >= 0; got {alpha}, "
            f"{min_excess}, {n_null}, {n_bootstrap}"
        )
    rng = rng if rng is not None else np.random.default_rng()
    max_steps = len(candidates) - 2 if max_steps is None else min(max_steps, len(candidates) - 2)
    rows = _path(catalogue, start, candidates, fitter, alpha, min_excess, max_steps, n_null, rng)
    path = [r["added_element"] for r in rows[1:]]
    n = catalogue.values.shape[0]
    stat_draws, picks, stops = [], [], []
    for _ in range(n_bootstrap):
        sample = catalogue.subset(rng.integers(0, n, n))
        cond = list(start)
        draws = []
        for row in rows:
            if row["added_element"]:
                cond.append(row["added_element"])
            draws.append(_largest(sample, cond, [c for c in candidates if c not in cond], fitter))
        stat_draws.append(draws)
        rerun = _path(
            sample,
            start,
            candidates,
            fitter,
            alpha,
            min_excess,
            min(len(rows) + 1, max_steps),
            n_null,
            rng,
        )
        picks.append([r["added_element"] for r in rerun[1:]])
        stops.append(next((r["step"] for r in rerun if r["stop"]), len(rerun) - 1))
    table = Table(rows=rows, names=list(rows[0]))
    table["excess_statistic_err"] = (
        np.std(np.array(stat_draws), axis=0, ddof=1) if n_bootstrap > 1 else np.nan
    )
    freq = [np.nan] + [
        float(np.mean([len(p) > i and p[i] == e for p in picks])) if picks else np.nan
        for i, e in enumerate(path)
    ]
    table["selection_frequency"] = freq
    stop_step = next((r["step"] for r in rows if r["stop"]), len(rows) - 1)
    final = tuple(rows[stop_step]["condition"].split(","))
    table.meta.update(
        {
            "start": list(start),
            "stop_step": stop_step,
            "final_condition": list(final),
            "alpha": alpha,
            "min_excess": min_excess,
            "bootstrap_stop_steps": [int(s) for s in stops],
        }
    )
    return GreedyResult(table, final, stop_step, np.array(stops, dtype=int))
