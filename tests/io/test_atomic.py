"""Atomic writes: nothing at the target until the write succeeds; refusal to overwrite."""

from __future__ import annotations

import pytest
from astropy.table import Table

from stellarflow.errors import OutputExistsError
from stellarflow.io.atomic import atomic_path


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
