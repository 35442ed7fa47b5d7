"""stellarflow's own HDF5 survey file: versioned schema, chunked, read out of core.

The layout is documented in ``docs/file-format.md`` (schema version
:data:`FORMAT_VERSION`). In short::

    /              attrs: format="stellarflow-survey", format_version, stellarflow_version,
                          created, n_stars, n_pixels, grid_hash, meta (JSON)
    /wavelength    (n_pixels,) float64, vacuum Angstrom
    /flux          (n_stars, n_pixels) float32, chunked by rows
    /ivar          (n_stars, n_pixels) float32, 0 = unusable
    /mask          (n_stars, n_pixels) bool, True = excluded
    /labels        label table (astropy HDF5 table with serialised column metadata)
    /truth/flux    optional (n_stars, n_pixels) float32 noiseless flux (mock surveys)
    /<name>        optional extra tables (e.g. truth/labels, linelist, truth/linelist)

Writing goes through :class:`SurveyWriter`, which streams chunks to a temporary file and
renames it into place only when every chunk has arrived. Reading goes through
:class:`SurveyFile`, which offers the same interface as an in-memory
:class:`~stellarflow.data.dataset.SpectralDataset` (``read``, ``iter_chunks``, ``load``) and
never loads the spectra whole unless asked.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
from astropy.table import Table, vstack

from stellarflow.data.dataset import ID_COLUMN, SpectralDataset, validate_labels
from stellarflow.data.grid import grid_hash, validate_wavelength
from stellarflow.errors import (
    DataValidationError,
    FileFormatError,
    GridMismatchError,
    OutputExistsError,
)
from stellarflow.io.atomic import check_writable

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SurveyFile",
    "SurveyWriter",
    "json_default",
    "open_survey",
    "read_survey",
    "survey_linelist",
    "write_survey",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "stellarflow-survey"
FORMAT_VERSION = 1
_SPECTRA_KEYS = ("flux", "ivar", "mask")
_CHUNK_BYTES = 1 << 20  # ~1 MiB HDF5 chunks: the sweet spot for row-wise streaming


def _package_version() -> str:
    from stellarflow import __version__

    return __version__


def _chunk_rows(n_pixels: int) -> int:
    return max(1, _CHUNK_BYTES // (4 * n_pixels))


def _write_table(group: h5py.Group, name: str, table: Table) -> None:
    """Store an astropy table at ``group[name]`` with its column metadata."""
    table = Table(table, copy=False)
    if name in group:
        raise DataValidationError(f"table '{name}' was already written to this survey file")
    parent, _, leaf = name.rpartition("/")
    target = group.require_group(parent) if parent else group
    table.write(target, path=leaf, serialize_meta=True)


def _read_table(group: h5py.Group, name: str) -> Table:
    table = Table.read(group, path=name)
    for column in table.itercols():
        if column.dtype.kind == "S":  # stored as bytes by HDF5; hand back str
            table.replace_column(column.name, np.char.decode(np.asarray(column), "utf-8"))
    return table


class SurveyWriter:
    """Stream spectra into a new survey file, atomically.

    Args:
        path: the output file (``.h5``).
        wavelength: `(n_pixels,)`, vacuum Angstrom, strictly increasing.
        meta: free metadata stored as JSON (survey, grid, provenance).
        overwrite: replace an existing file at ``path``.
        compression: HDF5 filter for the spectra (``None``, ``"lzf"`` or ``"gzip"``).

    Use as a context manager. Rows are appended in order with :meth:`append`; extra tables
    with :meth:`add_table`. On a clean exit the file is renamed into place; on an exception
    the temporary file is deleted and nothing appears at ``path``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        wavelength: np.ndarray,
        meta: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = False,
        compression: str | None = None,
    ) -> None:
        self.path = check_writable(path, overwrite)
        self.overwrite = overwrite
        self.wavelength = validate_wavelength(wavelength)
        self.meta = dict(meta or {})
        self.compression = compression
        self._labels: list[Table] = []
        self._n_rows = 0
        self._with_truth = False
        self._file: h5py.File | None = None
        self._tmp: Path | None = None

    # --- context management -----------------------------------------------------------

    def __enter__(self) -> SurveyWriter:
        fd, name = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        os.close(fd)
        self._tmp = Path(name)
        self._file = h5py.File(self._tmp, "w")
        n_pixels = self.wavelength.size
        wave = self._file.create_dataset("wavelength", data=self.wavelength)
        wave.attrs["unit"] = "Angstrom"
        wave.attrs["medium"] = "vacuum"
        for key, dtype in (("flux", np.float32), ("ivar", np.float32), ("mask", bool)):
            self._create_rows(key, dtype, n_pixels)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        finished = False
        try:
            if exc_type is None:
                self._finish()
                finished = True
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None
            if not finished and self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
        if finished:
            self._rename()

    def _create_rows(self, key: str, dtype: type, n_pixels: int) -> h5py.Dataset:
        if self._file is None:
            raise RuntimeError("SurveyWriter must be used as a context manager")
        return self._file.create_dataset(
            key,
            shape=(0, n_pixels),
            maxshape=(None, n_pixels),
            dtype=dtype,
            chunks=(_chunk_rows(n_pixels), n_pixels),
            compression=self.compression,
        )

    # --- writing ------------------------------------------------------------------------

    @property
    def n_written(self) -> int:
        """Number of stars appended so far."""
        return self._n_rows

    def append(self, chunk: SpectralDataset, truth_flux: np.ndarray | None = None) -> None:
        """Append a chunk of stars.

        Args:
            chunk: spectra on the writer's wavelength grid.
            truth_flux: `(chunk.n_stars, n_pixels)`, noiseless flux (mock surveys only);
                either always or never given.

        Raises:
            GridMismatchError: if the chunk's grid differs from the writer's.
            DataValidationError: if truth_flux is given for some chunks only or has the
                wrong shape.
        """
        if self._file is None:
            raise RuntimeError("SurveyWriter must be used as a context manager")
        if chunk.n_pixels != self.wavelength.size or not np.allclose(
            chunk.wavelength, self.wavelength, rtol=0, atol=1e-6
        ):
            raise GridMismatchError(
                f"chunk has {chunk.n_pixels} pixels on a different wavelength grid than the "
                f"file's {self.wavelength.size}; resample the spectra onto one grid"
            )
        if self._n_rows > 0 and (truth_flux is not None) != self._with_truth:
            raise DataValidationError("truth_flux must be given with every chunk or with none")
        self._with_truth = truth_flux is not None
        start, stop = self._n_rows, self._n_rows + chunk.n_stars
        for key in _SPECTRA_KEYS:
            dataset = self._file[key]
            dataset.resize(stop, axis=0)
            dataset[start:stop] = getattr(chunk, key)
        if truth_flux is not None:
            truth = np.asarray(truth_flux, dtype=np.float32)
            if truth.shape != chunk.flux.shape:
                raise DataValidationError(
                    f"truth_flux has shape {truth.shape}; expected {chunk.flux.shape}"
                )
            if "truth/flux" not in self._file:
                self._file.require_group("truth")
                self._create_rows("truth/flux", np.float32, self.wavelength.size)
            dataset = self._file["truth/flux"]
            dataset.resize(stop, axis=0)
            dataset[start:stop] = truth
        self._labels.append(chunk.labels)
        self._n_rows = stop

    def add_table(self, name: str, table: Table) -> None:
        """Store an extra table (e.g. ``"truth/labels"``, ``"linelist"``) in the file."""
        if self._file is None:
            raise RuntimeError("SurveyWriter must be used as a context manager")
        if name in ("labels", "wavelength", *_SPECTRA_KEYS):
            raise DataValidationError(f"'{name}' is reserved; choose another table name")
        _write_table(self._file, name, table)

    def _finish(self) -> None:
        if self._file is None:
            raise RuntimeError("SurveyWriter must be used as a context manager")
        if self._n_rows == 0:
            raise DataValidationError(
                "no spectra were written; a survey file needs at least one star"
            )
        labels = validate_labels(vstack(self._labels, join_type="outer"), self._n_rows)
        _write_table(self._file, "labels", labels)
        attrs = self._file.attrs
        attrs["format"] = FORMAT_NAME
        attrs["format_version"] = FORMAT_VERSION
        attrs["stellarflow_version"] = _package_version()
        attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        attrs["n_stars"] = self._n_rows
        attrs["n_pixels"] = self.wavelength.size
        attrs["grid_hash"] = grid_hash(self.wavelength)
        attrs["meta"] = json.dumps(self.meta, default=json_default)

    def _rename(self) -> None:
        tmp = self._tmp
        if tmp is None:
            raise RuntimeError("SurveyWriter must be used as a context manager")
        try:
            if self.path.exists() and not self.overwrite:
                raise OutputExistsError(
                    f"{self.path} appeared while it was being written; nothing was replaced"
                )
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        logger.info("wrote %d stars to %s", self._n_rows, self.path)


