"""The training loop: split, warm start, AdamW with warm-up and cosine decay, clipping,
a non-finite guard, early stopping on validation log-likelihood, a time budget, a
checkpoint every epoch and exact resumption.

Losses are reported in nats per (usable) pixel: ``-sum log p / sum n_good_pixels``.
Resumption is exact at epoch boundaries: the batch order and the model's own randomness
(importance samples) of epoch ``e`` depend only on ``(seed, e)`` (and the rank).

**Several processes** (``torchrun``; :mod:`stellarflow.train.distributed`). The code path is
the same for one and N processes. Every rank draws the same global batches of
``batch_size`` stars (same seed, same shuffled block buffers) and trains on its contiguous
``batch_size / world_size`` slice of each; gradients are averaged over ranks with one flat
all-reduce before clipping, so every rank takes the same optimiser step as a single process
at the same global batch (up to floating-point reduction order). The global batch is thus the
unit of the run, not the per-process batch: ``--batch-size`` must be divisible by the number
of processes. A non-finite loss on any rank skips the step on all of them. Validation blocks
are split contiguously between ranks and the loss sums are all-reduced, so every rank makes
the same early-stopping decision; the wall-clock limit is rank 0's decision, broadcast. Only
rank 0 writes the model directory; every rank reads ``training_state.pt`` on ``--resume``.
The price of identical batches is that every rank reads every block of the survey (the
page cache shares them on a node).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from astropy.table import Table

from stellarflow.analysis.explain import ElementProfiles, element_profiles
from stellarflow.data.dataset import SpectralDataset, label_array, select_within
from stellarflow.data.grid import grid_hash
from stellarflow.data.summary import SpectraSource
from stellarflow.errors import DataValidationError, LabelError, OutputExistsError, StellarflowError
from stellarflow.io.atomic import atomic_path
from stellarflow.io.hdf5 import survey_linelist
from stellarflow.train.batches import Batch, check_label_errors, iter_batches, split_blocks
from stellarflow.train.checkpoint import (
    load_torch,
    log_prob_is_exact,
    read_json,
    save_torch,
    write_json,
)
from stellarflow.train.config import TrainConfig, TrainingError
from stellarflow.train.distributed import Distributed, LaunchError, process_device, shard_range
from stellarflow.train.support import fit_support

__all__ = ["TrainResult", "evaluate", "resolve_device", "train_model"]

logger = logging.getLogger(__name__)

_WARM_START_STARS = 4096
_MIN_WITHIN_STARS = 50  # stars a local model (TrainConfig.within) needs at least


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        path: the model directory.
        epochs_run: epochs completed in total (including before a resume).
        best_epoch: epoch of the saved (best-validation) weights.
        best_validation: validation loss of those weights, nats per pixel.
        stopped: why training ended ("converged", "epochs", "time_limit").
        history: per epoch: train and validation nats per pixel, seconds, skipped steps.
        seconds: wall time of this call.
        polished: the saved weights carry ECM polish iterations (``polish_iterations``).
    """

    path: Path
    epochs_run: int
    best_epoch: int
    best_validation: float
    stopped: str
    history: list[dict[str, float]]
    seconds: float
    polished: bool = False


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was requested but no CUDA GPU is available; use cpu")
    return device


