r"""Answer-key quantities of a mock survey that are not stored in its file.

:func:`spectra_at_labels` draws the mock population's noise-free spectra at a fixed label
point: the "known intrinsic scatter at fixed labels" that a deconvolved model should
reproduce (issue: noise-aware likelihood). :func:`variance_at_measured_labels` is the same
at fixed *measured* labels: what a model conditioned on the catalogue's noisy labels (and
not marginalising their errors) should reproduce.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from stellarflow.errors import DataValidationError
from stellarflow.mock.config import MockConfig
from stellarflow.mock.constants import ABUNDANCE_ELEMENTS, abundance_label
from stellarflow.mock.linelist import make_mock_linelist
from stellarflow.mock.population import observe_labels, sample_population
from stellarflow.mock.spectra import SpectrumModel, StarParameters

__all__ = [
    "HIDDEN_PARAMETERS",
    "likelihood_floor",
    "spectra_at_labels",
    "variance_at_measured_labels",
]

HIDDEN_PARAMETERS: tuple[str, ...] = (
    "TEFF",
    "LOGG",
    "FE_H",
    *(abundance_label(e) for e in ABUNDANCE_ELEMENTS),
    "VMICRO",
    "VMACRO",
    "RESOLUTION",
)
"""Every per-star quantity the mock's noise-free spectrum depends on (truth-table columns)."""

# half-widths of the box in which population stars are taken before being moved to the point
_DEFAULT_BOX = {"TEFF": 60.0, "LOGG": 0.12, "FE_H": 0.05}
# half-widths of the box of measured labels (the within-box trend is fitted and removed)
_MEASURED_BOX = {"TEFF": 150.0, "LOGG": 0.3, "FE_H": 0.1}


def spectra_at_labels(
    config: MockConfig,
    point: Mapping[str, float],
    n_stars: int = 1000,
    *,
    box: Mapping[str, float] | None = None,
    seed: int = 12345,
    max_draws: int = 2_000_000,
) -> np.ndarray:
    """Noise-free mock spectra of stars whose true labels are exactly ``point``.

    Population stars (no outliers) are drawn with the mock's population law until
    ``n_stars`` fall in a small box around the point (default half-widths: 60 K, 0.12 dex
    in LOGG, 0.05 dex in FE_H, 0.05 otherwise); their labels named in ``point`` are then set
    to the point exactly and everything else (abundances, mixing, broadening, resolution) is
    kept, so the spectra sample p(spectrum | labels = point) of the mock's population.

    Args:
        config: the mock's configuration (grid, line list seed, population law).
        point: true label values by name (e.g. TEFF, LOGG, FE_H).
        n_stars: spectra wanted.
        box: half-widths of the selection box per label.
        seed: seed of the population draws (independent of the survey's own stars).
        max_draws: give up after this many population draws.

    Returns:
        `(n_stars, n_pixels)` float64 flux on ``config.wavelength()``.

    Raises:
        DataValidationError: unknown label, or too few population stars near the point.
    """
    clean = MockConfig.from_dict({**config.to_dict(), "outlier_fraction": 0.0})
    widths = {**_DEFAULT_BOX, **(box or {})}
    stars, _ = _stars_in_box(clean, point, n_stars, widths, 0.05, seed, max_draws, measured=False)
    for name, value in point.items():
        stars[name] = np.full(len(stars), float(value))
    return _noise_free_flux(clean, stars)


