"""APOGEE readers on small synthetic files written in the real DR17 layouts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from stellarflow.data.grid import APOGEE_CHIP_SLICES, apogee_keep_mask, apogee_wavelength
from stellarflow.errors import (
    DataValidationError,
    FileFormatError,
    GridMismatchError,
    LabelError,
    OutputExistsError,
)
from stellarflow.io.apogee import (
    APOGEE_BAD_BITS,
    APOGEE_PIXMASK_BITS,
    _keep_highest_snr,
    bitmask_to_mask,
    detect_kind,
    read_allstar,
    read_apstar,
    read_aspcapstar,
)
from stellarflow.io.apogee_import import import_apogee
from stellarflow.io.hdf5 import open_survey

N_FULL = 8575
KEEP = apogee_keep_mask()
# A pixel inside the first chip, and its index after the chip gaps are cut.
PIX_FULL = APOGEE_CHIP_SLICES[0].start + 10
PIX_KEPT = 10


def _wcs(header: fits.Header, crval1: float = 4.179, cdelt1: float = 6e-6) -> None:
    header["CRVAL1"] = crval1
    header["CDELT1"] = cdelt1
    header["CRPIX1"] = 1
    header["CTYPE1"] = "LOG-LINEAR"
    header["DC-FLAG"] = 1
    header["BUNIT"] = "Flux (10^-17 erg/s/cm^2/Ang)"


def spectrum(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flux and error on the full grid, zero in the chip gaps as in real files."""
    rng = np.random.default_rng(seed)
    flux = (1.0 - 0.2 * rng.random(N_FULL)).astype(np.float32)
    error = rng.uniform(0.005, 0.02, N_FULL).astype(np.float32)
    flux[~KEEP] = 0.0
    return flux, error


def write_aspcapstar(
    path: Path,
    apogee_id: str | None = "2M00000002+7417074",
    seed: int = 0,
    flux: np.ndarray | None = None,
    error: np.ndarray | None = None,
    crval1: float = 4.179,
    cdelt1: float = 6e-6,
) -> Path:
    """aspcapStar layout: primary header (OBJID), flux, error, model, results table."""
    default_flux, default_error = spectrum(seed)
    flux = default_flux if flux is None else flux
    error = default_error if error is None else error
    primary = fits.PrimaryHDU()
    if apogee_id is not None:
        primary.header["OBJID"] = apogee_id
    primary.header["TELESCOP"] = "apo25m"
    hdus = [primary]
    for data in (flux, error, flux * 0.99):
        hdu = fits.ImageHDU(np.asarray(data, dtype=np.float32))
        _wcs(hdu.header, crval1, cdelt1)
        hdus.append(hdu)
    hdus.append(fits.BinTableHDU(Table({"TEFF": [4500.0], "LOGG": [2.5]})))
    fits.HDUList(hdus).writeto(path)
    return path


def write_apstar(
    path: Path,
    apogee_id: str = "2M00000003+7417075",
    n_visits: int = 2,
    bitmask: np.ndarray | None = None,
    seed: int = 0,
    float_mask: bool = False,
) -> tuple[Path, np.ndarray]:
    """apStar layout: flux/error/bitmask HDUs, 2-D (n_visits + 2 rows) or 1-D."""
    rng = np.random.default_rng(seed)
    n_rows = n_visits + 2 if n_visits > 1 else 1
    flux = rng.uniform(100.0, 200.0, (n_rows, N_FULL)).astype(np.float32)
    error = rng.uniform(1.0, 2.0, (n_rows, N_FULL)).astype(np.float32)
    mask = np.zeros((n_rows, N_FULL), dtype=np.int16) if bitmask is None else bitmask
    if n_rows == 1:
        flux, error, mask = flux[0], error[0], mask[0]
    primary = fits.PrimaryHDU()
    primary.header["OBJID"] = apogee_id
    primary.header["NVISITS"] = n_visits
    hdus = [primary]
    for data in (flux, error, mask.astype(np.float32) if float_mask else mask):
        hdu = fits.ImageHDU(data)
        _wcs(hdu.header)
        hdus.append(hdu)
    hdus.append(fits.ImageHDU(flux * 0.01))  # sky
    fits.HDUList(hdus).writeto(path)
    return path, flux