def _tensors(
    batch: Batch, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """flux, ivar, labels and label errors (None unless the batch carries them)."""
    errors = None
    if batch.label_errors is not None:
        errors = torch.as_tensor(batch.label_errors, device=device, dtype=dtype)
    return (
        torch.as_tensor(batch.flux, device=device, dtype=dtype),
        torch.as_tensor(batch.ivar, device=device, dtype=dtype),
        torch.as_tensor(batch.labels, device=device, dtype=dtype),
        errors,
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    source: SpectraSource | SpectralDataset,
    blocks: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    dist: Distributed | None = None,
) -> float:
    """Loss on the given blocks in nats per usable pixel: ``-sum log p / sum n_good``.

    Under several processes each rank evaluates a contiguous share of the blocks and the
    sums are all-reduced: every rank returns the same number.
    """
    dist = dist or Distributed()
    start, stop = shard_range(len(blocks), dist.rank, dist.world_size)
    dtype = _dtype(model)
    model.eval()
    total, pixels = 0.0, 0.0
    for batch in iter_batches(
        source,
        blocks[start:stop],
        1024,
        config.label_names,
        min_good_fraction=config.min_good_fraction,
        error_names=config.error_names,
    ):
        flux, ivar, labels, errors = _tensors(batch, device, dtype)
        context = labels if config.label_names else None
        log_prob = model.observed_log_prob(flux, ivar, context, context_err=errors)
        total -= float(log_prob.double().sum())
        pixels += float((batch.ivar > 0).sum())
    model.train()
    total, pixels = dist.sum([total, pixels], device)
    return total / max(pixels, 1.0)


def _dtype(model: torch.nn.Module) -> torch.dtype:
    """The model's floating-point dtype (float64 with ``precision="float64"``)."""
    return next(model.parameters()).dtype


def _lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _training_summary(
    source: SpectraSource | SpectralDataset,
    train_blocks: np.ndarray,
    val_blocks: np.ndarray,
    config: TrainConfig,
    origin: str,
) -> dict[str, Any]:
    labels = source.labels
    ranges = {}
    for name in config.label_names:
        values = np.asarray(labels[name], dtype=np.float64)
        values = values[np.isfinite(values)]
        ranges[name] = [float(values.min()), float(values.max())]
    return {
        "n_stars": int(source.n_stars),
        "n_train_rows": int(np.sum(train_blocks[:, 1] - train_blocks[:, 0])),
        "n_validation_rows": int(np.sum(val_blocks[:, 1] - val_blocks[:, 0])),
        "label_ranges": ranges,
        "survey": getattr(source, "meta", {}).get("survey", ""),
        "source": origin,
        "within": {name: list(bounds) for name, bounds in config.within.items()},
    }


def _prepare_directory(out: Path, resume: bool, overwrite: bool, create: bool = True) -> None:
    if resume:
        if not (out / "training_state.pt").is_file():
            raise TrainingError(
                f"cannot resume: {out} holds no training_state.pt; start without --resume"
            )
        return
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out} already exists and is not empty; pass --resume to continue that run, "
            "--overwrite to start afresh, or choose another --out"
        )
    if create:
        out.mkdir(parents=True, exist_ok=True)


def _initialize_from_model(
    model: torch.nn.Module, path: Path, source: SpectraSource | SpectralDataset, config: TrainConfig
) -> list[str]:
    """Copy every parameter and buffer that ``path``'s model shares by name and shape.

    Returns:
        The names copied.

    Raises:
        TrainingError: the directory is not a compatible model (grid, labels), or the two
            models share nothing but their standardisation.
    """
    from stellarflow.train.checkpoint import check_compatible, load_model

    try:
        start = load_model(path)
        check_compatible(start, source.wavelength, source.labels.colnames)
    except StellarflowError as err:
        raise TrainingError(f"cannot start from {path}: {err}") from None
    if list(start.label_names) != list(config.label_names):
        raise TrainingError(
            f"cannot start from {path}: it is conditioned on {list(start.label_names)}, "
            f"this run on {list(config.label_names)}; use the same --labels"
        )
    own = model.state_dict()
    shared = {
        name: value
        for name, value in start.model.state_dict().items()
        if name in own and own[name].shape == value.shape
    }
    learned = [name for name in shared if name in dict(model.named_parameters())]
    if not learned:
        raise TrainingError(
            f"cannot start from {path}: its {start.model.kind!r} model shares no parameter "
            f"with this {config.model!r} model (different n_latent?)"
        )
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in shared.items()}, strict=False)
    return sorted(shared)


IN_MEMORY_BYTES = 4 << 30
"""Surveys smaller than this (flux, ivar and mask of every star) are loaded whole to train."""


def training_source(
    survey: SpectraSource, in_memory: str = "auto", copies: int = 1
) -> tuple[SpectraSource | SpectralDataset, Table | None]:
    """What :func:`train_model` reads: the open survey, or its spectra loaded whole.

    Args:
        survey: an open survey file.
        in_memory: "yes", "no" or "auto" (load when ``copies`` copies of the spectra take
            less than :data:`IN_MEMORY_BYTES`).
        copies: processes of this node that each hold a copy (``torchrun``).

    Returns:
        ``(source, linelist)``: the survey's line list when the spectra were loaded (they
        carry none of the file's tables), for :func:`train_model`'s ``linelist``; else None
        (the survey file provides it).
    """
    size = survey.n_stars * survey.n_pixels * 9 * copies
    if in_memory == "yes" or (in_memory == "auto" and size < IN_MEMORY_BYTES):
        return survey.load(), _file_linelist(survey)
    return survey, None


