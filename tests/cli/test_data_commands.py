"""The command line, in-process through main(argv): info, errors, no partial outputs."""

from __future__ import annotations

import numpy as np
import pytest

from stellarflow.cli.data_commands import split_key
from stellarflow.cli.main import main
from stellarflow.errors import StellarflowError
from stellarflow.io.hdf5 import write_survey
from tests.conftest import make_dataset


def test_info_reports_counts(tmp_path, capsys) -> None:
    data = make_dataset(n_stars=9, n_pixels=30)
    path = write_survey(data, tmp_path / "s.h5")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "stars:            9" in out and "30 (" in out
    assert "TEFF" in out and "masked pixels" in out


def test_error_is_one_line_with_nonzero_exit(tmp_path, capsys) -> None:
    bogus = tmp_path / "bogus.h5"
    bogus.write_text("not hdf5")
    assert main(["info", str(bogus)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stellarflow info: error:")
    assert "Traceback" not in err


def test_debug_shows_the_exception(tmp_path) -> None:
    with pytest.raises(StellarflowError):
        main(["--debug", "info", str(tmp_path / "missing.h5")])


def test_usage_errors_exit_2(capsys) -> None:
    assert main(["info"]) == 2
    assert main(["no-such-command"]) == 2
    capsys.readouterr()


def test_split_key(tmp_path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, flux=np.ones(2))
    assert split_key(f"{path}:flux") == (str(path), "flux")
    assert split_key(str(path)) == (str(path), None)
    assert split_key("missing.npz:flux") == ("missing.npz:flux", None)


def test_import_arrays_command(tmp_path, capsys) -> None:
    data = make_dataset(n_stars=6, n_pixels=20)
    np.savez(tmp_path / "spec.npz", flux=data.flux, sigma=data.sigma)
    np.save(tmp_path / "wave.npy", data.wavelength)
    table = data.labels.copy()
    table.rename_column("star_id", "APOGEE_ID")
    table.write(tmp_path / "labels.csv")
    out = tmp_path / "s.h5"
    argv = [
        "import", "arrays", "--flux", f"{tmp_path / 'spec.npz'}:flux",
        "--sigma", f"{tmp_path / 'spec.npz'}:sigma", "--wavelength", str(tmp_path / "wave.npy"),
        "--labels", str(tmp_path / "labels.csv"), "--id-column", "APOGEE_ID", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    from stellarflow.io.hdf5 import read_survey

    back = read_survey(out)
    np.testing.assert_array_equal(back.mask, data.mask)
    np.testing.assert_allclose(back.flux[~back.mask], data.flux[~data.mask])
    # a second run refuses to overwrite and leaves the file as it was
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err
    # bad input: a label table with the wrong number of rows leaves no file
    table[:4].write(tmp_path / "short.csv")
    argv[argv.index(str(tmp_path / "labels.csv"))] = str(tmp_path / "short.csv")
    argv[argv.index(str(out))] = str(tmp_path / "t.h5")
    assert main(argv) == 1
    assert "4 rows but there are 6" in capsys.readouterr().err
    assert not (tmp_path / "t.h5").exists()


def test_import_apogee_command(tmp_path, capsys) -> None:
    from tests.io.test_apogee import write_allstar, write_aspcapstar

    spectra = tmp_path / "spectra"
    spectra.mkdir()
    for k in range(3):
        write_aspcapstar(spectra / f"aspcapStar-dr17-2M{k}.fits", f"2M{k}", seed=k)
    rows = [{"id": f"2M{k}", "teff": 4000.0 + k, "snr": 100.0} for k in (0, 1)]
    catalogue = write_allstar(tmp_path / "allStar.fits", rows)
    out = tmp_path / "s.h5"
    base = ["import", "apogee", "--spectra", str(spectra), "--catalogue", str(catalogue)]
    assert main([*base, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 stars" in printed and "aspcapStar-dr17-2M2.fits" in printed
    assert main([*base, "--out", str(tmp_path / "t.h5"), "--on-error", "raise"]) == 1
    assert "2M2" in capsys.readouterr().err
    assert not (tmp_path / "t.h5").exists()
