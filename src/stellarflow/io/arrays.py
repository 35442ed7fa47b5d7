"""Spectra a user brings as plain arrays, and label tables in any common format.

Arrays come from ``.npy``, ``.npz``, HDF5 (``.h5``/``.hdf5``) or FITS image HDUs
(``.fits``/``.fit``/``.fits.gz``); label tables from FITS, CSV, ECSV or Parquet.
:func:`import_arrays` turns such files into a validated
:class:`~stellarflow.data.dataset.SpectralDataset`.
"""

from __future__ import annotations

import csv
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from astropy.io import fits
from astropy.table import Table

from stellarflow.data.dataset import ID_COLUMN, SpectralDataset, sigma_to_ivar, validate_labels
from stellarflow.errors import DataValidationError, FileFormatError, LabelError, StellarflowError

__all__ = ["import_arrays", "read_array", "read_label_table"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
ArrayKey = str | int | None

_ARRAY_FORMATS = {
    ".npy": "npy",
    ".npz": "npz",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".fits.gz": "fits",
    ".fit.gz": "fits",
}
_TABLE_FORMATS = {
    ".fits": "fits",
    ".fit": "fits",
    ".fits.gz": "fits",
    ".csv": "ascii.csv",
    ".ecsv": "ascii.ecsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# Errors third-party readers raise on files that are not what their name says.
_READ_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, EOFError, zipfile.BadZipFile)


def _suffix(path: Path, known: Mapping[str, str], what: str) -> str:
    """The format of ``path`` from its (possibly double) suffix."""
    name = path.name.lower()
    for suffix in sorted(known, key=len, reverse=True):
        if name.endswith(suffix):
            return known[suffix]
    raise FileFormatError(
        f"{path}: unknown {what} file type; expected a name ending in "
        f"{', '.join(sorted(known))}; rename the file or convert it"
    )


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path} does not exist or is not a file")
    return path


# --- arrays -------------------------------------------------------------------------------


def _read_npy(path: Path, key: ArrayKey) -> np.ndarray:
    if key is not None:
        raise FileFormatError(f"{path}: a .npy file holds one array, got key={key!r}; drop key")
    return np.load(path, allow_pickle=False)


def _read_npz(path: Path, key: ArrayKey) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.files)
        if key is None:
            if len(keys) != 1:
                raise FileFormatError(
                    f"{path} holds {len(keys)} arrays {keys}; pass key= to choose one"
                )
            key = keys[0]
        if key not in keys:
            raise FileFormatError(f"{path} has no array {key!r}; arrays: {keys}")
        return archive[str(key)]


def _hdf5_datasets(handle: h5py.File) -> list[str]:
    names: list[str] = []
    handle.visititems(
        lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None
    )
    return names


def _read_hdf5(path: Path, key: ArrayKey) -> np.ndarray:
    with h5py.File(path, "r") as handle:
        datasets = _hdf5_datasets(handle)
        if key is None:
            if len(datasets) != 1:
                raise FileFormatError(
                    f"{path} holds {len(datasets)} datasets {datasets[:20]}; pass key= "
                    "(the dataset path, e.g. 'spectra/flux') to choose one"
                )
            key = datasets[0]
        name = str(key).strip("/")
        if name not in datasets:
            raise FileFormatError(f"{path} has no dataset {key!r}; datasets: {datasets[:20]}")
        return handle[name][()]


def _hdu_summary(hdul: fits.HDUList) -> list[str]:
    return [
        f"{i} {hdu.name} ({type(hdu).__name__}"
        f"{'' if hdu.data is None else ' ' + 'x'.join(map(str, np.shape(hdu.data)))})"
        for i, hdu in enumerate(hdul)
    ]


def _read_fits_image(path: Path, key: ArrayKey) -> np.ndarray:
    with fits.open(path, memmap=False) as hdul:
        images = [
            i
            for i, hdu in enumerate(hdul)
            if isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU)
            and hdu.data is not None
        ]
        if key is None:
            if not images:
                raise FileFormatError(
                    f"{path} has no image HDU with data (HDUs: {_hdu_summary(hdul)}); "
                    "tables are read with read_label_table"
                )
            index: int | str = images[0]
        else:
            index = key
        try:
            hdu = hdul[index]
        except (KeyError, IndexError):
            raise FileFormatError(
                f"{path} has no HDU {key!r}; HDUs: {_hdu_summary(hdul)}"
            ) from None
        if hdul.index(hdu) not in images:
            raise FileFormatError(
                f"{path}: HDU {key!r} is not an image with data; HDUs: {_hdu_summary(hdul)}"
            )
        return np.array(hdu.data)