def _file_linelist(source: object) -> Table | None:
    """A survey file's line list (None for in-memory spectra, a file without one, or one
    that cannot be read: the line-list reference is optional, the training run is not)."""
    try:
        return survey_linelist(source)
    except (StellarflowError, ValueError, OSError) as err:
        logger.info("the survey's line list is not readable: %s", err)
        return None


def train_model(
    source: SpectraSource | SpectralDataset,
    config: TrainConfig,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    dist: Distributed | None = None,
    linelist: Table | None = None,
) -> TrainResult:
    """Train a spectral model on a survey and write a model directory.

    Args:
        source: training spectra: an in-memory dataset or an open survey file.
        config: the training configuration.
        out: model directory (created; see ``train.checkpoint`` for its files).
        resume: continue the run saved in ``out`` exactly where it stopped.
        overwrite: start afresh even if ``out`` holds files.
        progress: show a progress bar with train / validation nats per pixel (rank 0).
        dist: this process's place in a ``torchrun`` job
            (:func:`stellarflow.train.distributed.init_distributed`); None: one process.
        linelist: the line list of the line-list test's held-out reference (canonical
            table); None: the source's own ``linelist`` table if it is a survey file that
            has one (spectra loaded into memory carry none: pass the survey's).

    Returns:
        What the run produced (the same on every rank); the best weights are in
        ``out/model.pt``.

    Raises:
        LaunchError: ``batch_size`` is not divisible by the number of processes.
    """
    from stellarflow import __version__
    from stellarflow.flows import FlowInputError, build_model
    from stellarflow.flows.polish import check_polishable

    start_time = time.monotonic()
    dist = dist or Distributed()
    if config.batch_size % dist.world_size:
        raise LaunchError(
            f"batch_size {config.batch_size} (the global batch) is not divisible by the "
            f"{dist.world_size} processes; choose a multiple of {dist.world_size}"
        )
    out = Path(out)
    # every rank checks before anyone writes, so that all of them raise or none does
    _prepare_directory(out, resume, overwrite, create=False)
    label_array(source.labels, config.label_names)  # raises LabelError if a label is missing
    origin = str(getattr(source, "path", "in-memory dataset"))
    if config.within:  # a local model: the stars of a region of label space, in memory
        linelist = linelist if linelist is not None else _file_linelist(source)
        source = select_within(source, config.within)
        if source.n_stars < _MIN_WITHIN_STARS:
            raise TrainingError(
                f"only {source.n_stars} stars lie within {dict(config.within)}; a model needs "
                f"at least {_MIN_WITHIN_STARS}: widen the ranges"
            )
        logger.info("training on the %d stars within %s", source.n_stars, dict(config.within))
    if config.label_errors:
        try:
            check_label_errors(source.labels, config.label_names, config.error_names)
        except LabelError as err:
            raise TrainingError(f"cannot train with label_errors: {err}") from None
    dist.barrier()  # the data checks passed on every rank: only now is anything written
    if dist.is_main and not resume:
        out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(process_device(dist, config.device))
    if config.precision == "tf32" and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = config.precision == "bf16" and device.type == "cuda"

    train_blocks, val_blocks = split_blocks(
        source.n_stars, config.block_size, config.validation_fraction, config.seed
    )
    n_context = len(config.label_names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        try:
            model = build_model(config.model, source.n_pixels, n_context, **config.model_options)
        except FlowInputError as err:
            raise TrainingError(f"cannot build the model: {err}") from None
    if config.polish_iterations:
        try:
            check_polishable(model)
        except FlowInputError as err:
            raise TrainingError(f"cannot polish: {err}; train without --polish") from None
    if config.label_errors and not getattr(model, "noise_aware", True):
        raise TrainingError(
            f"label_errors needs a model with a noise model (cannon, factor_analysis, "
            f"latent_flow); {config.model!r} has none. Choose one of those or train without "
            "--label-errors"
        )
    dtype = torch.float64 if config.precision == "float64" else torch.float32
    model.to(device=device, dtype=dtype)

    if resume:
        saved_config = TrainConfig.from_dict(read_json(out / "config.json")["train"])
        if {**saved_config.to_dict(), "epochs": 0, "time_limit": None, "device": ""} != {
            **config.to_dict(),
            "epochs": 0,
            "time_limit": None,
            "device": "",
        }:
            raise TrainingError(
                f"--resume with a different configuration than the run in {out}; only "
                "--epochs, --time-limit and --device may change"
            )
        state = load_torch(out / "training_state.pt")
        model.load_state_dict(state["model"])
        history: list[dict[str, float]] = state["history"]
        best = float(state["best_validation"])
        best_epoch = int(state["best_epoch"])
        # a finished run's ECM polish may have saved better weights than its best epoch:
        # an epoch of the resumed run replaces model.pt only if it beats those
        finished = read_json(out / "metadata.json") if (out / "metadata.json").exists() else {}
        if finished.get("polish", {}).get("kept"):
            best = min(best, float(finished["polish"]["validation_after"]))
    else:
        warm = next(
            iter_batches(
                source,
                train_blocks,
                _WARM_START_STARS,
                config.label_names,
                rng=np.random.default_rng([config.seed, 1]),
                min_good_fraction=config.min_good_fraction,
                read_ahead=0,  # one batch is all it needs
            )
        )
        if config.init_from is not None:
            _initialize_from_model(model, Path(config.init_from), source, config)
        else:
            flux, ivar, labels, _ = _tensors(warm, device, dtype)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                model.initialize_from_data(flux, ivar, labels if n_context else None)
        # the warm start is deterministic, but make the ranks agree bit for bit
        dist.broadcast_module(model)
        history, best, best_epoch = [], math.inf, -1
        if dist.is_main:
            support = fit_support(warm.labels, config.label_names)
            with atomic_path(out / "support.npz", overwrite=True) as tmp:
                support.save(tmp)
            with atomic_path(out / "wavelength.npy", overwrite=True) as tmp:
                np.save(tmp, source.wavelength)
            write_json(
                out / "config.json",
                {
                    "train": config.to_dict(),
                    "model": dict(model.config),
                },
            )

    steps_per_epoch = max(
        1, int(np.sum(train_blocks[:, 1] - train_blocks[:, 0])) // config.batch_size
    )
    optimizer = torch.optim.AdamW(
        model.parameter_groups(config.learning_rate), weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(config, config.epochs * steps_per_epoch)
    )
    if resume:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])

    metadata_base = {
        "stellarflow_version": __version__,
        "label_names": list(config.label_names),
        "n_pixels": source.n_pixels,
        "grid_hash": grid_hash(source.wavelength),
        "wavelength_range": [float(source.wavelength[0]), float(source.wavelength[-1])],
        "training_data": _training_summary(source, train_blocks, val_blocks, config, origin),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "log_prob_is_exact": log_prob_is_exact(model),
    }

    bar = None
    if progress and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, initial=len(history), desc="train", unit="epoch")
    stopped = "epochs"
    model.train()
    for epoch in range(len(history), config.epochs):
        epoch_start = time.monotonic()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            # each rank draws its own importance samples; rank 0's are a single process's
            torch.manual_seed(config.seed * 100_003 + epoch + 1_000_003 * dist.rank)
            train_loss, skipped = _run_epoch(
                model,
                optimizer,
                scheduler,
                source,
                train_blocks,
                config,
                device,
                epoch,
                autocast,
                dist,
            )
        validation = evaluate(model, source, val_blocks, config, device, dist)
        history.append(
            {
                "epoch": epoch,
                "train": train_loss,
                "validation": validation,
                "seconds": time.monotonic() - epoch_start,
                "skipped_steps": skipped,
                "learning_rate": scheduler.get_last_lr()[0],
            }
        )
        improved = validation < best
        if improved:
            best, best_epoch = validation, epoch
        if dist.is_main:
            if improved:
                save_torch(out / "model.pt", model.state_dict())
            save_torch(
                out / "training_state.pt",
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "best_validation": best,
                    "best_epoch": best_epoch,
                    "world_size": dist.world_size,
                },
            )
            write_json(
                out / "metadata.json",
                {
                    **metadata_base,
                    "history": history,
                    "best_epoch": best_epoch,
                    "best_validation_nats_per_pixel": best,
                },
            )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{validation:.4f}", best=best_epoch)
        if epoch - best_epoch >= config.patience:
            stopped = "converged"
            break
        elapsed = (time.monotonic() - start_time) / 60.0
        if config.time_limit is not None and dist.broadcast_flag(
            elapsed >= config.time_limit, device
        ):
            stopped = "time_limit"
            break
    if bar is not None:
        bar.close()
    polish = None
    if config.polish_iterations and (best_epoch >= 0 or not config.epochs):
        before = best if best_epoch >= 0 else None
        deadline = None
        if config.time_limit is not None:
            deadline = start_time + 60.0 * config.time_limit
        polish = _polish(
            model,
            source,
            train_blocks,
            val_blocks,
            before,
            config,
            device,
            dist,
            out,
            progress,
            deadline,
        )
        best = polish["validation_after"]
    if dist.is_main:
        reference = _reference(model, out, source, val_blocks, config, linelist)
        write_json(
            out / "metadata.json",
            {
                **metadata_base,
                **({"polish": polish} if polish is not None else {}),
                **({"reference_calibration": reference} if reference is not None else {}),
                "history": history,
                "best_epoch": best_epoch,
                "best_validation_nats_per_pixel": best,
                "stopped": stopped,
                "world_size": dist.world_size,
            },
        )
        _plot_curve(history, out / "training_curve.png")
    dist.barrier()
    return TrainResult(
        path=out,
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_validation=best,
        stopped=stopped,
        history=history,
        seconds=time.monotonic() - start_time,
        polished=bool(polish and polish["kept"]),
    )


