"""Score a survey under a trained model: log p(flux | labels) per star, streamed in chunks.

Memory stays constant whatever the survey size: the spectra are read ``chunk_size`` stars
at a time (the next chunk read ahead in a background thread) and only the per-star results
are kept.

**Sharded and resumable** (:func:`map_chunks`, used by scoring and outlier ranking). Under
``torchrun`` each process scores a contiguous range of chunks (never a padded sampler that
repeats stars); with a part-file folder (:class:`stellarflow.data.shards.PartStore`) every
finished chunk is saved atomically, an interrupted run resumes from its last completed
chunk, and the parts are merged by index into one result that every process returns. The
chunk numbering and each chunk's random seed do not depend on the number of processes, so
the result is exactly that of a single process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from astropy.table import Table

from stellarflow.data.dataset import ID_COLUMN, SpectralDataset, label_array
from stellarflow.data.prefetch import prefetch
from stellarflow.data.shards import ChunkPlan, PartStore
from stellarflow.data.summary import SpectraSource
from stellarflow.errors import DataValidationError
from stellarflow.train.batches import check_label_errors
from stellarflow.train.checkpoint import TrainedModel, check_compatible, log_prob_is_exact
from stellarflow.train.distributed import Distributed

__all__ = [
    "chunk_flags",
    "chunk_seed",
    "map_chunks",
    "scorable_rows",
    "score_chunk",
    "score_survey",
]

logger = logging.getLogger(__name__)


def chunk_seed(seed: int, chunk: int) -> int:
    """The random seed of chunk number ``chunk`` (independent of the number of processes)."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def map_chunks(
    source: SpectraSource | SpectralDataset,
    chunk_size: int,
    compute: Callable[[int, SpectralDataset], Mapping[str, np.ndarray]],
    *,
    parts: str | Path | None = None,
    manifest: Mapping[str, Any] | None = None,
    dist: Distributed | None = None,
    progress: bool | Callable[[int], None] = False,
    desc: str = "chunks",
) -> dict[str, np.ndarray]:
    """Apply ``compute(chunk_number, chunk)`` to every chunk; concatenate the columns.

    Args:
        source: a dataset or an open survey file (``read(start, stop)``).
        chunk_size: stars per chunk; chunk ``k`` is stars ``[k * chunk_size, ...)``.
        compute: per-star columns (each `(chunk.n_stars, ...)`) of one chunk; must depend
            on the chunk and its number only.
        parts: folder of per-chunk part files that makes the run resumable (and is needed
            by several processes to exchange their results); None: keep them in memory.
        manifest: what the run computes (settings, model, survey) for the part folder; a
            folder written by a run with another manifest is refused.
        dist: this process's place in a ``torchrun`` job; None: one process.
        progress: progress bar (True, rank 0 only) or ``progress(n_done)`` per chunk.
        desc: the progress bar's label.

    Returns:
        Every star's columns in survey order, on every process.

    Raises:
        DataValidationError: several processes without ``parts``, a folder of another
            run's parts, or a missing or inconsistent part after the run.
    """
    dist = dist or Distributed()
    plan = ChunkPlan(source.n_stars, chunk_size)
    mine = plan.for_rank(dist.rank, dist.world_size)
    store = None
    if parts is not None:
        store = PartStore(parts, {**dict(manifest or {}), **_plan_manifest(plan)})
        if dist.is_main:
            n_done = store.open(create=True)
            if n_done:
                logger.warning("resuming: %d of %d chunks already in %s", n_done,
                               plan.n_chunks, store.directory)  # fmt: skip
        dist.barrier()
        if not dist.is_main:
            store.open(create=False)
    elif dist.active:
        raise DataValidationError(
            "several processes need a folder for their part files (parts=...); the CLI "
            "puts it beside the output"
        )
    todo = [k for k in mine if store is None or not store.has(k)]
    bar = None
    if progress is True and dist.is_main:
        from tqdm.auto import tqdm

        done = sum(plan.rows(k)[1] - plan.rows(k)[0] for k in mine if k not in todo)
        total = sum(plan.rows(k)[1] - plan.rows(k)[0] for k in mine)
        bar = tqdm(total=total, initial=done, desc=desc, unit="star")
    chunks = ((k, source.read(*plan.rows(k))) for k in todo)
    kept: list[dict[str, np.ndarray]] = []
    for number, chunk in prefetch(chunks, 0 if isinstance(source, SpectralDataset) else 1):
        columns = {name: np.asarray(value) for name, value in compute(number, chunk).items()}
        if store is not None:
            store.write(number, plan.rows(number), columns)
        else:
            kept.append(columns)
        if bar is not None:
            bar.update(chunk.n_stars)
        elif callable(progress):
            progress(chunk.n_stars)
    if bar is not None:
        bar.close()
    if store is None:
        if not kept:
            return {}
        return {name: np.concatenate([p[name] for p in kept]) for name in kept[0]}
    dist.barrier()
    return store.merge(plan)


