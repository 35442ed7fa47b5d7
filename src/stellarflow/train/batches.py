"""Block-wise train/validation split and shuffled mini-batches, in memory or out of core.

Stars are grouped in contiguous blocks of ``block_size`` rows. The validation split holds
out whole blocks, and each epoch visits the training blocks in a random order, reading a
few blocks at a time into a buffer that is shuffled star by star. Reading whole blocks keeps
HDF5 access sequential (a survey file need never be loaded whole), and the batches of a
given ``(seed, epoch)`` are the same whichever source holds the stars.

Out of core, memory is bounded by two buffers (the one being used and the next, read ahead
in a background thread by :func:`stellarflow.data.prefetch.prefetch`):
``2 * blocks_per_buffer * block_size`` stars, about 280 MB each at 7,514 pixels with the
defaults (16 blocks of 256 stars, 9 bytes per pixel), whatever the survey size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from stellarflow.data.dataset import SpectralDataset, label_array
from stellarflow.data.prefetch import prefetch
from stellarflow.data.summary import SpectraSource
from stellarflow.errors import LabelError

__all__ = ["Batch", "check_label_errors", "iter_batches", "split_blocks", "usable_rows"]


@dataclass(frozen=True)
class Batch:
    """A mini-batch of stars.

    Attributes:
        flux: `(n, n_pixels)` float32, continuum-normalised.
        ivar: `(n, n_pixels)` float32, 0 = masked.
        labels: `(n, n_labels)` float64, physical units.
        rows: `(n,)` row numbers in the source.
        label_errors: `(n, n_labels)` float64 one-sigma errors of ``labels`` (same units),
            or None when they were not asked for.
    """

    flux: np.ndarray
    ivar: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    label_errors: np.ndarray | None = None

    def select(self, index: slice | np.ndarray) -> Batch:
        """The stars at ``index``."""
        errors = None if self.label_errors is None else self.label_errors[index]
        return Batch(
            self.flux[index], self.ivar[index], self.labels[index], self.rows[index], errors
        )

    def __len__(self) -> int:
        return len(self.rows)


def _concatenate(parts: Sequence[Batch]) -> Batch:
    errors = [p.label_errors for p in parts]
    return Batch(
        np.concatenate([p.flux for p in parts]),
        np.concatenate([p.ivar for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.rows for p in parts]),
        None if any(e is None for e in errors) else np.concatenate(errors),
    )


def split_blocks(
    n_stars: int, block_size: int, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``0..n_stars`` into blocks and hold out a random fraction of them.

    The block size shrinks for small surveys so that there are at least 20 blocks.

    Returns:
        train_blocks, validation_blocks: `(n_blocks, 2)` int arrays of ``[start, stop)``.
    """
    size = max(1, min(block_size, n_stars // 20))
    starts = np.arange(0, n_stars, size)
    blocks = np.stack([starts, np.minimum(starts + size, n_stars)], axis=1)
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(len(blocks))
    n_val = max(1, round(validation_fraction * len(blocks)))
    val = np.sort(order[:n_val])
    train = np.sort(order[n_val:])
    return blocks[train], blocks[val]


def usable_rows(
    chunk: SpectralDataset, label_names: Sequence[str], min_good_fraction: float
) -> np.ndarray:
    """Boolean `(chunk.n_stars,)`: finite labels and enough usable pixels to learn from."""
    ok = chunk.good_fraction >= max(min_good_fraction, 1e-9)
    if label_names:
        ok &= np.all(np.isfinite(chunk.label_array(label_names)), axis=1)
    return ok


def check_label_errors(
    labels: Table, label_names: Sequence[str], error_names: Sequence[str]
) -> None:
    """Check the labels' error columns before they are used (training or scoring).

    Args:
        labels: the label table.
        label_names: the labels, e.g. ("TEFF", "LOGG").
        error_names: their error columns, in the same order, e.g. ("TEFF_ERR", "LOGG_ERR").

    Raises:
        LabelError: a column is missing or not numeric, or an error is NaN, infinite or
            negative for a star whose labels are all finite (stars with a non-finite label
            are skipped anyway).
    """
    missing = [name for name in error_names if name not in labels.colnames]
    if missing:
        raise LabelError(
            f"label errors were requested but the label table lacks {missing} (one-sigma "
            "errors of the labels, in the labels' units); add those columns, or, when "
            "training, use exact labels (label_errors=False, i.e. no --label-errors)"
        )
    values = label_array(labels, label_names)
    errors = label_array(labels, error_names)
    used = np.all(np.isfinite(values), axis=1)
    for column, name in enumerate(error_names):
        err = errors[used, column]
        n_bad, n_negative = int(np.sum(~np.isfinite(err))), int(np.sum(err < 0))
        if n_bad or n_negative:
            raise LabelError(
                f"{name} has {n_bad} NaN or infinite and {n_negative} negative values for "
                "stars with finite labels; give every such star a one-sigma error >= 0 "
                "(0 = exact) or drop those stars (or, when training, use exact labels: "
                "label_errors=False)"
            )


def _read_blocks(
    source: SpectraSource | SpectralDataset,
    blocks: np.ndarray,
    label_names: Sequence[str],
    min_good_fraction: float,
    error_names: Sequence[str],
) -> Batch:
    parts: list[Batch] = []
    for start, stop in blocks:
        chunk = source.read(int(start), int(stop))
        keep = usable_rows(chunk, label_names, min_good_fraction)
        errors = None
        if error_names:
            errors = label_array(chunk.labels, error_names)[keep]
        parts.append(
            Batch(
                chunk.flux[keep],
                chunk.ivar[keep],
                label_array(chunk.labels, label_names)[keep],
                np.arange(start, stop)[keep],
                errors,
            )
        )
    return _concatenate(parts)


def iter_batches(
    source: SpectraSource | SpectralDataset,
    blocks: np.ndarray,
    batch_size: int,
    label_names: Sequence[str],
    *,
    rng: np.random.Generator | None = None,
    blocks_per_buffer: int = 16,
    min_good_fraction: float = 0.5,
    drop_last: bool = False,
    error_names: Sequence[str] = (),
    read_ahead: int | None = None,
) -> Iterator[Batch]:
    """Yield mini-batches from the given blocks.

    Args:
        source: a dataset or an open survey file (anything with ``read(start, stop)``).
        blocks: `(n_blocks, 2)` row ranges to draw from.
        batch_size: stars per batch.
        label_names: label columns to return.
        rng: shuffles blocks and stars; None keeps the file order (for validation).
        blocks_per_buffer: blocks read and shuffled together.
        min_good_fraction: stars with fewer usable pixels are skipped.
        drop_last: drop a final incomplete batch (training) or keep it (evaluation).
        error_names: columns of the labels' one-sigma errors (e.g. "TEFF_ERR"), one per
            label, returned as ``Batch.label_errors``; empty: none.
        read_ahead: buffers read ahead in a background thread; None: 1 for a file, 0 for
            an in-memory dataset. The batches do not depend on it.
    """
    order = rng.permutation(len(blocks)) if rng is not None else np.arange(len(blocks))
    if read_ahead is None:
        read_ahead = 0 if isinstance(source, SpectralDataset) else 1
    groups = [
        blocks[np.sort(order[first : first + blocks_per_buffer])]
        for first in range(0, len(order), blocks_per_buffer)
    ]
    buffers = (
        _read_blocks(source, group, label_names, min_good_fraction, error_names) for group in groups
    )
    carry: Batch | None = None
    for buffer in prefetch(buffers, read_ahead):
        if rng is not None:
            buffer = buffer.select(rng.permutation(len(buffer)))
        if carry is not None:
            buffer = _concatenate([carry, buffer])
        n_full = len(buffer) // batch_size * batch_size
        for start in range(0, n_full, batch_size):
            yield buffer.select(slice(start, start + batch_size))
        carry = buffer.select(slice(n_full, None)) if n_full < len(buffer) else None
    if carry is not None and not drop_last:
        yield carry