def json_default(value: object) -> object:
    """``json.dumps`` fallback for numpy scalars and arrays and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON-serialisable")


def write_survey(
    dataset: SpectralDataset,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    truth_flux: np.ndarray | None = None,
    tables: Mapping[str, Table] | None = None,
) -> Path:
    """Write an in-memory dataset to a survey file (atomically). Returns the path."""
    with SurveyWriter(path, dataset.wavelength, dataset.meta, overwrite=overwrite) as writer:
        writer.append(dataset, truth_flux=truth_flux)
        for name, table in (tables or {}).items():
            writer.add_table(name, table)
    return Path(path)


class SurveyFile:
    """A survey file opened for reading, out of core.

    Offers the interface of :class:`SpectralDataset` that does not need everything in
    memory: ``n_stars``, ``n_pixels``, ``wavelength``, ``labels`` (small, loaded at open),
    ``meta``, ``read(start, stop)``, ``iter_chunks(chunk_size)`` and ``load()``.
    Every chunk read is validated against the data model.

    Args:
        path: a file written by :class:`SurveyWriter`.

    Raises:
        FileFormatError: if the file is not a stellarflow survey file, is from a newer
            schema version, or is inconsistent.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileFormatError(f"{self.path} does not exist or is not a file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise FileFormatError(
                f"{self.path} is not a readable HDF5 file ({err}); expected a stellarflow "
                "survey file (make one with `stellarflow import` or `stellarflow mock`)"
            ) from None
        try:
            self._check_layout()
            self.wavelength = validate_wavelength(self._file["wavelength"][()])
            self.labels = validate_labels(_read_table(self._file, "labels"), self.n_stars)
            self.meta: dict[str, Any] = json.loads(self._file.attrs.get("meta", "{}"))
        except (DataValidationError, FileFormatError) as err:
            self._file.close()
            raise type(err)(f"{self.path}: {err}") from None
        except Exception as err:
            self._file.close()
            raise FileFormatError(f"{self.path}: cannot read survey file ({err})") from None

    def _check_layout(self) -> None:
        attrs = self._file.attrs
        if attrs.get("format") != FORMAT_NAME:
            raise FileFormatError(
                f"not a stellarflow survey file (format attribute {attrs.get('format')!r}, "
                f"expected {FORMAT_NAME!r}); convert spectra with `stellarflow import`"
            )
        version = int(attrs.get("format_version", -1))
        if version < 1 or version > FORMAT_VERSION:
            raise FileFormatError(
                f"survey schema version {version} is not supported (this stellarflow reads "
                f"1..{FORMAT_VERSION}); upgrade stellarflow"
            )
        missing = [k for k in ("wavelength", "labels", *_SPECTRA_KEYS) if k not in self._file]
        if missing:
            raise FileFormatError(f"survey file lacks the datasets {missing}")
        shapes = {k: self._file[k].shape for k in _SPECTRA_KEYS}
        n_pixels = self._file["wavelength"].shape[0]
        if len(set(shapes.values())) != 1 or shapes["flux"][1:] != (n_pixels,):
            raise FileFormatError(
                f"inconsistent shapes {shapes} for a {n_pixels}-pixel wavelength grid"
            )

    # --- context management -------------------------------------------------------------

    def close(self) -> None:
        """Close the underlying HDF5 file."""
        self._file.close()

    def __enter__(self) -> SurveyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.n_stars

    def __repr__(self) -> str:
        return f"SurveyFile({str(self.path)!r}, n_stars={self.n_stars}, n_pixels={self.n_pixels})"

    # --- the dataset interface ----------------------------------------------------------

    @property
    def n_stars(self) -> int:
        """Number of spectra in the file."""
        return int(self._file["flux"].shape[0])

    @property
    def n_pixels(self) -> int:
        """Number of pixels per spectrum."""
        return int(self._file["flux"].shape[1])

    @property
    def star_id(self) -> np.ndarray:
        """`(n_stars,)` str identifiers."""
        return np.asarray(self.labels[ID_COLUMN])

    @property
    def label_names(self) -> list[str]:
        """Names of the label columns."""
        return [name for name in self.labels.colnames if name != ID_COLUMN]

    @property
    def format_version(self) -> int:
        """Schema version the file was written with."""
        return int(self._file.attrs["format_version"])

    @property
    def grid_hash(self) -> str:
        """Fingerprint of the wavelength grid (see :func:`~stellarflow.data.grid.grid_hash`)."""
        return grid_hash(self.wavelength)

    def read(self, start: int = 0, stop: int | None = None) -> SpectralDataset:
        """Stars ``start:stop`` as a validated in-memory dataset."""
        start, stop, _ = slice(start, stop).indices(self.n_stars)
        if stop <= start:
            raise DataValidationError(
                f"rows {start}:{stop} select no stars of the {self.n_stars} in {self.path}"
            )
        arrays = {key: self._file[key][start:stop] for key in _SPECTRA_KEYS}
        try:
            return SpectralDataset(
                arrays["flux"],
                arrays["ivar"],
                self.wavelength,
                self.labels[start:stop],
                mask=arrays["mask"],
                meta=self.meta,
            )
        except DataValidationError as err:
            raise type(err)(f"{self.path}, stars {start}:{stop}: {err}") from None

    def iter_chunks(
        self, chunk_size: int = 1024, start: int = 0, stop: int | None = None
    ) -> Iterator[SpectralDataset]:
        """Yield consecutive chunks of at most ``chunk_size`` stars from ``start:stop``."""
        if chunk_size < 1:
            raise DataValidationError(f"chunk_size must be >= 1, got {chunk_size}")
        start, stop, _ = slice(start, stop).indices(self.n_stars)
        for first in range(start, stop, chunk_size):
            yield self.read(first, min(first + chunk_size, stop))

    def load(self) -> SpectralDataset:
        """Read every star into memory."""
        return self.read(0, self.n_stars)

    # --- extras: truth and tables -------------------------------------------------------

    @property
    def has_truth(self) -> bool:
        """Whether the file carries noiseless truth spectra (mock surveys)."""
        return "truth/flux" in self._file

    def read_truth_flux(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Noiseless flux of stars ``start:stop``: `(n, n_pixels)` float32 (mocks only)."""
        if not self.has_truth:
            raise FileFormatError(f"{self.path} has no truth spectra; only mock surveys carry them")
        return self._file["truth/flux"][start:stop]

    @property
    def table_names(self) -> list[str]:
        """Paths of the extra tables stored in the file (besides ``labels``)."""
        names: list[str] = []

        def visit(name: str, obj: object) -> None:
            if (
                isinstance(obj, h5py.Dataset)
                and obj.dtype.names is not None
                and not name.endswith(".__table_column_meta__")
                and name != "labels"
            ):
                names.append(name)

        self._file.visititems(visit)
        return sorted(names)

    def read_table(self, name: str) -> Table:
        """Read an extra table such as ``"truth/labels"`` or ``"linelist"``."""
        if name not in self.table_names and name != "labels":
            raise FileFormatError(f"{self.path} has no table '{name}' (tables: {self.table_names})")
        return _read_table(self._file, name)


def open_survey(path: str | os.PathLike[str]) -> SurveyFile:
    """Open a survey file for out-of-core reading (use as a context manager)."""
    return SurveyFile(path)


def read_survey(path: str | os.PathLike[str]) -> SpectralDataset:
    """Read a whole survey file into memory."""
    with open_survey(path) as survey:
        return survey.load()


def survey_linelist(source: object) -> Table | None:
    """The line list a survey file carries (its ``linelist`` table), or None: spectra in
    memory carry none of a file's tables, and a file may have none."""
    if "linelist" not in getattr(source, "table_names", []):
        return None
    return source.read_table("linelist")  # type: ignore[attr-defined]