def write_allstar(path: Path, rows: list[dict[str, object]]) -> Path:
    """allStar layout: HDU1 binary table with padded string ids and an array column."""
    n = len(rows)
    table = Table(
        {
            "APOGEE_ID": np.array([str(r["id"]).ljust(18) for r in rows], dtype="S18"),
            "TELESCOPE": np.array([str(r.get("tel", "apo25m")) for r in rows], dtype="S8"),
            "SNR": np.array([r.get("snr", 100.0) for r in rows], dtype=np.float32),
            "TEFF": np.array([r.get("teff", 4500.0) for r in rows], dtype=np.float32),
            "LOGG": np.full(n, 2.5, dtype=np.float32),
            "FE_H": np.array([r.get("fe_h", 0.0) for r in rows], dtype=np.float32),
            "MG_FE": np.full(n, 0.1, dtype=np.float32),
            "MG_FE_ERR": np.full(n, 0.02, dtype=np.float32),
            "ASPCAPFLAG": np.zeros(n, dtype=np.int64),
            "STARFLAG": np.zeros(n, dtype=np.int64),
            "PARAM": np.ones((n, 9), dtype=np.float32),
        }
    )
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(table)]).writeto(path)
    return path


# --- aspcapStar ---------------------------------------------------------------------------


def test_read_aspcapstar_cuts_chip_gaps_and_reads_id(tmp_path: Path) -> None:
    path = write_aspcapstar(tmp_path / "aspcapStar-dr17-2M00000002+7417074.fits")
    flux, error = spectrum(0)
    result = read_aspcapstar(path)
    assert result.apogee_id == "2M00000002+7417074"
    assert result.kind == "aspcapStar"
    assert result.flux.shape == result.sigma.shape == result.mask.shape == (7514,)
    np.testing.assert_array_equal(result.wavelength, apogee_wavelength())
    np.testing.assert_array_equal(result.flux, flux[KEEP])
    np.testing.assert_array_equal(result.sigma, error[KEEP])
    assert not result.mask.any()
    np.testing.assert_allclose(result.ivar, 1.0 / error[KEEP].astype(np.float64) ** 2, rtol=1e-6)


def test_aspcapstar_id_from_file_name(tmp_path: Path) -> None:
    path = write_aspcapstar(tmp_path / "aspcapStar-dr17-2M12345678-1234567.fits", None)
    assert read_aspcapstar(path).apogee_id == "2M12345678-1234567"


def test_aspcapstar_without_any_id_is_refused(tmp_path: Path) -> None:
    path = write_aspcapstar(tmp_path / "spectrum.fits", None)
    with pytest.raises(FileFormatError, match="cannot tell the APOGEE_ID"):
        read_aspcapstar(path)


def test_bad_pixels_are_masked(tmp_path: Path) -> None:
    flux, error = spectrum(1)
    full = np.flatnonzero(KEEP)
    flux[full[0]] = 0.0
    flux[full[1]] = np.nan
    error[full[2]] = 0.0
    error[full[3]] = -1.0
    error[full[4]] = np.inf
    path = write_aspcapstar(tmp_path / "aspcapStar-dr17-x.fits", "x", flux=flux, error=error)
    result = read_aspcapstar(path)
    np.testing.assert_array_equal(np.flatnonzero(result.mask), [0, 1, 2, 3, 4])
    assert np.all(np.isinf(result.sigma[:5]))
    assert np.all(result.ivar[:5] == 0)
    assert np.all(result.ivar[5:] > 0)


@pytest.mark.parametrize(
    ("kwargs", "length"),
    [({"crval1": 4.18}, N_FULL), ({"cdelt1": 6.1e-6}, N_FULL), ({}, 8000)],
)
def test_other_wavelength_grid_raises_grid_mismatch(
    tmp_path: Path, kwargs: dict[str, float], length: int
) -> None:
    flux, error = (a[:length] for a in spectrum(0))
    path = write_aspcapstar(tmp_path / "a.fits", "x", flux=flux, error=error, **kwargs)
    with pytest.raises(GridMismatchError, match="expected the APOGEE DR13\\+ grid") as info:
        read_aspcapstar(path)
    assert "import_arrays" in str(info.value)


