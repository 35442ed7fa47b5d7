"""The HTML report: answer keys, discovery of partial runs, offline page, headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from astropy.table import Table

from stellarflow.cli.main import main
from stellarflow.errors import DataValidationError
from stellarflow.report import build_report, find_run_contents
from stellarflow.report.answer_key import line_recovery, outlier_recovery, roc_auc
from tests.browser import ARTIFACTS, render_in_chromium


def test_roc_auc_matches_pair_counting() -> None:
    rng = np.random.default_rng(0)
    score = rng.normal(size=60).round(1)  # ties on purpose
    positive = rng.random(60) < 0.3
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0)
             for a in score[positive] for b in score[~positive]]  # fmt: skip
    assert roc_auc(score, positive) == pytest.approx(np.mean(pairs))
    assert np.isnan(roc_auc(score, np.zeros(60, dtype=bool)))


def _truth(n: int = 20) -> Table:
    kinds = [""] * n
    kinds[3], kinds[7], kinds[11] = "Ce_rich", "alpha_poor", "Na_rich"
    return Table({"star_id": [f"S{i:02d}" for i in range(n)], "outlier_kind": kinds,
                  "outlier_amplitude": np.full(n, 0.5)})  # fmt: skip


def test_outlier_recovery_counts_caught_and_attribution_after_an_ecsv_round_trip(tmp_path):
    truth = _truth()
    # ranks: Ce_rich first (right element), alpha_poor third (wrong element), Na_rich 10th;
    # one star flagged (not ranked) and blank strings that ECSV reads back as masked
    order = [3, 0, 7, 1, 2, 4, 5, 6, 8, 11, 9, 10, 12, 13, 14, 15, 16, 17, 18]
    ranked = Table({
        "star_id": [f"S{i:02d}" for i in order] + ["S19"],
        "rank": [*range(1, 21)],
        "flag": [""] * 19 + ["too_few_pixels"],
        "top_element": ["Ce", "", "Fe"] + [""] * 17,
    })  # fmt: skip
    ranked.write(tmp_path / "o.ecsv", format="ascii.ecsv")
    ranked = Table.read(tmp_path / "o.ecsv", format="ascii.ecsv")
    summary, per_kind = outlier_recovery(ranked, truth)
    assert summary["n_injected"] == 3 and summary["k"] == 3
    assert summary["caught"] == 2  # Ce_rich (rank 1) and alpha_poor (rank 3)
    assert summary["precision_at_k"] == pytest.approx(2 / 3)
    assert summary["attribution"] == pytest.approx(1 / 2)  # Ce right, Fe not alpha
    # AUC from ranks: positives at ranks 1, 3, 10 among 19 ranked stars
    positive = np.isin(np.arange(1, 20), [1, 3, 10])
    assert summary["auc"] == pytest.approx(roc_auc(-np.arange(1, 20.0), positive))
    assert dict(zip(per_kind["kind"], per_kind["best_rank"], strict=True)) == {
        "Ce_rich": 1, "alpha_poor": 3, "Na_rich": 10}  # fmt: skip


def test_line_recovery_needs_the_right_element_within_one_resolution_element() -> None:
    linelist = Table({
        "wavelength": [15500.0, 15600.0, 15700.0, 16900.0],
        "element": ["Fe", "Si", "Ni", "Fe"],
        "withheld": [True, True, True, True],
        "depth_ref": [0.1, 0.2, 0.05, 0.3],
    })  # fmt: skip
    candidates = Table({
        "wavelength": [15500.3, 15600.2, 15702.0, 15800.0, 15650.0],
        "element": ["Fe", "Ni", "Ni", "Ti", "Fe"],
        "known": [False, False, False, False, True],
    })  # fmt: skip
    summary, withheld = line_recovery(candidates, linelist, (15000.0, 16000.0), 22_500.0)
    assert summary["n_withheld"] == 3  # 16,900 A is off the grid
    # 15500.3: right element, 0.3 A < 0.69 A; 15600.2: wrong element; 15702: 2 A too far
    assert list(withheld["recovered"]) == [True, False, False]
    assert summary["recall"] == pytest.approx(1 / 3)
    assert summary["n_new_candidates"] == 4
    assert summary["precision"] == pytest.approx(2 / 4)  # two new ones sit on withheld lines


def _png(path: Path) -> None:
    figure, axes = plt.subplots(figsize=(3, 2))
    axes.plot([0, 1], [0, 1])
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=50)
    plt.close(figure)


def _outliers_folder(folder: Path) -> None:
    table = Table({
        "rank": [1, 2, 3], "star_id": ["A", "B", "C"], "flag": ["", "", ""],
        "log_p_tail": [-40.0, -12.0, -3.0], "one_in": np.exp([40.0, 12.0, 3.0]),
        "z": [8.0, 4.5, 1.9], "top_element": ["Ce", "Mg", ""],
    })  # fmt: skip
    table.meta["flag_counts"] = {"ranked": 3}
    folder.mkdir(parents=True)
    table.write(folder / "outliers.ecsv", format="ascii.ecsv")
    _png(folder / "score_distribution.png")
    _png(folder / "gallery" / "01_A.png")


def test_report_of_separate_commands_shows_only_the_stages_that_exist(tmp_path) -> None:
    run = tmp_path / "my run"  # a space in the path must not break relative links
    _outliers_folder(run / "ranked")
    (run / "ranked" / "command.json").write_text(
        '{"command": "stellarflow outliers m s.h5 --out ranked", "seconds": 3.5}'
    )
    contents = find_run_contents(run)
    assert contents.outliers_dir == run / "ranked"
    assert contents.model_dir is None and contents.lines_dir is None
    path = build_report(run)
    text = path.read_text()
    assert path == run / "report.html"
    assert 'id="outliers"' in text and "stellarflow outliers m s.h5 --out ranked" in text
    assert "Hidden lines" not in text and "Training" not in text
    assert "10^17.4" in text and "1.63e+05" in text  # "1 in N" from log_p_tail
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert len(sources) == 2 and all((run / s).is_file() for s in sources)
    assert "http" not in text.replace("http-equiv", "")  # nothing loaded from the network

    embedded = build_report(run, out=tmp_path / "one.html", embed=True).read_text()
    assert embedded.count('src="data:image/png;base64,') == 2


def test_report_survives_an_unreadable_stage_and_refuses_an_empty_folder(tmp_path) -> None:
    run = tmp_path / "run"
    _outliers_folder(run / "outliers")
    (run / "lines").mkdir()
    (run / "lines" / "candidates.ecsv").write_text("not a table")
    text = build_report(run).read_text()
    assert 'id="outliers"' in text and "could not read this stage" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataValidationError, match="holds no stellarflow results"):
        find_run_contents(empty)


def test_report_command(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    _outliers_folder(run / "outliers")
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a folder" in err


def test_report_renders_in_headless_chromium(tmp_path) -> None:
    run = tmp_path / "run"
    _outliers_folder(run / "outliers")
    page = build_report(run)
    dom = render_in_chromium(page, ARTIFACTS / "report_partial.png", tmp_path)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-images-total="2"' in body and 'data-images-broken="0"' in body
    assert 'id="outliers"' in dom
    assert (ARTIFACTS / "report_partial.png").read_bytes()[:4] == b"\x89PNG"
