"""Benchmark: rediscovering the mock's withheld lines from conditional pixel correlations.

Usage::

    python benchmarks/lines.py [--sizes 2000,20000] [--pixels N --pixel-offset K]
        [--n-samples 20000] [--point TEFF=4750,LOGG=2.5,FE_H=-0.1] [--survey PATH]
        [--work DIR] [--model SPEC] [--epochs 200] [--time-limit MIN] [--modes ...] [--cache]
        [--ablations]

One mock survey (default: ``max(sizes) + 2000`` stars on the chosen grid, seed 0; its
published line list hides ~20 lines of Fe, Si, Ni, Ti and Ce). For each training-set size
``n`` the model (``factor_analysis:n_latent=16`` by default; see ``_specs.py``) is trained
on the first ``n`` stars (reused from ``--work`` if already there), spectra are drawn at the
label point and :func:`~stellarflow.analysis.lines.find_lines` runs in each association
mode. The baseline (:func:`~stellarflow.analysis.lines.empirical_correlation`) uses the
same ``n`` stars' observed spectra in a narrow Teff/logg bin with the same machinery.

Scored against the withheld lines whose depth (in the baseline's fitted mean spectrum at the
point, nearest pixel) exceeds 3x the median noise of the training spectra:

* found = a candidate-new feature within one resolution element (lambda / 22,500) assigned
  to the withheld line's element; recall = found / eligible; precision = candidate-new
  features that find an eligible withheld line / all candidate-new features;
* detected (any element) and element accuracy among the detected;
* average precision over the significance threshold (candidate-new features ranked by
  significance, features at any threshold >= 2 sigma);
* the element confusion matrix (withheld element -> assigned element) of detected lines.

``--ablations`` adds, in the joint mode, the search with one default changed at a time
(``ABLATIONS``): the previous defaults (full-resolution-element cross-match, no nuisance
indices), no strong-line index, H as an element, the full window, and a cross-match that
counts only the feature's own element as known.

Also recorded: the time of the correlation analysis (sampling, accumulation, templates,
association, features) for the given pixels and ``--n-samples``.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
from _specs import directory_name, model_options, train_on_first

from stellarflow.analysis.correlation import read_correlation, write_correlation
from stellarflow.analysis.lines import empirical_correlation, find_lines, model_correlation
from stellarflow.analysis.sampling import parse_label_point
from stellarflow.data.dataset import parse_label_ranges
from stellarflow.io.hdf5 import open_survey
from stellarflow.mock import MockConfig, write_mock_survey
from stellarflow.train.checkpoint import load_model

LABELS = ("TEFF", "LOGG", "FE_H")
RESOLUTION = 22_500.0
ABLATIONS = {
    "previous defaults": {"strong_depth": None, "nuisance_elements": (), "match_window": 1.0},
    "no strong index": {"strong_depth": None},
    "H as element": {"nuisance_elements": ()},
    "window 1 res. el.": {"match_window": 1.0},
    "own element only": {"explain_threshold": float("inf"), "untested_explain": False},
}


def match(features, withheld, eligible: np.ndarray) -> dict:
    """Greedy matching of candidate-new features (by significance) to withheld lines."""
    new = features[~np.asarray(features["known"], dtype=bool)]
    wave = np.asarray(withheld["wavelength"])
    element = np.asarray(withheld["element"]).astype(str)
    found = np.zeros(wave.size, bool)
    detected = np.zeros(wave.size, bool)
    assigned = np.full(wave.size, "", dtype="U8")
    hits = []
    for row in new:  # already sorted by significance
        distance = np.abs(wave - row["wavelength"])
        near = (distance <= wave / RESOLUTION) & eligible
        hit = False
        if near.any():
            j = int(np.argmin(np.where(near, distance, np.inf)))
            if not detected[j]:
                detected[j] = True
                assigned[j] = str(row["element"])
            if str(row["element"]) == element[j] and not found[j]:
                found[j] = hit = True
        hits.append(hit)
    n_eligible = max(int(eligible.sum()), 1)
    hits = np.asarray(hits, dtype=bool)
    precision_at = np.cumsum(hits) / np.arange(1, hits.size + 1) if hits.size else hits
    ap = float(np.sum(precision_at[hits]) / n_eligible) if hits.size else 0.0
    return {
        "recall": found[eligible].sum() / n_eligible,
        "precision": hits.sum() / max(hits.size, 1),
        "n_new": int(hits.size),
        "detected": detected[eligible].sum() / n_eligible,
        "element_accuracy": found[eligible].sum() / max(detected[eligible].sum(), 1),
        "ap": ap,
        "confusion": Counter(
            (e, a) for e, a, d, ok in zip(element, assigned, detected, eligible, strict=True)
            if d and ok
        ),
    }  # fmt: skip


def train(survey_path: Path, n: int, spec: str, out: Path, args) -> float:
    kind, options = model_options(spec)
    return train_on_first(survey_path, n, kind, options, out, epochs=args.epochs,
                          time_limit=args.time_limit, seed=args.seed, labels=LABELS,
                          polish=args.polish, within=args.within)  # fmt: skip


def report(name: str, search_by_threshold: dict, withheld, eligible) -> None:
    for threshold, search in search_by_threshold.items():
        m = match(search.candidates, withheld, eligible)
        print(
            f"| {name} | {threshold:g} | {m['recall']:.2f} | {m['precision']:.2f} | "
            f"{m['n_new']} | {m['detected']:.2f} | {m['element_accuracy']:.2f} | "
            f"{m['ap']:.2f} |"
        )


def confusion(name: str, search, withheld, eligible) -> None:
    m = match(search.candidates, withheld, eligible)
    pairs = ", ".join(f"{t}->{a}: {k}" for (t, a), k in sorted(m["confusion"].items()))
    print(f"  confusion ({name}, withheld -> assigned): {pairs or 'none detected'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--pixels", type=int, default=None, help="grid pixels (None: 7,514)")
    parser.add_argument("--pixel-offset", type=int, default=0)
    parser.add_argument("--n-samples", type=int, default=20_000)
    parser.add_argument("--point", default="TEFF=4750,LOGG=2.5,FE_H=-0.1")
    parser.add_argument("--survey", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("benchmark_lines"))
    parser.add_argument("--model", default="factor_analysis:n_latent=16")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--time-limit", type=float, default=8.0, help="minutes per model")
    parser.add_argument(
        "--polish", type=int, default=0, help="fit factor analysis by N ECM iterations instead"
    )
    parser.add_argument(
        "--within",
        default="",
        metavar="RANGES",
        help="train local models on the stars in these label ranges, e.g. "
        "TEFF=4450:5050,LOGG=1.9:3.1,FE_H=-0.4:0.2 (TrainConfig.within)",
    )
    parser.add_argument("--modes", default="joint,plain,shared_mode")
    parser.add_argument("--thresholds", default="3,5,8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache", action="store_true", help="keep / reuse the model correlation in the work dir"
    )
    parser.add_argument(
        "--ablations", action="store_true", help="also run the joint mode with ABLATIONS"
    )
    parser.add_argument(
        "--box",
        default=None,
        help="draw the model's labels uniformly in point +- these half-widths, e.g. FE_H=0.05",
    )
    args = parser.parse_args()
    args.within = parse_label_ranges(args.within)
    sizes = [int(s) for s in args.sizes.split(",")]
    thresholds = [float(t) for t in args.thresholds.split(",")]
    modes = args.modes.split(",")
    point = parse_label_point(args.point)
    box = parse_label_point(args.box) if args.box else None
    args.work.mkdir(parents=True, exist_ok=True)
    survey_path = args.survey
    if survey_path is None:
        survey_path = args.work / f"mock_{max(sizes) + 2000}_{args.pixels}.h5"
        if not survey_path.exists():
            config = MockConfig(n_stars=max(sizes) + 2000, n_pixels=args.pixels,
                                pixel_offset=args.pixel_offset, seed=args.seed)  # fmt: skip
            write_mock_survey(survey_path, config)
    with open_survey(survey_path) as survey:
        truth = survey.read_table("truth/linelist")
        published = survey.read_table("linelist")
        wavelength = survey.read(0, 1).wavelength
    on_grid = (truth["wavelength"] > wavelength[0]) & (truth["wavelength"] < wavelength[-1])
    withheld = truth[np.asarray(truth["withheld"], dtype=bool) & on_grid]
    print(f"survey {survey_path}: {len(wavelength)} pixels, {len(withheld)} withheld lines")
    # ECM fits and local models get their own directories
    suffix = ("_ecm" if args.polish else "") + "".join(
        f"_{name}{low:g}-{high:g}" for name, (low, high) in args.within.items()
    )
    for n in sizes:
        model_dir = args.work / f"{directory_name(args.model)}{suffix}_{n}"
        if not (model_dir / "model.pt").exists():
            seconds = train(survey_path, n, args.model, model_dir, args)
            print(f"training {args.model} on {n} stars: {seconds:.0f} s")
        trained = load_model(model_dir)
        with open_survey(survey_path) as survey:
            stars = survey.read(0, n)
        noise = np.median(1.0 / np.sqrt(stars.ivar[(stars.ivar > 0) & ~stars.mask]))
        started = time.perf_counter()
        base_corr = empirical_correlation(stars, point)
        base_time = time.perf_counter() - started
        del stars
        cache = model_dir / (
            f"lines_correlation_{args.n_samples}_{args.seed}_{args.point}_{args.box or ''}.h5"
        )
        started = time.perf_counter()
        if args.cache and cache.exists():
            corr = read_correlation(cache)
            t_corr = float("nan")  # cached: see the run that wrote it
        else:
            corr = model_correlation(trained, point, args.n_samples, box=box, seed=args.seed)
            t_corr = time.perf_counter() - started
            if args.cache:
                write_correlation(cache, corr, overwrite=True, sampling_noise=False)
        started = time.perf_counter()
        searches = {m: {t: find_lines(corr, published, mode=m, threshold=t) for t in thresholds}
                    for m in modes}  # fmt: skip
        t_find = (time.perf_counter() - started) / (len(modes) * len(thresholds))
        base = {m: {t: find_lines(base_corr, published, mode=m, threshold=t)
                    for t in thresholds} for m in modes}  # fmt: skip
        pixel = np.clip(np.searchsorted(wavelength, withheld["wavelength"]), 0, len(wavelength) - 1)
        depth = 1.0 - base_corr.mean[pixel]
        eligible = depth > 3 * noise
        print(
            f"\n## n_train = {n}: {eligible.sum()} of {len(withheld)} withheld lines deeper than "
            f"3 x median noise ({3 * noise:.4f}); baseline bin: {base_corr.meta['n_stars']} "
            f"stars ({base_time:.1f} s)\n"
            f"correlation of {args.n_samples} model spectra at {len(wavelength)} pixels: "
            f"{t_corr:.1f} s; templates + association + features: {t_find:.1f} s per run\n"
        )
        print("| method | threshold (sigma) | recall | precision | n new | detected | "
              "element acc. | AP |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for m in modes:
            report(f"model, {m}", searches[m], withheld, eligible)
            report(f"baseline, {m}", base[m], withheld, eligible)
        for label, options in ABLATIONS.items() if args.ablations else ():
            for name, result in (("model", corr), ("baseline", base_corr)):
                runs = {t: find_lines(result, published, threshold=t, **options)
                        for t in thresholds}  # fmt: skip
                report(f"{name}, joint, {label}", runs, withheld, eligible)
        for m in modes:
            confusion(f"model, {m}", searches[m][min(thresholds)], withheld, eligible)
            confusion(f"baseline, {m}", base[m][min(thresholds)], withheld, eligible)


if __name__ == "__main__":
    main()
