r"""A conditional reference for the calibrated score, fitted on held-out stars.

:func:`~stellarflow.analysis.calibrate.calibrate_log_prob` says how improbable a spectrum is
*under the model*. That is exact only if the model is right; a factor-analysis model of
7,514 pixels is not, and its errors show most in high-S/N stars and at the edges of label
space, where the model's own z of normal stars spreads wider than N(0, 1) (issue 4, mock
survey at 7,514 pixels: inlier z sd 1.01 at S/N < 90, 1.72 above S/N 210; a
Kolmogorov-Smirnov test of their tail probabilities against U(0, 1) gives p ~ 1e-10).

The reference recalibrates the model's z against how it actually scores normal stars it
was not fitted to, as a smooth function of where the star is (its labels and its noise):

1. **Coordinates** :math:`x = [\text{labels}, \log_{10} S/N]`, standardised by the
   reference stars' mean and spread.
2. **Location and scale**: :math:`z = \mu(x) + \sigma(x)\,z'` with :math:`\mu` and
   :math:`\log \sigma` quadratic in x (linear below ``_QUADRATIC_MIN`` reference stars), each
   fitted by Huber-weighted least squares (:math:`\log\sigma` on :math:`\log|z - \mu|`, then
   rescaled so that :math:`z'` has unit robust spread, 1.4826 MAD), so that a few real
   outliers among the reference stars do not move them.
3. **Shape**: below its centre (0) :math:`z'` is taken as N(0, 1); above, as a Student-t
   scaled to the same robust spread, with its degrees of freedom :math:`\nu` chosen so that
   its 80, 90, 95 and 97.5% points match the reference stars' (least squares over a grid
   from 1.5 to 1000, and the Gaussian). True outliers among the reference stars, a
   fraction :math:`\epsilon`, move the q-quantile to the normal stars' :math:`q / (1 -
   \epsilon)` one, so the levels stay well below :math:`1 - \epsilon` for the outlier
   fractions of a survey (up to ~1%): with the 99% point in the fit, a 1% contamination
   made it the normal stars' maximum, the fitted tail too heavy (dof 3.7 instead of 7) and
   the inliers' KS fail (p 2e-4; session 9, BENCHMARKS.md). The upper tail is what ranks
   outliers;
   a chi-square-like score is skewed, so the lower half keeps the Gaussian shape.

``p_tail`` is then :math:`P(Z' \ge z')` and ``z`` its standard-normal deviate. Below about
1/``n_stars`` of the reference (the validation split: ~2,000 stars for a 20,000-star
training set) it is an **extrapolation** of the fitted Student-t tail, not a count.
``p_tail`` now means "at least this unusual among normal stars like this one, as the model
scores them"; the model's own z stays in ``z_model``.

Measured (BENCHMARKS.md, "Outliers at 7,514 pixels", session 9; two mocks of 10,000 test
stars with 0.5% and 1% injected outliers, factor analysis k = 16 by ECM): cross-fitted on
the scored survey itself (:func:`~stellarflow.analysis.outliers.recalibrate_by_survey`,
each fold against the other four, ~8,000 stars each) the reference takes the inliers' KS
p from 2e-10 / 6e-5 to 0.51 / 0.06 and precision at k from 0.77 / 0.82 to 0.91 / 0.92.
Fitted on the training run's own validation split (~2,000 stars) it ranks as well but
leaves KS at p 7e-7 on the first mock: 2,000 reference stars fix the score to about 2-3%
in its distribution, which 10,000 test stars resolve. So
:func:`~stellarflow.analysis.outliers.find_outliers` uses the survey reference for surveys
of 2,000 ranked stars or more and this one below that (a single star, a small field).

:func:`fit_reference` fits it from arrays; :func:`reference_scores` scores held-out stars
with a model; ``stellarflow train`` fits one on its validation split and writes it to the
model directory (:data:`REFERENCE_FILE`), where :func:`load_reference` finds it. The same
for the line-list test (``p_lines``: :func:`~stellarflow.analysis.outliers.line_test_scores`,
:data:`REFERENCE_LINES_FILE`, ``linelist`` = the fingerprint of the test) when the survey
carries a line list.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import special, stats

from stellarflow.analysis.calibrate import calibrate_log_prob
from stellarflow.data.dataset import SpectralDataset
from stellarflow.errors import DataValidationError, FileFormatError
from stellarflow.train.batches import usable_rows

__all__ = [
    "REFERENCE_FILE",
    "REFERENCE_LINES_FILE",
    "ReferenceCalibration",
    "coordinates",
    "fit_reference",
    "held_out_scores",
    "load_reference",
    "model_z",
    "reference_scores",
    "save_reference",
]

REFERENCE_FILE = "reference.json"
"""File name of the whole-spectrum test's reference (``p_tail``) in a model directory."""