def _plan_manifest(plan: ChunkPlan) -> dict[str, Any]:
    return {"n_stars": plan.n_stars, "chunk_size": plan.chunk_size, "n_chunks": plan.n_chunks}


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
    trained: TrainedModel,
    chunk: SpectralDataset,
    min_good_fraction: float = 0.2,
    seed: int | None = None,
) -> dict[str, np.ndarray]:
    """Log-likelihood and flags for one chunk of stars.

    Args:
        trained: a loaded model.
        chunk: spectra on the model's grid with the model's labels.
        min_good_fraction: stars with fewer usable pixels are flagged and not scored.
        seed: seeds the importance samples of a stochastic ``log_prob`` (latent flows);
            None: torch's global generator.

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
        generator = None
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)
        log_prob[rows] = (
            model.observed_log_prob(flux, ivar, labels_in, generator=generator, context_err=errors)
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
    seed: int = 0,
    parts: str | Path | None = None,
    dist: Distributed | None = None,
) -> Table:
    """Score every star of a survey under a trained model.

    Args:
        trained: a model loaded with :func:`stellarflow.train.checkpoint.load_model`.
        source: a dataset or an open survey file on the model's grid.
        chunk_size: stars per chunk (bounds memory).
        min_good_fraction: stars with a smaller fraction of usable pixels are not scored.
        progress: show a progress bar (True) or call ``progress(n_done)`` per chunk.
        seed: seeds each chunk's importance samples (stochastic ``log_prob`` only), so a
            result is reproducible for a given ``chunk_size``.
        parts: folder of per-chunk part files: makes the run resumable, and is required by
            several processes (:func:`map_chunks`); None: in memory.
        dist: this process's place in a ``torchrun`` job; None: one process. Every process
            returns the whole table.

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
    manifest = {
        "task": "score",
        "model": str(Path(trained.path).resolve()),
        "grid_hash": trained.metadata.get("grid_hash", ""),
        "source": str(getattr(source, "path", "in-memory dataset")),
        "min_good_fraction": min_good_fraction,
        "seed": seed,
    }
    columns = map_chunks(
        source,
        chunk_size,
        lambda k, chunk: score_chunk(trained, chunk, min_good_fraction, chunk_seed(seed, k)),
        parts=parts,
        manifest=manifest,
        dist=dist,
        progress=progress,
        desc="score",
    )
    table = Table({ID_COLUMN: np.asarray(source.labels[ID_COLUMN])})
    for name, values in columns.items():
        table[name] = values
    table["log_prob"].unit = "nat"
    table.meta["model"] = str(trained.path)
    # whether log_prob is exact or an importance-sampled estimate (a lower bound on average)
    table.meta["log_prob_is_exact"] = log_prob_is_exact(trained.model)
    table.meta["label_errors"] = bool(trained.config.label_errors)
    return table
