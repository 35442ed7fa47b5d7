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