def _reference(
    model: torch.nn.Module,
    out: Path,
    source: SpectraSource | SpectralDataset,
    val_blocks: np.ndarray,
    config: TrainConfig,
    linelist: Table | None,
) -> dict[str, Any] | None:
    """Fit the outlier scores' held-out references on the validation split and write them.

    (:mod:`stellarflow.analysis.reference`; :func:`~stellarflow.analysis.outliers.
    find_outliers` uses them for small surveys.) One pass over the validation stars scores
    the whole-spectrum test and, when the survey carries a line list, the line-list test
    for :func:`~stellarflow.analysis.outliers.find_outliers`' defaults (that line list,
    R = 22,500, the label-conditional expectation). ``model`` is loaded with the saved
    best state first. Returns what the metadata records, None for a model without a noise
    model (it has no calibrated score).
    """
    from stellarflow.analysis.outliers import line_test_z
    from stellarflow.analysis.reference import (
        REFERENCE_FILE,
        REFERENCE_LINES_FILE,
        fit_reference,
        held_out_scores,
        model_z,
        save_reference,
    )
    from stellarflow.analysis.score import chunk_seed

    for name in (REFERENCE_FILE, REFERENCE_LINES_FILE):  # a previous run's belong to its model
        (out / name).unlink(missing_ok=True)
    if not getattr(model, "noise_aware", False) or not (out / "model.pt").is_file():
        return None
    model.load_state_dict(load_torch(out / "model.pt"))
    model.eval()
    started = time.monotonic()
    profiles, lines = _survey_profiles(source, linelist)
    names = config.label_names
    errors = config.error_names if config.label_errors else ()

    def score(chunk: SpectralDataset, keep: np.ndarray, number: int) -> np.ndarray:
        z = model_z(model, chunk, keep, names, errors, seed=config.seed + number)
        if profiles is None:
            return z[:, None]
        seed = chunk_seed(config.seed, number)
        return np.column_stack([z, line_test_z(model, chunk, keep, names, profiles, seed=seed)])

    chunks = (source.read(int(start), int(stop)) for start, stop in val_blocks)
    try:
        z, labels, snr = held_out_scores(chunks, names, score)
        z = z.reshape(snr.size, -1)
        reference = fit_reference(z[:, 0], labels, snr, names)
    except (DataValidationError, ValueError) as err:
        logger.info("no held-out reference for the outlier score: %s", err)
        return {"fitted": False, "reason": str(err)}
    save_reference(out, reference)
    if profiles is not None:
        lines = _lines_reference(out, z[:, 1], labels, snr, names, profiles)
    return {
        "fitted": True,
        "n_stars": reference.n_stars,
        "degree": reference.degree,
        "tail_dof": None if not np.isfinite(reference.dof) else reference.dof,
        "lines": lines,
        "seconds": round(time.monotonic() - started, 1),
    }


