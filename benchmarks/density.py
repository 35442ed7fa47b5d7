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

No model of p(spectrum | labels) can reach the oracle: it does not know each star's
noise-free spectrum. ``--floor-stars N`` (default 500) estimates that irreducible part on N
test stars (:func:`stellarflow.mock.answers.likelihood_floor`: the information the spectrum
carries about the parameters the labels leave free, linearised) and prints each model's
excess over it, ``gap - floor``: the part a better model could still remove.
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
from _specs import directory_name, model_options
from astropy.table import Table

from stellarflow.analysis.score import score_survey
from stellarflow.data.dataset import SpectralDataset
from stellarflow.io.hdf5 import SurveyFile, open_survey
from stellarflow.mock import MockConfig, write_mock_survey
from stellarflow.mock.answers import likelihood_floor
from stellarflow.mock.spectra import SpectrumModel
from stellarflow.train.checkpoint import load_model
from stellarflow.train.config import TrainConfig
from stellarflow.train.loop import train_model

LABELS = ("TEFF", "LOGG", "FE_H")


def _complement_log_prob(
    residual: np.ndarray, ivar: np.ndarray, resid_var: np.ndarray, basis: np.ndarray
) -> np.ndarray:
    """log N(U^T r; 0, U^T S U) on the complement U of ``basis`` V, S = diag(v + 1/ivar).

    With W = S^-1 (0 at masked pixels), det(U^T S U) = det S det(V^T W V) and
    (U^T S U)^-1 = U^T (W - W V (V^T W V)^-1 V^T W) U, evaluated per star in chunks.
    """
    out = np.empty(len(residual))
    v = torch.as_tensor(basis)
    for start in range(0, len(residual), 128):
        sl = slice(start, start + 128)
        obs = torch.as_tensor(ivar[sl] > 0)
        noise = torch.as_tensor(np.where(ivar[sl] > 0, 1 / np.where(ivar[sl] > 0, ivar[sl], 1), 1))
        total = torch.as_tensor(resid_var) + noise
        w = torch.where(obs, 1 / total, torch.zeros_like(total))
        r = torch.where(obs, torch.as_tensor(residual[sl]), torch.zeros_like(total))
        vwv = torch.einsum("pn,sp,pm->snm", v, w, v)
        b = torch.einsum("pn,sp->sn", v, w * r)
        chol = torch.linalg.cholesky(vwv)
        sol = torch.cholesky_solve(b[..., None], chol)[..., 0]
        quad = (w * r * r).sum(1) - (b * sol).sum(1)
        log_det = torch.where(obs, total.log(), torch.zeros_like(total)).sum(1)
        log_det = log_det + 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(1)
        dim = obs.sum(1) - v.shape[1]
        out[sl] = (-0.5 * (quad + log_det + dim * np.log(2 * np.pi))).numpy()
    return out


