"""APOGEE DR17 readers: per-star spectra and the allStar catalogue.

Bulk import into a survey file lives in :mod:`stellarflow.io.apogee_import`.

Three file types are read:

* ``aspcapStar-dr17-<APOGEE_ID>.fits``: HDU1 continuum-normalised flux, HDU2 its error,
  HDU3 the ASPCAP best-fit model (not read), HDU4 a results table (not read).
* ``apStar-dr17-<APOGEE_ID>.fits`` (``asStar-`` at LCO): HDU1 flux, HDU2 error, HDU3 the
  pixel bitmask (APOGEE_PIXMASK). Each HDU is 1-D for a single visit or 2-D
  ``(n_visits + 2, 8575)``; the first row is the combined spectrum. apStar flux is in
  1e-17 erg/s/cm^2/Angstrom, **not** continuum-normalised.
* ``allStar-dr17-*.fits``: the catalogue of labels (HDU1, one row per observation).

Both spectrum types are on the log10-lambda grid of :mod:`stellarflow.data.grid` (8,575
pixels, read from the HDU1 header keys CRVAL1/CDELT1/NAXIS1); the readers check this and
cut the chip gaps, returning 7,514 pixels.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from astropy.io import fits
from astropy.table import Table

from stellarflow.data.dataset import ID_COLUMN, validate_labels
from stellarflow.data.grid import (
    APOGEE_CDELT1,
    APOGEE_CRVAL1,
    APOGEE_N_FULL,
    apogee_keep_mask,
    apogee_wavelength,
)
from stellarflow.errors import (
    DataValidationError,
    FileFormatError,
    GridMismatchError,
    LabelError,
    StellarflowError,
)

__all__ = [
    "APOGEE_BAD_BITS",
    "APOGEE_PIXMASK_BITS",
    "ApogeeSpectrum",
    "bitmask_to_mask",
    "detect_kind",
    "read_allstar",
    "read_apstar",
    "read_aspcapstar",
]

logger = logging.getLogger(__name__)

SpectrumKind = Literal["aspcapStar", "apStar"]
PathLike = str | os.PathLike[str]

APOGEE_PIXMASK_BITS: dict[int, str] = dict(
    enumerate(
        ("BADPIX", "CRPIX", "SATPIX", "UNFIXABLE", "BADDARK", "BADFLAT", "BADERR", "NOSKY",
         "LITTROW_GHOST", "PERSIST_HIGH", "PERSIST_MED", "PERSIST_LOW", "SIG_SKYLINE",
         "SIG_TELLURIC", "NOT_ENOUGH_PSF")
    )
)  # fmt: skip
"""The APOGEE_PIXMASK bit definitions (DR13-DR17), bit number -> name."""

APOGEE_BAD_BITS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 12)
"""APOGEE_PIXMASK bits that exclude a pixel by default.

===  ==============  =====  ========================================================
bit  name            bad?   why
===  ==============  =====  ========================================================
0    BADPIX          yes    detector bad-pixel mask: no signal
1    CRPIX           yes    cosmic ray
2    SATPIX          yes    saturated: flux unreliable
3    UNFIXABLE       yes    could not be repaired in ap3d
4    BADDARK         yes    bad in the dark frame
5    BADFLAT         yes    bad in the flat field
6    BADERR          yes    error set very high by the pipeline
7    NOSKY           yes    no sky estimate: sky lines not subtracted
8    LITTROW_GHOST   no     may be affected by the Littrow ghost; localised, flux usable
9    PERSIST_HIGH    no     detector persistence; masking it would cut a large part of
                            the blue chip for the affected fibres
10   PERSIST_MED     no     as PERSIST_HIGH, weaker
11   PERSIST_LOW     no     as PERSIST_HIGH, weaker
12   SIG_SKYLINE     yes    near a bright sky line: residuals dominate the star's flux
13   SIG_TELLURIC    no     telluric absorption that was divided out; masking it would
                            remove many stellar-line pixels across the H band
