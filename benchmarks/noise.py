"""Benchmark: the noise-aware likelihood against the same model that ignores each star's noise.

Usage::

    python benchmarks/noise.py [--survey PATH] [--n-train 20000] [--n-test 5000]
        [--models factor_analysis:n_latent=16,latent_flow:n_latent=16] [--reuse DIR]
        [--epochs 60] [--time-limit MIN] [--out DIR] [--point TEFF=4750,LOGG=2.5,FE_H=0]

For each model spec, two models of the same family and size are trained on the same stars:
**aware** (each star's own per-pixel noise in the likelihood; density deconvolution) and
**naive** (the noise ignored: every observed pixel given ivar = 1e8, so the model learns the
density of the noisy spectra, as flow research code does). Masked pixels stay masked in
both. On the held-out inliers (the mock's ``outlier_kind`` is empty) it prints:

* Spearman rho between the star's S/N and its calibrated score ``z``
  (:mod:`stellarflow.analysis.calibrate`; target |rho| < 0.1 for the aware model), and to
  locate it (JSON rows) the median z per S/N quintile and, in the top S/N quartile, at the
  10% edges of each label;
* held-out log-likelihood in nats per pixel of the observed spectra at S/N < 60 and its gap
  to the mock's oracle (both models score the same observed flux);
* at the label point: the model's intrinsic (noise-free) scatter per pixel over the mock's
  known intrinsic scatter at fixed true labels (:func:`stellarflow.mock.answers.
  spectra_at_labels`), over the pixels with real signal (known scatter >= 0.003);

and writes ``noise_samples.png`` (low-S/N training spectra near the point beside noise-free
samples of both models) and ``intrinsic_scatter.png`` to ``--out``, plus ``noise.json``.
``--reuse DIR`` takes an already trained aware model from ``DIR/<spec>`` (as written by
``benchmarks/density.py --out DIR``) and a naive one from ``DIR/<spec>_naive`` when present.
``--polish N`` adds, for every noise-aware factor-analysis model, a row for the same model
after N closed-form ECM iterations over the training stars
(:func:`stellarflow.flows.polish_factor_analysis`). A spec may carry training settings:
``factor_analysis:n_latent=16;epochs=0;polish=8`` fits the model by ECM alone from the warm
start (``TrainConfig.polish_iterations``).
``--within RANGES`` trains every model as a *local* model on the stars in those label
ranges (``TrainConfig.within``) and evaluates it on the test stars in them.
``--label-errors`` adds a third variant: the aware model fine-tuned for
``--fine-tune-epochs`` with each star's label errors marginalised (``TrainConfig.label_errors``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from _specs import directory_name, model_options
from scipy import stats

from stellarflow.analysis.calibrate import calibrate_log_prob
from stellarflow.analysis.sampling import parse_label_point, stars_near
from stellarflow.data.dataset import SpectralDataset, parse_label_ranges, select_within
from stellarflow.flows import FlowInputError, polish_factor_analysis
from stellarflow.io.hdf5 import open_survey
from stellarflow.mock import MockConfig, write_mock_survey
from stellarflow.mock.answers import spectra_at_labels
from stellarflow.train.checkpoint import load_model
from stellarflow.train.config import TrainConfig
from stellarflow.train.loop import train_model

LABELS = ("TEFF", "LOGG", "FE_H")
NAIVE_IVAR = 1e8  # sigma = 1e-4: far below any star's noise, far above float32 rounding
LOW_SNR = 60.0
SIGNAL = 0.003  # pixels whose known intrinsic scatter is at least this (flux units)


def _naive(dataset: SpectralDataset) -> SpectralDataset:
    """The same spectra with every observed pixel's noise declared negligible."""
    ivar = np.where(dataset.mask, 0.0, NAIVE_IVAR).astype(dataset.ivar.dtype)
    return SpectralDataset(
        dataset.flux, ivar, dataset.wavelength, dataset.labels, dataset.mask, dataset.meta
    )


