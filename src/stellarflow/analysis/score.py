"""Score a survey under a trained model: log p(flux | labels) per star, streamed in chunks.

Memory stays constant whatever the survey size: the spectra are read ``chunk_size`` stars
at a time and only the per-star results are kept.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from astropy.table import Table

from stellarflow.data.dataset import ID_COLUMN, SpectralDataset, label_array
from stellarflow.data.summary import SpectraSource
from stellarflow.train.batches import check_label_errors
from stellarflow.train.checkpoint import TrainedModel, check_compatible, log_prob_is_exact

__all__ = ["chunk_flags", "scorable_rows", "score_chunk", "score_survey"]


def chunk_flags(
    trained: TrainedModel, chunk: SpectralDataset, labels: np.ndarray, min_good_fraction: float
) -> dict[str, np.ndarray]:
    """Per-star flags shared by scoring and outlier ranking (each `(n_stars,)`).

    Returns:
        ``support_ratio`` (local-outlier ratio of the labels), ``supported`` (ratio within
        the training support's threshold), ``n_good_pixels``, ``enough_pixels`` (good
        fraction >= ``min_good_fraction``), ``finite_labels``.
    """
    support_ratio = trained.support.distance(labels)
    return {
        "support_ratio": support_ratio,
        "supported": support_ratio <= trained.support.threshold,
        "n_good_pixels": (~chunk.mask).sum(axis=1),
        "enough_pixels": chunk.good_fraction >= min_good_fraction,
        "finite_labels": np.all(np.isfinite(labels), axis=1),
    }


def scorable_rows(flags: dict[str, np.ndarray]) -> np.ndarray:
    """Rows with finite labels and enough good pixels (unsupported labels are still scored)."""
    return np.flatnonzero(flags["finite_labels"] & flags["enough_pixels"])


@torch.no_grad()
def score_chunk(
    trained: TrainedModel, chunk: SpectralDataset, min_good_fraction: float = 0.2
) -> dict[str, np.ndarray]:
    """Log-likelihood and flags for one chunk of stars.

    Args:
        trained: a loaded model.
        chunk: spectra on the model's grid with the model's labels.
        min_good_fraction: stars with fewer usable pixels are flagged and not scored.

    When the model was trained with ``label_errors``, the chunk's ``<LABEL>_ERR`` columns
    are used as the labels' errors (``context_err``); :func:`score_survey` checks them first.

    Returns:
        Columns (each `(n_stars,)`): ``log_prob`` (nats; NaN where not scored),
        ``log_prob_per_pixel`` (nats per usable pixel), ``n_good_pixels``, ``supported``
        (labels inside the training support), ``support_ratio`` (local-outlier ratio of
        the labels; about 1 inside the training labels), ``enough_pixels``.
    """
    model = trained.model
    device = next(model.parameters()).device
    labels = chunk.label_array(trained.label_names)
    flags = chunk_flags(trained, chunk, labels, min_good_fraction)
    n_good, enough = flags["n_good_pixels"], flags["enough_pixels"]
    log_prob = np.full(chunk.n_stars, np.nan)
    rows = scorable_rows(flags)
    if rows.size:
        flux = torch.as_tensor(chunk.flux[rows], device=device)
        ivar = torch.as_tensor(chunk.ivar[rows], device=device)
        context = torch.as_tensor(labels[rows], device=device, dtype=torch.float32)
        labels_in = context if trained.label_names else None
        errors = None
        if trained.config.label_errors:
            values = label_array(chunk.labels, trained.config.error_names)[rows]
            errors = torch.as_tensor(values, device=device, dtype=torch.float32)
        log_prob[rows] = (
            model.observed_log_prob(flux, ivar, labels_in, context_err=errors)
            .double()
            .cpu()
            .numpy()
        )
    return {
        "log_prob": log_prob,
        "log_prob_per_pixel": log_prob / np.maximum(n_good, 1),
        "n_good_pixels": n_good,
        "supported": flags["supported"],
        "support_ratio": flags["support_ratio"],
        "enough_pixels": enough,
    }


def score_survey(
    trained: TrainedModel,
    source: SpectraSource | SpectralDataset,
    *,
    chunk_size: int = 2048,
    min_good_fraction: float = 0.2,
    progress: bool | Callable[[int], None] = False,
) -> Table:
    """Score every star of a survey under a trained model.

    Args:
        trained: a model loaded with :func:`stellarflow.train.checkpoint.load_model`.
        source: a dataset or an open survey file on the model's grid.
        chunk_size: stars per chunk (bounds memory).
        min_good_fraction: stars with a smaller fraction of usable pixels are not scored.
        progress: show a progress bar (True) or call ``progress(n_done)`` per chunk.

    Returns:
        A table in survey order: ``star_id``, ``log_prob`` (nats, log p(flux | labels) with
        each star's noise and mask), ``log_prob_per_pixel``, ``n_good_pixels``,
        ``supported``, ``support_ratio``, ``enough_pixels``. Its meta records whether
        ``log_prob`` is exact or an estimate, and whether the labels' errors were used.

    Raises:
        LabelError: the model was trained with ``label_errors`` and the survey lacks a
            ``<LABEL>_ERR`` column or has an invalid error for a star with finite labels.
    """
    check_compatible(trained, source.wavelength, source.labels.colnames)
    if trained.config.label_errors:
        check_label_errors(source.labels, trained.label_names, trained.config.error_names)
    parts: list[dict[str, np.ndarray]] = []
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=source.n_stars, desc="score", unit="star")
    for chunk in source.iter_chunks(chunk_size):
        parts.append(score_chunk(trained, chunk, min_good_fraction))
        if bar is not None:
            bar.update(chunk.n_stars)
        elif callable(progress):
            progress(chunk.n_stars)
    if bar is not None:
        bar.close()
    table = Table({ID_COLUMN: np.asarray(source.labels[ID_COLUMN])})
    for name in parts[0]:
        table[name] = np.concatenate([p[name] for p in parts])
    table["log_prob"].unit = "nat"
    table.meta["model"] = str(trained.path)
    # whether log_prob is exact or an importance-sampled estimate (a lower bound on average)
    table.meta["log_prob_is_exact"] = log_prob_is_exact(trained.model)
    table.meta["label_errors"] = bool(trained.config.label_errors)
    return table