14   NOT_ENOUGH_PSF  no     under half the PSF on good pixels; partial, kept
===  ==============  =====  ========================================================

This is the set used by astroNN and by the ``apogee`` package for combined spectra
(bits 0-7 plus SIG_SKYLINE). Pass another ``bad_bits`` to change it.
"""

_FILENAME_RE = re.compile(
    r"^(?P<prefix>aspcapStar|apStar|asStar)-(?:dr\d+|r\d+(?:-l[\w.]+)?)-"
    r"(?P<apogee_id>.+?)\.fits?(?:\.gz)?$"
)
_SPECTRUM_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz")
_GRID_TOLERANCE = (1e-8, 1e-12)  # CRVAL1 and CDELT1, log10 Angstrom
_LEGACY_SENTINEL = -9999.0  # allStar "no value" before DR17


@dataclass(frozen=True, eq=False)
class ApogeeSpectrum:
    """One APOGEE combined spectrum on the 7,514-pixel grid (chip gaps removed).

    Attributes:
        apogee_id: the 2MASS-style APOGEE_ID, e.g. ``"2M00000002+7417074"``.
        flux: `(7514,)` float32; aspcapStar: continuum-normalised, dimensionless;
            apStar: 1e-17 erg/s/cm^2/Angstrom. As stored (may be non-finite where masked).
        sigma: `(7514,)` float32, flux units; ``inf`` where masked.
        mask: `(7514,)` bool, True = excluded.
        wavelength: `(7514,)` float64, vacuum Angstrom.
        kind: ``"aspcapStar"`` or ``"apStar"``.
    """

    apogee_id: str
    flux: np.ndarray
    sigma: np.ndarray
    mask: np.ndarray
    wavelength: np.ndarray
    kind: SpectrumKind = "aspcapStar"

    @property
    def ivar(self) -> np.ndarray:
        """`(7514,)` float32 inverse variance, 1 / flux units squared; 0 where masked."""
        with np.errstate(divide="ignore"):
            return np.where(self.mask, 0.0, 1.0 / self.sigma.astype(np.float64) ** 2).astype(
                np.float32
            )


# --- pixel bitmask ------------------------------------------------------------------------


def _validate_bits(bad_bits: Iterable[int]) -> tuple[int, ...]:
    """Check bit numbers (0-63) and return them sorted and unique."""
    bits = tuple(sorted({int(b) for b in bad_bits}))
    out_of_range = [b for b in bits if not 0 <= b < 64]
    if out_of_range:
        raise DataValidationError(
            f"bad_bits must be bit numbers in 0..63, got {out_of_range}; see "
            "stellarflow.io.apogee.APOGEE_PIXMASK_BITS for the APOGEE definitions"
        )
    return bits


def bitmask_to_mask(bitmask: np.ndarray, bad_bits: Iterable[int] = APOGEE_BAD_BITS) -> np.ndarray:
    """Boolean mask from an integer pixel bitmask: True where any bad bit is set.

    ``mask = (bitmask & sum(2**b for b in bad_bits)) != 0``.

    Args:
        bitmask: `(...)` integer APOGEE_PIXMASK values, any shape.
        bad_bits: bit numbers that exclude a pixel; default :data:`APOGEE_BAD_BITS`.

    Returns:
        mask: bool, the shape of ``bitmask``, True = excluded.

    Raises:
        DataValidationError: if ``bitmask`` is not integer or a bit is outside 0..63.
    """
    values = np.asarray(bitmask)
    if not np.issubdtype(values.dtype, np.integer):
        raise DataValidationError(
            f"bitmask must have an integer dtype, got {values.dtype}; pass the pixel "
            "bitmask HDU (apStar HDU3), not a flux or error array"
        )
    selector = sum(1 << b for b in _validate_bits(bad_bits))
    # View signed masks as unsigned of the same width so that bit 15 of an int16 is bit 15.
    unsigned = values.astype(f"u{values.dtype.itemsize}").astype(np.uint64)
    return (unsigned & np.uint64(selector)) != 0


# --- per-star spectra ---------------------------------------------------------------------


def _check_grid(header: fits.Header, path: Path) -> None:
    """Raise unless the header describes the standard 8,575-pixel APOGEE grid."""
    values = {key: header.get(key) for key in ("CRVAL1", "CDELT1", "NAXIS1")}
    missing = [key for key, value in values.items() if value is None]
    if missing:
        raise FileFormatError(
            f"{path}: HDU1 header lacks {missing}; expected an APOGEE combined spectrum "
            "with a log10-wavelength grid in CRVAL1/CDELT1/NAXIS1"
        )
    cdelt1 = float(values["CDELT1"])
    start = float(values["CRVAL1"]) + cdelt1 * (1.0 - float(header.get("CRPIX1", 1.0)))
    n_pixels = int(values["NAXIS1"])
    if (
        n_pixels != APOGEE_N_FULL
        or abs(start - APOGEE_CRVAL1) > _GRID_TOLERANCE[0]
        or abs(cdelt1 - APOGEE_CDELT1) > _GRID_TOLERANCE[1]
    ):
        raise GridMismatchError(
            f"{path}: wavelength grid is log10(lambda) = {start} + {cdelt1} * i over "
            f"{n_pixels} pixels; expected the APOGEE DR13+ grid {APOGEE_CRVAL1} + "
            f"{APOGEE_CDELT1} * i over {APOGEE_N_FULL} pixels; use DR13-or-later "
            "aspcapStar/apStar files, or resample the spectra and import them with "
            "stellarflow.io.arrays.import_arrays"
        )


def _apogee_id(header: fits.Header, path: Path) -> str:
    """APOGEE_ID from the primary header (OBJID) or else from the file name."""
    for key in ("OBJID", "APOGEE_ID"):
        value = header.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    match = _FILENAME_RE.match(path.name)
    if match:
        return match.group("apogee_id")
    raise FileFormatError(
        f"{path}: cannot tell the APOGEE_ID: the primary header has no OBJID and the "
        "name is not like aspcapStar-dr17-<APOGEE_ID>.fits; rename the file or add OBJID"
    )


def _image(hdul: fits.HDUList, index: int, what: str, path: Path) -> fits.ImageHDU:
    """The image HDU holding ``what``, or a FileFormatError saying what is there."""
    if len(hdul) <= index:
        raise FileFormatError(
            f"{path}: expected the {what} in HDU{index}, but the file has only "
            f"{len(hdul)} HDUs; is it an APOGEE aspcapStar/apStar file?"
        )
    hdu = hdul[index]
    if not isinstance(hdu, fits.ImageHDU | fits.CompImageHDU) or hdu.data is None:
        raise FileFormatError(
            f"{path}: expected the {what} as an image in HDU{index}, got "
            f"{type(hdu).__name__}; is it an APOGEE aspcapStar/apStar file?"
        )
    return hdu


def _combined_row(data: np.ndarray, what: str, path: Path, allow_2d: bool) -> np.ndarray:
    """The combined spectrum: the array itself (1-D) or its first row (2-D apStar)."""
    array = np.asarray(data)
    if array.ndim == 2 and allow_2d:
        array = array[0]
    if array.ndim != 1 or array.size != APOGEE_N_FULL:
        expected = f"({APOGEE_N_FULL},)" + (
            f" or (n_rows, {APOGEE_N_FULL})" if allow_2d else "; 2-D files are apStar files"
        )
        raise FileFormatError(f"{path}: {what} has shape {np.shape(data)}; expected {expected}")
    return array


def _assemble(
    apogee_id: str,
    flux_full: np.ndarray,
    sigma_full: np.ndarray,
    bad_full: np.ndarray | None,
    kind: SpectrumKind,
) -> ApogeeSpectrum:
    """Cut the chip gaps and mask zero/non-finite flux and non-positive errors."""
    keep = apogee_keep_mask()
    flux = np.asarray(flux_full, dtype=np.float32)[keep]
    sigma = np.asarray(sigma_full, dtype=np.float32)[keep]
    with np.errstate(invalid="ignore"):
        mask = ~np.isfinite(flux) | ~np.isfinite(sigma) | (flux == 0) | ~(sigma > 0)
    if bad_full is not None:
        mask |= bad_full[keep]
    sigma = np.where(mask, np.float32(np.inf), sigma).astype(np.float32)
    return ApogeeSpectrum(apogee_id, flux, sigma, mask, apogee_wavelength(), kind)


def _aspcapstar_from_hdul(hdul: fits.HDUList, path: Path) -> ApogeeSpectrum:
    flux_hdu = _image(hdul, 1, "flux", path)
    _check_grid(flux_hdu.header, path)
    flux = _combined_row(flux_hdu.data, "flux (HDU1)", path, allow_2d=False)
    sigma = _combined_row(_image(hdul, 2, "error", path).data, "error (HDU2)", path, False)
    return _assemble(_apogee_id(hdul[0].header, path), flux, sigma, None, "aspcapStar")


def _apstar_from_hdul(hdul: fits.HDUList, path: Path, bad_bits: Iterable[int]) -> ApogeeSpectrum:
    flux_hdu = _image(hdul, 1, "flux", path)
    _check_grid(flux_hdu.header, path)
    bits = _image(hdul, 3, "pixel bitmask", path).data
    if not np.issubdtype(bits.dtype, np.integer):
        raise FileFormatError(
            f"{path}: HDU3 has dtype {bits.dtype}; expected an integer pixel bitmask; "
            "an aspcapStar file (HDU3 = model) is read with read_aspcapstar"
        )
    flux = _combined_row(flux_hdu.data, "flux (HDU1)", path, allow_2d=True)
    sigma = _combined_row(_image(hdul, 2, "error", path).data, "error (HDU2)", path, True)
    bitmask = _combined_row(bits, "bitmask (HDU3)", path, allow_2d=True)
    bad = bitmask_to_mask(bitmask, bad_bits)
    return _assemble(_apogee_id(hdul[0].header, path), flux, sigma, bad, "apStar")


def _with_fits(path: PathLike, reader: Callable[[fits.HDUList, Path], Any]) -> Any:
    """Open ``path`` and apply ``reader``; turn any reading failure into FileFormatError."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path} does not exist or is not a file")
    try:
        with fits.open(path, memmap=False) as hdul:
            return reader(hdul, path)
    except StellarflowError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as err:
        raise FileFormatError(
            f"{path} cannot be read as an APOGEE FITS file ({type(err).__name__}: {err}); "
            "check that it is a complete aspcapStar/apStar download"
        ) from None


