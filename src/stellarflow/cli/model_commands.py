"""Commands that train and use spectral models: ``train``, ``score``, ``sample``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from stellarflow.errors import DataValidationError

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add ``train``, ``score`` and ``sample`` to the sub-command parser."""
    train = commands.add_parser(
        "train",
        help="train a spectral density model p(flux | labels) on a survey file",
        description="Train a model of the spectra conditional on labels; writes a model "
        "directory (weights, config, metadata, training curve) and checkpoints every epoch.",
    )
    train.add_argument("survey", type=Path, help="survey file (.h5)")
    train.add_argument(
        "--labels",
        default="TEFF,LOGG,FE_H",
        help="comma-separated label columns to condition on ('' = unconditional)",
    )
    train.add_argument("--out", type=Path, required=True, help="model directory")
    train.add_argument(
        "--model",
        default="latent_flow",
        help="model family: latent_flow (default), factor_analysis, cannon, coupling",
    )
    train.add_argument("--epochs", type=int, default=200, help="maximum epochs (default 200)")
    train.add_argument("--time-limit", type=float, default=None, help="budget in minutes")
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--learning-rate", type=float, default=2e-3)
    train.add_argument("--patience", type=int, default=15, help="early-stopping patience")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    train.add_argument(
        "--precision",
        choices=("float32", "float64", "tf32", "bf16"),
        default="float32",
        help="arithmetic: float32, float64 (reference runs), or on GPU tf32 matmuls or bf16 "
        "autocast",
    )
    train.add_argument(
        "--in-memory",
        choices=("auto", "yes", "no"),
        default="auto",
        help="load the survey whole (yes), stream it from the file in shuffled blocks with "
        "bounded memory (no), or load it when it is under 4 GB per process (auto)",
    )
    train.add_argument(
        "--label-errors",
        action="store_true",
        help="marginalise over each star's label uncertainties from the <LABEL>_ERR columns "
        "(e.g. TEFF_ERR); scoring then uses them too (not for --model coupling)",
    )
    train.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the model family, repeatable, e.g. --option n_latent=16 "
        "(values are JSON: numbers, true/false, strings)",
    )
    train.add_argument(
        "--init-from",
        metavar="MODEL_DIR",
        default=None,
        help="start from a trained model's shared parameters instead of the data warm "
        "start (e.g. a factor_analysis model for a latent_flow with the same n_latent)",
    )
    train.add_argument(
        "--polish",
        type=int,
        default=0,
        metavar="N",
        help="after training, at most N closed-form ECM iterations taking a factor_analysis "
        "model's mean, loadings and scatter to their maximum likelihood (each kept only while "
        "validation improves; with --epochs 0 the model is fitted by ECM alone, the fastest "
        "way at 7,514 pixels; default 0)",
    )
    train.add_argument(
        "--within",
        default="",
        metavar="RANGES",
        help="train a local model on the stars whose labels lie in these ranges only, e.g. "
        "TEFF=4450:5050,LOGG=1.9:3.1,FE_H=-0.3:0.3 (inclusive; any label columns); stars "
        "outside are flagged as unsupported when scored",
    )
    train.add_argument("--resume", action="store_true", help="continue an interrupted run")
    train.add_argument("--overwrite", action="store_true", help="start afresh in --out")
    train.set_defaults(handler=run_train)

    score = commands.add_parser(
        "score", help="log p(flux | labels) of every star under a trained model"
    )
    score.add_argument("model", type=Path, help="model directory")
    score.add_argument("survey", type=Path, help="survey file (.h5)")
    score.add_argument("--out", type=Path, required=True, help="output table (.ecsv)")
    score.add_argument("--chunk-size", type=int, default=2048, help="stars per chunk")
    score.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda or auto; under torchrun each process uses cuda:LOCAL_RANK",
    )
    score.add_argument("--seed", type=int, default=0, help="importance samples (flows)")
    score.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing table (and discard the part files of an interrupted run)",
    )
    score.set_defaults(handler=run_score)

    sample = commands.add_parser("sample", help="draw noise-free spectra at given labels")
    sample.add_argument("model", type=Path, help="model directory")
    sample.add_argument("--at", required=True, help="label point, e.g. TEFF=4750,LOGG=2.5,FE_H=0")
    sample.add_argument("-n", "--n-samples", type=int, default=1000, help="number of spectra")
    sample.add_argument("--temperature", type=float, default=1.0, help="base-density scale")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", type=Path, required=True, help="output file (.h5)")
    sample.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="survey file: also draw the samples beside its stars near the label point",
    )
    sample.add_argument(
        "--figure",
        type=Path,
        default=None,
        help="where to write that figure (default: --out with .png)",
    )
    sample.add_argument("--overwrite", action="store_true", help="replace existing files")
    sample.set_defaults(handler=run_sample)


def parts_folder(out: Path) -> Path:
    """Where a sharded, resumable command keeps its per-chunk part files: ``OUT.parts``."""
    return out.with_name(out.name + ".parts")


def _label_names(text: str) -> tuple[str, ...]:
    return tuple(name.strip().upper() for name in text.split(",") if name.strip())