_ARRAY_READERS = {
    "npy": _read_npy,
    "npz": _read_npz,
    "hdf5": _read_hdf5,
    "fits": _read_fits_image,
}


def read_array(path: PathLike, key: ArrayKey = None) -> np.ndarray:
    """Read one array from a ``.npy``, ``.npz``, HDF5 or FITS file.

    Args:
        path: the file; its type comes from the suffix.
        key: which array: the name in a ``.npz`` (required if it holds more than one);
            the dataset path in HDF5 (required if more than one); the HDU index or name
            in FITS (default: the first HDU with image data). Not allowed for ``.npy``.

    Returns:
        The array, in native byte order.

    Raises:
        FileFormatError: unknown suffix, a file that is not what its suffix says or is
            truncated, or a missing/ambiguous key (the message lists what the file holds).
    """
    path = _existing(path)
    reader = _ARRAY_READERS[_suffix(path, _ARRAY_FORMATS, "array")]
    try:
        array = np.asarray(reader(path, key))
    except StellarflowError:
        raise
    except _READ_ERRORS as err:
        raise FileFormatError(
            f"{path} cannot be read as {_suffix(path, _ARRAY_FORMATS, 'array')} "
            f"({type(err).__name__}: {err}); is the file complete and of the type its "
            "name says?"
        ) from None
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == object:
        raise FileFormatError(f"{path}: array {key!r} holds Python objects; expected numbers")
    return array


# --- label tables -------------------------------------------------------------------------


def _raw_header(path: Path) -> list[str]:
    """Column names as written on the first non-comment line of a CSV/ECSV file."""
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip() and not line.lstrip().startswith("#"):
                delimiter = "," if "," in line else " "
                fields = next(csv.reader([line], delimiter=delimiter, skipinitialspace=True))
                return [name.strip() for name in fields if name.strip()]
    return []


def _check_header(path: Path) -> None:
    names = _raw_header(path)
    upper = [name.upper() for name in names]
    duplicated = sorted({name for name in names if upper.count(name.upper()) > 1})
    if duplicated:
        raise LabelError(
            f"{path}: the header names columns {duplicated} more than once (names compare "
            "case-insensitively); rename or drop the duplicates"
        )


def _parquet_available() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise FileFormatError(
            "reading Parquet needs pyarrow, which is not installed; install it with "
            "pip install 'stellarflow[parquet]'"
        ) from None


def _rename_id(table: Table, id_column: str | None, where: str) -> Table:
    """Rename ``id_column`` to ``star_id`` (a shallow copy); no-op when not given."""
    if id_column is None or id_column == ID_COLUMN:
        return table
    if id_column not in table.colnames:
        raise LabelError(
            f"{where} has no column {id_column!r} to use as star id; columns: {table.colnames[:12]}"
        )
    if ID_COLUMN in table.colnames:
        raise LabelError(
            f"{where} already has a '{ID_COLUMN}' column; drop it or pass id_column='{ID_COLUMN}'"
        )
    table = table.copy(copy_data=False)
    table.rename_column(id_column, ID_COLUMN)
    return table


def read_label_table(path: PathLike, id_column: str | None = None) -> Table:
    """Read a label table (FITS, CSV, ECSV or Parquet) keyed by ``star_id``.

    Args:
        path: the table; its type comes from the suffix.
        id_column: the column that identifies stars, renamed ``star_id``; default: the
            table must already have ``star_id``.

    Returns:
        The table with a unique string ``star_id`` column first; byte strings decoded.

    Raises:
        FileFormatError: unknown suffix, unreadable file, or Parquet without pyarrow.
        LabelError: duplicated column names (checked on the raw CSV/ECSV header, since
            astropy renames duplicates silently), ``id_column`` missing, or missing,
            empty or duplicated star ids.
    """
    path = _existing(path)
    fmt = _suffix(path, _TABLE_FORMATS, "table")
    if fmt == "parquet":
        _parquet_available()
    if fmt.startswith("ascii"):
        _check_header(path)
    try:
        extra = {"comment": "#"} if fmt == "ascii.csv" else {}
        table = Table.read(path, format=fmt, **extra)
    except StellarflowError:
        raise
    except Exception as err:  # astropy's readers raise many types on malformed files
        raise FileFormatError(
            f"{path} cannot be read as {fmt} ({type(err).__name__}: {err}); is the file "
            "complete and of the type its name says?"
        ) from None
    table.convert_bytestring_to_unicode()
    table = _rename_id(table, id_column, str(path))
    try:
        return validate_labels(table)
    except LabelError as err:
        raise LabelError(f"{path}: {err}") from None