def read_aspcapstar(path: PathLike) -> ApogeeSpectrum:
    """Read an aspcapStar file: continuum-normalised flux and error, chip gaps cut.

    Pixels whose flux is 0 or non-finite, or whose error is <= 0 or non-finite, are
    masked (their sigma set to ``inf``).

    Args:
        path: an ``aspcapStar-dr17-<APOGEE_ID>.fits`` file (``.gz`` too).

    Returns:
        The spectrum on the 7,514-pixel grid; APOGEE_ID from the primary-header key
        OBJID, else parsed from the file name.

    Raises:
        FileFormatError: unreadable file, missing HDUs, or no APOGEE_ID.
        GridMismatchError: a wavelength grid other than the standard 8,575-pixel one.
    """
    return _with_fits(path, _aspcapstar_from_hdul)


def read_apstar(path: PathLike, bad_bits: Iterable[int] = APOGEE_BAD_BITS) -> ApogeeSpectrum:
    """Read the combined spectrum (first row) of an apStar file, with its bitmask.

    A pixel is masked if any of ``bad_bits`` is set in HDU3, or its flux is 0 or
    non-finite, or its error is <= 0 or non-finite. The flux is **not**
    continuum-normalised (1e-17 erg/s/cm^2/Angstrom).

    Args:
        path: an ``apStar-dr17-<APOGEE_ID>.fits`` (or LCO ``asStar-``) file.
        bad_bits: APOGEE_PIXMASK bits that exclude a pixel; default :data:`APOGEE_BAD_BITS`.

    Returns:
        The spectrum on the 7,514-pixel grid.

    Raises:
        FileFormatError: unreadable file, missing HDUs, non-integer bitmask, no APOGEE_ID.
        GridMismatchError: a wavelength grid other than the standard 8,575-pixel one.
    """
    bits = _validate_bits(bad_bits)
    return _with_fits(path, lambda hdul, p: _apstar_from_hdul(hdul, p, bits))