def _model_options(items: list[str]) -> dict[str, Any]:
    """``["n_latent=16", "proposal=likelihood"]`` -> ``{"n_latent": 16, "proposal": ...}``."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option expects KEY=VALUE (e.g. n_latent=16), got {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def run_train(args: argparse.Namespace) -> int:
    """``stellarflow train``."""
    from stellarflow.data.dataset import parse_label_ranges
    from stellarflow.io.hdf5 import open_survey
    from stellarflow.train.config import TrainConfig
    from stellarflow.train.distributed import distributed_session
    from stellarflow.train.loop import train_model, training_source

    try:
        config = TrainConfig(
            label_names=_label_names(args.labels),
            model=args.model,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            patience=args.patience,
            seed=args.seed,
            time_limit=args.time_limit,
            device=args.device,
            precision=args.precision,
            label_errors=args.label_errors,
            model_options=_model_options(args.option),
            init_from=args.init_from,
            polish_iterations=args.polish,
            within=parse_label_ranges(args.within),
        )
    except ValueError as err:
        raise DataValidationError(f"invalid training settings: {err}") from None
    with distributed_session(config.device) as dist, open_survey(args.survey) as survey:
        # every process of a node holds its own copy when loading whole
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if dist.active else 1
        # a local model reads only its region's stars (train_model selects them)
        in_memory = "no" if config.within else args.in_memory
        source, linelist = training_source(survey, in_memory, local)
        result = train_model(
            source,
            config,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.quiet,
            dist=dist,
            linelist=linelist,
        )
        if not dist.is_main:
            return 0
    where = f"at epoch {result.best_epoch}" if result.best_epoch >= 0 else "from the warm start"
    if config.within:
        where += f" (a local model: {args.within})"
    print(
        f"trained for {result.epochs_run} epochs ({result.stopped}); best validation "
        f"{result.best_validation:.5f} nats/pixel {where}"
        f"{' + ECM polish' if result.polished else ''}; model in {result.path}"
    )
    return 0


def run_score(args: argparse.Namespace) -> int:
    """``stellarflow score`` (sharded over the processes of a ``torchrun`` job; resumable).

    Finished chunks go to ``OUT.parts/`` beside the output; running the same command again
    after an interruption resumes from them, and they are deleted once ``OUT`` is written.
    """
    from stellarflow.analysis.score import score_survey
    from stellarflow.io.atomic import atomic_path, check_writable
    from stellarflow.io.hdf5 import open_survey
    from stellarflow.train.checkpoint import load_model
    from stellarflow.train.distributed import distributed_session, process_device
    from stellarflow.train.loop import resolve_device

    if args.chunk_size < 1:
        raise DataValidationError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    check_writable(args.out, args.overwrite)
    parts = parts_folder(args.out)
    with distributed_session(args.device) as dist:
        if dist.is_main and args.overwrite:
            shutil.rmtree(parts, ignore_errors=True)
        trained = load_model(args.model, resolve_device(process_device(dist, args.device)))
        with open_survey(args.survey) as survey:
            table = score_survey(
                trained,
                survey,
                chunk_size=args.chunk_size,
                progress=not args.quiet,
                seed=args.seed,
                parts=parts,
                dist=dist,
            )
        dist.barrier()  # every process has read the parts
        if not dist.is_main:
            return 0
    with atomic_path(args.out, overwrite=args.overwrite) as tmp:
        table.write(tmp, format="ascii.ecsv")
    shutil.rmtree(parts, ignore_errors=True)
    n_flagged = int((~table["supported"] | ~table["enough_pixels"]).sum())
    print(f"scored {len(table)} stars ({n_flagged} flagged) -> {args.out}")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    """``stellarflow sample``."""
    from stellarflow.analysis.sampling import parse_label_point, sample_spectra, write_samples
    from stellarflow.io.atomic import check_writable
    from stellarflow.train.checkpoint import load_model

    check_writable(args.out, args.overwrite)
    trained = load_model(args.model)
    point = parse_label_point(args.at)
    flux = sample_spectra(
        trained, point, args.n_samples, temperature=args.temperature, seed=args.seed
    )
    write_samples(
        args.out,
        flux,
        trained.wavelength,
        point,
        model_path=str(args.model),
        temperature=args.temperature,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.n_samples} samples at {args.at} -> {args.out}")
    if args.compare is not None:
        figure_path = args.figure or args.out.with_suffix(".png")
        n_stars = _compare_figure(args.compare, trained, flux, point, figure_path, args.overwrite)
        print(f"figure of the samples beside {n_stars} stars near {args.at} -> {figure_path}")
    return 0


def _compare_figure(
    survey_path: Path,
    trained: Any,
    samples: Any,
    point: dict[str, float],
    figure_path: Path,
    overwrite: bool,
) -> int:
    import matplotlib.pyplot as plt

    from stellarflow.analysis.sampling import stars_near
    from stellarflow.data.dataset import concatenate
    from stellarflow.io.atomic import atomic_path
    from stellarflow.io.hdf5 import open_survey
    from stellarflow.plot.model import plot_samples_vs_data
    from stellarflow.train.checkpoint import check_compatible

    with open_survey(survey_path) as survey:
        check_compatible(trained, survey.wavelength, survey.labels.colnames)
        rows = stars_near(survey.labels, point)[:200]
        if rows.size == 0:
            raise DataValidationError(
                f"{survey_path} has no stars near {point}; choose a label point inside it"
            )
        near = concatenate([survey.read(int(r), int(r) + 1) for r in rows])
    figure = plot_samples_vs_data(trained.wavelength, samples, near.flux, near.mask, point=point)
    with atomic_path(figure_path, overwrite=overwrite) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return int(rows.size)
