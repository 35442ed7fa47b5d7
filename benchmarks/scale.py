"""Benchmark: scale out. Scoring memory and throughput from HDF5, training with 1 vs N processes.

Usage::

    # a synthetic N-star survey at full resolution, in the survey format (io/hdf5.py), made
    # by replicating the stars of a smaller mock (see `survey` below for why that is fair)
    python benchmarks/scale.py survey TEMPLATE.h5 --n-stars 200000 --out big.h5

    # peak resident memory and throughput of `stellarflow score` (optionally sharded)
    python benchmarks/scale.py score MODEL_DIR big.h5 [--nproc 2] [--device cuda]

    # training throughput (spectra/s) of `stellarflow train` with 1 and 2 processes
    python benchmarks/scale.py train big.h5 --nproc 1,2 [--device cuda] [--option n_latent=16]

    # on a GPU: training and scoring throughput at full resolution, with the card's name
    # (a 100,000-star survey is 6.8 GB on disk; --device cpu only tries the script out)
    python benchmarks/scale.py gpu TEMPLATE.h5 MODEL_DIR --n-stars 100000 [--nproc 1,4]

Every measurement runs the real command line (``stellarflow ...``, under
``torchrun --standalone --nproc-per-node K`` for K > 1) in a child process and reports its
wall time and the peak resident set size of the largest process
(``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a fresh wrapper process, so earlier runs do
not count). Scoring's ``stars_per_s`` is end to end (start-up, model loading and the merge
included: 5-10 s here), so use surveys large enough for that not to matter; training's
``spectra_per_s`` is the last epoch's. Results are printed as JSON lines (``--json PATH``
appends them to a file).
Timings on a shared machine are contended: repeat and quote the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

STELLARFLOW = [sys.executable, "-m", "stellarflow"]


def _launcher(nproc: int, threads: int) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    if nproc == 1:
        return STELLARFLOW, env
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(nproc), "-m", "stellarflow"]  # fmt: skip
    return torchrun, env


def measure(command: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``command`` through a fresh wrapper; its wall time and largest peak RSS (MB)."""
    wrapper = [sys.executable, __file__, "_measure", "--", *command]
    done = subprocess.run(wrapper, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure_child(command: list[str]) -> int:
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"wall_s": round(wall, 2), "peak_rss_mb": round(peak_kb / 1024, 1)}))
    return done.returncode


def make_survey(template: Path, n_stars: int, out: Path, seed: int = 0) -> dict[str, Any]:
    """Write an ``n_stars`` survey by cycling the stars of ``template`` (same grid and format).

    Each block of the output is the template's stars in a fresh random order with new
    identifiers. Scoring's memory and speed depend on the number of stars and pixels, the
    chunk size and the model, not on whether the spectra are distinct, so a replicated survey
    measures them as well as a full mock (which generates at ~350 stars/s on this CPU).
    """
    from astropy.table import Table

    from stellarflow.io.hdf5 import SurveyWriter, open_survey

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with open_survey(template) as source:
        stars = source.load()
        meta = dict(source.meta)
    meta["synthetic"] = f"{n_stars} stars replicated from {template.name} (benchmarks/scale.py)"
    with SurveyWriter(out, stars.wavelength, meta, overwrite=True) as writer:
        for first in range(0, n_stars, stars.n_stars):
            n = min(stars.n_stars, n_stars - first)
            part = stars[rng.permutation(stars.n_stars)[:n]]
            labels = Table(part.labels, copy=True)
            labels["star_id"] = [f"S{first + i:09d}" for i in range(n)]
            part.labels = labels
            writer.append(part)
    seconds = time.perf_counter() - start
    return {"survey": str(out), "n_stars": n_stars, "n_pixels": stars.n_pixels,
            "gb": round(out.stat().st_size / 1e9, 2), "write_s": round(seconds, 1)}  # fmt: skip


def bench_score(
    model: Path, survey: Path, nproc: int, chunk_size: int, device: str, threads: int
) -> dict[str, Any]:
    """Peak RSS and throughput of ``stellarflow score`` (``nproc`` shards)."""
    from stellarflow.io.hdf5 import open_survey

    with open_survey(survey) as source:
        n_stars, n_pixels = source.n_stars, source.n_pixels
    launcher, env = _launcher(nproc, threads)
    with tempfile.TemporaryDirectory(dir=survey.parent) as tmp:
        out = Path(tmp) / "scores.ecsv"
        command = [*launcher, "-q", "score", str(model), str(survey), "--out", str(out),
                   "--chunk-size", str(chunk_size), "--device", device]  # fmt: skip
        result = measure(command, env)
    return {"task": "score", "n_stars": n_stars, "n_pixels": n_pixels, "nproc": nproc,
            "threads_per_process": threads, "chunk_size": chunk_size, "device": device,
            **result, "stars_per_s": round(n_stars / result["wall_s"], 1)}  # fmt: skip


