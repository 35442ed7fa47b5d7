"""Generic array and label-table readers, on small files written to tmp_path."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from stellarflow.errors import DataValidationError, FileFormatError, LabelError
from stellarflow.io.arrays import import_arrays, read_array, read_label_table

RNG = np.random.default_rng(7)
FLUX = (1.0 - 0.2 * RNG.random((4, 6))).astype(np.float32)
SIGMA = RNG.uniform(0.01, 0.05, (4, 6)).astype(np.float32)
WAVE = np.linspace(15100.0, 15200.0, 6)


# --- read_array ---------------------------------------------------------------------------


def test_npy_and_npz(tmp_path: Path) -> None:
    np.save(tmp_path / "flux.npy", FLUX)
    np.testing.assert_array_equal(read_array(tmp_path / "flux.npy"), FLUX)
    with pytest.raises(FileFormatError, match="holds one array"):
        read_array(tmp_path / "flux.npy", key="flux")
    np.savez(tmp_path / "one.npz", flux=FLUX)
    np.testing.assert_array_equal(read_array(tmp_path / "one.npz"), FLUX)
    np.savez(tmp_path / "many.npz", flux=FLUX, sigma=SIGMA)
    np.testing.assert_array_equal(read_array(tmp_path / "many.npz", "sigma"), SIGMA)
    with pytest.raises(FileFormatError, match=r"holds 2 arrays \['flux', 'sigma'\]"):
        read_array(tmp_path / "many.npz")
    with pytest.raises(FileFormatError, match=r"no array 'ivar'; arrays: \['flux', 'sigma'\]"):
        read_array(tmp_path / "many.npz", "ivar")


def test_hdf5_dataset_paths(tmp_path: Path) -> None:
    path = tmp_path / "spectra.h5"
    with h5py.File(path, "w") as handle:
        handle["spectra/flux"] = FLUX
        handle["spectra/sigma"] = SIGMA
        handle["wavelength"] = WAVE
    np.testing.assert_array_equal(read_array(path, "spectra/flux"), FLUX)
    np.testing.assert_array_equal(read_array(path, "/wavelength"), WAVE)
    with pytest.raises(FileFormatError, match=r"holds 3 datasets .*'spectra/flux'"):
        read_array(path)
    with pytest.raises(FileFormatError, match=r"no dataset 'flux'; datasets: .*spectra/sigma"):
        read_array(path, "flux")
    with pytest.raises(FileFormatError, match="no dataset 'spectra'"):
        read_array(path, "spectra")  # a group, not a dataset
    single = tmp_path / "single.hdf5"
    with h5py.File(single, "w") as handle:
        handle["x"] = WAVE
    np.testing.assert_array_equal(read_array(single), WAVE)


def test_fits_images(tmp_path: Path) -> None:
    path = tmp_path / "spectra.fits"
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(FLUX.astype(">f4"), name="FLUX"),
            fits.ImageHDU(SIGMA, name="SIGMA"),
            fits.BinTableHDU(Table({"a": [1]}), name="TAB"),
        ]
    ).writeto(path)
    first = read_array(path)
    np.testing.assert_array_equal(first, FLUX)
    assert first.dtype.isnative
    np.testing.assert_array_equal(read_array(path, "SIGMA"), SIGMA)
    np.testing.assert_array_equal(read_array(path, 2), SIGMA)
    with pytest.raises(FileFormatError, match=r"no HDU 7; HDUs: .*1 FLUX"):
        read_array(path, 7)
    with pytest.raises(FileFormatError, match="HDU 'TAB' is not an image"):
        read_array(path, "TAB")
    gz = tmp_path / "primary.fits.gz"
    fits.PrimaryHDU(FLUX).writeto(gz)
    np.testing.assert_array_equal(read_array(gz), FLUX)
    empty = tmp_path / "empty.fit"
    fits.PrimaryHDU().writeto(empty)
    with pytest.raises(FileFormatError, match="no image HDU with data"):
        read_array(empty)


def test_files_that_are_not_what_they_claim(tmp_path: Path) -> None:
    csv_as_fits = tmp_path / "flux.fits"
    csv_as_fits.write_text("a,b\n1,2\n")
    with pytest.raises(FileFormatError, match=r"flux\.fits cannot be read as fits"):
        read_array(csv_as_fits)
    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as handle:
        handle["flux"] = np.ones((200, 200))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(FileFormatError, match=r"truncated\.h5 cannot be read as hdf5"):
        read_array(truncated)
    np.savez(tmp_path / "big.npz", a=np.ones(10000))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "big.npz").read_bytes()[:2000])
    with pytest.raises(FileFormatError, match=r"cut\.npz cannot be read as npz"):
        read_array(tmp_path / "cut.npz")
    with pytest.raises(FileFormatError, match="unknown array file type"):
        read_array(csv_as_fits.rename(tmp_path / "flux.txt"))
    with pytest.raises(FileFormatError, match="does not exist"):
        read_array(tmp_path / "missing.npy")


# --- read_label_table ---------------------------------------------------------------------


def test_csv_labels_with_id_column(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("TEFF,APOGEE_ID,LOGG\n4500,2M1,2.5\n4600,2M2,2.6\n")
    table = read_label_table(path, id_column="APOGEE_ID")
    assert table.colnames == ["star_id", "TEFF", "LOGG"]
    assert list(table["star_id"]) == ["2M1", "2M2"]
    with pytest.raises(LabelError, match="no column 'GAIA_ID'"):
        read_label_table(path, id_column="GAIA_ID")
    with pytest.raises(LabelError, match="no 'star_id' column"):
        read_label_table(path)


@pytest.mark.parametrize("header", ["star_id,TEFF,TEFF", "star_id,TEFF,teff"])
def test_duplicated_csv_header_is_refused(tmp_path: Path, header: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(f"# a comment\n{header}\n2M1,4500,4600\n")
    with pytest.raises(LabelError, match=r"names columns \['TEFF'"):
        read_label_table(path)


def test_ecsv_and_fits_labels(tmp_path: Path) -> None:
    table = Table({"source_id": [11, 12], "FE_H": [0.1, -0.2]})
    table.write(tmp_path / "labels.ecsv")
    ecsv = read_label_table(tmp_path / "labels.ecsv", id_column="source_id")
    assert list(ecsv["star_id"]) == ["11", "12"]
    Table({"star_id": np.array([b"2M1", b"2M2"]), "TEFF": [1.0, 2.0]}).write(
        tmp_path / "labels.fits"
    )
    from_fits = read_label_table(tmp_path / "labels.fits")
    assert from_fits["star_id"].dtype.kind == "U"
    with pytest.raises(LabelError, match="already has a 'star_id' column"):
        read_label_table(tmp_path / "labels.fits", id_column="TEFF")


def test_label_table_errors(tmp_path: Path) -> None:
    dupes = tmp_path / "dupes.csv"
    dupes.write_text("star_id,TEFF\n2M1,1\n2M1,2\n")
    with pytest.raises(LabelError, match=r"dupes\.csv: 1 star ids occur more than once"):
        read_label_table(dupes)
    csv_as_fits = tmp_path / "labels.fits"
    csv_as_fits.write_text("star_id,TEFF\n2M1,1\n")
    with pytest.raises(FileFormatError, match=r"labels\.fits cannot be read as fits"):
        read_label_table(csv_as_fits)
    with pytest.raises(FileFormatError, match="unknown table file type"):
        read_label_table(csv_as_fits.rename(tmp_path / "labels.xlsx"))


def test_parquet_without_pyarrow_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    path = tmp_path / "labels.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(FileFormatError, match=r"stellarflow\[parquet\]"):
        read_label_table(path)


# --- import_arrays ------------------------------------------------------------------------


def test_import_arrays_from_files(tmp_path: Path) -> None:
    mask = np.zeros(FLUX.shape, dtype=np.uint8)
    mask[0, 0] = 1
    sigma = SIGMA.copy()
    sigma[0, 0] = 0.0  # unusable, and masked: allowed
    np.savez(tmp_path / "spectra.npz", flux=FLUX, sigma=sigma, mask=mask)
    with h5py.File(tmp_path / "grid.h5", "w") as handle:
        handle["wavelength"] = WAVE
    labels = tmp_path / "labels.csv"
    labels.write_text("id,TEFF\n" + "".join(f"s{i},{4000 + i}\n" for i in range(4)))
    spectra = tmp_path / "spectra.npz"
    data = import_arrays(
        spectra,
        tmp_path / "grid.h5",
        labels,
        sigma=spectra,
        mask=spectra,
        id_column="id",
        flux_key="flux",
        sigma_key="sigma",
        mask_key="mask",
        meta={"survey": "test"},
    )
    assert data.n_stars == 4 and data.n_pixels == 6
    assert data.mask[0, 0] and data.ivar[0, 0] == 0
    np.testing.assert_allclose(data.ivar[1], 1.0 / SIGMA[1].astype(np.float64) ** 2, rtol=1e-6)
    assert data.meta["survey"] == "test"
    assert data.meta["files"]["flux"] == str(spectra)
    assert list(data.star_id) == ["s0", "s1", "s2", "s3"]


def test_import_arrays_with_ivar_and_table(tmp_path: Path) -> None:
    ivar = 1.0 / SIGMA**2
    labels = Table({"name": ["a", "b", "c", "d"], "TEFF": [1.0, 2, 3, 4]})
    data = import_arrays(FLUX, WAVE, labels, ivar=ivar, id_column="name")
    np.testing.assert_allclose(data.ivar, ivar)
    with pytest.raises(LabelError, match="no column 'nope'"):
        import_arrays(FLUX, WAVE, labels, ivar=ivar, id_column="nope")


def test_import_arrays_validation(tmp_path: Path) -> None:
    labels = Table({"star_id": ["a", "b", "c", "d"]})
    with pytest.raises(DataValidationError, match=r"exactly one of sigma= .* got both"):
        import_arrays(FLUX, WAVE, labels, sigma=SIGMA, ivar=SIGMA)
    with pytest.raises(DataValidationError, match="got neither"):
        import_arrays(FLUX, WAVE, labels)
    with pytest.raises(DataValidationError, match="wavelength has 5 pixels but flux has 6"):
        import_arrays(FLUX, WAVE[:5], labels, sigma=SIGMA)
    with pytest.raises(LabelError, match="3 rows but there are 4 spectra"):
        import_arrays(FLUX, WAVE, labels[:3], sigma=SIGMA)
    fake = tmp_path / "flux.fits"
    fake.write_text("not,fits\n")
    with pytest.raises(FileFormatError, match=r"flux\.fits"):
        import_arrays(fake, WAVE, labels, sigma=SIGMA)
