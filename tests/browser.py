"""Headless Chromium for the report's browser tests (Debian's ``chromium``; CI installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ARTIFACTS = Path(os.environ.get("STELLARFLOW_TEST_ARTIFACTS", "test-artifacts"))
"""Where the browser tests save their screenshots."""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("STELLARFLOW_REQUIRE_CHROMIUM"):
        pytest.fail("STELLARFLOW_REQUIRE_CHROMIUM is set but no chromium is installed")
    pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")


def render_in_chromium(page: Path, screenshot: Path, tmp_path: Path) -> str:
    """The DOM of ``page`` after load in headless Chromium; saves a screenshot."""
    browser = _chromium()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu",
              f"--user-data-dir={tmp_path / 'chromium-profile'}",
              "--virtual-time-budget=10000", "--window-size=1280,4000"]  # fmt: skip
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    url = page.resolve().as_uri()
    subprocess.run([*common, f"--screenshot={screenshot}", url], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    done = subprocess.run([*common, "--dump-dom", url], check=True, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    return done.stdout