REFERENCE_LINES_FILE = "reference_lines.json"
"""File name of the line-list test's reference (``p_lines``) in a model directory."""

MIN_REFERENCE_STARS = 200
"""Fewer held-out stars than this give no reference (the tail quantiles need them)."""

_QUADRATIC_MIN = 750
"""Reference stars from which location and scale are quadratic (else linear) in x."""

_TAIL_QUANTILES = np.array([0.80, 0.90, 0.95, 0.975])
_DOF_GRID = np.geomspace(1.5, 1000.0, 80)
_MAD_Q = float(stats.norm.ppf(0.75))
_HUBER_C = 1.345


@dataclass(frozen=True)
class ReferenceCalibration:
    """A fitted reference (module docstring): z' = (z - mu(x)) / sigma(x), Student-t tail.

    Attributes:
        label_names: the labels of x, in order (then log10 S/N).
        centre, spread: standardisation of x, one value per coordinate.
        degree: 1 (linear) or 2 (quadratic) features of the standardised x.
        location, log_scale: coefficients of mu and log sigma on those features.
        dof: Student-t degrees of freedom of the upper tail (``inf``: Gaussian).
        n_stars: reference stars it was fitted on.
        tail_check: the reference stars' z' quantiles at 80, 90, 95 and 97.5% and the
            fitted shape's, for the record.
        linelist: for a reference of the line-list test (``p_lines``), the fingerprint of
            the test it was fitted for (line list on the grid, resolution, expectation:
            :func:`~stellarflow.analysis.explain.line_test_fingerprint`); "" for the
            whole-spectrum test.
    """

    label_names: tuple[str, ...]
    centre: tuple[float, ...]
    spread: tuple[float, ...]
    degree: int
    location: tuple[float, ...]
    log_scale: tuple[float, ...]
    dof: float
    n_stars: int
    tail_check: dict[str, list[float]]
    linelist: str = ""

    def standardized(self, z: np.ndarray, labels: np.ndarray, snr: np.ndarray) -> np.ndarray:
        """z' of each star: its model z about the reference's location, in its scale.

        Args:
            z: `(n,)` the model's calibrated z (``z_model``).
            labels: `(n, len(label_names))` physical units.
            snr: `(n,)` median S/N per usable pixel.
        """
        labels = np.asarray(labels, dtype=np.float64).reshape(len(snr), -1)
        if labels.shape[1] != len(self.label_names):
            raise DataValidationError(
                f"the reference needs {len(self.label_names)} labels "
                f"{list(self.label_names)}, got {labels.shape[1]} columns"
            )
        features = _features(coordinates(labels, snr), self.centre, self.spread, self.degree)
        location = features @ np.asarray(self.location)
        scale = np.exp(features @ np.asarray(self.log_scale))
        return (np.asarray(z, dtype=np.float64) - location) / scale

    def log_p_tail(self, z: np.ndarray, labels: np.ndarray, snr: np.ndarray) -> np.ndarray:
        """Natural log of the recalibrated tail probability of each star (module docstring)."""
        return _log_sf(self.standardized(z, labels, snr), self.dof)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``dof`` inf is written as None)."""
        out = asdict(self)
        out["dof"] = None if not np.isfinite(self.dof) else self.dof
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceCalibration:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                label_names=tuple(data["label_names"]),
                centre=tuple(float(v) for v in data["centre"]),
                spread=tuple(float(v) for v in data["spread"]),
                degree=int(data["degree"]),
                location=tuple(float(v) for v in data["location"]),
                log_scale=tuple(float(v) for v in data["log_scale"]),
                dof=float("inf") if data["dof"] is None else float(data["dof"]),
                n_stars=int(data["n_stars"]),
                tail_check={k: list(v) for k, v in data["tail_check"].items()},
                linelist=str(data.get("linelist", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise FileFormatError(f"not a reference calibration ({err!r})") from None


def coordinates(labels: np.ndarray, snr: np.ndarray) -> np.ndarray:
    """`(n, n_labels + 1)`: the labels and log10 S/N (S/N floored at 1e-3), where a star is."""
    log_snr = np.log10(np.maximum(np.asarray(snr, dtype=np.float64), 1e-3))
    return np.column_stack(
        [np.asarray(labels, dtype=np.float64).reshape(log_snr.size, -1), log_snr]
    )


def _features(x: np.ndarray, centre: Sequence[float], spread: Sequence[float], degree: int):
    """`(n, n_features)`: 1, the standardised coordinates, and with degree 2 their products."""
    u = (x - np.asarray(centre)) / np.asarray(spread)
    columns = [np.ones(len(u)), *u.T]
    if degree == 2:
        d = u.shape[1]
        columns += [u[:, i] * u[:, j] for i in range(d) for j in range(i, d)]
    return np.column_stack(columns)


def _huber_fit(design: np.ndarray, target: np.ndarray, n_iter: int = 30) -> np.ndarray:
    """Huber-weighted least squares (IRLS with the MAD scale of the residuals)."""
    weight = np.ones(target.size)
    beta = np.zeros(design.shape[1])
    for _ in range(n_iter):
        root = np.sqrt(weight)
        beta = np.linalg.lstsq(design * root[:, None], target * root, rcond=None)[0]
        resid = target - design @ beta
        scale = max(stats.median_abs_deviation(resid, scale="normal"), 1e-12)
        ratio = np.abs(resid) / (_HUBER_C * scale)
        weight = np.where(ratio <= 1.0, 1.0, 1.0 / np.maximum(ratio, 1e-300))
    return beta


def _t_scale(dof: float) -> float:
    """Factor that gives a Student-t with ``dof`` the robust spread (1.4826 MAD) of N(0, 1)."""
    return _MAD_Q / float(stats.t.ppf(0.75, dof))


def _shape_quantiles(dof: float) -> np.ndarray:
    if not np.isfinite(dof):
        return stats.norm.ppf(_TAIL_QUANTILES)
    return _t_scale(dof) * stats.t.ppf(_TAIL_QUANTILES, dof)


def _fit_dof(standardized: np.ndarray) -> tuple[float, np.ndarray]:
    """Degrees of freedom whose scaled-t upper quantiles match the reference's best."""
    observed = np.quantile(standardized, _TAIL_QUANTILES)
    candidates = [float("inf"), *_DOF_GRID]
    losses = [float(np.sum((observed - _shape_quantiles(d)) ** 2)) for d in candidates]
    return candidates[int(np.argmin(losses))], observed