def _survey_profiles(
    source: SpectraSource | SpectralDataset, linelist: Table | None
) -> tuple[ElementProfiles | None, dict[str, Any]]:
    """The line list's profiles on the survey's grid (``linelist``, else the survey file's
    own), or None and why there are none."""
    try:  # the model is saved already: a bad line list must not fail the training run
        linelist = linelist if linelist is not None else survey_linelist(source)
        if linelist is None:
            return None, {"fitted": False, "reason": "the survey has no line list"}
        profiles = element_profiles(source.wavelength, linelist)
    except (StellarflowError, ValueError) as err:
        logger.info("no held-out reference for the line-list test: %s", err)
        return None, {"fitted": False, "reason": str(err)}
    if not profiles.elements:
        return None, {"fitted": False, "reason": "no line of the line list is on the grid"}
    return profiles, {}


def _lines_reference(
    out: Path,
    z: np.ndarray,
    labels: np.ndarray,
    snr: np.ndarray,
    label_names: tuple[str, ...],
    profiles: ElementProfiles,
) -> dict[str, Any]:
    """Fit and write the line-list test's reference; what the metadata records."""
    from dataclasses import replace

    from stellarflow.analysis.explain import line_test_fingerprint
    from stellarflow.analysis.reference import fit_reference, save_reference

    try:
        reference = fit_reference(z, labels, snr, label_names)
    except (DataValidationError, ValueError) as err:
        logger.info("no held-out reference for the line-list test: %s", err)
        return {"fitted": False, "reason": str(err)}
    fingerprint = line_test_fingerprint(profiles, "labels")
    save_reference(out, replace(reference, linelist=fingerprint))
    return {
        "fitted": True,
        "n_stars": reference.n_stars,
        "tail_dof": None if not np.isfinite(reference.dof) else reference.dof,
        "linelist": fingerprint,
    }