def test_missing_wcs_keys(tmp_path: Path) -> None:
    path = write_aspcapstar(tmp_path / "a.fits", "x")
    with fits.open(path, mode="update") as hdul:
        del hdul[1].header["CDELT1"]
    with pytest.raises(FileFormatError, match="lacks \\['CDELT1'\\]"):
        read_aspcapstar(path)


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_unreadable_aspcapstar_files(tmp_path: Path) -> None:
    not_fits = tmp_path / "aspcapStar-dr17-a.fits"
    not_fits.write_text("APOGEE_ID,TEFF\n2M1,4500\n")
    with pytest.raises(FileFormatError, match="cannot be read as an APOGEE FITS file"):
        read_aspcapstar(not_fits)
    good = write_aspcapstar(tmp_path / "good.fits", "x")
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(good.read_bytes()[:40000])
    with pytest.raises(FileFormatError, match=str(truncated.name)):
        read_aspcapstar(truncated)
    with pytest.raises(FileFormatError, match="does not exist"):
        read_aspcapstar(tmp_path / "missing.fits")
    only_flux = tmp_path / "one.fits"
    fits.HDUList(fits.open(good)[:2]).writeto(only_flux)
    with pytest.raises(FileFormatError, match="expected the error in HDU2"):
        read_aspcapstar(only_flux)


def test_two_dimensional_file_is_not_an_aspcapstar(tmp_path: Path) -> None:
    path, _ = write_apstar(tmp_path / "x.fits")
    with pytest.raises(FileFormatError, match="2-D files are apStar files"):
        read_aspcapstar(path)


# --- apStar and the bitmask ---------------------------------------------------------------


def test_read_apstar_takes_first_row_and_applies_bitmask(tmp_path: Path) -> None:
    bitmask = np.zeros((4, N_FULL), dtype=np.int16)
    full = np.flatnonzero(KEEP)
    for k, bit in enumerate((0, 9, 12, 13, 7)):
        bitmask[0, full[k]] = 1 << bit
    bitmask[1, full[5]] = 1  # a bad bit in another row only: ignored
    path, flux = write_apstar(tmp_path / "apStar-dr17-2M00000003+7417075.fits", bitmask=bitmask)
    result = read_apstar(path)
    assert result.kind == "apStar"
    assert result.apogee_id == "2M00000003+7417075"
    np.testing.assert_array_equal(result.flux, flux[0][KEEP])
    np.testing.assert_array_equal(np.flatnonzero(result.mask), [0, 2, 4])
    custom = read_apstar(path, bad_bits=(9, 13))
    np.testing.assert_array_equal(np.flatnonzero(custom.mask), [1, 3])


def test_read_apstar_single_visit_is_one_dimensional(tmp_path: Path) -> None:
    path, flux = write_apstar(tmp_path / "apStar-dr17-a.fits", "a", n_visits=1)
    result = read_apstar(path)
    np.testing.assert_array_equal(result.flux, flux[KEEP])


def test_apstar_with_float_hdu3_is_refused(tmp_path: Path) -> None:
    path, _ = write_apstar(tmp_path / "a.fits", float_mask=True)
    with pytest.raises(FileFormatError, match="expected an integer pixel bitmask"):
        read_apstar(path)


