"""The training set's label support: which label points a model may be trusted at.

A star whose labels lie outside the region the model was trained on is not an outlier; it
is *unsupported*. In standardised label space (``(label - median) / (1.4826 * MAD)`` per
label) we compare a point's distance to its ``k``-th nearest training neighbour, ``d_k(x)``,
with the same distance of those neighbours themselves (a local-outlier-factor ratio)::

    ratio(x) = d_k(x) / median_{j in kNN(x)} d_k(j)

A point inside the population, dense core or sparse metal-poor tail alike, has a ratio near
one; a point beyond the edge (a dwarf among giants, a metallicity past the last training
star) has a large one. The point is supported when the ratio is at most ``threshold``: 1.5
times the 99th percentile of the ratio among the training labels themselves (each left out
of its own neighbours). A ratio rather than a raw distance keeps the test equally strict
in dense and sparse parts of label space, and for small and large training sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from stellarflow.errors import DataValidationError, FileFormatError

__all__ = ["LabelSupport", "fit_support"]

_MAX_REFERENCE = 20_000


@dataclass(frozen=True)
class LabelSupport:
    """k-nearest-neighbour description of the training labels.

    Attributes:
        label_names: names of the label columns, in order.
        center: `(n_labels,)` medians of the training labels (physical units).
        scale: `(n_labels,)` robust spreads (1.4826 MAD) of the training labels.
        reference: `(n_reference, n_labels)` standardised training labels (a subsample).
        reference_dk: `(n_reference,)` each reference point's k-NN distance (itself left out).
        threshold: largest supported local-outlier ratio.
        k: which neighbour's distance is used.
    """

    label_names: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    reference: np.ndarray
    reference_dk: np.ndarray
    threshold: float
    k: int

    def distance(self, labels: np.ndarray) -> np.ndarray:
        """Local-outlier ratio of each label point with respect to the training labels.

        Args:
            labels: `(n_stars, n_labels)`, physical units.

        Returns:
            `(n_stars,)` ratio ``d_k(x) / median d_k(neighbours)`` (about 1 inside the
            population); inf where a label is not finite.
        """
        labels = np.asarray(labels, dtype=np.float64)
        if labels.ndim != 2 or labels.shape[1] != len(self.label_names):
            raise DataValidationError(
                f"labels have shape {labels.shape}; expected (n_stars, "
                f"{len(self.label_names)}) for {list(self.label_names)}"
            )
        out = np.full(labels.shape[0], np.inf)
        if not self.label_names:
            out[:] = 0.0
            return out
        finite = np.all(np.isfinite(labels), axis=1)
        if np.any(finite):
            tree = cKDTree(self.reference)
            dist, index = tree.query((labels[finite] - self.center) / self.scale, k=self.k)
            out[finite] = _ratio(dist, index, self.reference_dk)
        return out

    def contains(self, labels: np.ndarray) -> np.ndarray:
        """Boolean `(n_stars,)`: True where the labels are inside the training support."""
        return self.distance(labels) <= self.threshold

    def save(self, path: Path) -> None:
        """Write to an ``.npz`` file (no pickles)."""
        np.savez(
            path,
            label_names=np.array(self.label_names, dtype=str),
            center=self.center,
            scale=self.scale,
            reference=self.reference,
            reference_dk=self.reference_dk,
            threshold=np.float64(self.threshold),
            k=np.int64(self.k),
        )

    @classmethod
    def load(cls, path: Path) -> LabelSupport:
        """Read what :meth:`save` wrote."""
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    tuple(str(n) for n in data["label_names"]),
                    data["center"],
                    data["scale"],
                    data["reference"],
                    data["reference_dk"],
                    float(data["threshold"]),
                    int(data["k"]),
                )
        except (OSError, KeyError, ValueError) as err:
            raise FileFormatError(f"cannot read label support from {path}: {err}") from None


def fit_support(
    labels: np.ndarray,
    label_names: tuple[str, ...],
    *,
    k: int = 10,
    rng: np.random.Generator | None = None,
) -> LabelSupport:
    """Describe the support of a set of training labels.

    Args:
        labels: `(n_stars, n_labels)`, physical units, finite.
        label_names: the columns' names.
        k: neighbour whose distance measures density (smaller = tighter support).
        rng: chooses the reference subsample when there are more than 20,000 stars.
    """
    labels = np.asarray(labels, dtype=np.float64)
    n_labels = len(label_names)
    if n_labels == 0:
        empty = np.zeros(0)
        return LabelSupport((), empty, empty, np.zeros((1, 0)), np.ones(1), 0.0, 1)
    if labels.shape[0] <= k:
        raise DataValidationError(
            f"{labels.shape[0]} training stars are too few to describe the label support "
            f"(need more than k = {k})"
        )
    center = np.median(labels, axis=0)
    scale = 1.4826 * np.median(np.abs(labels - center), axis=0)
    scale = np.where(scale > 0, scale, np.std(labels, axis=0) + 1e-12)
    standard = (labels - center) / scale
    if standard.shape[0] > _MAX_REFERENCE:
        rng = rng or np.random.default_rng(0)
        standard = standard[rng.choice(standard.shape[0], _MAX_REFERENCE, replace=False)]
    dist, index = cKDTree(standard).query(standard, k=k + 1)
    dist, index = dist[:, 1:], index[:, 1:]  # neighbour 0 is the point itself
    reference_dk = np.maximum(dist[:, -1], 1e-12)
    ratio = _ratio(dist, index, reference_dk)
    threshold = 1.5 * float(np.percentile(ratio, 99))
    return LabelSupport(tuple(label_names), center, scale, standard, reference_dk, threshold, k)


def _ratio(dist: np.ndarray, index: np.ndarray, reference_dk: np.ndarray) -> np.ndarray:
    """``d_k(x) / median_j d_k(j)`` over the k neighbours j of each point x."""
    dist = dist[:, None] if dist.ndim == 1 else dist
    index = index[:, None] if index.ndim == 1 else index
    return dist[:, -1] / np.median(reference_dk[index], axis=1)
