"""Bulk import of APOGEE DR17 spectra and their allStar labels into a survey file."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from astropy.table import Table

from stellarflow.data.dataset import ID_COLUMN, SpectralDataset, validate_labels
from stellarflow.data.grid import apogee_wavelength
from stellarflow.errors import DataValidationError, FileFormatError, StellarflowError
from stellarflow.io.apogee import (
    _SPECTRUM_SUFFIXES,
    APOGEE_BAD_BITS,
    APOGEE_PIXMASK_BITS,
    ApogeeSpectrum,
    PathLike,
    SpectrumKind,
    _kind_from_name,
    _validate_bits,
    detect_kind,
    read_allstar,
    read_apstar,
    read_aspcapstar,
)
from stellarflow.io.atomic import check_writable
from stellarflow.io.hdf5 import SurveyWriter

__all__ = ["ImportReport", "import_apogee"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportReport:
    """What :func:`import_apogee` did.

    Attributes:
        path: the survey file written.
        n_written: number of stars written.
        skipped: ``(file name, reason)`` for every spectrum not written.
        kind: the spectrum kind imported.
    """

    path: Path
    n_written: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    kind: str = "aspcapStar"

    @property
    def n_skipped(self) -> int:
        """Number of spectra not written."""
        return len(self.skipped)


def _collect_paths(spectra: PathLike | Iterable[PathLike], exclude: Path | None) -> list[Path]:
    """Spectrum files from a directory, a glob pattern, one file, or a list of paths."""
    if isinstance(spectra, str | os.PathLike):
        source = Path(spectra)
        text = os.fspath(spectra)
        if source.is_dir():
            paths = sorted(
                p for p in source.iterdir() if p.is_file() and p.name.endswith(_SPECTRUM_SUFFIXES)
            )
        elif source.is_file():
            paths = [source]
        elif any(ch in text for ch in "*?["):
            paths = sorted(Path(p) for p in glob.glob(text) if os.path.isfile(p))
        else:
            raise FileFormatError(
                f"{text} is not a file, a directory or a glob pattern that matches files; "
                "pass the folder of aspcapStar/apStar files or a pattern like 'spec/*.fits'"
            )
    else:
        paths = [Path(p) for p in spectra]
    if exclude is not None:
        paths = [p for p in paths if p.resolve() != exclude]
    if not paths:
        raise FileFormatError(
            f"no spectrum files found in {spectra!r}; expected aspcapStar-*.fits or "
            "apStar-*.fits files"
        )
    return paths


def _normalise_kind(kind: str) -> str:
    lookup = {"auto": "auto", "aspcapstar": "aspcapStar", "apstar": "apStar", "asstar": "apStar"}
    if not isinstance(kind, str) or kind.lower() not in lookup:
        raise DataValidationError(f"kind must be 'auto', 'aspcapStar' or 'apStar', got {kind!r}")
    return lookup[kind.lower()]


class _Problems:
    """Collects (file, reason) for spectra not imported; raises at once if asked to."""

    def __init__(self, on_error: str) -> None:
        if on_error not in ("skip", "raise"):
            raise DataValidationError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.raise_now = on_error == "raise"
        self.items: list[tuple[str, str]] = []

    def add(self, path: Path, reason: str) -> None:
        if self.raise_now:
            raise FileFormatError(f"{path}: {reason}" if str(path) not in reason else reason)
        self.items.append((path.name, reason))


@contextlib.contextmanager
def _progress(
    progress: bool | Callable[[int, int], object] | None, total: int
) -> Iterator[Callable[[int], None]]:
    """Yield a ``step(n_done)`` callback: a tqdm bar, the user's callable, or a no-op.

    ``progress=True`` shows a tqdm bar; a callable is called as ``progress(n_done, total)``.
    """
    if progress is True:
        from tqdm.auto import tqdm

        with tqdm(total=total, unit="spectra", desc="import APOGEE") as bar:
            yield lambda done: bar.update(done - bar.n)
    elif callable(progress):
        yield lambda done: progress(done, total)
    else:
        yield lambda done: None


def _plan(paths: list[Path], kind: str, problems: _Problems) -> tuple[list[Path], SpectrumKind]:
    """Decide the kind of every file; one import holds one kind."""
    if kind != "auto":
        wanted: SpectrumKind = "apStar" if kind == "apStar" else "aspcapStar"
        chosen = [p for p in paths if _kind_from_name(p) in (None, wanted)]
        if len(chosen) < len(paths):
            logger.info("leaving out %d files named as another kind", len(paths) - len(chosen))
        if not chosen:
            raise FileFormatError(f"none of the {len(paths)} files is an {wanted} file")
        return chosen, wanted
    by_kind: dict[SpectrumKind, list[Path]] = {"aspcapStar": [], "apStar": []}
    for path in paths:
        try:
            by_kind[detect_kind(path)].append(path)
        except StellarflowError as err:
            problems.add(path, str(err))
    if by_kind["aspcapStar"] and by_kind["apStar"]:
        raise FileFormatError(
            f"found {len(by_kind['aspcapStar'])} aspcapStar and {len(by_kind['apStar'])} "
            "apStar files; their fluxes are on different scales (apStar is not "
            "continuum-normalised): pass kind='aspcapStar' or kind='apStar' to import one"
        )
    found: SpectrumKind = "apStar" if by_kind["apStar"] else "aspcapStar"
    return by_kind[found], found


def _catalogue_table(catalogue: PathLike | Table, columns: Sequence[str] | None) -> Table:
    if isinstance(catalogue, Table):
        table = catalogue
        if ID_COLUMN not in table.colnames and "APOGEE_ID" in table.colnames:
            table = table.copy(copy_data=False)
            table.rename_column("APOGEE_ID", ID_COLUMN)
        if columns is not None:
            table = table[[ID_COLUMN, *[c for c in columns if c != ID_COLUMN]]]
        return validate_labels(table)
    return read_allstar(catalogue, columns=columns)


def import_apogee(
    spectra: PathLike | Iterable[PathLike],
    catalogue: PathLike | Table,
    out: PathLike,
    *,
    kind: str = "auto",
    on_error: Literal["skip", "raise"] = "skip",
    overwrite: bool = False,
    chunk_size: int = 512,
    progress: bool | Callable[[int, int], object] | None = None,
    bad_bits: Iterable[int] = APOGEE_BAD_BITS,
    label_columns: Sequence[str] | None = None,
) -> ImportReport:
    """Import APOGEE spectra and their allStar labels into a stellarflow survey file.

    Each spectrum is joined to its catalogue row by APOGEE_ID and streamed into a
    :class:`~stellarflow.io.hdf5.SurveyWriter` ``chunk_size`` stars at a time, so memory
    stays bounded by one chunk plus the catalogue. Spectra that cannot be read, that have
    no catalogue row, that repeat an APOGEE_ID already imported, or that have no usable
    pixel are problems: skipped and logged (``on_error="skip"``) or raised at the first
    (``on_error="raise"``). One import holds one kind of spectrum.

    Args:
        spectra: a directory (its ``*.fits``/``*.fits.gz`` files), a glob pattern, one
            file, or a list of paths.
        catalogue: the allStar file (read with :func:`read_allstar`, duplicates resolved by
            highest SNR), or a Table with ``star_id`` (or ``APOGEE_ID``).
        out: the survey file to write (``.h5``).
        kind: ``"auto"`` (from the file name, else the HDU layout), ``"aspcapStar"`` or
            ``"apStar"``; with an explicit kind, files named as the other kind are left out.
        on_error: ``"skip"`` or ``"raise"``.
        overwrite: replace an existing ``out``.
        chunk_size: stars per chunk written.
        progress: True for a tqdm bar, or a callable ``progress(n_done, n_total)``.
        bad_bits: apStar bitmask bits that exclude a pixel (see :data:`APOGEE_BAD_BITS`).
        label_columns: catalogue columns to keep (default: all scalar columns).

    Returns:
        What was written and what was skipped, and why.

    Raises:
        FileFormatError: no spectra found; mixed aspcapStar and apStar files with
            ``kind="auto"``; nothing could be imported (no output file is left); or, with
            ``on_error="raise"``, the first problem, naming the file.
        OutputExistsError: ``out`` exists and ``overwrite`` is False.
        DataValidationError: invalid arguments.
    """
    requested = _normalise_kind(kind)
    problems = _Problems(on_error)
    if chunk_size < 1:
        raise DataValidationError(f"chunk_size must be >= 1, got {chunk_size}")
    bits = _validate_bits(bad_bits)
    out_path = check_writable(out, overwrite)
    exclude = None if isinstance(catalogue, Table) else Path(catalogue).resolve()
    paths = _collect_paths(spectra, exclude)
    labels = _catalogue_table(catalogue, label_columns)
    row_of = {star: i for i, star in enumerate(np.asarray(labels[ID_COLUMN]))}
    planned, chosen = _plan(paths, requested, problems)
    masked_bits = list(bits) if chosen == "apStar" else []  # aspcapStar has no bitmask
    if chosen == "apStar":
        logger.warning("apStar flux is not continuum-normalised; normalise before training")
    meta: dict[str, Any] = {
        "survey": "APOGEE DR17",
        "spectrum_kind": chosen,
        "continuum_normalised": chosen == "aspcapStar",
        "n_source_files": len(paths),
        "catalogue": "<in-memory table>" if exclude is None else str(catalogue),
        "duplicates": "highest-SNR catalogue row kept",
        "bad_bits": masked_bits,
        "bad_bit_names": [APOGEE_PIXMASK_BITS.get(b, f"BIT{b}") for b in masked_bits],
        "grid": "APOGEE log10-lambda, 7514 pixels (chip gaps removed)",
    }
    written: dict[str, str] = {}
    with (
        SurveyWriter(out_path, apogee_wavelength(), meta, overwrite=overwrite) as writer,
        _progress(progress, len(planned)) as step,
    ):
        chunk: list[tuple[ApogeeSpectrum, int]] = []
        for done, path in enumerate(planned, start=1):
            step(done)
            spectrum = _check_one(path, chosen, bits, row_of, written)
            if isinstance(spectrum, str):
                problems.add(path, spectrum)
                continue
            written[spectrum.apogee_id] = path.name
            chunk.append((spectrum, row_of[spectrum.apogee_id]))
            if len(chunk) >= chunk_size:
                writer.append(_to_dataset(chunk, labels, meta))
                chunk = []
        if chunk:
            writer.append(_to_dataset(chunk, labels, meta))
        if writer.n_written == 0:
            first = "; ".join(f"{name}: {why}" for name, why in problems.items[:3])
            raise FileFormatError(
                f"none of the {len(paths)} spectra could be imported, so no file was "
                f"written (first problems: {first}); check the files and that the "
                "catalogue holds their APOGEE_IDs"
            )
        n_written = writer.n_written
    if problems.items:
        names = [name for name, _ in problems.items]
        logger.warning(
            "skipped %d of %d spectra: %s%s",
            len(names),
            len(paths),
            names[:10],
            " ..." if len(names) > 10 else "",
        )
    return ImportReport(out_path, n_written, problems.items, chosen)


def _check_one(
    path: Path,
    kind: SpectrumKind,
    bad_bits: Iterable[int],
    row_of: dict[str, int],
    written: dict[str, str],
) -> ApogeeSpectrum | str:
    """Read one file: the spectrum, or the reason it cannot be imported."""
    try:
        spectrum = read_apstar(path, bad_bits) if kind == "apStar" else read_aspcapstar(path)
    except StellarflowError as err:
        return str(err)
    star = spectrum.apogee_id
    if star not in row_of:
        return f"APOGEE_ID {star} has no row in the catalogue"
    if star in written:
        return f"APOGEE_ID {star} was already imported from {written[star]}"
    if spectrum.mask.all():
        return f"APOGEE_ID {star} has no usable pixel"
    return spectrum


def _to_dataset(
    chunk: list[tuple[ApogeeSpectrum, int]], labels: Table, meta: dict[str, Any]
) -> SpectralDataset:
    spectra = [spectrum for spectrum, _ in chunk]
    return SpectralDataset.from_sigma(
        np.stack([s.flux for s in spectra]),
        np.stack([s.sigma for s in spectra]),
        spectra[0].wavelength,
        labels[np.array([row for _, row in chunk])],
        mask=np.stack([s.mask for s in spectra]),
        meta=meta,
    )