def _log_sf(standardized: np.ndarray, dof: float) -> np.ndarray:
    """log P(Z' >= z'): N(0, 1) below 0, the scaled Student-t above (module docstring)."""
    lower = special.log_ndtr(-standardized)
    if not np.isfinite(dof):
        return lower
    upper = stats.t.logsf(standardized / _t_scale(dof), dof)
    return np.where(standardized > 0, upper, lower)


def fit_reference(
    z: np.ndarray,
    labels: np.ndarray,
    snr: np.ndarray,
    label_names: Sequence[str],
) -> ReferenceCalibration:
    """Fit the reference (module docstring) to held-out stars' model z.

    Args:
        z: `(n,)` the model's calibrated z of held-out (mostly normal) stars.
        labels: `(n, len(label_names))` their labels, physical units.
        snr: `(n,)` their median S/N per usable pixel.
        label_names: the label columns, in order.

    Raises:
        DataValidationError: fewer than :data:`MIN_REFERENCE_STARS` stars with finite
            values, or inputs of mismatched lengths.
    """
    z = np.asarray(z, dtype=np.float64)
    snr = np.asarray(snr, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64).reshape(z.size, -1)
    if snr.shape != z.shape or labels.shape[1] != len(label_names):
        raise DataValidationError(
            f"need z and snr of one length and labels (n, {len(label_names)}); got "
            f"{z.shape}, {snr.shape}, {labels.shape}"
        )
    x = coordinates(labels, snr)
    ok = np.isfinite(z) & np.all(np.isfinite(x), axis=1)
    if ok.sum() < MIN_REFERENCE_STARS:
        raise DataValidationError(
            f"a reference needs at least {MIN_REFERENCE_STARS} held-out stars with finite "
            f"scores, labels and S/N; got {int(ok.sum())}: score more held-out stars"
        )
    z, x = z[ok], x[ok]
    centre, spread = x.mean(axis=0), x.std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    degree = 2 if z.size >= _QUADRATIC_MIN else 1
    design = _features(x, centre, spread, degree)
    location = _huber_fit(design, z)
    resid = z - design @ location
    log_scale = _huber_fit(design, np.log(np.abs(resid) + 1e-9))
    scaled = resid / np.exp(design @ log_scale)
    log_scale[0] += np.log(max(stats.median_abs_deviation(scaled, scale="normal"), 1e-12))
    standardized = resid / np.exp(design @ log_scale)
    dof, observed = _fit_dof(standardized)
    return ReferenceCalibration(
        label_names=tuple(label_names),
        centre=tuple(float(v) for v in centre),
        spread=tuple(float(v) for v in spread),
        degree=degree,
        location=tuple(float(v) for v in location),
        log_scale=tuple(float(v) for v in log_scale),
        dof=dof,
        n_stars=int(z.size),
        tail_check={
            "quantiles": _TAIL_QUANTILES.tolist(),
            "reference": observed.tolist(),
            "fitted": _shape_quantiles(dof).tolist(),
        },
    )


