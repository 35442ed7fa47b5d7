"""Benchmark: held-out log-likelihood of the model families on the mock survey, vs the oracle.

Usage::

    python benchmarks/density.py [--n-train 20000] [--n-test 5000] [--n-pixels P]
        [--models cannon,factor_analysis,latent_flow] [--time-limit MIN] [--survey PATH]

Generates (or reuses) a mock survey, trains each model on the first ``n_train`` stars with
the package's training loop (same split, seed and time budget), scores the last ``n_test``
stars with their own noise and masks, and prints, per model: parameter count, training wall
time and throughput (spectra/s), scoring throughput, held-out log-likelihood in nats per
usable pixel, and the gap to the mock's oracle (the exact log-density of each noisy spectrum
given its true noiseless spectrum) in nats per usable pixel, plus the gap relative to the
best factor-analysis model of the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stellarflow.analysis.score import score_survey
from stellarflow.io.hdf5 import open_survey
from stellarflow.mock import MockConfig, write_mock_survey
from stellarflow.train.checkpoint import load_model
from stellarflow.train.config import TrainConfig
from stellarflow.train.loop import train_model

LABELS = ("TEFF", "LOGG", "FE_H")


def _model_options(spec: str) -> tuple[str, dict]:
    """``"factor_analysis:n_latent=16"`` -> ("factor_analysis", {"n_latent": 16})."""
    kind, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        options[key] = json.loads(value)
    return kind, options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=5_000)
    parser.add_argument("--n-pixels", type=int, default=None, help="default: 7,514")
    parser.add_argument(
        "--models",
        default="cannon,factor_analysis:n_latent=8,factor_analysis:n_latent=16,latent_flow",
        help="comma-separated kind[:opt=value;opt=value] specs",
    )
    parser.add_argument("--time-limit", type=float, default=30.0, help="minutes per model")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--survey", type=Path, default=None, help="reuse/keep this mock file")
    parser.add_argument("--out", type=Path, default=None, help="keep model directories here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    work = Path(tempfile.mkdtemp(prefix="sf-density-"))
    survey_path = args.survey or work / "mock.h5"
    n_total = args.n_train + args.n_test
    if not survey_path.exists():
        started = time.perf_counter()
        write_mock_survey(
            survey_path,
            MockConfig(n_stars=n_total, n_pixels=args.n_pixels, seed=args.seed),
            progress=False,
        )
        print(f"mock: {n_total} stars in {time.perf_counter() - started:.0f} s")
    with open_survey(survey_path) as survey:
        if survey.n_stars < n_total:
            raise SystemExit(f"{survey_path} has {survey.n_stars} stars; need {n_total}")
        train = survey.read(0, args.n_train)
        test = survey.read(survey.n_stars - args.n_test, survey.n_stars)
        truth = survey.read_table("truth/labels")[survey.n_stars - args.n_test :]
    oracle = np.asarray(truth["log_prob_oracle"], dtype=np.float64)
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {train.n_stars} train / {test.n_stars} test stars "
        f"x {train.n_pixels} pixels; labels {','.join(LABELS)}"
    )

    rows = []
    for spec in args.models.split(","):
        kind, options = _model_options(spec)
        out = (args.out or work) / spec.replace(":", "_").replace(";", "_").replace("=", "")
        config = TrainConfig(
            label_names=LABELS,
            model=kind,
            model_options=options,
            epochs=args.epochs,
            time_limit=args.time_limit,
            seed=args.seed,
        )
        result = train_model(train, config, out, overwrite=True)
        trained = load_model(out)
        trained.model.eval()
        started = time.perf_counter()
        scores = score_survey(trained, test, chunk_size=1024)
        score_seconds = time.perf_counter() - started
        log_prob = np.asarray(scores["log_prob"], dtype=np.float64)
        n_good = np.asarray(scores["n_good_pixels"], dtype=np.float64)
        ok = np.isfinite(log_prob)
        per_pixel = log_prob[ok].sum() / n_good[ok].sum()
        gap = (oracle[ok] - log_prob[ok]).sum() / n_good[ok].sum()
        epochs = result.epochs_run
        rows.append(
            {
                "model": spec,
                "parameters": trained.metadata["n_parameters"],
                "exact": trained.metadata["log_prob_is_exact"],
                "epochs": epochs,
                "stopped": result.stopped,
                "train_s": result.seconds,
                "train_per_s": epochs * train.n_stars / result.seconds,
                "score_per_s": test.n_stars / score_seconds,
                "nats_per_pixel": per_pixel,
                "gap": gap,
            }
        )
        print(json.dumps(rows[-1]))

    fa = [r["gap"] for r in rows if r["model"].startswith("factor_analysis")]
    best_fa = min(fa) if fa else float("nan")
    print()
    print(
        f"{'model':<34} {'params':>9} {'exact':>5} {'epochs':>6} {'train s':>8} "
        f"{'train sp/s':>10} {'score sp/s':>10} {'nats/pix':>9} {'gap':>8} {'gap/FA':>7}"
    )
    for r in rows:
        print(
            f"{r['model']:<34} {r['parameters']:>9d} {r['exact']!s:>5} {r['epochs']:>6d} "
            f"{r['train_s']:>8.0f} {r['train_per_s']:>10.0f} {r['score_per_s']:>10.0f} "
            f"{r['nats_per_pixel']:>9.4f} {r['gap']:>8.5f} {r['gap'] / best_fa:>7.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