def _train(
    dataset, spec, out, args, label_errors: bool = False, init_from: Path | None = None
) -> Path:
    kind, options = model_options(spec)
    staged = options.pop("init_from", None)  # a spec may name its own start model
    # training settings in a spec: "epochs=0;polish=8" fits factor analysis by ECM alone
    # (a fine-tune from ``init_from`` uses --fine-tune-epochs and no polish instead)
    epochs, polish = options.pop("epochs", args.epochs), options.pop("polish", 0)
    if init_from is not None:
        epochs, polish = args.fine_tune_epochs, args.fine_tune_polish
        if polish:
            epochs = 0  # the fine-tune by ECM alone
    config = TrainConfig(
        label_errors=label_errors,
        init_from=str(init_from) if init_from is not None else staged,
        label_names=LABELS,
        model=kind,
        model_options=options,
        epochs=epochs,
        time_limit=args.time_limit,
        seed=args.seed,
        polish_iterations=polish,
        within=args.within,
    )
    started = time.perf_counter()
    result = train_model(dataset, config, out, overwrite=True)
    seconds = time.perf_counter() - started
    ecm = ""
    if polish:
        record = json.loads((out / "metadata.json").read_text())["polish"]
        ecm = f" + {record['iterations_kept']} ECM iterations kept"
    print(f"  trained {out.name}: {result.epochs_run} epochs{ecm}, {seconds:.0f} s")
    return out


def _intrinsic_std(model, point: dict[str, float]) -> np.ndarray:
    context = torch.tensor([[point[name] for name in LABELS]], dtype=torch.float32)
    factors = model.covariance(context, n_samples=8192)
    loading = factors.loading[0].double()
    var = ((loading @ factors.latent_cov[0].double()) * loading).sum(-1)
    tau2 = factors.intrinsic_var.double().reshape(-1, var.shape[-1])[0]  # label-dependent: (1, p)
    return (var + tau2).sqrt().numpy()


def _scatter_ratio(ratio: np.ndarray) -> dict[str, float]:
    """Summary of model / known intrinsic scatter over the signal pixels."""
    return {
        "scatter_ratio_median": float(np.median(ratio)),
        "scatter_ratio_p10": float(np.percentile(ratio, 10)),
        "scatter_ratio_p90": float(np.percentile(ratio, 90)),
        "scatter_ratio_in_0.8_1.25": float(np.mean((ratio >= 0.8) & (ratio <= 1.25))),
    }


def _noise_free_samples(model, point: dict[str, float], n: int) -> np.ndarray:
    context = torch.tensor([[point[name] for name in LABELS]] * n, dtype=torch.float32)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        return model(context).sample(generator=generator).double().numpy()


def _polished(model, train: SpectralDataset, n_iter: int):
    """A copy of ``model`` after ECM iterations on the training stars, or None if unsupported."""
    polished = copy.deepcopy(model)
    try:
        steps = polish_factor_analysis(
            polished,
            torch.as_tensor(train.flux),
            torch.as_tensor(train.ivar),
            torch.as_tensor(train.label_array(LABELS), dtype=torch.float32),
            n_iter=n_iter,
        )
    except FlowInputError as err:
        print(f"  no polish: {err}")
        return None
    changes = [round(step.max_log_tau2_change, 3) for step in steps]
    print(f"  polished: largest change of log tau^2 per iteration {changes}")
    return polished