# --- import -------------------------------------------------------------------------------


def _load(source: PathLike | np.ndarray, key: ArrayKey) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return source
    return read_array(source, key)


def import_arrays(
    flux: PathLike | np.ndarray,
    wavelength: PathLike | np.ndarray,
    labels: PathLike | Table,
    *,
    sigma: PathLike | np.ndarray | None = None,
    ivar: PathLike | np.ndarray | None = None,
    mask: PathLike | np.ndarray | None = None,
    id_column: str | None = None,
    flux_key: ArrayKey = None,
    wavelength_key: ArrayKey = None,
    sigma_key: ArrayKey = None,
    ivar_key: ArrayKey = None,
    mask_key: ArrayKey = None,
    meta: Mapping[str, Any] | None = None,
) -> SpectralDataset:
    """Build a validated dataset from array files and a label table.

    Give exactly one of ``sigma`` and ``ivar``. Where ``mask`` is set, the uncertainty is
    ignored (sigma there may be 0 or anything). The label table's rows must be in the
    same order as the spectra.

    Args:
        flux: `(n_stars, n_pixels)`, continuum-normalised, dimensionless; a path or array.
        wavelength: `(n_pixels,)`, vacuum Angstrom, strictly increasing.
        labels: a label table path (see :func:`read_label_table`) or Table.
        sigma: `(n_stars, n_pixels)`, flux units; inf/NaN = unusable.
        ivar: `(n_stars, n_pixels)`, 1 / flux units squared; 0 = unusable.
        mask: `(n_stars, n_pixels)` bool or integer (non-zero = excluded).
        id_column: label column renamed ``star_id``.
        flux_key, wavelength_key, sigma_key, ivar_key, mask_key: which array in each file
            (see :func:`read_array`); several may point into one file.
        meta: extra metadata; the source paths are added.

    Returns:
        The dataset.

    Raises:
        DataValidationError: not exactly one of sigma/ivar, or arrays that break the data
            model (shapes, values).
        FileFormatError: unreadable files, or files that are not what they claim.
        LabelError: label table problems.
    """
    if (sigma is None) == (ivar is None):
        raise DataValidationError(
            "give exactly one of sigma= (uncertainty) and ivar= (inverse variance), got "
            f"{'both' if sigma is not None else 'neither'}; convert with "
            "stellarflow.data.dataset.sigma_to_ivar if needed"
        )
    flux_arr = _load(flux, flux_key)
    mask_arr = None if mask is None else _load(mask, mask_key)
    ivar_arr = None if ivar is None else _load(ivar, ivar_key)
    if sigma is not None:
        sigma_arr = np.array(_load(sigma, sigma_key), dtype=np.float64)
        if mask_arr is not None and mask_arr.shape == sigma_arr.shape:
            sigma_arr[np.asarray(mask_arr) != 0] = np.inf  # masked: any sigma is fine
        ivar_arr = sigma_to_ivar(sigma_arr)
    if isinstance(labels, Table):
        table = _rename_id(labels, id_column, "the label table")
    else:
        table = read_label_table(labels, id_column)
    sources = {
        name: os.fspath(value)
        for name, value in (
            ("flux", flux),
            ("wavelength", wavelength),
            ("labels", labels),
            ("sigma", sigma),
            ("ivar", ivar),
            ("mask", mask),
        )
        if isinstance(value, str | os.PathLike)
    }
    return SpectralDataset(
        flux_arr,
        ivar_arr,
        _load(wavelength, wavelength_key),
        table,
        mask=mask_arr,
        meta={"source": "arrays", "files": sources, **dict(meta or {})},
    )