def _kind_from_name(path: Path) -> SpectrumKind | None:
    name = path.name
    if name.startswith("aspcapStar"):
        return "aspcapStar"
    if name.startswith(("apStar", "asStar")):
        return "apStar"
    return None


def _kind_from_hdul(hdul: fits.HDUList, path: Path) -> SpectrumKind:
    # apStar's HDU3 is an integer bitmask; aspcapStar's is a float model (or absent).
    if len(hdul) > 3 and isinstance(hdul[3], fits.ImageHDU):
        if int(hdul[3].header.get("BITPIX", -32)) > 0:
            return "apStar"
    if len(hdul) > 2:
        return "aspcapStar"
    raise FileFormatError(
        f"{path}: has {len(hdul)} HDUs; expected an APOGEE aspcapStar or apStar file "
        "(flux in HDU1, error in HDU2)"
    )


def detect_kind(path: PathLike) -> SpectrumKind:
    """Whether a file is an aspcapStar or an apStar file, from its name or its HDUs.

    Raises:
        FileFormatError: if the file cannot be read or has fewer than three HDUs.
    """
    path = Path(path)
    return _kind_from_name(path) or _with_fits(path, _kind_from_hdul)


# --- the allStar catalogue ----------------------------------------------------------------


def _keep_highest_snr(ids: np.ndarray, snr: np.ndarray | None) -> np.ndarray:
    """Row indices keeping, for each id, the row with the highest SNR.

    NaN SNR ranks lowest; ties keep the earlier row; without SNR the first row is kept.

    Args:
        ids: `(n_rows,)` str identifiers.
        snr: `(n_rows,)` float signal-to-noise, or None.

    Returns:
        rows: `(n_unique,)` int, increasing (the catalogue's order is kept).
    """
    ids = np.asarray(ids)
    if snr is None:
        order = np.arange(ids.size)
    else:
        rank = np.nan_to_num(np.asarray(snr, dtype=np.float64), nan=-np.inf)
        order = np.argsort(-rank, kind="stable")
    _, first = np.unique(ids[order], return_index=True)
    return np.sort(order[first])