def test_bitmask_to_mask() -> None:
    bitmask = np.array([0, 1, 1 << 9, 1 << 12, (1 << 9) | 1, -(1 << 15)], dtype=np.int16)
    np.testing.assert_array_equal(bitmask_to_mask(bitmask), [0, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(bitmask_to_mask(bitmask, [15]), [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(bitmask_to_mask(bitmask, []), np.zeros(6, bool))
    with pytest.raises(DataValidationError, match="integer dtype"):
        bitmask_to_mask(bitmask.astype(float))
    with pytest.raises(DataValidationError, match=r"0\.\.63"):
        bitmask_to_mask(bitmask, [70])


def test_bad_bit_definitions_are_documented() -> None:
    assert set(APOGEE_BAD_BITS) <= set(APOGEE_PIXMASK_BITS)
    assert APOGEE_PIXMASK_BITS[12] == "SIG_SKYLINE" and 12 in APOGEE_BAD_BITS
    assert 9 not in APOGEE_BAD_BITS and 13 not in APOGEE_BAD_BITS


def test_detect_kind_by_name_and_by_layout(tmp_path: Path) -> None:
    aspcap = write_aspcapstar(tmp_path / "one.fits", "x")
    apstar, _ = write_apstar(tmp_path / "two.fits")
    assert detect_kind(aspcap) == "aspcapStar"
    assert detect_kind(apstar) == "apStar"
    assert detect_kind(tmp_path / "asStar-dr17-x.fits") == "apStar"  # name only


# --- allStar ------------------------------------------------------------------------------


def test_read_allstar_keeps_highest_snr_and_drops_arrays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        {"id": "2M1", "snr": 50.0, "teff": 4000.0},
        {"id": "2M2", "snr": 80.0},
        {"id": "2M1", "snr": 150.0, "teff": 4100.0, "tel": "lco25m"},
        {"id": "2M1", "snr": np.nan, "teff": 4200.0},
        {"id": "2M3", "snr": 20.0, "fe_h": -9999.0},
    ]
    path = write_allstar(tmp_path / "allStar-dr17-synspec_rev1.fits", rows)
    with caplog.at_level(logging.INFO, logger="stellarflow.io.apogee"):
        table = read_allstar(path)
    assert table.colnames[0] == "star_id"
    assert "APOGEE_ID" not in table.colnames
    assert list(table["star_id"]) == ["2M2", "2M1", "2M3"]
    assert table["TELESCOPE"][1] == "lco25m"
    assert table["TEFF"][1] == pytest.approx(4100.0)
    assert np.isnan(table["FE_H"][2])
    assert "PARAM" not in table.colnames
    assert "PARAM" in caplog.text
    assert "highest-SNR" in caplog.text
    subset = read_allstar(path, columns=["TEFF", "LOGG"])
    assert subset.colnames == ["star_id", "TEFF", "LOGG"]
    assert subset["TEFF"][1] == pytest.approx(4100.0)  # deduplicated by SNR all the same


def test_keep_highest_snr_rules() -> None:
    ids = np.array(["a", "b", "a", "a"])
    np.testing.assert_array_equal(_keep_highest_snr(ids, np.array([1.0, 5, 1.0, 0.5])), [0, 1])
    np.testing.assert_array_equal(_keep_highest_snr(ids, np.array([np.nan, 5, 2, 3])), [1, 3])
    np.testing.assert_array_equal(_keep_highest_snr(ids, None), [0, 1])


def test_read_allstar_errors(tmp_path: Path) -> None:
    path = write_allstar(tmp_path / "allStar.fits", [{"id": "2M1"}])
    with pytest.raises(LabelError, match="not in"):
        read_allstar(path, columns=["TEFF", "NOPE"])
    with pytest.raises(FileFormatError, match="has no HDU 5"):
        read_allstar(path, hdu=5)
    with pytest.raises(FileFormatError, match="expected the allStar binary table"):
        read_allstar(path, hdu=0)
    no_id = tmp_path / "other.fits"
    Table({"ID": ["a"], "TEFF": [1.0]}).write(no_id)
    with pytest.raises(LabelError, match="no APOGEE_ID column"):
        read_allstar(no_id)
    with pytest.raises(FileFormatError, match="does not exist"):
        read_allstar(tmp_path / "nope.fits")
    text = tmp_path / "allStar.csv.fits"
    text.write_text("APOGEE_ID,TEFF\n")
    with pytest.raises(FileFormatError, match="cannot be read as a FITS catalogue"):
        read_allstar(text)


# --- bulk import --------------------------------------------------------------------------


@pytest.fixture
def survey_dir(tmp_path: Path) -> tuple[Path, Path]:
    """Five aspcapStar files (one without catalogue row, one corrupt) and an allStar."""
    spectra = tmp_path / "spectra"
    spectra.mkdir()
    for k in range(4):
        write_aspcapstar(spectra / f"aspcapStar-dr17-2M{k}.fits", f"2M{k}", seed=k)
    (spectra / "aspcapStar-dr17-2M9.fits").write_bytes(b"SIMPLE  = garbage")
    rows = [{"id": f"2M{k}", "teff": 4000.0 + k, "snr": 100.0} for k in (0, 1, 3, 4)]
    rows.append({"id": "2M1", "teff": 1.0, "snr": 10.0})  # a lower-SNR duplicate
    catalogue = write_allstar(tmp_path / "allStar-dr17.fits", rows)
    return spectra, catalogue


def test_import_apogee_streams_and_reports(tmp_path: Path, survey_dir: tuple[Path, Path]) -> None:
    spectra, catalogue = survey_dir
    out = tmp_path / "survey.h5"
    calls: list[tuple[int, int]] = []
    report = import_apogee(
        spectra, catalogue, out, chunk_size=2, progress=lambda i, n: calls.append((i, n))
    )
    assert report.n_written == 3
    assert report.kind == "aspcapStar"
    reasons = dict(report.skipped)
    assert set(reasons) == {"aspcapStar-dr17-2M2.fits", "aspcapStar-dr17-2M9.fits"}
    assert "no row in the catalogue" in reasons["aspcapStar-dr17-2M2.fits"]
    assert "cannot be read" in reasons["aspcapStar-dr17-2M9.fits"]
    assert calls[-1] == (5, 5)
    with open_survey(out) as survey:
        assert survey.n_stars == 3
        assert list(survey.star_id) == ["2M0", "2M1", "2M3"]
        np.testing.assert_allclose(survey.labels["TEFF"], [4000.0, 4001.0, 4003.0])
        data = survey.load()
        np.testing.assert_allclose(data.flux[2], spectrum(3)[0][KEEP])
        assert survey.meta["n_source_files"] == 5
        assert survey.meta["catalogue"] == str(catalogue)
        assert survey.meta["continuum_normalised"] is True
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["allStar-dr17.fits", "spectra", "survey.h5"]


def test_import_apogee_raise_names_the_file_and_leaves_nothing(
    tmp_path: Path, survey_dir: tuple[Path, Path]
) -> None:
    spectra, catalogue = survey_dir
    out = tmp_path / "survey.h5"
    with pytest.raises(FileFormatError, match=r"aspcapStar-dr17-2M2\.fits"):
        import_apogee(spectra, catalogue, out, on_error="raise")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["allStar-dr17.fits", "spectra"]


def test_import_apogee_with_nothing_importable_leaves_no_file(
    tmp_path: Path, survey_dir: tuple[Path, Path]
) -> None:
    spectra, _ = survey_dir
    catalogue = write_allstar(tmp_path / "other.fits", [{"id": "2M77"}])
    out = tmp_path / "survey.h5"
    with pytest.raises(FileFormatError, match="none of the 5 spectra could be imported"):
        import_apogee(spectra, catalogue, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "allStar-dr17.fits",
        "other.fits",
        "spectra",
    ]


def test_import_apogee_inputs_and_overwrite(tmp_path: Path, survey_dir: tuple[Path, Path]) -> None:
    spectra, catalogue = survey_dir
    out = tmp_path / "survey.h5"
    report = import_apogee(str(spectra / "*2M[01].fits"), catalogue, out)
    assert report.n_written == 2 and report.skipped == []
    with pytest.raises(OutputExistsError, match="already exists"):
        import_apogee([spectra / "aspcapStar-dr17-2M3.fits"], catalogue, out)
    labels = read_allstar(catalogue)
    labels["star_id"].name = "APOGEE_ID"
    report = import_apogee(
        [spectra / "aspcapStar-dr17-2M3.fits"], labels, out, overwrite=True, progress=True
    )
    assert report.n_written == 1
    with open_survey(out) as survey:
        assert list(survey.star_id) == ["2M3"]
        assert survey.meta["catalogue"] == "<in-memory table>"


def test_import_apogee_duplicate_spectrum_is_skipped(tmp_path: Path) -> None:
    write_aspcapstar(tmp_path / "aspcapStar-dr17-2M1.fits", "2M1")
    write_aspcapstar(tmp_path / "aspcapStar-dr17-copy.fits", "2M1", seed=3)
    catalogue = write_allstar(tmp_path / "allStar.fits", [{"id": "2M1"}])
    report = import_apogee(tmp_path, catalogue, tmp_path / "out.h5")
    assert report.n_written == 1
    assert len(report.skipped) == 1  # the allStar file in the same folder is not a spectrum
    assert "already imported from aspcapStar-dr17-2M1.fits" in report.skipped[0][1]


def test_import_apogee_spectrum_without_usable_pixels_is_skipped(tmp_path: Path) -> None:
    write_aspcapstar(tmp_path / "aspcapStar-dr17-2M1.fits", "2M1")
    write_aspcapstar(tmp_path / "aspcapStar-dr17-2M2.fits", "2M2", flux=np.zeros(N_FULL))
    catalogue = write_allstar(tmp_path / "allStar.fits", [{"id": "2M1"}, {"id": "2M2"}])
    report = import_apogee(tmp_path, catalogue, tmp_path / "out.h5")
    assert report.n_written == 1
    assert report.skipped == [("aspcapStar-dr17-2M2.fits", "APOGEE_ID 2M2 has no usable pixel")]


def test_import_apogee_detection_problems(tmp_path: Path) -> None:
    write_aspcapstar(tmp_path / "one.fits", "2M1")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones(3))]).writeto(tmp_path / "two.fits")
    catalogue = write_allstar(tmp_path / "cat.fits", [{"id": "2M1"}])
    with pytest.raises(FileFormatError, match=r"two\.fits: has 2 HDUs"):
        import_apogee(tmp_path, catalogue, tmp_path / "out.h5", on_error="raise")
    report = import_apogee(tmp_path, catalogue, tmp_path / "out.h5")
    assert report.n_written == 1 and report.skipped[0][0] == "two.fits"
    with pytest.raises(FileFormatError, match="none of the 1 files is an apStar file"):
        import_apogee(
            [tmp_path / "aspcapStar-dr17-x.fits"], catalogue, tmp_path / "o.h5", kind="apstar"
        )


