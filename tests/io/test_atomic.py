"""Atomic writes: nothing at the target until the write succeeds; refusal to overwrite."""

from __future__ import annotations

import os
import stat

import pytest
from astropy.table import Table

from stellarflow.errors import DataValidationError, OutputExistsError
from stellarflow.io.atomic import atomic_directory, atomic_path


def test_success_renames_and_cleans_up(tmp_path) -> None:
    target = tmp_path / "t.ecsv"
    with atomic_path(target) as tmp:
        assert tmp.name == "t.ecsv" and not tmp.exists() and not target.exists()
        Table({"a": [1, 2]}).write(tmp)  # astropy picks the format from the suffix
    assert Table.read(target)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["t.ecsv"]


def test_failure_leaves_the_old_file(tmp_path) -> None:
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(OutputExistsError, match="overwrite"):
        with atomic_path(target):
            pass
    with pytest.raises(ZeroDivisionError), atomic_path(target, overwrite=True) as tmp:
        tmp.write_text("new")
        _ = 1 / 0
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_path(tmp_path / "missing" / "t.txt"):
            pass


def test_atomic_directory_replaces_only_on_success_with_normal_permissions(tmp_path) -> None:
    out = tmp_path / "result"
    with atomic_directory(out) as folder:
        (folder / "table.ecsv").write_text("first")
        assert not out.exists()
    assert (out / "table.ecsv").read_text() == "first"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0o700
    with pytest.raises(OutputExistsError):
        with atomic_directory(out):
            pass
    with pytest.raises(RuntimeError), atomic_directory(out, overwrite=True) as folder:
        (folder / "table.ecsv").write_text("second")
        raise RuntimeError("crash while writing")
    assert (out / "table.ecsv").read_text() == "first"  # the old result is untouched
    with atomic_directory(out, overwrite=True) as folder:
        (folder / "table.ecsv").write_text("second")
    assert (out / "table.ecsv").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]  # no leftovers
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataValidationError, match="not a folder"):
        with atomic_directory(tmp_path / "file", overwrite=True):
            pass