def _stars_in_box(
    clean: MockConfig,
    point: Mapping[str, float],
    n_stars: int,
    widths: Mapping[str, float],
    default_width: float,
    seed: int,
    max_draws: int,
    *,
    measured: bool,
) -> tuple[Table, np.ndarray]:
    """Population stars whose labels named in ``point`` (true, or ``measured`` like the
    survey's, with the mock's label errors) lie within ``widths`` of it; with those labels'
    offsets from the point, `(n_stars, len(point))`.

    Raises:
        DataValidationError: unknown label, or fewer than ``n_stars`` stars in the box after
            ``max_draws`` draws.
    """
    from astropy.table import vstack

    rng = np.random.default_rng(seed)
    names = list(point)
    limit = np.array([widths.get(n, default_width) for n in names])
    kept, offsets = [], []
    n_kept, n_drawn = 0, 0
    while n_kept < n_stars and n_drawn < max_draws:
        batch = sample_population(clean, rng, 50_000)
        labels = observe_labels(batch, rng) if measured else batch
        n_drawn += len(batch)
        unknown = [n for n in names if n not in labels.colnames]
        if unknown:
            kind = "measured" if measured else "true"
            known = [c for c in labels.colnames if c not in ("star_id", "SNR")]
            raise DataValidationError(
                f"labels {unknown} are not {kind} mock labels; expected some of {known}"
            )
        offset = np.column_stack([np.asarray(labels[n], dtype=np.float64) - point[n]
                                  for n in names])  # fmt: skip
        inside = np.all(np.abs(offset) <= limit, axis=1)
        if np.any(inside):
            kept.append(batch[inside])
            offsets.append(offset[inside])
            n_kept += int(inside.sum())
    if n_kept < n_stars:
        raise DataValidationError(
            f"only {n_kept} of {n_drawn} mock stars have {'measured' if measured else 'true'} "
            f"labels near {dict(point)}; choose a well-populated label point, a wider box or "
            "fewer stars"
        )
    return vstack(kept)[:n_stars], np.concatenate(offsets)[:n_stars]


def _noise_free_flux(clean: MockConfig, stars: Table) -> np.ndarray:
    """`(n_stars, n_pixels)` noise-free flux of ``stars`` with the mock's full line list."""
    linelist = make_mock_linelist(
        clean.linelist_seed,
        withheld_fraction=clean.withheld_fraction,
        withheld_elements=clean.withheld_elements,
    )
    return SpectrumModel(linelist, clean.wavelength()).flux(StarParameters.from_labels(stars))


def _linear_residual(offsets: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, int]:
    """``values`` minus their least-squares linear fit in ``offsets``, and its dof."""
    design = np.column_stack([np.ones(len(offsets)), offsets])
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    return values - design @ coef, max(len(offsets) - design.shape[1], 1)


def _local_covariance(
    hidden: np.ndarray, measured: np.ndarray, neighbours: np.ndarray
) -> np.ndarray:
    """Covariance of the hidden parameters about a linear fit in the measured labels, over
    one star's neighbours: the spread the measured labels leave free near that star."""
    residual, dof = _linear_residual(measured[neighbours], hidden[neighbours])
    return residual.T @ residual / dof