def _replace_sentinels(table: Table) -> None:
    """Turn the pre-DR17 "no value" sentinel -9999 into NaN in float columns, in place."""
    for column in table.itercols():
        if column.dtype.kind == "f":
            data = np.asarray(column)
            if np.any(data == _LEGACY_SENTINEL):
                data[data == _LEGACY_SENTINEL] = np.nan


def read_allstar(
    path: PathLike, hdu: int | str = 1, *, columns: Sequence[str] | None = None
) -> Table:
    """Read the allStar catalogue as a label table keyed by ``star_id``.

    APOGEE_ID is renamed ``star_id`` (stripped of blanks); label columns keep their
    allStar names (TEFF, LOGG, FE_H, MG_FE, ..., X_FE_ERR, SNR, ASPCAPFLAG, STARFLAG).
    Multi-dimensional columns (PARAM, FPARAM, X_H, ...) are dropped, with a log message.
    Float values of -9999 (the "no value" of releases before DR17) become NaN.

    allStar has one row per observation, so a star observed from both telescopes or in
    several fields appears more than once: **the row with the highest SNR is kept** (NaN
    SNR ranks lowest) and the others are dropped, with a log message.

    Args:
        path: the ``allStar-dr17-*.fits`` file.
        hdu: index or name of the table HDU (1 in DR17).
        columns: label columns to keep (default: all scalar columns); SNR is used for
            deduplication even when not kept.

    Returns:
        One row per star, ``star_id`` first, in catalogue order.

    Raises:
        FileFormatError: unreadable file or no table at ``hdu``.
        LabelError: no APOGEE_ID column, or requested columns missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path} does not exist or is not a file")
    try:
        with fits.open(path, memmap=True) as hdul:
            try:
                table_hdu = hdul[hdu]
            except (KeyError, IndexError):
                names = [f"{i} {h.name}" for i, h in enumerate(hdul)]
                raise FileFormatError(
                    f"{path} has no HDU {hdu!r} (HDUs: {names}); pass the index of the "
                    "allStar table (1 in DR17)"
                ) from None
            if not isinstance(table_hdu, fits.BinTableHDU | fits.TableHDU):
                raise FileFormatError(
                    f"{path}: HDU {hdu!r} is a {type(table_hdu).__name__}; expected the "
                    "allStar binary table (HDU 1 in DR17)"
                )
            table = Table.read(table_hdu, mask_invalid=False)
            table = _select_allstar(table, columns, path)
    except StellarflowError:
        raise
    except (OSError, ValueError, TypeError) as err:
        raise FileFormatError(
            f"{path} cannot be read as a FITS catalogue ({type(err).__name__}: {err})"
        ) from None
    return validate_labels(table)


def _select_allstar(table: Table, columns: Sequence[str] | None, path: Path) -> Table:
    """Pick columns, drop array columns, deduplicate, decode; returns a copied table."""
    if "APOGEE_ID" not in table.colnames:
        raise LabelError(
            f"{path} has no APOGEE_ID column (columns: {table.colnames[:8]}...); expected "
            "an allStar catalogue, or read another table with "
            "stellarflow.io.arrays.read_label_table(path, id_column=...)"
        )
    snr = np.asarray(table["SNR"], dtype=np.float64) if "SNR" in table.colnames else None
    if columns is not None:
        missing = [c for c in columns if c not in table.colnames]
        if missing:
            raise LabelError(
                f"columns {missing} are not in {path}; allStar names are upper case, "
                "e.g. TEFF, LOGG, FE_H, MG_FE, MG_FE_ERR, SNR"
            )
        table = table[["APOGEE_ID", *[c for c in columns if c != "APOGEE_ID"]]]
    arrays = [name for name in table.colnames if table[name].ndim > 1]
    if arrays:
        logger.info("%s: dropping %d multi-dimensional columns: %s", path, len(arrays), arrays)
        table.remove_columns(arrays)
    ids = np.char.strip(np.asarray(table["APOGEE_ID"]).astype(str))
    nonempty = np.flatnonzero(ids != "")
    if nonempty.size < ids.size:
        logger.warning(
            "%s: dropping %d rows with an empty APOGEE_ID", path, ids.size - nonempty.size
        )
    rows = nonempty[_keep_highest_snr(ids[nonempty], None if snr is None else snr[nonempty])]
    if rows.size < nonempty.size:
        logger.info(
            "%s: %d duplicate APOGEE_IDs; kept the highest-SNR row of each",
            path,
            nonempty.size - rows.size,
        )
        if snr is None:
            logger.warning("%s has no SNR column; kept the first row of each duplicate", path)
    out = table[rows]  # a copy, detached from the memory-mapped file
    out.convert_bytestring_to_unicode()
    out["APOGEE_ID"] = ids[rows]
    out.rename_column("APOGEE_ID", ID_COLUMN)
    _replace_sentinels(out)
    return out
