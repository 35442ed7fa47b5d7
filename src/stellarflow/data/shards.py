"""Chunked, sharded, resumable per-star computations: a chunk plan and a part-file store.

A survey of ``n_stars`` is cut into chunks of ``chunk_size`` consecutive stars, numbered
``0..n_chunks-1`` the same way whatever the number of processes. Process ``r`` of ``W`` owns
a contiguous range of chunks (:meth:`ChunkPlan.for_rank`): no star is repeated (no padding)
and none is left out. Each finished chunk's per-star columns are written to its own part
file, atomically, in a :class:`PartStore` folder::

    <store>/manifest.json        what is being computed (run settings, survey, chunk plan)
    <store>/chunk_00000042.npz   columns of stars [42 * chunk_size, 43 * chunk_size)

An interrupted run started again with the same settings finds the manifest, skips the chunks
whose part files exist and computes the rest; :meth:`PartStore.merge` then checks that every
chunk is there with exactly its rows (no duplicate, no gap) and concatenates them in survey
order. A store whose manifest differs is refused rather than mixed with.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stellarflow.errors import DataValidationError, FileFormatError
from stellarflow.io.atomic import atomic_path

__all__ = ["ChunkPlan", "PartStore", "shard_range"]

_MANIFEST = "manifest.json"
_ROWS = "__rows__"


def shard_range(n_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous ``[start, stop)`` share of ``n_items`` for ``rank`` (sizes differ by <= 1).

    Every item belongs to exactly one rank and no item is repeated (unlike a padded
    sampler); a rank may get an empty range when ``n_items < world_size``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    base, extra = divmod(n_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass(frozen=True)
class ChunkPlan:
    """Chunks of consecutive stars, numbered independently of the number of processes.

    Attributes:
        n_stars: stars in the survey.
        chunk_size: stars per chunk (the last may be shorter).
    """

    n_stars: int
    chunk_size: int

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.n_stars < 0:
            raise DataValidationError(
                f"need chunk_size >= 1 and n_stars >= 0, got {self.chunk_size}, {self.n_stars}"
            )

    @property
    def n_chunks(self) -> int:
        """Number of chunks."""
        return -(-self.n_stars // self.chunk_size)

    def rows(self, chunk: int) -> tuple[int, int]:
        """``[start, stop)`` rows of a chunk."""
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_stars)

    def for_rank(self, rank: int, world_size: int) -> range:
        """The contiguous chunks of process ``rank`` of ``world_size`` (may be empty)."""
        return range(*shard_range(self.n_chunks, rank, world_size))


class PartStore:
    """A folder of per-chunk part files and the manifest of the run that writes them.

    Args:
        directory: the folder (created by :meth:`open`).
        manifest: JSON-serialisable description of the run; a store is only resumed by a run
            with the same manifest.
    """

    def __init__(self, directory: str | Path, manifest: Mapping[str, Any]) -> None:
        self.directory = Path(directory)
        self.manifest = json.loads(json.dumps(dict(manifest)))  # normalised for comparison

    def open(self, create: bool) -> int:
        """Create the store, or check that an existing one belongs to this run.

        Args:
            create: write the manifest if there is none (one process only); otherwise an
                existing manifest is required.

        Returns:
            The number of part files already present (0 for a new store).

        Raises:
            DataValidationError: the folder holds parts of a different run.
        """
        path = self.directory / _MANIFEST
        if not path.is_file():
            if not create:
                raise FileFormatError(f"{path} is missing; the store was not created")
            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, overwrite=True) as tmp:
                tmp.write_text(json.dumps(self.manifest, indent=2) + "\n")
            return 0
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise FileFormatError(f"cannot read {path}: {err}") from None
        if saved != self.manifest:
            changed = sorted(
                key
                for key in set(saved) | set(self.manifest)
                if saved.get(key) != self.manifest.get(key)
            )
            raise DataValidationError(
                f"{self.directory} holds the parts of a different run (differs in {changed}); "
                "run with the same settings to resume it, or pass --overwrite to start afresh"
            )
        return len(list(self.directory.glob("chunk_*.npz")))

    def path(self, chunk: int) -> Path:
        """The part file of a chunk."""
        return self.directory / f"chunk_{chunk:08d}.npz"

    def has(self, chunk: int) -> bool:
        """Whether the chunk's part file was completely written."""
        return self.path(chunk).is_file()

    def write(self, chunk: int, rows: tuple[int, int], columns: Mapping[str, np.ndarray]) -> None:
        """Write a chunk's columns (each `(stop - start, ...)`), atomically.

        Object arrays are stored as strings (part files are read without unpickling).
        """
        arrays = {
            name: value.astype(str) if value.dtype == object else value
            for name, value in ((k, np.asarray(v)) for k, v in columns.items())
        }
        arrays[_ROWS] = np.asarray(rows, dtype=np.int64)
        with atomic_path(self.path(chunk), overwrite=True) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

    def read(self, chunk: int) -> tuple[tuple[int, int], dict[str, np.ndarray]]:
        """``(rows, columns)`` of a chunk's part file."""
        with np.load(self.path(chunk), allow_pickle=False) as data:
            columns = {name: data[name] for name in data.files}
        start, stop = (int(v) for v in columns.pop(_ROWS))
        return (start, stop), columns

    def merge(self, plan: ChunkPlan) -> dict[str, np.ndarray]:
        """Every chunk's columns concatenated in survey order.

        Raises:
            DataValidationError: a chunk is missing or covers other rows than the plan's.
        """
        missing = [k for k in range(plan.n_chunks) if not self.has(k)]
        if missing:
            raise DataValidationError(
                f"{self.directory} lacks {len(missing)} of {plan.n_chunks} chunks (first: "
                f"{missing[:5]}); run the same command again to compute them"
            )
        parts: list[dict[str, np.ndarray]] = []
        for k in range(plan.n_chunks):
            rows, columns = self.read(k)
            if rows != plan.rows(k) or any(len(v) != rows[1] - rows[0] for v in columns.values()):
                raise DataValidationError(
                    f"{self.path(k)} holds rows {rows}, expected {plan.rows(k)}; delete "
                    f"{self.directory} and run again"
                )
            parts.append(columns)
        if not parts:
            return {}
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def remove(self) -> None:
        """Delete the store (after its merged result was written)."""
        shutil.rmtree(self.directory, ignore_errors=True)
