"""Run by ``torchrun --nproc-per-node 2`` from ``test_distributed.py`` (not collected).

Usage: ``_ddp_worker.py WORKDIR``. WORKDIR holds ``survey.h5`` (written by the test) and
``model/`` (a single-process model, for scoring). Every rank runs the same calls; rank 0's
files are what the test compares with single-process runs:

- ``ddp_full/``: 3 epochs of factor analysis in float64, read out of core from the file;
- ``ddp_part/``: stopped by its time limit after 1 epoch, then resumed to 3 epochs;
- ``ddp_scores.ecsv``: ``stellarflow score`` sharded over the ranks; ``resumed.ecsv`` the same
  command finishing a run whose part folder the test left half full;
- ``ddp_outliers.ecsv``: ``find_outliers`` sharded through a part folder;
- ``cli_model/``: ``stellarflow train`` under torchrun, streaming the file.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from stellarflow.analysis.outliers import find_outliers  # noqa: E402
from stellarflow.cli.main import main  # noqa: E402
from stellarflow.io.hdf5 import open_survey  # noqa: E402
from stellarflow.train.checkpoint import load_model  # noqa: E402
from stellarflow.train.distributed import distributed_session  # noqa: E402
from stellarflow.train.loop import train_model  # noqa: E402
from tests.train._data import tiny_config  # noqa: E402

CONFIG = tiny_config("factor_analysis", precision="float64", epochs=3, batch_size=16)


def run(work: Path) -> None:
    with distributed_session("cpu") as dist:
        assert dist.world_size == 2, dist
        with open_survey(work / "survey.h5") as survey:
            train_model(survey, CONFIG, work / "ddp_full", dist=dist)
            # "interrupted" after its first epoch: a tiny time limit stops it there
            train_model(survey, replace(CONFIG, time_limit=1e-9), work / "ddp_part", dist=dist)
            train_model(survey, CONFIG, work / "ddp_part", resume=True, dist=dist)
            trained = load_model(work / "model")
            table = find_outliers(
                trained, survey, chunk_size=7, parts=work / "outliers.parts", dist=dist
            )
        if dist.is_main:
            table.write(work / "ddp_outliers.ecsv", format="ascii.ecsv")
        argv = ["-q", "train", str(work / "survey.h5"), "--out", str(work / "cli_model"),
                "--model", "factor_analysis", "--option", "n_latent=2", "--epochs", "1",
                "--batch-size", "16", "--device", "cpu", "--in-memory", "no"]  # fmt: skip
        if main(argv) != 0:
            raise SystemExit(1)
        for name in ("ddp_scores.ecsv", "resumed.ecsv"):
            argv = ["-q", "score", str(work / "model"), str(work / "survey.h5")]
            status = main([*argv, "--out", str(work / name), "--chunk-size", "7"])
            if status != 0:
                raise SystemExit(status)


if __name__ == "__main__":
    run(Path(sys.argv[1]))
