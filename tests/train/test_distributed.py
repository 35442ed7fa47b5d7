"""Several processes (torchrun, gloo on CPU) give what one process gives.

One ``torchrun --nproc-per-node 2`` launch (``_ddp_worker.py``) trains, resumes, scores and
ranks outliers; the tests compare its files with single-process runs of the same calls.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.table import Table

from stellarflow.analysis.outliers import find_outliers
from stellarflow.analysis.score import score_survey
from stellarflow.cli.main import main
from stellarflow.cli.model_commands import parts_folder
from stellarflow.data.shards import ChunkPlan, PartStore, shard_range
from stellarflow.errors import DataValidationError
from stellarflow.io.hdf5 import open_survey, write_survey
from stellarflow.train.checkpoint import load_model, load_torch
from stellarflow.train.distributed import Distributed, LaunchError, init_distributed
from stellarflow.train.loop import train_model
from tests.train._data import tiny_config, training_set

WORKER = Path(__file__).with_name("_ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The single-process reference files and one 2-process torchrun launch beside them."""
    work = tmp_path_factory.mktemp("ddp")
    data = training_set(n_stars=96, n_pixels=24, seed=0)
    write_survey(data, work / "survey.h5")
    from tests.train._ddp_worker import CONFIG

    train_model(data, CONFIG, work / "single")  # in memory: the batches do not depend on it
    train_model(data, tiny_config("factor_analysis", epochs=2), work / "model")
    assert main(["-q", "score", str(work / "model"), str(work / "survey.h5"), "--out",
                 str(work / "scores.ecsv"), "--chunk-size", "7"]) == 0  # fmt: skip
    # an interrupted run: chunks 0, 1 and 9 were finished, then the job died
    trained = load_model(work / "model")
    with open_survey(work / "survey.h5") as survey:
        score_survey(trained, survey, chunk_size=7, parts=parts_folder(work / "resumed.ecsv"))
    store = PartStore(parts_folder(work / "resumed.ecsv"), {})
    for k in range(ChunkPlan(96, 7).n_chunks):
        if k not in (0, 1, 9):
            store.path(k).unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(WORKER), str(work)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return work


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_torch(path / "training_state.pt")["model"]


def test_two_processes_take_the_single_process_steps(runs: Path) -> None:
    single, ddp = _weights(runs / "single"), _weights(runs / "ddp_full")
    assert single.keys() == ddp.keys()
    for name, value in single.items():
        assert value.dtype == torch.float64
        torch.testing.assert_close(ddp[name], value, rtol=1e-6, atol=1e-9, msg=name)
    history = [
        load_torch(runs / d / "training_state.pt")["history"] for d in ("single", "ddp_full")
    ]
    assert len(history[0]) == len(history[1]) == 3
    for a, b in zip(*history, strict=True):
        assert b["validation"] == pytest.approx(a["validation"], rel=1e-9)
        assert b["train"] == pytest.approx(a["train"], rel=1e-9)


def test_a_resumed_two_process_run_ends_where_an_uninterrupted_one_does(runs: Path) -> None:
    full, resumed = _weights(runs / "ddp_full"), _weights(runs / "ddp_part")
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-12, atol=0, msg=name)
    history = load_torch(runs / "ddp_part" / "training_state.pt")["history"]
    assert len(history) == 3


def test_the_train_command_runs_under_torchrun(runs: Path) -> None:
    trained = load_model(runs / "cli_model")
    assert trained.metadata["world_size"] == 2
    assert (runs / "cli_model" / "training_curve.png").is_file()


def _assert_same_column(got, expected, name: str) -> None:
    """Equal; floats up to float32 rounding: a shard evaluates a different number of stars
    per call, and BLAS may block such products differently (seen on AMD EPYC)."""
    if np.issubdtype(np.asarray(expected).dtype, np.floating):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5, err_msg=name)
    else:
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_sharded_scoring_equals_single_process_scoring(runs: Path) -> None:
    single = Table.read(runs / "scores.ecsv")
    for name in ("ddp_scores.ecsv", "resumed.ecsv"):
        sharded = Table.read(runs / name)
        assert list(sharded["star_id"]) == list(single["star_id"])  # each star once, in order
        assert len(set(sharded["star_id"])) == 96
        for column in single.colnames:
            _assert_same_column(sharded[column], single[column], column)
        assert not parts_folder(runs / name).exists()  # merged and removed


def test_sharded_outlier_ranking_equals_single_process(runs: Path) -> None:
    trained = load_model(runs / "model")
    with open_survey(runs / "survey.h5") as survey:
        single = find_outliers(trained, survey, chunk_size=7)
    sharded = Table.read(runs / "ddp_outliers.ecsv")
    assert list(sharded["star_id"]) == list(single["star_id"])
    for column in ("log_prob", "log_p_tail", "z", "flag", "top_element"):
        _assert_same_column(sharded[column], single[column], column)


def test_shards_are_contiguous_and_cover_every_item_once() -> None:
    for n in (0, 1, 5, 96, 97):
        for world in (1, 2, 3, 8):
            ranges = [shard_range(n, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
            sizes = [stop - start for start, stop in ranges]
            assert max(sizes) - min(sizes) <= 1


def test_a_part_folder_of_another_run_is_refused(tmp_path: Path) -> None:
    PartStore(tmp_path / "p", {"task": "score", "seed": 0}).open(create=True)
    with pytest.raises(DataValidationError, match="different run"):
        PartStore(tmp_path / "p", {"task": "score", "seed": 1}).open(create=True)


def test_merge_refuses_gaps(tmp_path: Path) -> None:
    plan = ChunkPlan(10, 4)
    store = PartStore(tmp_path / "p", {})
    store.open(create=True)
    store.write(0, plan.rows(0), {"x": np.arange(4)})
    store.write(2, plan.rows(2), {"x": np.arange(2)})
    with pytest.raises(DataValidationError, match="lacks 1 of 3 chunks"):
        store.merge(plan)
    store.write(1, plan.rows(1), {"x": np.arange(4)})
    assert store.merge(plan)["x"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_inconsistent_launch_environments_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed("cpu") == Distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchError, match="RANK"):
        init_distributed("cpu")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(LaunchError, match="without WORLD_SIZE"):
        init_distributed("cpu")
    if not torch.cuda.is_available():
        for name, value in {"WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": "29999"}.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        with pytest.raises(LaunchError, match="no CUDA GPU"):
            init_distributed("cuda")


def test_a_global_batch_not_divisible_by_the_processes_is_refused(tmp_path: Path) -> None:
    config = tiny_config("factor_analysis", batch_size=16)
    with pytest.raises(LaunchError, match="not divisible by the 3 processes"):
        train_model(training_set(), config, tmp_path / "m", dist=Distributed(0, 3, 0, "gloo"))


def test_score_refuses_the_parts_of_another_run_unless_overwriting(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scores.ecsv"
    PartStore(parts_folder(out), {"task": "something else"}).open(create=True)
    argv = ["-q", "score", str(runs / "model"), str(runs / "survey.h5"), "--out", str(out)]
    assert main(argv) == 1
    assert "holds the parts of a different run" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert len(Table.read(out)) == 96 and not parts_folder(out).exists()


def test_several_processes_need_a_part_folder(runs: Path) -> None:
    trained = load_model(runs / "model")
    with open_survey(runs / "survey.h5") as survey, pytest.raises(DataValidationError):
        score_survey(trained, survey, dist=Distributed(0, 2, 0, "gloo"))