def pca_maf_baseline(train, test, n_components: int, time_limit: float, seed: int) -> dict:
    """Baseline (c): a zuko MAF on PCA coefficients with a per-pixel Gaussian residual.

    PCA of the training flux (masked pixels filled with the per-pixel median) keeps
    ``n_components`` orthonormal directions V; a conditional MAF (3 transforms, 2 x 256
    hidden) models the standardised coefficients c = V^T (x - m) given the labels; the
    residual r = x - m - V c is modelled as independent Gaussians with a per-pixel variance
    (fitted on the training set, minus the mean noise variance) plus each star's own noise,
    restricted to the (P - n)-dimensional complement of the basis (unit Jacobian, so the
    density is normalised; see :func:`_complement_log_prob`). Approximate in that the
    coefficients of a noisy or masked spectrum are not separated from its noise: the usual
    "flow on compressed spectra" recipe of the literature.
    """
    import zuko

    torch.manual_seed(seed)
    fill = np.nanmedian(np.where(train.mask, np.nan, train.flux), axis=0)

    def filled(d):
        return np.where(d.mask, fill, d.flux).astype(np.float64)

    x = filled(train)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x[:: max(1, len(x) // 5000)] - mean, full_matrices=False)
    basis = vt[:n_components].T  # (P, n)

    def split(d):
        xf = filled(d)
        c = (xf - mean) @ basis
        r = xf - mean - c @ basis.T
        return c, r

    c_train, r_train = split(train)
    noise_var = np.where(train.ivar > 0, 1 / np.where(train.ivar > 0, train.ivar, 1), np.nan)
    resid_var = np.nanmean(np.where(train.mask, np.nan, r_train**2), 0) - np.nanmean(noise_var, 0)
    resid_var = np.maximum(resid_var, 1e-8)
    c_loc, c_scale = c_train.mean(0), c_train.std(0)
    l_train = train.label_array(LABELS)
    l_loc, l_scale = l_train.mean(0), l_train.std(0)

    def tensors(c, labels):
        return (
            torch.as_tensor((c - c_loc) / c_scale, dtype=torch.float32),
            torch.as_tensor((labels - l_loc) / l_scale, dtype=torch.float32),
        )

    flow = zuko.flows.MAF(n_components, len(LABELS), transforms=3, hidden_features=(256, 256))
    ct, lt = tensors(c_train, l_train)
    n_val = len(ct) // 10
    cv, lv, ct, lt = ct[:n_val], lt[:n_val], ct[n_val:], lt[n_val:]
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    started = time.perf_counter()
    best, best_state, epochs, since = -np.inf, None, 0, 0
    while time.perf_counter() - started < 60 * time_limit and since < 10:
        order = torch.randperm(len(ct))
        for i in range(0, len(ct), 512):
            rows = order[i : i + 512]
            loss = -flow(lt[rows]).log_prob(ct[rows]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epochs += 1
        with torch.no_grad():
            val = flow(lv).log_prob(cv).mean().item()
        if val > best:
            best, since = val, 0
            best_state = {k: v.clone() for k, v in flow.state_dict().items()}
        else:
            since += 1
    train_s = time.perf_counter() - started
    flow.load_state_dict(best_state)
    n_params = sum(p.numel() for p in flow.parameters()) + basis.size + 2 * mean.size

    score_started = time.perf_counter()
    c_test, r_test = split(test)
    ct_test, lt_test = tensors(c_test, test.label_array(LABELS))
    with torch.no_grad():
        lp_c = flow(lt_test).log_prob(ct_test).double().numpy() - np.log(c_scale).sum()
    lp = lp_c + _complement_log_prob(r_test, test.ivar, resid_var, basis)
    score_s = time.perf_counter() - score_started
    return {
        "log_prob": lp,
        "parameters": int(n_params),
        "epochs": epochs,
        "train_s": train_s,
        "score_s": score_s,
    }


def estimate_floor(
    survey: SurveyFile, truth: Table, test: SpectralDataset, n_train: int, n_stars: int
) -> float:
    """The irreducible gap, nats per usable pixel, over the first ``n_stars`` test stars
    (local spreads from the training stars' truth); printed with its spread."""
    started = time.perf_counter()
    labels = survey.read_table("labels")  # measured labels of every star, file order
    measured = np.column_stack([np.asarray(labels[n], dtype=np.float64) for n in LABELS])
    spectrum_model = SpectrumModel(survey.read_table("truth/linelist"), test.wavelength)
    first = len(truth) - test.n_stars
    n = min(n_stars, test.n_stars)
    targets = np.arange(first, first + n)
    normal = np.asarray(truth["outlier_kind"]).astype(str)[:n_train] == ""
    ivar = np.asarray(test.ivar[:n], dtype=np.float64)
    per_star = likelihood_floor(
        truth, measured, ivar, spectrum_model, targets, pool=np.flatnonzero(normal)
    )
    n_good = (ivar > 0).sum(1)
    per_pixel = per_star.sum() / n_good.sum()
    print(
        f"floor: {per_pixel:.5f} nats/pixel on {n} test stars (median {np.median(per_star):.1f}"
        f" nats per star, 10-90%: {np.percentile(per_star, 10):.1f}-"
        f"{np.percentile(per_star, 90):.1f}); {time.perf_counter() - started:.0f} s"
    )
    return float(per_pixel)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=5_000)
    parser.add_argument("--n-pixels", type=int, default=None, help="default: 7,514")
    parser.add_argument(
        "--models",
        default="cannon,factor_analysis:n_latent=8,factor_analysis:n_latent=16,latent_flow",
        help="comma-separated kind[:opt=value;opt=value] specs (init_from=MODEL_DIR: staged "
        "training from that model, whose own training time is not included; epochs, "
        "time_limit (minutes) and learning_rate override the run's for that model; polish=N "
        "adds N ECM iterations to a factor_analysis model, with epochs=0 instead of Adam); kind "
        "pca_maf[:n_components=64] is baseline (c), a zuko MAF on PCA coefficients",
    )
    parser.add_argument("--time-limit", type=float, default=30.0, help="minutes per model")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--survey", type=Path, default=None, help="reuse/keep this mock file")
    parser.add_argument("--out", type=Path, default=None, help="keep model directories here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--floor-stars",
        type=int,
        default=500,
        help="test stars on which to estimate the irreducible gap (0: skip)",
    )
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
        all_truth = survey.read_table("truth/labels")
        truth = all_truth[survey.n_stars - args.n_test :]
        floor = None
        if args.floor_stars > 0:
            floor = estimate_floor(survey, all_truth, test, args.n_train, args.floor_stars)
    oracle = np.asarray(truth["log_prob_oracle"], dtype=np.float64)
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {train.n_stars} train / {test.n_stars} test stars "
        f"x {train.n_pixels} pixels; labels {','.join(LABELS)}"
    )

    rows = []
    n_good = (~test.mask).sum(1).astype(np.float64)
    for spec in args.models.split(","):
        kind, options = model_options(spec)
        if kind == "pca_maf":
            result = pca_maf_baseline(
                train, test, options.get("n_components", 64), args.time_limit, args.seed
            )
            lp = result["log_prob"]
            rows.append(
                {
                    "model": spec,
                    "parameters": result["parameters"],
                    "exact": False,
                    "epochs": result["epochs"],
                    "stopped": "converged",
                    "train_s": result["train_s"],
                    "train_per_s": result["epochs"] * 0.9 * train.n_stars / result["train_s"],
                    "score_per_s": test.n_stars / result["score_s"],
                    "nats_per_pixel": lp.sum() / n_good.sum(),
                    "gap": (oracle - lp).sum() / n_good.sum(),
                }
            )
            print(json.dumps(rows[-1]))
            continue
        out = (args.out or work) / directory_name(spec)
        init_from = options.pop("init_from", None)  # staged training: start from that model
        training = {
            "epochs": options.pop("epochs", args.epochs),
            "time_limit": options.pop("time_limit", args.time_limit),
            "learning_rate": options.pop("learning_rate", TrainConfig.learning_rate),
            # "polish=N" (factor analysis): N ECM iterations after training; with
            # "epochs=0" the model is fitted by ECM alone from the warm start
            "polish_iterations": options.pop("polish", 0),
        }
        config = TrainConfig(
            label_names=LABELS,
            model=kind,
            model_options=options,
            init_from=init_from,
            seed=args.seed,
            **training,
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
        ecm = trained.metadata.get("polish", {}).get("iterations_kept", 0)
        rows.append(
            {
                "model": spec,
                "parameters": trained.metadata["n_parameters"],
                "exact": trained.metadata["log_prob_is_exact"],
                "epochs": epochs,
                "ecm_iterations": ecm,
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
    lowest = floor if floor is not None else float("nan")
    print()
    print(
        f"{'model':<34} {'params':>9} {'exact':>5} {'ep+ECM':>6} {'train s':>8} "
        f"{'train sp/s':>10} {'score sp/s':>10} {'nats/pix':>9} {'gap':>8} {'gap/FA':>7} "
        f"{'gap-floor':>9} {'excess/FA':>9}"
    )
    for r in rows:
        excess = r["gap"] - lowest
        print(
            f"{r['model']:<34} {r['parameters']:>9d} {r['exact']!s:>5} "
            f"{str(r['epochs']) + '+' + str(r.get('ecm_iterations', 0)):>6} "
            f"{r['train_s']:>8.0f} {r['train_per_s']:>10.0f} {r['score_per_s']:>10.0f} "
            f"{r['nats_per_pixel']:>9.4f} {r['gap']:>8.5f} {r['gap'] / best_fa:>7.2f} "
            f"{excess:>9.5f} {excess / (best_fa - lowest):>9.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