def bench_train(
    survey: Path,
    nproc: int,
    device: str,
    threads: int,
    epochs: int,
    model: str,
    options: list[str],
    batch_size: int,
    in_memory: str,
) -> dict[str, Any]:
    """Training throughput (training spectra per second of the last epoch, validation included)."""
    launcher, env = _launcher(nproc, threads)
    with tempfile.TemporaryDirectory(dir=survey.parent) as tmp:
        out = Path(tmp) / "model"
        command = [*launcher, "-q", "train", str(survey), "--out", str(out), "--model", model,
                   "--epochs", str(epochs), "--patience", str(epochs + 1), "--batch-size",
                   str(batch_size), "--device", device, "--in-memory", in_memory]  # fmt: skip
        for option in options:
            command += ["--option", option]
        result = measure(command, env)
        metadata = json.loads((out / "metadata.json").read_text())
    rows = metadata["training_data"]["n_train_rows"]
    epoch_s = metadata["history"][-1]["seconds"]
    return {"task": "train", "model": model, "options": options, "nproc": nproc,
            "threads_per_process": threads, "device": device, "batch_size": batch_size,
            "in_memory": in_memory, "n_train_rows": rows, "epoch_s": round(epoch_s, 2),
            "spectra_per_s": round(rows / epoch_s, 1), **result}  # fmt: skip


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import platform

    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _emit(record: dict[str, Any], path: Path | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if path is not None:
        with open(path, "a") as handle:
            handle.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_measure"]:
        return _measure_child(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="append results here")
    commands = parser.add_subparsers(dest="command", required=True)
    survey = commands.add_parser("survey", help="write a replicated N-star survey")
    survey.add_argument("template", type=Path)
    survey.add_argument("--n-stars", type=int, required=True)
    survey.add_argument("--out", type=Path, required=True)
    score = commands.add_parser("score", help="peak RSS and throughput of scoring")
    score.add_argument("model", type=Path)
    score.add_argument("survey", type=Path)
    train = commands.add_parser("train", help="training throughput, 1 vs N processes")
    train.add_argument("survey", type=Path)
    train.add_argument("--model", default="factor_analysis")
    train.add_argument("--option", action="append", default=None)
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--in-memory", default="no", choices=("auto", "yes", "no"))
    gpu = commands.add_parser("gpu", help="training and scoring throughput on a GPU")
    gpu.add_argument("template", type=Path)
    gpu.add_argument("model", type=Path)
    gpu.add_argument("--n-stars", type=int, default=100_000)
    for sub in (score, train, gpu):
        sub.add_argument("--nproc", default="1", help="process counts, e.g. 1,2")
        sub.add_argument("--device", default="cuda" if sub is gpu else "cpu")
        sub.add_argument("--threads", type=int, default=None, help="OMP threads per process")
        sub.add_argument("--chunk-size", type=int, default=2048)
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    context = {"machine": _device_name(getattr(args, "device", "cpu")),
               "load_average": [round(v, 2) for v in os.getloadavg()]}  # fmt: skip
    if args.command == "survey":
        _emit({**make_survey(args.template, args.n_stars, args.out), **context}, args.json)
        return 0
    counts = [int(n) for n in str(args.nproc).split(",")]
    if args.command == "score":
        for nproc in counts:
            threads = args.threads or max(1, cores // nproc)
            record = bench_score(args.model, args.survey, nproc, args.chunk_size, args.device,
                                 threads)  # fmt: skip
            _emit({**record, **context}, args.json)
    elif args.command == "train":
        options = args.option if args.option is not None else ["n_latent=16"]
        for nproc in counts:
            threads = args.threads or max(1, cores // nproc)
            record = bench_train(args.survey, nproc, args.device, threads, args.epochs,
                                 args.model, options, args.batch_size, args.in_memory)  # fmt: skip
            _emit({**record, **context}, args.json)
    else:  # gpu: one survey, then training and scoring on the card
        device = args.device  # "cpu" only to try the script out
        context["machine"] = _device_name(device)
        work = Path(tempfile.mkdtemp(prefix="scale-gpu-", dir=args.template.parent))
        try:
            big = work / "survey.h5"
            _emit({**make_survey(args.template, args.n_stars, big), **context}, args.json)
            for nproc in counts:
                threads = args.threads or max(1, cores // nproc)
                for model, options in (("factor_analysis", ["n_latent=16"]),
                                       ("latent_flow", ["n_latent=16"])):  # fmt: skip
                    record = bench_train(big, nproc, device, threads, 2, model, options, 256,
                                         "auto")  # fmt: skip
                    _emit({**record, **context}, args.json)
                record = bench_score(args.model, big, nproc, args.chunk_size, device, threads)
                _emit({**record, **context}, args.json)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