def held_out_scores(
    chunks: Iterable[SpectralDataset],
    label_names: Sequence[str],
    score: Callable[[SpectralDataset, np.ndarray, int], np.ndarray],
    *,
    min_good_fraction: float = 0.2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, labels and S/N of held-out stars, for :func:`fit_reference`.

    Stars with a non-finite label or fewer usable pixels than ``min_good_fraction`` are
    left out (as :func:`~stellarflow.analysis.outliers.find_outliers` leaves them unranked).

    Args:
        chunks: the held-out stars, a few hundred at a time.
        label_names: the model's labels.
        score: ``score(chunk, keep, number)`` -> the z of the ``keep`` rows of chunk number
            ``number``, `(n_keep,)` or `(n_keep, n_tests)`; non-finite where a star has no
            such test (:func:`fit_reference` leaves those out).
        min_good_fraction: see above.

    Returns:
        ``(z, labels, snr)``.
    """
    zs, labels_out, snrs = [], [], []
    for number, chunk in enumerate(chunks):
        labels = chunk.label_array(list(label_names))
        keep = usable_rows(chunk, label_names, min_good_fraction)
        if not keep.any():
            continue
        zs.append(score(chunk, keep, number))
        labels_out.append(labels[keep])
        snrs.append(chunk.snr()[keep])
    if not zs:
        return np.zeros(0), np.zeros((0, len(label_names))), np.zeros(0)
    return np.concatenate(zs), np.concatenate(labels_out), np.concatenate(snrs)


def model_z(
    model: Any,
    chunk: SpectralDataset,
    keep: np.ndarray,
    label_names: Sequence[str],
    error_names: Sequence[str] = (),
    *,
    n_reference: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """The model's calibrated z (``z_model``) of the ``keep`` rows of a chunk.

    ``error_names``: the label error columns when the model marginalises label errors;
    ``n_reference`` and ``seed``: reference draws for a flow prior.
    """
    labels = chunk.label_array(list(label_names))[keep] if label_names else None
    err = chunk.label_array(list(error_names))[keep] if error_names else None
    return calibrate_log_prob(
        model,
        chunk.flux[keep],
        chunk.ivar[keep],
        labels,
        context_err=err,
        n_reference=n_reference,
        chunk_size=256,
        seed=seed,
    ).z


def reference_scores(
    model: Any,
    chunks: Iterable[SpectralDataset],
    label_names: Sequence[str],
    error_names: Sequence[str] = (),
    *,
    min_good_fraction: float = 0.2,
    n_reference: int = 16,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's z, the labels and the S/N of held-out stars (:func:`held_out_scores`
    with :func:`model_z`; chunk ``number`` draws with seed ``seed + number``)."""
    return held_out_scores(
        chunks,
        label_names,
        lambda chunk, keep, number: model_z(
            model,
            chunk,
            keep,
            label_names,
            error_names,
            n_reference=n_reference,
            seed=seed + number,
        ),
        min_good_fraction=min_good_fraction,
    )


def save_reference(directory: str | os.PathLike[str], reference: ReferenceCalibration) -> Path:
    """Write the reference into a model directory (atomically); its path.

    A line-list test's reference (``reference.linelist`` set) goes to
    :data:`REFERENCE_LINES_FILE`, the whole spectrum's to :data:`REFERENCE_FILE`.
    """
    from stellarflow.train.checkpoint import write_json

    name = REFERENCE_LINES_FILE if reference.linelist else REFERENCE_FILE
    path = Path(directory) / name
    write_json(path, reference.to_dict())
    return path


def load_reference(
    directory: str | os.PathLike[str], lines: bool = False
) -> ReferenceCalibration | None:
    """The model directory's reference (of the line-list test if ``lines``), or None.

    Raises:
        FileFormatError: the file exists but is not a reference calibration.
    """
    from stellarflow.train.checkpoint import read_json

    path = Path(directory) / (REFERENCE_LINES_FILE if lines else REFERENCE_FILE)
    if not path.is_file():
        return None
    return ReferenceCalibration.from_dict(read_json(path))
