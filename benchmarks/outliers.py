"""Benchmark: finding and explaining injected chemical outliers on the mock survey.

Usage::

    python benchmarks/outliers.py [--n-train 20000] [--n-test 10000] [--n-pixels 1024]
        [--pixel-offset 4608] [--outlier-fraction 0.005] [--time-limit MIN]
        [--survey PATH] [--model DIR] [--cannon DIR] [--work DIR]
    python benchmarks/outliers.py --throughput-only --survey PATH --model DIR

One mock survey of ``n_train + n_test`` stars (outliers injected at ``outlier_fraction`` in
both parts, six kinds, :mod:`stellarflow.mock.outliers`); the model (factor analysis by
default) and a Cannon are trained on the first ``n_train`` stars with the package's loop;
:func:`~stellarflow.analysis.outliers.find_outliers` ranks the last ``n_test``. Printed, in
the same run, for our ranking and the baselines:

* ROC AUC (injected vs normal) overall and per kind; precision at k (k = number injected);
  recall per kind at k.
* Attribution: among our caught outliers (injected and in the top k), the fraction whose
  ``top_element`` is an injected element. **The injected element(s)** of a star: among the
  elements its kind shifts that have lines on the grid (in the line list's evidence
  elements), those whose shift at the star's amplitude is at least 2/3 of the largest
  (Ce_rich -> Ce; Nd_rich -> Nd; Na_rich -> Na; Mg_poor_Al_rich -> Al, or Mg without Al
  lines on the grid; N_rich_C_poor -> N, plus C at low or Al at high amplitude; alpha_poor
  -> any of O, Mg, Si, S, Ca, Ti). Also whether the direction (enhanced/depleted) matches the
  sign of that element's shift, and the same numbers for the other expectation.
* Rankings by the line-list test ``p_lines`` (``find_outliers``' default with a line
  list), by ``p_combined`` and by the whole spectrum's ``p_tail``, each under the model,
  against the survey reference (the default for 2,000 or more stars), against the model
  directory's validation-split references (fitted here on the recomputed split for models
  trained before them, as ``stellarflow train`` does) and among neighbours; the strongest
  element alone. The default is printed first.
* Calibration: Kolmogorov-Smirnov test of ``p_tail`` and of ``p_lines`` of the normal stars
  against U(0, 1) under each calibration, and the fractions of them beyond 1e-3, 1e-4, 1e-6.
* Baselines: (a) Isolation Forest on PCA coefficients (only if scikit-learn is installed;
  it is not a dependency), (b) PCA reconstruction error (mean squared residual per usable
  pixel, and the noise-weighted chi-square per pixel), (c) Cannon-style chi-square given the
  labels (exact chi-square tail of a trained ``cannon`` model).

Stars with too few usable pixels are left out of every metric (no method can score them);
stars our method flags (labels outside the training support, failures) count as not
detected by it, while the baselines rank them.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _specs import option_pair, train_on_first
from astropy.table import Table
from scipy import stats

from stellarflow.analysis.calibrate import calibrate_log_prob
from stellarflow.analysis.explain import (
    element_profiles,
    element_tests,
    line_depth,
    line_test_fingerprint,
)
from stellarflow.analysis.outliers import (
    explain_stars,
    find_outliers,
    line_test_scores,
    recalibrate_by_neighbours,
    recalibrate_by_reference,
    recalibrate_by_survey,
)
from stellarflow.analysis.reference import fit_reference, load_reference, reference_scores
from stellarflow.io.hdf5 import open_survey
from stellarflow.mock import MockConfig, write_mock_survey
from stellarflow.mock.outliers import dominant_elements
from stellarflow.train.batches import split_blocks
from stellarflow.train.checkpoint import load_model

LABELS = ("TEFF", "LOGG", "FE_H")
EXPECTATIONS = ("latent_fit", "labels")


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / n_pos n_neg; ties count one half)."""
    ranks = stats.rankdata(score)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def top_k(score: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k highest scores (ties broken by position)."""
    chosen = np.zeros(score.size, dtype=bool)
    chosen[np.argsort(-score, kind="stable")[:k]] = True
    return chosen


def pca_scores(train, test, n_components: int, n_fit: int = 5000) -> dict[str, np.ndarray]:
    """PCA reconstruction error: MSE per usable pixel and noise-weighted chi2 per pixel."""
    fill = np.nanmean(np.where(train.mask, np.nan, train.flux), axis=0)
    x = np.where(train.mask, fill, train.flux).astype(np.float64)[: max(n_fit, n_components)]
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    basis = vt[:n_components].T
    xt = np.where(test.mask, fill, test.flux).astype(np.float64) - mean
    resid = xt - (xt @ basis) @ basis.T
    good = ~test.mask
    n_good = np.maximum(good.sum(1), 1)
    out = {
        "pca_mse": np.where(good, resid**2, 0).sum(1) / n_good,
        "pca_chi2": np.where(good, resid**2 * test.ivar, 0).sum(1) / n_good,
        "_coefficients": xt @ basis,
        "_train_coefficients": (x - mean) @ basis,
    }
    return out


def isolation_forest(train_coef: np.ndarray, test_coef: np.ndarray, seed: int) -> np.ndarray | None:
    """Baseline (a), only where scikit-learn is importable (it is not a dependency)."""
    try:
        from sklearn.ensemble import IsolationForest
    except ImportError:
        return None
    forest = IsolationForest(n_estimators=200, random_state=seed).fit(train_coef)
    return -forest.score_samples(test_coef)


def train(survey_path: Path, n_train: int, kind: str, out: Path, args) -> float:
    """Train ``kind`` on the first ``n_train`` stars; return seconds."""
    options = {"n_latent": args.n_latent, **dict(args.option)} if kind != "cannon" else {}
    polish = args.polish if kind == "factor_analysis" else 0
    return train_on_first(survey_path, n_train, kind, options, out, epochs=args.epochs,
                          time_limit=args.time_limit, seed=args.seed, labels=LABELS,
                          polish=polish)  # fmt: skip


def attribution(
    rows, truth, available: set[str], lenient: bool = False
) -> tuple[float, float, int]:
    """Fraction of rows whose top element is injected, and with the right direction.

    Strict: the injected element(s) as in the module docstring. Lenient: any element the
    kind shifts by at least 0.1 dex at the star's amplitude.
    """
    hits = right_way = 0
    for star_id, element, direction in rows:
        kind, amplitude = truth[star_id]
        expected, shifts = dominant_elements(kind, amplitude, available)
        if lenient:
            expected = {el for el, v in shifts.items() if abs(v) >= 0.1}
        if element in expected:
            hits += 1
            sign = "enhanced" if shifts[element] > 0 else "depleted"
            right_way += direction == sign
    n = max(len(rows), 1)
    return hits / n, right_way / n, len(rows)


def _top(star_id: str, elements: tuple[str, ...], evidence: np.ndarray) -> tuple:
    j = int(np.argmax(np.abs(evidence)))
    return star_id, elements[j], "enhanced" if evidence[j] > 0 else "depleted"


def explanation_variants(trained, test, caught, linelist) -> dict[str, list[tuple]]:
    """Top elements of the caught outliers under the explanation variants compared.

    Residual from the star's latent fit (conditional evidence) or from the label-conditional
    mean (marginal evidence), each element's template fitted alone or all jointly, and, for
    comparison, an independent-pixel filter that ignores the latent factors
    (:func:`stellarflow.analysis.explain.element_tests`).
    """
    out: dict[str, list[tuple]] = {}
    names = {"latent_fit": "conditional", "labels": "marginal"}
    for expectation in EXPECTATIONS:
        details = explain_stars(trained, test, list(caught), linelist=linelist,
                                expectation=expectation)  # fmt: skip
        for joint in (True, False):
            picked, naive = [], []
            for e in details:
                m = e.model_terms
                args = ((e.flux - e.expected)[None], m.variance, line_depth(m.expected),
                        e.profiles, e.mask[None])  # fmt: skip
                tests = element_tests(*args, m.loading, m.latent_cov, given_fit=m.given_fit,
                                      joint=joint)  # fmt: skip
                evidence = tests.evidence[0]
                picked.append(_top(e.star_id, e.elements, evidence))
                args = (args[0], (e.spread**2)[None], *args[2:])
                evidence = element_tests(*args, joint=joint).evidence[0]
                naive.append(_top(e.star_id, e.elements, evidence))
            fit = "joint" if joint else "single"
            out[f"{names[expectation]}, {fit}"] = picked
            out[f"{names[expectation]}, {fit}, independent pixels"] = naive
    return out


def throughput(survey_path: Path, model_dir: Path, chunk_size: int) -> None:
    """Time ``find_outliers`` over a whole survey file and print spectra/s and peak RSS."""
    trained = load_model(model_dir)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open_survey(survey_path) as survey:
        started = time.perf_counter()
        table = find_outliers(trained, survey, chunk_size=chunk_size, progress=True)
        seconds = time.perf_counter() - started
        n, p = survey.n_stars, survey.n_pixels
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"find_outliers: {n} stars x {p} pixels in {seconds:.1f} s = {n / seconds:.0f} "
        f"spectra/s; peak RSS {peak:.0f} MB ({before:.0f} MB before); "
        f"{table.meta['flag_counts']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--n-pixels", type=int, default=1024, help="0 = all 7,514")
    parser.add_argument("--pixel-offset", type=int, default=4608)
    parser.add_argument("--outlier-fraction", type=float, default=0.005)
    parser.add_argument("--model-kind", default="factor_analysis")
    parser.add_argument("--n-latent", type=int, default=8)
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        type=option_pair,
        help="more model options, KEY=JSON_VALUE (repeatable), e.g. label_dependent_variance=true",
    )
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument(
        "--polish",
        type=int,
        default=0,
        help="fit a factor_analysis model by N ECM iterations instead of Adam epochs",
    )
    parser.add_argument("--time-limit", type=float, default=3.0, help="minutes per model")
    parser.add_argument("--pca-components", type=int, default=20)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--survey", type=Path, default=None, help="reuse/keep this mock file")
    parser.add_argument("--model", type=Path, default=None, help="reuse this model directory")
    parser.add_argument("--cannon", type=Path, default=None, help="reuse this Cannon model")
    parser.add_argument("--work", type=Path, default=None, help="keep models here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--throughput-only", action="store_true")
    parser.add_argument(
        "--keep-table",
        type=Path,
        default=None,
        help="write the default (survey-recalibrated) table joined with the mock's truth here",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.throughput_only:
        throughput(args.survey, args.model, args.chunk_size)
        return 0

    work = args.work or Path(tempfile.mkdtemp(prefix="outliers-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    n_total = args.n_train + args.n_test
    survey_path = args.survey or work / "mock.h5"
    started = time.perf_counter()
    if not survey_path.exists():
        config = MockConfig(
            n_stars=n_total,
            n_pixels=args.n_pixels or None,
            pixel_offset=args.pixel_offset if args.n_pixels else 0,
            seed=args.seed,
            outlier_fraction=args.outlier_fraction,
        )
        write_mock_survey(survey_path, config)
        print(f"mock: {n_total} stars in {time.perf_counter() - started:.0f} s")
    timings = {}
    model_dir = args.model or work / args.model_kind
    if args.model is None:
        timings["train " + args.model_kind] = train(
            survey_path, args.n_train, args.model_kind, model_dir, args
        )
    cannon_dir = args.cannon or work / "cannon"
    if args.cannon is None:
        timings["train cannon"] = train(survey_path, args.n_train, "cannon", cannon_dir, args)

    trained, cannon = load_model(model_dir), load_model(cannon_dir)
    with open_survey(survey_path) as survey:
        linelist = survey.read_table("linelist")
        truth_table = survey.read_table("truth/labels")[args.n_train :]
        train_set = survey.read(0, args.n_train)
        test = survey.read(args.n_train, n_total)
    started = time.perf_counter()
    table = find_outliers(
        trained, test, linelist=linelist, chunk_size=args.chunk_size, recalibrate="none"
    )
    timings["find_outliers"] = time.perf_counter() - started
    config = trained.config
    _, val_blocks = split_blocks(
        args.n_train, config.block_size, config.validation_fraction, config.seed
    )
    reference = load_reference(model_dir)
    if reference is None:  # a model trained before references: fit one on its validation split
        started = time.perf_counter()
        chunks = (train_set.read(int(a), int(b)) for a, b in val_blocks)
        reference = fit_reference(
            *reference_scores(trained.model, chunks, LABELS, seed=args.seed), LABELS
        )
        timings["reference (validation split)"] = time.perf_counter() - started
    profiles = element_profiles(test.wavelength, linelist)
    fingerprint = line_test_fingerprint(profiles, "labels")
    lines_reference = load_reference(model_dir, lines=True)
    if lines_reference is None or lines_reference.linelist != fingerprint:  # as train does
        started = time.perf_counter()
        chunks = (train_set.read(int(a), int(b)) for a, b in val_blocks)
        scores = line_test_scores(trained.model, chunks, LABELS, profiles, seed=args.seed)
        lines_reference = replace(fit_reference(*scores, LABELS), linelist=fingerprint)
        timings["line-list reference (validation split)"] = time.perf_counter() - started
    for title, r in (("reference", reference), ("line-list reference", lines_reference)):
        print(
            f"{title}: {r.n_stars} held-out stars, degree {r.degree}, upper-tail dof "
            f"{r.dof:.3g}; z' quantiles {r.tail_check}"
        )
    by_reference = recalibrate_by_reference(table, reference, lines_reference)
    # what find_outliers(seed=args.seed) does by default ("auto") from 2,000 ranked stars
    by_survey = recalibrate_by_survey(table, LABELS, seed=args.seed)
    print(f"default recalibration: {by_survey.meta['recalibration']}")

    ids = np.asarray(test.star_id)
    kind = np.asarray(truth_table["outlier_kind"]).astype(str)
    amplitude = np.asarray(truth_table["outlier_amplitude"], dtype=np.float64)
    truth = dict(zip(ids, zip(kind, amplitude, strict=True), strict=True))

    def survey_order(recalibrated: Table) -> np.ndarray:
        """The table's rows in survey order."""
        by_id = {s: i for i, s in enumerate(recalibrated["star_id"])}
        return np.array([by_id[s] for s in ids])

    rows = survey_order(table)
    flag = np.asarray(table["flag"])[rows]
    usable = flag != "too_few_pixels"
    recal = recalibrate_by_neighbours(table, LABELS)

    if args.keep_table is not None:  # the default table in survey order, beside the truth
        kept = by_survey[survey_order(by_survey)]
        for name in ("outlier_kind", "outlier_amplitude", "SNR", "TEFF", "LOGG", "FE_H"):
            kept[f"true_{name}"] = np.asarray(truth_table[name])
        kept.write(args.keep_table, format="ascii.ecsv", overwrite=True)

    def column(recalibrated: Table, name: str) -> np.ndarray:
        """-log p of one statistic in survey order; flagged stars last."""
        rows = survey_order(recalibrated)
        return np.where(flag == "", -np.asarray(recalibrated[name])[rows], -np.inf)

    calibrations = {"survey reference": by_survey, "validation reference": by_reference,
                    "model calibration": table, "neighbour recal.": recal}  # fmt: skip
    statistics = {"line-list test (p_lines)": "log_p_lines",
                  "combined (p_combined)": "log_p_combined",
                  "whole spectrum (p_tail)": "log_p_tail"}  # fmt: skip
    name = f"stellarflow ({args.model_kind})"
    default = f"{name}, line-list test (p_lines) + survey reference (default)"
    scores = {default: column(by_survey, "log_p_lines")}
    for statistic, key in statistics.items():
        for calibration, recalibrated in calibrations.items():
            label = f"{name}, {statistic} + {calibration}"
            if f"{label} (default)" != default:
                scores[label] = column(recalibrated, key)
    scores[f"{name}, strongest element (p_element)"] = column(table, "log_p_element")
    ours_survey = scores[default]
    pca = pca_scores(train_set, test, args.pca_components)
    forest = isolation_forest(pca["_train_coefficients"], pca["_coefficients"], args.seed)
    if forest is None:
        print("(a) Isolation Forest: skipped, scikit-learn is not installed (not a dependency)")
    else:
        scores["(a) Isolation Forest on PCA"] = forest
    scores["(b) PCA recon. MSE"] = pca["pca_mse"]
    scores["(b) PCA recon. chi2/pixel"] = pca["pca_chi2"]
    started = time.perf_counter()
    cannon_scores = calibrate_log_prob(
        cannon.model, test.flux, test.ivar, test.label_array(LABELS), chunk_size=512
    )
    timings["cannon scores"] = time.perf_counter() - started
    scores["(c) Cannon chi2 | labels"] = -cannon_scores.log_p_tail

    injected = (kind != "") & usable
    kinds = sorted(set(kind[injected]))
    k = int(injected.sum())
    print(
        f"\ntest stars: {len(ids)} ({int(usable.sum())} with enough pixels); injected "
        f"outliers k = {k} ({', '.join(f'{x}: {int((kind[injected] == x).sum())}' for x in kinds)}"
        f"); flagged by us: {dict(zip(*np.unique(flag, return_counts=True), strict=True))}"
    )
    header = ["method", "AUC", "prec@k"] + [f"AUC {x}" for x in kinds]
    header += [f"rec@k {x}" for x in kinds]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, score in scores.items():
        s = np.where(np.isfinite(score), score, -np.inf)[usable]
        positive = injected[usable]
        chosen = top_k(s, k)
        cells = [name, f"{roc_auc(s, positive):.4f}", f"{positive[chosen].mean():.3f}"]
        sub_kind = kind[usable]
        for x in kinds:
            keep = (sub_kind == x) | ~positive
            cells.append(f"{roc_auc(s[keep], positive[keep]):.4f}")
        for x in kinds:
            cells.append(f"{chosen[sub_kind == x].mean():.2f}")
        print("| " + " | ".join(cells) + " |")

    available = set(table.meta["elements"])
    for calibration, recalibrated in calibrations.items():
        score = column(recalibrated, "log_p_lines")
        chosen = top_k(np.where(usable, score, -np.inf), k) & injected
        print(f"caught outliers (line-list test, {calibration}): {int(chosen.sum())} of {k}")
    chosen = top_k(np.where(usable, ours_survey, -np.inf), k) & injected
    for title, stars in (
        ("caught (survey reference, the default)", ids[chosen]),
        ("all injected", ids[injected]),
    ):
        print(f"\nattribution over {title}, n = {stars.size}: top element injected (strict | "
              "lenient), and with the right direction (strict)")  # fmt: skip
        variants = explanation_variants(trained, test, stars, linelist)
        own = dict(zip(by_survey["star_id"],
                       zip(by_survey["top_element"], by_survey["top_element_direction"],
                           strict=True), strict=True))  # fmt: skip
        variants = {"the table's top_element (default output)":
                    [(s, *own[s]) for s in stars], **variants}  # fmt: skip
        for name, picked in variants.items():
            strict, right_way, _ = attribution(picked, truth, available)
            lenient = attribution(picked, truth, available, lenient=True)[0]
            per_kind = []
            for x in kinds:
                sub = [r for r in picked if truth[r[0]][0] == x]
                if sub:
                    per_kind.append(f"{x} {attribution(sub, truth, available)[0]:.2f}")
            print(f"  {name}: {strict:.3f} | {lenient:.3f}, direction {right_way:.3f}; "
                  f"per kind (strict): {', '.join(per_kind)}")  # fmt: skip
    inliers = (kind == "") & (flag == "")
    for calibration, t in calibrations.items():
        r = survey_order(t)
        for p_name, z_name in (("p_tail", "z"), ("p_lines", "z_lines")):
            ks = stats.kstest(np.asarray(t[p_name])[r][inliers], "uniform")
            z = np.asarray(t[z_name])[r][inliers]
            beyond = [np.mean(np.asarray(t[p_name])[r][inliers] < q) for q in (1e-3, 1e-4, 1e-6)]
            print(
                f"calibration ({calibration}): KS of {p_name} on {inliers.sum()} normal stars "
                f"vs U(0,1): D = {ks.statistic:.4f}, p = {ks.pvalue:.3g}; their z: mean "
                f"{z.mean():.2f}, std {z.std():.2f}; fraction beyond 1e-3 / 1e-4 / 1e-6: "
                + " / ".join(f"{b:.2g}" for b in beyond)
            )
    for name, seconds in timings.items():
        print(f"time {name}: {seconds:.1f} s")
    n_test, n_pixels = len(ids), test.n_pixels
    print(
        f"find_outliers throughput: {n_test / timings['find_outliers']:.0f} spectra/s at "
        f"{n_pixels} pixels; peak RSS of this process "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
