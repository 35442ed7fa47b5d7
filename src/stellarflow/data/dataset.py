"""The spectral dataset: the one data model every part of stellarflow reads.

A dataset is ``n_stars`` continuum-normalised spectra on one shared wavelength grid, their
per-pixel inverse variances and exclusion mask, and a label table keyed by ``star_id``.
Label columns use APOGEE allStar names (``TEFF``, ``LOGG``, ``FE_H``, ``MG_FE``, ...,
``X_FE_ERR``, ``SNR``).

Invariants after construction (enforced, so downstream code never re-checks them):

* ``flux`` is float32 `(n_stars, n_pixels)` and finite everywhere; pixels that arrived
  non-finite but were masked (or had ``ivar == 0``) are set to 1 (the continuum).
* ``ivar`` is float32, finite and >= 0; ``mask`` is bool; ``mask == (ivar == 0)`` after
  merging: a masked pixel has ``ivar = 0`` and a pixel with ``ivar = 0`` is masked.
* ``wavelength`` is float64 `(n_pixels,)`, vacuum Angstrom, strictly increasing.
* ``labels`` is an astropy Table with a unique, non-empty string ``star_id`` column first.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from astropy.table import Table

from stellarflow.data.grid import validate_wavelength
from stellarflow.errors import DataValidationError, LabelError

__all__ = [
    "ID_COLUMN",
    "SpectralDataset",
    "check_ranges",
    "concatenate",
    "parse_label_ranges",
    "select_within",
    "sigma_to_ivar",
    "validate_labels",
]

ID_COLUMN = "star_id"


def sigma_to_ivar(sigma: np.ndarray) -> np.ndarray:
    """Inverse variance from a per-pixel uncertainty, ``ivar = 1 / sigma**2``.

    Infinite or NaN sigma means "unusable" and gives ``ivar = 0``.

    Args:
        sigma: `(n_stars, n_pixels)`, flux units (dimensionless), > 0 or non-finite.

    Returns:
        ivar: `(n_stars, n_pixels)` float32, 1 / flux units squared.

    Raises:
        DataValidationError: if any finite sigma is <= 0.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    finite = np.isfinite(sigma)
    if np.any(sigma[finite] <= 0):
        n_bad = int(np.sum(sigma[finite] <= 0))
        raise DataValidationError(
            f"sigma must be > 0 where finite; found {n_bad} values <= 0; mark unusable "
            "pixels with sigma = inf (or NaN) or pass a mask"
        )
    ivar = np.zeros(sigma.shape, dtype=np.float32)
    with np.errstate(over="ignore"):
        ivar[finite] = (1.0 / sigma[finite] ** 2).astype(np.float32)
    return ivar


def validate_labels(labels: Table, n_stars: int | None = None) -> Table:
    """Check a label table and return it with ``star_id`` as a string column, first.

    Args:
        labels: a table with a ``star_id`` column and one row per star.
        n_stars: the number of spectra the table must describe, if known.

    Returns:
        The table (a shallow copy) with ``star_id`` converted to ``str`` and moved first.

    Raises:
        LabelError: missing/duplicated/empty star ids, duplicated column names, row-count
            mismatch.
    """
    if not isinstance(labels, Table):
        raise LabelError(
            f"labels must be an astropy Table, got {type(labels).__name__}; "
            "build one with astropy.table.Table({'star_id': ids, 'TEFF': ...})"
        )
    names = list(labels.colnames)
    upper = [name.upper() for name in names]
    duplicated = sorted({n for n in upper if upper.count(n) > 1})
    if duplicated:
        raise LabelError(
            f"label columns {duplicated} appear more than once (names compare "
            "case-insensitively); rename or drop the duplicates"
        )
    if ID_COLUMN not in names:
        raise LabelError(
            f"label table has no '{ID_COLUMN}' column (columns: {names[:8]}"
            f"{'...' if len(names) > 8 else ''}); name the star identifier column "
            f"'{ID_COLUMN}' (the CLI's --id-column does this)"
        )
    if n_stars is not None and len(labels) != n_stars:
        raise LabelError(
            f"label table has {len(labels)} rows but there are {n_stars} spectra; "
            "give exactly one label row per spectrum, in the same order"
        )
    table = labels.copy(copy_data=False)
    ids = np.array([str(v).strip() for v in np.asarray(table[ID_COLUMN])], dtype=str)
    if ids.size and np.any(ids == ""):
        raise LabelError(
            f"{int(np.sum(ids == ''))} stars have an empty {ID_COLUMN}; every star needs "
            "a non-empty identifier"
        )
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        dupes = unique[counts > 1]
        raise LabelError(
            f"{dupes.size} star ids occur more than once (e.g. {list(dupes[:3])}); "
            "star ids must be unique: drop duplicate observations or make the ids distinct"
        )
    table.replace_column(ID_COLUMN, ids)
    if table.colnames[0] != ID_COLUMN:
        ordered = [ID_COLUMN, *[n for n in table.colnames if n != ID_COLUMN]]
        table = table[ordered]
    return table