def _polish(
    model: torch.nn.Module,
    source: SpectraSource | SpectralDataset,
    train_blocks: np.ndarray,
    val_blocks: np.ndarray,
    before: float | None,
    config: TrainConfig,
    device: torch.device,
    dist: Distributed,
    out: Path,
    progress: bool,
    deadline: float | None = None,
) -> dict[str, Any]:
    """ECM iterations from the best weights; each kept only while validation improves.

    ``before`` is the validation loss of the saved best weights (already measured), or
    None when no epoch ran (``epochs = 0``: the warm start is measured and saved first).
    Every rank runs the same deterministic passes over all training blocks, so the ranks stay
    identical; the main rank rewrites ``model.pt`` atomically after each improving
    iteration, and the first iteration that does not improve is undone and ends the polish;
    so does reaching ``deadline`` (``time.monotonic()``, the run's time limit), after the
    iteration under way.
    """
    from stellarflow.flows.polish import estimate_coefficient_variance, polish_in_passes

    if model.drop_estimation_var():  # a stale estimate (e.g. a resumed run): re-measure
        before = None
    if before is None:
        before = evaluate(model, source, val_blocks, config, device, dist)
        if dist.is_main:
            save_torch(out / "model.pt", model.state_dict())
        dist.barrier()
    model.load_state_dict(load_torch(out / "model.pt"))
    dtype = _dtype(model)

    def one_pass() -> Iterator[tuple[torch.Tensor, ...]]:
        for batch in iter_batches(
            source,
            train_blocks,
            256,
            config.label_names,
            error_names=config.error_names,
            min_good_fraction=config.min_good_fraction,
        ):
            flux, ivar, labels, errors = _tensors(batch, device, dtype)
            yield flux, ivar, labels if config.label_names else None, errors

    bar = None
    if progress and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.polish_iterations, desc="ECM polish", unit="iteration")
    model.eval()
    best, steps, validation, kept, time_limited = before, [], [], 0, False
    for _ in range(config.polish_iterations):
        steps += polish_in_passes(model, one_pass, n_iter=1)
        validation.append(evaluate(model, source, val_blocks, config, device, dist))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(val=f"{validation[-1]:.5f}")
        if not validation[-1] < best:
            model.load_state_dict(load_torch(out / "model.pt"))
            break
        best, kept = validation[-1], kept + 1
        if dist.is_main:
            save_torch(out / "model.pt", model.state_dict())
        dist.barrier()
        if deadline is not None and dist.broadcast_flag(time.monotonic() >= deadline, device):
            time_limited = True
            break
    if bar is not None:
        bar.close()
    # the fitted mean's own uncertainty widens every prediction a little; kept only
    # if held-out stars agree (it should: a plug-in model is over-confident out of sample)
    estimate_coefficient_variance(model, one_pass)
    with_estimate = evaluate(model, source, val_blocks, config, device, dist)
    estimate_kept = with_estimate < best
    if estimate_kept:
        best = with_estimate
        if dist.is_main:
            save_torch(out / "model.pt", model.state_dict())
        dist.barrier()
    else:
        model.load_state_dict(load_torch(out / "model.pt"))
    return {
        "coefficient_variance": {"validation": with_estimate, "kept": estimate_kept},
        "iterations": config.polish_iterations,
        "iterations_kept": kept,
        "max_log_tau2_change": [step.max_log_tau2_change for step in steps],
        "mean_loading_change": [step.mean_loading_change for step in steps],
        "max_log_scale_change": [step.max_log_scale_change for step in steps],
        "validation": validation,
        "validation_before": before,
        "validation_after": best,
        "kept": kept > 0 or estimate_kept,
        "stopped_by_time_limit": time_limited,
    }


