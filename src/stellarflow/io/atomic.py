"""Atomic file writing: write beside the target, then rename over it.

A crash, an exception or Ctrl-C while writing leaves no partial file at the target path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from stellarflow.errors import DataValidationError, OutputExistsError

__all__ = ["atomic_directory", "atomic_path", "check_folder_writable", "check_writable"]


def check_writable(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse to replace an existing file unless asked; return the target as a Path.

    Raises:
        OutputExistsError: if ``path`` exists and ``overwrite`` is False.
        FileNotFoundError: if the parent folder does not exist.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"{target} already exists; pass overwrite=True (CLI: --overwrite) to replace it "
            "or choose another output path"
        )
    if not target.parent.exists():
        raise FileNotFoundError(f"output folder {target.parent} does not exist; create it first")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on clean exit.

    On an exception the temporary file is removed and nothing appears at ``path``.

    Example:
        >>> with atomic_path("table.ecsv") as tmp:  # doctest: +SKIP
        ...     table.write(tmp, format="ascii.ecsv")
    """
    target = check_writable(path, overwrite)
    # A private folder beside the target: the temporary file keeps the target's name (so
    # writers that look at the suffix still work) and does not exist until written.
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp = folder / target.name
    try:
        yield tmp
        if target.exists() and not overwrite:
            raise OutputExistsError(
                f"{target} appeared while it was being written; nothing was replaced"
            )
        os.replace(tmp, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_folder_writable(out: str | os.PathLike[str], overwrite: bool) -> Path:
    """:func:`check_writable` for an output folder; also refuses a file in its place.

    Raises:
        OutputExistsError: if ``out`` exists and ``overwrite`` is False.
        DataValidationError: if ``out`` exists and is not a folder.
        FileNotFoundError: if its parent folder does not exist.
    """
    target = check_writable(out, overwrite)
    if target.exists() and not target.is_dir():
        raise DataValidationError(f"{target} exists and is not a folder; choose another --out")
    return target


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; it replaces ``out`` only on a clean exit.

    The folder gets the permissions of a folder made by ``mkdir`` (``0o777`` less the umask),
    not the private ``0o700`` of a temporary one. On an exception nothing appears at ``out``
    and an existing ``out`` is left as it was.
    """
    target = check_folder_writable(out, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    old = None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        if target.exists():
            check_folder_writable(target, overwrite)
            old = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
            )
            os.replace(target, old / target.name)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
