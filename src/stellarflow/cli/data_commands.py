"""Commands that make and inspect survey files: ``mock``, ``import``, ``info``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from stellarflow.errors import DataValidationError

__all__ = ["register", "split_key"]


def register(commands: Any) -> None:
    """Add ``mock``, ``import`` and ``info`` to the sub-command parser."""
    mock = commands.add_parser(
        "mock",
        help="generate a mock APOGEE-like survey with known truth",
        description="Generate a mock survey of red giants whose generating process is known "
        "(noiseless spectra, labels, process amplitudes, oracle log-likelihood, injected "
        "outliers, published and withheld lines) and stream it to an HDF5 survey file.",
    )
    mock.add_argument("--n-stars", type=int, required=True, help="number of stars")
    mock.add_argument(
        "--n-pixels",
        type=int,
        default=None,
        help="pixels per spectrum (default: the full 7,514-pixel APOGEE grid)",
    )
    mock.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    mock.add_argument(
        "--outlier-fraction",
        type=float,
        default=None,
        help="fraction of chemically peculiar stars to inject (default: the mock's default)",
    )
    mock.add_argument("--out", type=Path, required=True, help="output survey file (.h5)")
    mock.add_argument("--overwrite", action="store_true", help="replace an existing file")
    mock.set_defaults(handler=run_mock)

    importer = commands.add_parser(
        "import", help="convert survey spectra to a stellarflow survey file"
    )
    sources = importer.add_subparsers(dest="source", metavar="SOURCE", required=True)
    apogee = sources.add_parser(
        "apogee",
        help="APOGEE DR17 aspcapStar/apStar files joined to an allStar catalogue",
    )
    apogee.add_argument(
        "--spectra", required=True, help="folder or glob of aspcapStar-*.fits / apStar-*.fits"
    )
    apogee.add_argument("--catalogue", type=Path, required=True, help="allStar FITS catalogue")
    apogee.add_argument("--out", type=Path, required=True, help="output survey file (.h5)")
    apogee.add_argument(
        "--on-error",
        choices=("skip", "raise"),
        default="skip",
        help="unreadable or unmatched files: skip them and list them (default) or stop",
    )
    apogee.add_argument("--overwrite", action="store_true", help="replace an existing file")
    apogee.set_defaults(handler=run_import_apogee)

    arrays = sources.add_parser(
        "arrays",
        help="flux and uncertainty arrays (.npy/.npz/.h5/.fits) plus a label table",
        description="Array files may name a key inside the file as PATH:KEY "
        "(an .npz member, an HDF5 dataset path or a FITS HDU).",
    )
    arrays.add_argument("--flux", required=True, help="(n_stars, n_pixels) flux array")
    noise = arrays.add_mutually_exclusive_group(required=True)
    noise.add_argument("--sigma", help="(n_stars, n_pixels) per-pixel uncertainty")
    noise.add_argument("--ivar", help="(n_stars, n_pixels) inverse variance")
    arrays.add_argument("--wavelength", required=True, help="(n_pixels,) vacuum Angstrom")
    arrays.add_argument("--mask", help="(n_stars, n_pixels) mask, nonzero/True = excluded")
    arrays.add_argument(
        "--labels", type=Path, required=True, help="label table (FITS, CSV, ECSV, Parquet)"
    )
    arrays.add_argument("--id-column", help="label column holding the star ids")
    arrays.add_argument("--out", type=Path, required=True, help="output survey file (.h5)")
    arrays.add_argument("--overwrite", action="store_true", help="replace an existing file")
    arrays.set_defaults(handler=run_import_arrays)

    info = commands.add_parser(
        "info", help="summarise a survey file: counts, grid, S/N, label ranges, masking"
    )
    info.add_argument("survey", type=Path, help="survey file (.h5)")
    info.set_defaults(handler=run_info)


def split_key(spec: str) -> tuple[str, str | None]:
    """Split ``PATH:KEY`` into the path and the key inside the file (None if absent)."""
    path, sep, key = spec.rpartition(":")
    if sep and path and Path(path).exists() and not Path(spec).exists():
        return path, key
    return spec, None


def run_mock(args: argparse.Namespace) -> int:
    """``stellarflow mock``."""
    from stellarflow.mock import MockConfig, write_mock_survey

    options: dict[str, Any] = {"n_stars": args.n_stars, "seed": args.seed}
    if args.n_pixels is not None:
        options["n_pixels"] = args.n_pixels
    if args.outlier_fraction is not None:
        options["outlier_fraction"] = args.outlier_fraction
    try:
        config = MockConfig(**options)
    except (TypeError, ValueError) as err:
        raise DataValidationError(f"invalid mock settings: {err}") from None
    write_mock_survey(args.out, config, overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {args.n_stars} mock stars to {args.out}")
    return 0


def run_import_apogee(args: argparse.Namespace) -> int:
    """``stellarflow import apogee``."""
    from stellarflow.io.apogee_import import import_apogee

    report = import_apogee(
        args.spectra,
        args.catalogue,
        args.out,
        on_error=args.on_error,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"wrote {report.n_written} stars to {args.out}")
    if report.skipped:
        print(f"skipped {len(report.skipped)} files:")
        for name, reason in report.skipped:
            print(f"  {name}: {reason}")
    return 0


def run_import_arrays(args: argparse.Namespace) -> int:
    """``stellarflow import arrays``."""
    from stellarflow.io.arrays import import_arrays
    from stellarflow.io.hdf5 import write_survey

    flux, flux_key = split_key(args.flux)
    wavelength, wavelength_key = split_key(args.wavelength)
    sigma, sigma_key = split_key(args.sigma) if args.sigma else (None, None)
    ivar, ivar_key = split_key(args.ivar) if args.ivar else (None, None)
    mask, mask_key = split_key(args.mask) if args.mask else (None, None)
    dataset = import_arrays(
        flux,
        wavelength,
        args.labels,
        sigma=sigma,
        ivar=ivar,
        mask=mask,
        id_column=args.id_column,
        flux_key=flux_key,
        wavelength_key=wavelength_key,
        sigma_key=sigma_key,
        ivar_key=ivar_key,
        mask_key=mask_key,
    )
    write_survey(dataset, args.out, overwrite=args.overwrite)
    print(f"wrote {dataset.n_stars} stars x {dataset.n_pixels} pixels to {args.out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """``stellarflow info``."""
    from stellarflow.data.summary import summarize
    from stellarflow.io.hdf5 import open_survey

    with open_survey(args.survey) as survey:
        summary = summarize(survey)
        print(f"survey file:      {args.survey} (schema v{survey.format_version})")
        if survey.meta.get("survey"):
            print(f"survey:           {survey.meta['survey']}")
        for line in summary.lines():
            print(line)
        if survey.table_names:
            print(f"extra tables:     {', '.join(survey.table_names)}")
        if survey.has_truth:
            print("truth:            noiseless spectra present (mock survey)")
    return 0
