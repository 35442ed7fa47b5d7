"""``stellarflow elements``: how many elements matter (residual scatter and correlations)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from stellarflow.errors import DataValidationError, FileFormatError

__all__ = ["read_catalogue", "register", "run_elements"]

_FORMATS = {
    ".fits": "fits",
    ".fit": "fits",
    ".fits.gz": "fits",
    ".csv": "ascii.csv",
    ".ecsv": "ascii.ecsv",
    ".parquet": "parquet",
}


def register(commands: Any) -> None:
    """Add ``elements`` to the sub-command parser."""
    parser = commands.add_parser(
        "elements",
        help="residual abundance scatter and correlations at fixed conditioning elements",
        description="Fits the conditional mean of the other abundances given --condition "
        "(and --also), then writes OUT_DIR/elements.ecsv (per element: residual scatter, "
        "median error, scatter from the errors alone, intrinsic and independent scatter "
        "with bootstrap uncertainties, chi2 significance of the excess), "
        "OUT_DIR/residual_correlations.ecsv (observed, error-induced and null-model "
        "correlations per pair), with --greedy OUT_DIR/greedy.ecsv (forward selection of "
        "the conditioning set), and figures (tinsley_wallerstein.png, residual_scatter.png, "
        "residual_correlations.png, greedy_path.png).",
    )
    parser.add_argument("catalogue", type=Path, help="allStar-like table (FITS, CSV, ECSV)")
    parser.add_argument(
        "--condition",
        required=True,
        help="comma-separated conditioning abundances, e.g. FE_H,MG_FE",
    )
    parser.add_argument(
        "--elements",
        default="all",
        help="comma-separated target columns, or 'all' (every FE_H/X_FE column with _ERR)",
    )
    parser.add_argument(
        "--also", default="", help="stellar parameters to condition on too, e.g. TEFF,LOGG"
    )
    parser.add_argument("--greedy", action="store_true", help="forward-select the conditioning set")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument(
        "--density",
        choices=("polynomial", "flow"),
        default="polynomial",
        help="conditional mean for the requested set: degree-D polynomial (default) or the "
        "mean of a conditional spline flow (minutes); the greedy search always uses the "
        "polynomial, and so do the bootstrap refits",
    )
    parser.add_argument("--degree", type=int, default=3, help="polynomial degree (3)")
    parser.add_argument("--n-bootstrap", type=int, default=20, help="bootstrap resamples (20)")
    parser.add_argument(
        "--greedy-bootstrap", type=int, default=5, help="reruns of the greedy search (5)"
    )
    parser.add_argument("--n-null", type=int, default=50, help="null draws per test (50)")
    parser.add_argument("--alpha", type=float, default=0.05, help="greedy stop p-value (0.05)")
    parser.add_argument(
        "--min-excess",
        type=float,
        default=0.1,
        help="greedy stops when the shared excess over the null is below this (0.1)",
    )
    parser.add_argument(
        "--spectra",
        default=None,
        metavar="MODEL_DIR,MODEL_DIR",
        help="spectral version: trained models of the same survey conditioned on different "
        "label sets; writes OUT_DIR/spectral_by_element.ecsv (variance at fixed labels summed "
        "over each element's lines, against the noise) and spectral_variance.png. Best: "
        "local models around --at (stellarflow train --within ...), trained on the "
        "catalogue's labels as given (without --label-errors)",
    )
    parser.add_argument("--survey", type=Path, default=None, help="survey (.h5) for --spectra")
    parser.add_argument(
        "--at",
        default="TEFF=4750,LOGG=2.5",
        help="label point for --spectra; labels a model needs and not given here are 0 "
        "(solar abundances); default TEFF=4750,LOGG=2.5",
    )
    parser.add_argument(
        "--linelist",
        type=Path,
        default=None,
        help="line list for --spectra (default: the survey's)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.set_defaults(handler=run_elements)


def _spectral(args: argparse.Namespace) -> tuple[Any, Any]:
    """The spectral comparison: (per-element table, figure)."""
    import numpy as np

    from stellarflow.analysis.sampling import parse_label_point, sample_spectra
    from stellarflow.analysis.spectral_elements import spectral_variance, variance_by_element
    from stellarflow.io.hdf5 import open_survey
    from stellarflow.io.linelist import read_linelist
    from stellarflow.plot.elements import plot_spectral_variance
    from stellarflow.train.checkpoint import load_model

    if args.survey is None:
        raise DataValidationError("--spectra needs --survey (for the noise and the line list)")
    point = parse_label_point(args.at)
    models = {Path(p).name: load_model(p) for p in _names(args.spectra)}
    variances, samples = {}, {}
    wavelength = None
    for name, trained in models.items():
        at = {n: point.get(n, 0.0) for n in trained.label_names}
        if wavelength is not None and not np.array_equal(wavelength, trained.wavelength):
            raise DataValidationError(f"model {name} is on another wavelength grid than the first")
        wavelength = trained.wavelength
        variances[name] = spectral_variance(trained, at, seed=args.seed)
        samples[name] = sample_spectra(trained, at, 8, seed=args.seed)
    with open_survey(args.survey) as survey:
        ivar = survey.read(0, min(len(survey), 5000)).ivar.astype(np.float64)
        linelist = (
            read_linelist(args.linelist)
            if args.linelist is not None
            else survey.read_table("linelist")
        )
    if ivar.shape[1] != wavelength.size:
        raise DataValidationError(
            f"the survey has {ivar.shape[1]} pixels but the models {wavelength.size}"
        )
    noise = np.nanmedian(np.where(ivar > 0, 1.0 / np.where(ivar > 0, ivar, 1.0), np.nan), axis=0)
    table = variance_by_element(wavelength, variances, noise, linelist)
    table.meta["label_point"] = point
    return table, plot_spectral_variance(wavelength, variances, noise, samples)


def read_catalogue(path: Path) -> Any:
    """Read an allStar-like table by suffix; unreadable files raise :class:`FileFormatError`."""
    from astropy.table import Table

    if not path.exists():
        raise FileNotFoundError(f"catalogue {path} does not exist")
    name = path.name.lower()
    fmt = next((f for s, f in _FORMATS.items() if name.endswith(s)), None)
    if fmt is None:
        raise FileFormatError(f"{path}: unknown table type; expected one of {sorted(_FORMATS)}")
    try:
        table = Table.read(path, format=fmt, **({"hdu": 1} if fmt == "fits" else {}))
    except Exception as err:  # astropy raises many types on malformed files
        raise FileFormatError(
            f"{path} cannot be read as {fmt} ({type(err).__name__}: {err})"
        ) from None
    table.convert_bytestring_to_unicode()
    return table


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def run_elements(args: argparse.Namespace) -> int:
    """``stellarflow elements``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from astropy.table import Table

    from stellarflow.analysis.elements import (
        abundance_catalogue,
        abundance_columns,
        analyse_elements,
        polynomial_fitter,
    )
    from stellarflow.analysis.greedy import greedy_selection
    from stellarflow.io.atomic import atomic_directory, check_folder_writable
    from stellarflow.plot.elements import (
        plot_greedy_path,
        plot_residual_correlations,
        plot_residual_scatter,
        plot_tinsley_wallerstein,
    )

    if args.degree < 1 or args.n_bootstrap < 0 or args.n_null < 2 or args.greedy_bootstrap < 0:
        raise DataValidationError(
            "need --degree >= 1, --n-bootstrap >= 0, --n-null >= 2, --greedy-bootstrap >= 0"
        )
    check_folder_writable(args.out, args.overwrite)
    spectral = _spectral(args) if args.spectra else None
    table = read_catalogue(args.catalogue)
    condition, also = _names(args.condition), _names(args.also)
    if not condition:
        raise DataValidationError("--condition names no column; e.g. --condition FE_H,MG_FE")
    if args.elements.strip().lower() == "all":
        targets = [c for c in abundance_columns(table) if c not in condition]
    else:
        targets = [c for c in _names(args.elements) if c not in condition]
    catalogue = abundance_catalogue(table, [*condition, *also, *targets])
    rng = np.random.default_rng(args.seed)
    fitter = polynomial_fitter(args.degree)
    if args.density == "flow":
        import torch

        from stellarflow.analysis.abundance_flow import flow_fitter

        main_fitter = flow_fitter(generator=torch.Generator().manual_seed(args.seed))
    else:
        main_fitter = fitter
    options = {"n_null": args.n_null, "min_excess": args.min_excess, "rng": rng}
    requested = analyse_elements(
        catalogue,
        [*condition, *also],
        targets,
        n_bootstrap=args.n_bootstrap,
        fitter=main_fitter,
        bootstrap_fitter=fitter,
        **options,
    )
    requested.table.meta["density"] = args.density
    results = [requested]
    greedy = None
    if args.greedy:
        greedy = greedy_selection(
            catalogue,
            [*condition, *also],
            targets,
            alpha=args.alpha,
            min_excess=args.min_excess,
            n_null=args.n_null,
            n_bootstrap=args.greedy_bootstrap,
            fitter=fitter,
            rng=rng,
        )
        final = list(greedy.condition)
        if greedy.stop_step > 0:
            results.append(
                analyse_elements(
                    catalogue,
                    final,
                    [t for t in targets if t not in final],
                    n_bootstrap=args.n_bootstrap,
                    fitter=fitter,
                    **options,
                )
            )
    pairs = Table(
        names=(
            "condition",
            "element_a",
            "element_b",
            "correlation",
            "error_correlation",
            "null_correlation",
            "excess",
        ),
        dtype=(str, str, str, float, float, float, float),
    )
    for r in results:
        k = len(r.targets)
        null_sd = np.sqrt(np.diag(r.null.covariance))
        null_corr = r.null.covariance / np.outer(null_sd, null_sd)
        for i in range(k):
            for j in range(i + 1, k):
                pairs.add_row(
                    (
                        ",".join(r.condition),
                        r.targets[i],
                        r.targets[j],
                        r.correlation[i, j],
                        r.error_correlation[i, j],
                        null_corr[i, j],
                        r.null.excess[i, j],
                    )
                )
    with atomic_directory(args.out, args.overwrite) as folder:
        requested.table.write(folder / "elements.ecsv", format="ascii.ecsv")
        if len(results) > 1:
            results[1].table.write(folder / "elements_greedy_final.ecsv", format="ascii.ecsv")
        pairs.write(folder / "residual_correlations.ecsv", format="ascii.ecsv")
        if greedy is not None:
            greedy.table.write(folder / "greedy.ecsv", format="ascii.ecsv")
        figures = {
            "residual_scatter.png": plot_residual_scatter(results),
            "residual_correlations.png": plot_residual_correlations(results),
        }
        if "FE_H" in table.colnames and "MG_FE" in table.colnames:
            good = abundance_catalogue(table, ["FE_H", "MG_FE"])
            figures["tinsley_wallerstein.png"] = plot_tinsley_wallerstein(
                good.values[:, 0], good.values[:, 1]
            )
        if greedy is not None:
            figures["greedy_path.png"] = plot_greedy_path(greedy.table)
        if spectral is not None:
            spectral[0].write(folder / "spectral_by_element.ecsv", format="ascii.ecsv")
            figures["spectral_variance.png"] = spectral[1]
        for name, figure in figures.items():
            figure.savefig(folder / name, dpi=110)
            plt.close(figure)
    meta = requested.table.meta
    print(
        f"{len(catalogue.values)} of {catalogue.n_input} stars; | {','.join(requested.condition)}: "
        f"shared excess {meta['shared_excess_over_null']:.3f} "
        f"(p = {meta['shared_significance']:.3g}, "
        f"{'consistent with' if meta['shared_consistent_with_null'] else 'more than'} noise)"
        + (f"; greedy stops at {','.join(greedy.condition)}" if greedy is not None else "")
        + f"; wrote {args.out}"
    )
    return 0