def _evaluate(trained, test, truth, inlier, naive: bool, n_reference: int) -> dict:
    data = _naive(test) if naive else test
    context = test.label_array(LABELS)
    context_err = None
    if trained.config.label_errors:
        context_err = test.label_array([f"{name}_ERR" for name in LABELS])
    scores = calibrate_log_prob(
        trained.model,
        data.flux,
        data.ivar,
        context,
        context_err=context_err,
        n_reference=n_reference,
    )
    snr = np.asarray(truth["SNR"], dtype=np.float64)
    oracle = np.asarray(truth["log_prob_oracle"], dtype=np.float64)
    ok = inlier & np.isfinite(scores.z)
    low = ok & (snr < LOW_SNR)
    n_good = (~test.mask).sum(1)
    rho = stats.spearmanr(snr[ok], scores.z[ok]).statistic
    rho_raw = stats.spearmanr(snr[ok], scores.log_prob[ok] / n_good[ok]).statistic
    # where the S/N dependence comes from: median z by S/N quintile, and at the top S/N
    # quartile by label edge (the scatter at fixed labels shows only where noise is small)
    edges = np.quantile(snr[ok], np.linspace(0, 1, 6))
    by_snr = [
        float(np.median(scores.z[ok & (snr >= a) & (snr <= b)]))
        for a, b in itertools.pairwise(edges)
    ]
    high = ok & (snr >= np.quantile(snr[ok], 0.75))
    by_label = {}
    for name, column in zip(LABELS, context.T, strict=True):
        low_cut, high_cut = np.quantile(column[ok], [0.1, 0.9])
        for side, chosen in (("low", column <= low_cut), ("high", column >= high_cut)):
            by_label[f"{name}_{side}10"] = float(np.median(scores.z[high & chosen]))
    return {
        "median_z_by_snr_quintile": by_snr,
        "high_snr_median_z_at_label_edges": by_label,
        "spearman_snr_z": float(rho),
        "spearman_snr_log_prob_per_pixel": float(rho_raw),
        "median_z": float(np.median(scores.z[ok])),
        "calibration_method": scores.method,
        "n_low_snr": int(low.sum()),
        "low_snr_nats_per_pixel": float(scores.log_prob[low].sum() / n_good[low].sum()),
        "low_snr_gap": float((oracle[low] - scores.log_prob[low]).sum() / n_good[low].sum()),
        "all_gap": float((oracle[ok] - scores.log_prob[ok]).sum() / n_good[ok].sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survey", type=Path, default=None)
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=5_000)
    parser.add_argument("--n-pixels", type=int, default=None)
    parser.add_argument("--models", default="factor_analysis:n_latent=16,latent_flow:n_latent=16")
    parser.add_argument("--reuse", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--time-limit", type=float, default=30.0, help="minutes per model")
    parser.add_argument("--out", type=Path, default=Path("noise-benchmark"))
    parser.add_argument("--point", default="TEFF=4750,LOGG=2.5,FE_H=0")
    parser.add_argument(
        "--within",
        default="",
        metavar="RANGES",
        help="train local models on the stars in these label ranges (TrainConfig.within, "
        "e.g. TEFF=4450:5050,LOGG=1.9:3.1,FE_H=-0.3:0.3) and evaluate on the test stars in "
        "them",
    )
    parser.add_argument("--n-reference", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--extra-models",
        default="",
        help="comma-separated trained model directories to evaluate beside them (aware)",
    )
    parser.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=10,
        help="epochs of the label-errors model, started from the aware model",
    )
    parser.add_argument(
        "--fine-tune-polish",
        type=int,
        default=0,
        help="fine-tune the label-errors model by N ECM iterations instead of Adam epochs",
    )
    parser.add_argument(
        "--polish",
        type=int,
        default=0,
        help="also evaluate each aware factor-analysis model after N ECM iterations",
    )
    parser.add_argument(
        "--no-naive",
        action="store_true",
        help="skip the noise-ignorant model (when it is already measured in another run)",
    )
    parser.add_argument(
        "--label-errors",
        action="store_true",
        help="also train the aware model with the labels' own errors (<LABEL>_ERR columns)",
    )
    args = parser.parse_args(argv)
    args.within = parse_label_ranges(args.within)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sf-noise-"))
    survey_path = args.survey or work / "mock.h5"
    n_total = args.n_train + args.n_test
    if not survey_path.exists():
        config = MockConfig(n_stars=n_total, n_pixels=args.n_pixels, seed=args.seed)
        write_mock_survey(survey_path, config, progress=False)
    with open_survey(survey_path) as survey:
        mock_config = MockConfig.from_dict(survey.meta["mock_config"])
        train = survey.read(0, args.n_train)
        test = survey.read(survey.n_stars - args.n_test, survey.n_stars)
        truth = survey.read_table("truth/labels")[survey.n_stars - args.n_test :]
    if args.within:  # local models: judged on the test stars of their region
        inside = np.isin(test.star_id, select_within(test, args.within).star_id)
        test, truth = test[np.flatnonzero(inside)], truth[inside]
    inlier = np.asarray(truth["outlier_kind"]) == ""
    point = parse_label_point(args.point)
    known = spectra_at_labels(mock_config, point, 2000)
    known_std = known.std(0)
    signal = known_std >= SIGNAL
    print(
        f"{train.n_stars} train / {test.n_stars} test x {train.n_pixels} pixels; "
        f"{int(inlier.sum())} test inliers, {int((inlier & (truth['SNR'] < LOW_SNR)).sum())} "
        f"at S/N < {LOW_SNR:g}; {int(signal.sum())} signal pixels at {args.point}"
    )
    near = stars_near(train.labels, point, min_stars=50)
    snr_train = np.asarray(train.labels["SNR"]) if "SNR" in train.labels.colnames else train.snr()
    near_low = near[snr_train[near] < LOW_SNR][:20]

    results = {}
    samples = {}

    def evaluate_row(trained, naive: bool = False) -> tuple[dict, np.ndarray]:
        row = _evaluate(trained, test, truth, inlier, naive, args.n_reference)
        std = _intrinsic_std(trained.model, point)
        row.update(_scatter_ratio(std[signal] / known_std[signal]))
        return row, std

    def add_polished(name: str, trained) -> None:
        polished = _polished(trained.model, train, args.polish)
        if polished is not None:
            key = f"{name} + ECM {args.polish}"
            results[key], _ = evaluate_row(dataclasses.replace(trained, model=polished))
            print(json.dumps({"model": key, **results[key]}))

    for spec in filter(None, args.models.split(",")):
        name = directory_name(spec)
        aware_dir = args.reuse / name if args.reuse else None
        if aware_dir is None or not (aware_dir / "model.pt").exists():
            aware_dir = _train(train, spec, work / name, args)
        variants = [("aware", aware_dir)]
        if not args.no_naive:
            naive_dir = args.reuse / f"{name}_naive" if args.reuse else None
            if naive_dir is None or not (naive_dir / "model.pt").exists():
                naive_dir = _train(_naive(train), spec, work / f"{name}_naive", args)
            variants.append(("naive", naive_dir))
        if args.label_errors:
            # label errors add no parameters: fine-tune the aware model with them
            labels_dir = _train(
                train, spec, work / f"{name}_label_errors", args, True, init_from=aware_dir
            )
            variants.insert(1, ("aware+label errors", labels_dir))
        for variant, path in variants:
            trained = load_model(path)
            trained.model.eval()
            row, std = evaluate_row(trained, naive=variant == "naive")
            results[f"{spec} {variant}"] = row
            samples[f"{spec} {variant}"] = (_noise_free_samples(trained.model, point, 20), std)
            print(json.dumps({"model": f"{spec} {variant}", **row}))
            if args.polish and variant == "aware":
                add_polished(f"{spec} {variant}", trained)

    for path in filter(None, args.extra_models.split(",")):
        trained = load_model(path)
        trained.model.eval()
        results[Path(path).name], _ = evaluate_row(trained)
        print(json.dumps({"model": path, **results[Path(path).name]}))
        if args.polish:
            add_polished(Path(path).name, trained)

    print()
    header = (
        f"{'model':<40} {'rho(S/N,z)':>10} {'rho raw':>8} {'lowSN nats/pix':>14} "
        f"{'lowSN gap':>9} {'gap':>7} {'scatter ratio p10/50/90':>24} {'in 0.8-1.25':>11}"
    )
    print(header)
    for key, r in results.items():
        print(
            f"{key:<40} {r['spearman_snr_z']:>10.3f} {r['spearman_snr_log_prob_per_pixel']:>8.3f} "
            f"{r['low_snr_nats_per_pixel']:>14.4f} {r['low_snr_gap']:>9.4f} {r['all_gap']:>7.4f} "
            f"{r['scatter_ratio_p10']:>8.2f}/{r['scatter_ratio_median']:.2f}/"
            f"{r['scatter_ratio_p90']:.2f} {r['scatter_ratio_in_0.8_1.25']:>11.2f}"
        )
    (args.out / "noise.json").write_text(json.dumps(results, indent=2))
    _figures(args.out, train, near_low, samples, known, known_std, point)
    return 0


def _figures(out, train, near_low, samples, known, known_std, point) -> None:
    wave = train.wavelength
    centre = wave[np.argmax(known_std)]
    window = (wave >= centre - 15) & (wave <= centre + 15)
    w = wave[window]
    panels = [("observed, S/N < 60, near the point", train.flux[near_low], "k")]
    panels += [(f"{key}: noise-free samples", s, "C0") for key, (s, _) in samples.items()]
    panels.append(("mock truth at these labels", known[:20], "C2"))
    figure, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, 1.9 * len(panels)),
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    for ax, (title, flux, colour) in zip(axes, panels, strict=True):
        for row in flux[:12]:
            ax.plot(w, row[window], color=colour, lw=0.5, alpha=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("flux")
    axes[-1].set_xlabel("vacuum wavelength [Å]")
    label = ", ".join(f"{k} = {v:g}" for k, v in point.items())
    figure.suptitle(f"spectra at {label}", fontsize=10)
    figure.savefig(out / "noise_samples.png", dpi=110)
    plt.close(figure)

    figure, ax = plt.subplots(figsize=(10, 3.5), layout="constrained")
    ax.plot(wave, known_std, color="k", lw=0.7, label="mock truth")
    for key, (_, std) in samples.items():
        ax.plot(wave, std, lw=0.6, alpha=0.8, label=key)
    ax.set_yscale("log")
    ax.set_ylim(1e-4, None)
    ax.set_xlabel("vacuum wavelength [Å]")
    ax.set_ylabel("intrinsic scatter at fixed labels")
    # below the axes: model specs are long, and an inside legend squeezes the plot away
    figure.legend(loc="outside lower center", fontsize=7, ncol=1)
    figure.savefig(out / "intrinsic_scatter.png", dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
