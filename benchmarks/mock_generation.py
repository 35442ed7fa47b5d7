"""Benchmark: generate an N x 7,514 mock survey to a temporary HDF5 file, in chunks.

Usage::

    python benchmarks/mock_generation.py [N] [--chunk-size 1024] [--n-pixels P] [--keep PATH]

Prints the wall time, stars per second, the file size and the peak resident memory
(``resource.getrusage``, maximum RSS of this process).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from stellarflow.mock import MockConfig, write_mock_survey


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / 1024.0**2 if sys.platform == "darwin" else peak / 1024.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_stars", nargs="?", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--n-pixels", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="write here and keep the file")
    args = parser.parse_args(argv)

    config = MockConfig(n_stars=args.n_stars, n_pixels=args.n_pixels, seed=args.seed)
    rss_before = _peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep if args.keep is not None else Path(tmp) / "mock.h5"
        started = time.perf_counter()
        summary = write_mock_survey(
            path, config, overwrite=args.keep is not None, chunk_size=args.chunk_size
        )
        wall = time.perf_counter() - started
        size_gb = path.stat().st_size / 1e9
    print(
        f"mock survey: {summary.n_stars} stars x {summary.n_pixels} pixels, "
        f"{summary.n_lines} lines ({summary.n_withheld} withheld), chunk {args.chunk_size}"
    )
    print(f"wall time      {wall:9.1f} s")
    print(f"stars/s        {summary.n_stars / wall:9.1f}")
    print(f"file size      {size_gb:9.2f} GB")
    print(f"peak RSS       {_peak_rss_mb():9.0f} MB (before generation {rss_before:.0f} MB)")
    print(f"masked pixels  {summary.masked_fraction:9.4f}")
    print(f"outliers       {summary.outlier_counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