def likelihood_floor(
    truth: Table,
    measured: np.ndarray,
    ivar: np.ndarray,
    spectrum_model: SpectrumModel,
    targets: Sequence[int] | np.ndarray,
    *,
    pool: Sequence[int] | np.ndarray | None = None,
    n_neighbours: int = 400,
    step: float = 0.25,
) -> np.ndarray:
    r"""Estimated irreducible gap to the oracle per star, nats: :math:`I(x; f \mid l)`.

    The oracle's log-likelihood is :math:`\log p(x \mid f)` with the star's noise-free
    spectrum f known; the best possible model of the measured labels' conditional density
    scores :math:`\log p(x \mid l)`, and the expected difference is the mutual
    information between the observed spectrum and f given l. Writing
    :math:`f = f(\theta)` with :math:`\theta` the :data:`HIDDEN_PARAMETERS`, linearised at
    the star's true :math:`\theta` (Jacobian J by central differences of
    ``spectrum_model.flux``), with :math:`\theta \mid l \sim N(\cdot, \Sigma)` and the
    star's Gaussian noise :math:`N = \mathrm{diag}(1/\mathrm{ivar})` on its unmasked pixels,

    .. math:: I = \tfrac12 \log\det\big(1 + \Sigma^{1/2} J^T N^{-1} J \Sigma^{1/2}\big).

    :math:`\Sigma` is the covariance of the true hidden parameters about a local linear fit
    in the measured labels over the star's ``n_neighbours`` nearest stars of ``pool`` (in
    measured labels scaled by their spread). It is an *estimate*: the linearisation
    ignores the curvature of f over the spread :math:`\Sigma` and the Gaussian form
    replaces the population's real (e.g. two-sequence) conditional law, which has lower
    entropy for the same covariance, so the true floor is if anything lower.

    Args:
        truth: the mock's truth table (columns :data:`HIDDEN_PARAMETERS`), one row per star.
        measured: `(n_stars, n_labels)` the labels the model is conditioned on, as
            measured (same rows as ``truth``).
        ivar: `(len(targets), n_pixels)` inverse variance of the target stars, 0 = masked.
        spectrum_model: the mock's line formation (its true line list and grid).
        targets: rows of ``truth`` to evaluate.
        pool: rows whose hidden parameters define the local spread (default: all rows).
        n_neighbours: stars per local covariance.
        step: finite-difference half-step in units of each parameter's local spread.

    Returns:
        `(len(targets),)` nats per star, >= 0.
    """
    targets = np.asarray(targets, dtype=np.int64)
    pool = np.arange(len(truth)) if pool is None else np.asarray(pool, dtype=np.int64)
    missing = [name for name in HIDDEN_PARAMETERS if name not in truth.colnames]
    if missing:
        raise DataValidationError(f"the truth table lacks the hidden parameters {missing}")
    ivar = np.asarray(ivar, dtype=np.float64)
    if ivar.shape != (targets.size, spectrum_model.n_pixels):
        raise DataValidationError(
            f"ivar must be (len(targets), n_pixels) = ({targets.size}, "
            f"{spectrum_model.n_pixels}), got {ivar.shape}"
        )
    hidden = np.column_stack([np.asarray(truth[n], dtype=np.float64) for n in HIDDEN_PARAMETERS])
    measured = np.asarray(measured, dtype=np.float64)
    scaled = measured / measured[pool].std(0)
    tree = cKDTree(scaled[pool])
    n_hidden = hidden.shape[1]
    floor = np.empty(targets.size)
    for i, row in enumerate(targets):
        _, found = tree.query(scaled[row], k=min(n_neighbours, pool.size))
        sigma = _local_covariance(hidden, measured, pool[np.atleast_1d(found)])
        h = step * np.sqrt(np.maximum(np.diag(sigma), 1e-12))
        points = np.repeat(hidden[row][None], 2 * n_hidden, axis=0)
        points[:n_hidden] += np.diag(h)
        points[n_hidden:] -= np.diag(h)
        columns = {name: points[:, j] for j, name in enumerate(HIDDEN_PARAMETERS)}
        flux = spectrum_model.flux(StarParameters.from_labels(columns))
        jac = (flux[:n_hidden] - flux[n_hidden:]).T / (2 * h)  # (n_pixels, n_hidden)
        values, vectors = np.linalg.eigh(sigma)
        root = vectors * np.sqrt(np.clip(values, 0.0, None))  # Sigma^(1/2) up to rotation
        projected = jac @ root
        fisher = projected.T @ (ivar[i][:, None] * projected)
        eig = np.linalg.eigvalsh(fisher)
        floor[i] = 0.5 * np.log1p(np.clip(eig, 0.0, None)).sum()
    return floor


def variance_at_measured_labels(
    config: MockConfig,
    point: Mapping[str, float],
    n_stars: int = 2000,
    *,
    box: Mapping[str, float] | None = None,
    seed: int = 12345,
    max_draws: int = 2_000_000,
) -> np.ndarray:
    """Per-pixel variance of noise-free mock spectra at fixed *measured* labels ``point``.

    Population stars (no outliers) are drawn and observed like the survey's (their labels
    get the mock's measurement errors); those whose measured labels named in ``point`` lie in
    a box around it (default half-widths 150 K, 0.3 dex in LOGG, 0.1 dex in FE_H, 0.06
    otherwise) are kept, and their noise-free spectra are regressed linearly on the measured
    labels within the box. The residual variance is that of p(spectrum | measured labels =
    point): a star's true labels still scatter about its measured ones, which
    :func:`spectra_at_labels` (fixed *true* labels) leaves out.

    Args:
        config: the mock's configuration.
        point: measured label values by name.
        n_stars: stars in the box to use (more: a less noisy variance).
        box: half-widths of the box per label.
        seed: seed of the population draws and their label errors.
        max_draws: give up after this many population draws.

    Returns:
        `(n_pixels,)` float64, flux units squared, on ``config.wavelength()``.

    Raises:
        DataValidationError: unknown label, or too few stars in the box.
    """
    clean = MockConfig.from_dict({**config.to_dict(), "outlier_fraction": 0.0})
    widths = {**_MEASURED_BOX, **(box or {})}
    n_stars = max(n_stars, len(point) + 10)  # the within-box fit needs stars to spare
    stars, offsets = _stars_in_box(
        clean, point, n_stars, widths, 0.06, seed, max_draws, measured=True
    )
    residual, dof = _linear_residual(offsets, _noise_free_flux(clean, stars))
    return (residual**2).sum(axis=0) / dof