def test_import_apogee_kinds(tmp_path: Path) -> None:
    bitmask = np.zeros((4, N_FULL), dtype=np.int16)
    bitmask[0, PIX_FULL] = 1 << 12
    write_apstar(tmp_path / "apStar-dr17-2M5.fits", "2M5", bitmask=bitmask)
    write_aspcapstar(tmp_path / "aspcapStar-dr17-2M6.fits", "2M6")
    catalogue = write_allstar(tmp_path / "allStar.fits", [{"id": "2M5"}, {"id": "2M6"}])
    with pytest.raises(FileFormatError, match="pass kind='aspcapStar' or kind='apStar'"):
        import_apogee(tmp_path, catalogue, tmp_path / "mixed.h5")
    report = import_apogee(tmp_path, catalogue, tmp_path / "ap.h5", kind="apStar")
    assert (report.n_written, report.kind) == (1, "apStar")
    with open_survey(tmp_path / "ap.h5") as survey:
        assert survey.meta["continuum_normalised"] is False
        assert survey.meta["bad_bits"] == list(APOGEE_BAD_BITS)
        assert "SIG_SKYLINE" in survey.meta["bad_bit_names"]
        assert survey.load().mask[0, PIX_KEPT]


def test_import_apogee_argument_checks(tmp_path: Path, survey_dir: tuple[Path, Path]) -> None:
    spectra, catalogue = survey_dir
    out = tmp_path / "x.h5"
    with pytest.raises(DataValidationError, match="kind must be"):
        import_apogee(spectra, catalogue, out, kind="apVisit")
    with pytest.raises(DataValidationError, match="on_error must be"):
        import_apogee(spectra, catalogue, out, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(DataValidationError, match="chunk_size must be >= 1"):
        import_apogee(spectra, catalogue, out, chunk_size=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileFormatError, match="no spectrum files found"):
        import_apogee(empty, catalogue, out)
    with pytest.raises(FileFormatError, match="not a file, a directory or a glob"):
        import_apogee(tmp_path / "nowhere", catalogue, out)