def _validate_spectra(
    flux: object, ivar: object, mask: object | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coerce, check and sanitise flux/ivar/mask (see the module invariants)."""
    flux_arr = np.array(flux, dtype=np.float32)
    ivar_arr = np.array(ivar, dtype=np.float32)
    if flux_arr.ndim != 2:
        raise DataValidationError(
            f"flux must be 2-D (n_stars, n_pixels), got shape {flux_arr.shape}; "
            "reshape a single spectrum with flux[None, :]"
        )
    if ivar_arr.shape != flux_arr.shape:
        raise DataValidationError(
            f"ivar has shape {ivar_arr.shape} but flux has {flux_arr.shape}; "
            "give one inverse variance per flux pixel"
        )
    if flux_arr.shape[0] == 0 or flux_arr.shape[1] == 0:
        raise DataValidationError(
            f"the dataset is empty (flux shape {flux_arr.shape}); expected at least one "
            "star and one pixel"
        )
    if mask is None:
        mask_arr = np.zeros(flux_arr.shape, dtype=bool)
    else:
        mask_arr = np.array(mask)
        if mask_arr.shape != flux_arr.shape:
            raise DataValidationError(
                f"mask has shape {mask_arr.shape} but flux has {flux_arr.shape}; "
                "give one mask value per flux pixel (True = excluded)"
            )
        if mask_arr.dtype != bool:
            if not np.issubdtype(mask_arr.dtype, np.integer):
                raise DataValidationError(
                    f"mask must be boolean (True = excluded), got dtype {mask_arr.dtype}; "
                    "convert a bitmask with stellarflow.io.apogee.bitmask_to_mask"
                )
            mask_arr = mask_arr != 0
    if not np.all(np.isfinite(ivar_arr)):
        n_bad = int(np.sum(~np.isfinite(ivar_arr)))
        raise DataValidationError(
            f"ivar has {n_bad} non-finite values; expected finite inverse variances "
            ">= 0 (use ivar = 0 for unusable pixels)"
        )
    if np.any(ivar_arr < 0):
        n_bad = int(np.sum(ivar_arr < 0))
        raise DataValidationError(
            f"ivar has {n_bad} negative values; inverse variance must be >= 0 "
            "(0 = unusable pixel); did you pass sigma as ivar?"
        )
    mask_arr = mask_arr | (ivar_arr == 0)
    bad_flux = ~np.isfinite(flux_arr)
    unmasked_bad = bad_flux & ~mask_arr
    if np.any(unmasked_bad):
        star, pixel = np.argwhere(unmasked_bad)[0]
        raise DataValidationError(
            f"flux has {int(unmasked_bad.sum())} non-finite values on usable pixels "
            f"(ivar > 0, not masked), first at star {star}, pixel {pixel}; mask those "
            "pixels or set their ivar to 0"
        )
    flux_arr[bad_flux] = 1.0
    ivar_arr[mask_arr] = 0.0
    return flux_arr, ivar_arr, mask_arr


class SpectralDataset:
    """Spectra in memory, with uncertainties, mask, wavelength grid, labels and metadata.

    Args:
        flux: `(n_stars, n_pixels)`, continuum-normalised, dimensionless.
        ivar: `(n_stars, n_pixels)`, inverse variance of flux, 0 = unusable.
        wavelength: `(n_pixels,)`, vacuum Angstrom, strictly increasing.
        labels: astropy Table, one row per star, with a unique ``star_id`` column and
            APOGEE-named label columns.
        mask: `(n_stars, n_pixels)` bool, True = excluded; optional.
        meta: free metadata (survey, grid, provenance); JSON-serialisable values.

    Raises:
        DataValidationError: on any violation of the data model (see the module docstring).
    """

    def __init__(
        self,
        flux: object,
        ivar: object,
        wavelength: object,
        labels: Table,
        mask: object | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.flux, self.ivar, self.mask = _validate_spectra(flux, ivar, mask)
        self.wavelength = validate_wavelength(wavelength, n_pixels=self.flux.shape[1])
        self.labels = validate_labels(labels, n_stars=self.flux.shape[0])
        self.meta: dict[str, Any] = dict(meta or {})

    @classmethod
    def from_sigma(
        cls,
        flux: object,
        sigma: object,
        wavelength: object,
        labels: Table,
        mask: object | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> SpectralDataset:
        """Build a dataset from a per-pixel uncertainty instead of an inverse variance.

        Args:
            sigma: `(n_stars, n_pixels)`, flux units; inf or NaN = unusable.
            Other arguments as for the constructor.
        """
        return cls(flux, sigma_to_ivar(np.asarray(sigma)), wavelength, labels, mask, meta)

    @classmethod
    def _trusted(
        cls,
        flux: np.ndarray,
        ivar: np.ndarray,
        mask: np.ndarray,
        wavelength: np.ndarray,
        labels: Table,
        meta: Mapping[str, Any],
    ) -> SpectralDataset:
        """Assemble a dataset from arrays that already satisfy the invariants."""
        out = cls.__new__(cls)
        out.flux, out.ivar, out.mask = flux, ivar, mask
        out.wavelength, out.labels, out.meta = wavelength, labels, dict(meta)
        return out

    # --- sizes and views ---------------------------------------------------------------

    @property
    def n_stars(self) -> int:
        """Number of spectra."""
        return int(self.flux.shape[0])

    @property
    def n_pixels(self) -> int:
        """Number of pixels per spectrum."""
        return int(self.flux.shape[1])

    def __len__(self) -> int:
        return self.n_stars

    def __repr__(self) -> str:
        return (
            f"SpectralDataset(n_stars={self.n_stars}, n_pixels={self.n_pixels}, "
            f"wavelength={self.wavelength[0]:.1f}-{self.wavelength[-1]:.1f} A, "
            f"labels={self.label_names})"
        )

    @property
    def star_id(self) -> np.ndarray:
        """`(n_stars,)` str identifiers."""
        return np.asarray(self.labels[ID_COLUMN])

    @property
    def label_names(self) -> list[str]:
        """Names of the label columns (every column but ``star_id``)."""
        return [name for name in self.labels.colnames if name != ID_COLUMN]

    @property
    def sigma(self) -> np.ndarray:
        """`(n_stars, n_pixels)` float32 uncertainty, inf where unusable."""
        with np.errstate(divide="ignore"):
            return (1.0 / np.sqrt(self.ivar)).astype(np.float32)

    @property
    def good_fraction(self) -> np.ndarray:
        """`(n_stars,)` fraction of usable pixels per star."""
        return 1.0 - self.mask.mean(axis=1)

    def snr(self) -> np.ndarray:
        """`(n_stars,)` median per-pixel S/N (flux * sqrt(ivar)) over usable pixels.

        Stars with no usable pixel get 0.
        """
        ratio = np.where(self.mask, np.nan, self.flux * np.sqrt(self.ivar))
        with warnings.catch_warnings():  # all-NaN rows (no usable pixel) are expected
            warnings.simplefilter("ignore", RuntimeWarning)
            out = np.nanmedian(ratio, axis=1)
        return np.nan_to_num(out, nan=0.0)

    def label_array(self, names: Sequence[str]) -> np.ndarray:
        """Stack label columns into an array.

        Args:
            names: label column names, e.g. ``["TEFF", "LOGG", "FE_H"]``.

        Returns:
            labels: `(n_stars, n_labels)` float64, in the units of the table.

        Raises:
            LabelError: if a name is missing or a column is not numeric.
        """
        return label_array(self.labels, names)

    def __getitem__(self, index: slice | int | np.ndarray | Sequence[int]) -> SpectralDataset:
        """Select stars by slice, integer array or boolean mask; returns a dataset."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1 if int(index) != -1 else None)
        if not isinstance(index, slice):
            index = np.asarray(index)
            if index.dtype == bool and index.shape != (self.n_stars,):
                raise DataValidationError(
                    f"boolean selection has shape {index.shape}; expected ({self.n_stars},)"
                )
        labels = self.labels[index]
        if len(labels) == 0:
            raise DataValidationError("the selection contains no stars; select at least one")
        return SpectralDataset._trusted(
            self.flux[index],
            self.ivar[index],
            self.mask[index],
            self.wavelength,
            labels,
            self.meta,
        )

    # --- the interface shared with the out-of-core SurveyFile ----------------------------

    def read(self, start: int = 0, stop: int | None = None) -> SpectralDataset:
        """Stars ``start:stop`` as a dataset (a view, no copy)."""
        return self[slice(start, stop)]

    def iter_chunks(self, chunk_size: int = 1024) -> Iterator[SpectralDataset]:
        """Yield consecutive chunks of at most ``chunk_size`` stars."""
        if chunk_size < 1:
            raise DataValidationError(f"chunk_size must be >= 1, got {chunk_size}")
        for start in range(0, self.n_stars, chunk_size):
            yield self.read(start, start + chunk_size)

    def load(self) -> SpectralDataset:
        """Return the dataset itself (it is already in memory)."""
        return self


def label_array(labels: Table, names: Sequence[str]) -> np.ndarray:
    """Stack named numeric columns of a label table into `(n_rows, n_labels)` float64.

    Masked entries become NaN.

    Raises:
        LabelError: if a name is missing, repeated, or not numeric.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise LabelError(f"label names {names} contain duplicates; name each label once")
    missing = [n for n in names if n not in labels.colnames]
    if missing:
        available = [n for n in labels.colnames if n != ID_COLUMN]
        raise LabelError(
            f"labels {missing} are not in the label table (available: {available}); "
            "use APOGEE allStar column names such as TEFF, LOGG, FE_H, MG_FE"
        )
    columns = []
    for name in names:
        column = labels[name]
        if not np.issubdtype(np.asarray(column).dtype, np.number):
            raise LabelError(f"label column {name} has dtype {column.dtype}; expected numbers")
        filled = column.filled(np.nan) if hasattr(column, "filled") else column
        columns.append(np.asarray(filled, dtype=np.float64))
    return np.stack(columns, axis=1) if columns else np.zeros((len(labels), 0))


def select_within(
    source: object, ranges: Mapping[str, Sequence[float]], chunk_size: int = 4096
) -> SpectralDataset:
    """The stars of a survey whose labels lie in the given ranges, loaded into memory.

    A model fitted on a region of label space (a "local" model) describes the spectra
    there better than a survey-wide one whose covariance can change with the labels only
    smoothly (docs/design.md, "Local models"). Ranges are inclusive; a star with a missing
    (NaN) value of a range's label is left out.

    Args:
        source: an in-memory :class:`SpectralDataset` or an open survey file (anything
            with ``labels``, ``n_stars`` and ``iter_chunks``); a file is read in chunks.
        ranges: label name -> ``(low, high)``, physical units, e.g. ``{"TEFF": (4450,
            5050), "FE_H": (-0.3, 0.3)}``. Labels need not be ones the model is
            conditioned on.
        chunk_size: stars per read from a file.

    Returns:
        The selected stars, in survey order.

    Raises:
        LabelError: a range's label is not in the label table.
        DataValidationError: a range that is not two finite numbers with low < high, or no
            star inside all of them.
    """
    checked = check_ranges(ranges)
    values = label_array(source.labels, list(checked))  # type: ignore[attr-defined]
    inside = np.ones(len(values), dtype=bool)
    for column, (low, high) in zip(values.T, checked.values(), strict=True):
        inside &= (column >= low) & (column <= high)  # NaN compares False: left out
    if not inside.any():
        described = ", ".join(f"{n} {lo:g}..{hi:g}" for n, (lo, hi) in checked.items())
        raise DataValidationError(
            f"no star has its labels within {described}; widen the ranges (see the label "
            "ranges of `stellarflow info`)"
        )
    if isinstance(source, SpectralDataset):
        return source[np.flatnonzero(inside)]
    parts, start = [], 0
    for chunk in source.iter_chunks(chunk_size):  # type: ignore[attr-defined]
        keep = np.flatnonzero(inside[start : start + chunk.n_stars])
        if keep.size:
            parts.append(chunk[keep])
        start += chunk.n_stars
    return concatenate(parts)


def parse_label_ranges(text: str) -> dict[str, tuple[float, float]]:
    """``"TEFF=4450:5050,FE_H=-0.3:0.3"`` -> ``{"TEFF": (4450.0, 5050.0), ...}``.

    Names are upper-cased; an empty text gives no ranges.

    Raises:
        DataValidationError: an item that is not NAME=LOW:HIGH, or a range that
            :func:`check_ranges` refuses.
    """
    ranges: dict[str, tuple[float, float]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, bounds = item.partition("=")
        low, colon, high = bounds.partition(":")
        key = name.strip().upper()
        try:
            values = (float(low), float(high))
        except ValueError:
            values = None
        if not (sep and colon and key) or values is None:
            raise DataValidationError(
                f"label ranges are NAME=LOW:HIGH items separated by commas (e.g. "
                f"TEFF=4450:5050,FE_H=-0.3:0.3), got {item!r}"
            )
        if key in ranges:
            raise DataValidationError(f"label {key} is given twice in {text!r}")
        ranges[key] = values
    return check_ranges(ranges)


def check_ranges(ranges: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, float]]:
    """``ranges`` as ``{name: (low, high)}`` floats, checked (:func:`select_within`).

    Raises:
        DataValidationError: a range that is not two finite numbers with low < high.
    """
    out = {}
    for name, bounds in ranges.items():
        try:
            low, high = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise DataValidationError(
                f"the range of {name} must be two numbers (low, high), got {bounds!r}"
            ) from None
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise DataValidationError(
                f"the range of {name} must have finite low < high, got {low:g}..{high:g}"
            )
        out[str(name)] = (low, high)
    return out


def concatenate(datasets: Sequence[SpectralDataset]) -> SpectralDataset:
    """Join datasets on the same wavelength grid into one (star ids must stay unique).

    Raises:
        DataValidationError: if the list is empty or the grids differ.
    """
    from astropy.table import vstack

    if not datasets:
        raise DataValidationError("nothing to concatenate; pass at least one dataset")
    first = datasets[0]
    for other in datasets[1:]:
        if other.n_pixels != first.n_pixels or not np.array_equal(
            other.wavelength, first.wavelength
        ):
            from stellarflow.errors import GridMismatchError

            raise GridMismatchError(
                f"cannot concatenate spectra on different wavelength grids "
                f"({first.n_pixels} vs {other.n_pixels} pixels); resample onto one grid"
            )
    labels = validate_labels(vstack([d.labels for d in datasets], join_type="outer"))
    return SpectralDataset._trusted(
        np.concatenate([d.flux for d in datasets]),
        np.concatenate([d.ivar for d in datasets]),
        np.concatenate([d.mask for d in datasets]),
        first.wavelength,
        labels,
        first.meta,
    )