def _run_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    source: SpectraSource | SpectralDataset,
    blocks: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    epoch: int,
    autocast: bool,
    dist: Distributed,
) -> tuple[float, int]:
    """One pass over the training blocks; returns (nats per pixel, skipped steps).

    Every rank sees the same global batches and trains on its contiguous slice of each.
    """
    rng = np.random.default_rng([config.seed, 2, epoch])
    share = config.batch_size // dist.world_size
    mine = slice(dist.rank * share, (dist.rank + 1) * share)
    parameters = [p for p in model.parameters() if p.requires_grad]
    dtype = _dtype(model)
    total, pixels, skipped, consecutive = 0.0, 0.0, 0, 0
    for batch in iter_batches(
        source,
        blocks,
        config.batch_size,
        config.label_names,
        rng=rng,
        min_good_fraction=config.min_good_fraction,
        drop_last=True,
        error_names=config.error_names,
    ):
        if dist.active:
            batch = batch.select(mine)
        flux, ivar, labels, errors = _tensors(batch, device, dtype)
        context = labels if config.label_names else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model.loss(flux, ivar, context, context_err=errors)
        optimizer.zero_grad(set_to_none=True)
        if dist.any(not bool(torch.isfinite(loss)), device):
            skipped, consecutive = skipped + 1, consecutive + 1
        else:
            loss.backward()
            # the mean of the ranks' mean losses is the global batch's mean loss
            dist.average_gradients(parameters)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if not torch.isfinite(norm):
                optimizer.zero_grad(set_to_none=True)
                skipped, consecutive = skipped + 1, consecutive + 1
            else:
                optimizer.step()
                consecutive = 0
                n_good = float((batch.ivar > 0).sum())
                total += float(loss.detach()) * len(batch)
                pixels += n_good
        scheduler.step()
        if consecutive >= config.max_bad_steps:
            raise TrainingError(
                f"{consecutive} consecutive steps had a non-finite loss or gradient (epoch "
                f"{epoch}); the weights were not updated by them. Lower --learning-rate, "
                "check the survey for extreme flux values, or resume from the last checkpoint"
            )
    if skipped and dist.is_main:
        logger.warning("epoch %d: skipped %d steps with non-finite loss/gradients", epoch, skipped)
    total, pixels = dist.sum([total, pixels], device)
    return total / max(pixels, 1.0), skipped


def _plot_curve(history: list[dict[str, float]], path: Path) -> None:
    from stellarflow.io.atomic import atomic_path
    from stellarflow.plot.training import plot_training_curve

    figure = plot_training_curve(history)
    with atomic_path(path, overwrite=True) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(figure)
