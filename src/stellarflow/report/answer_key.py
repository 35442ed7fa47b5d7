"""The mock's answer key beside a run's results: what was injected, withheld, generated.

Pure functions of tables: a run's result table and the mock survey's ``truth/*`` tables in,
a few summary numbers and a per-item table out. They only make sense on a mock survey; the
report calls them when the survey has truth.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from astropy.table import Table

from stellarflow.mock.constants import PROCESS_VECTORS, PROCESSES
from stellarflow.mock.outliers import dominant_elements

__all__ = [
    "CARRIER_FRACTION",
    "greedy_processes",
    "line_recovery",
    "outlier_recovery",
    "process_carriers",
    "process_table",
    "roc_auc",
]

CARRIER_FRACTION = 0.3
"""An element carries a process when the process makes at least this fraction of it."""


def _text(column: Any) -> np.ndarray:
    """A string column as a plain array; empty strings that ECSV reads back masked are ""."""
    if hasattr(column, "filled"):
        column = column.filled("")
    return np.asarray(column).astype(str)


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive``, Mann-Whitney form.

    ``AUC = (sum of the positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``, ties
    counting one half; NaN when either class is empty.
    """
    from scipy.stats import rankdata

    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def outlier_recovery(
    ranked: Table, truth: Table, available: Iterable[str] | None = None
) -> tuple[dict[str, Any], Table]:
    """How many injected outliers a ranking found, and whether it named the right element.

    Only ranked stars count (``flag == ""``); the ``k`` = number of injected outliers among
    them are "caught" when they rank in the top ``k``. Attribution is right when
    ``top_element`` is one of the kind's dominant elements at the star's amplitude
    (:func:`stellarflow.mock.outliers.dominant_elements`).

    Args:
        ranked: ``outliers.ecsv`` (``star_id``, ``rank``, ``flag``, ``top_element``).
        truth: the mock's ``truth/labels`` (``star_id``, ``outlier_kind``,
            ``outlier_amplitude``).
        available: elements with lines in the spectrum (default: any).

    Returns:
        ``(summary, per_kind)``: summary numbers (``n_injected``, ``k``, ``caught``,
        ``precision_at_k``, ``auc``, ``attribution``) and a table per kind.
    """
    truth_ids = _text(truth["star_id"])
    kind_of = dict(zip(truth_ids, _text(truth["outlier_kind"]), strict=True))
    amplitudes = np.asarray(truth["outlier_amplitude"], dtype=float)
    amplitude_of = dict(zip(truth_ids, amplitudes, strict=True))
    rows = ranked[_text(ranked["flag"]) == ""]
    star_ids = _text(rows["star_id"])
    top_element = _text(rows["top_element"])
    kinds = np.array([kind_of.get(s, "") for s in star_ids])
    injected = kinds != ""
    order = np.argsort(np.asarray(rows["rank"], dtype=np.int64), kind="stable")
    k = int(injected.sum())
    caught = np.zeros(len(rows), dtype=bool)
    caught[order[:k]] = True
    caught &= injected
    pool = None if available is None else set(available)
    right = np.array([
        bool(caught[i]) and top_element[i] in
        dominant_elements(kinds[i], amplitude_of[star_ids[i]], pool)[0]
        for i in range(len(rows))
    ], dtype=bool)  # fmt: skip
    summary = {
        "n_injected": int(sum(1 for kind in kind_of.values() if kind)),
        "k": k,
        "caught": int(caught.sum()),
        "precision_at_k": float(caught.sum() / k) if k else float("nan"),
        "auc": roc_auc(-np.asarray(rows["rank"], dtype=np.float64), injected),
        "attribution": float(right.sum() / caught.sum()) if caught.any() else float("nan"),
    }
    names = sorted(set(kinds[injected]))
    per_kind = Table(
        {
            "kind": names,
            "injected": [int(np.sum(kinds == n)) for n in names],
            "caught_in_top_k": [int(np.sum(caught & (kinds == n))) for n in names],
            "best_rank": [int(np.min(np.asarray(rows["rank"])[kinds == n])) for n in names],
            "right_element": [int(np.sum(right & (kinds == n))) for n in names],
        }
    )
    return summary, per_kind


def line_recovery(
    candidates: Table,
    linelist: Table,
    wavelength_range: tuple[float, float],
    resolution: float = 22_500.0,
) -> tuple[dict[str, Any], Table]:
    """Which withheld lines a hidden-line search found as new candidates.

    A withheld line inside ``wavelength_range`` is recovered when a candidate not in the
    published list (``known`` False) lies within one resolution element
    (``|delta lambda| <= lambda / R``) and names the same element. Precision: the fraction
    of new candidates within one resolution element of some withheld line.

    Args:
        candidates: ``candidates.ecsv`` (``wavelength``, ``element``, ``known``).
        linelist: the mock's ``truth/linelist`` (``wavelength``, ``element``, ``withheld``,
            ``depth_ref``).
        wavelength_range: the model's grid ends, vacuum Å.
        resolution: resolving power R.

    Returns:
        ``(summary, withheld)``: summary numbers (``n_withheld``, ``recovered``, ``recall``,
        ``n_new_candidates``, ``precision``) and the withheld lines with a ``recovered``
        column.
    """
    lo, hi = wavelength_range
    lines = linelist[np.asarray(linelist["withheld"], dtype=bool)]
    lines = lines[(np.asarray(lines["wavelength"]) >= lo) & (np.asarray(lines["wavelength"]) <= hi)]
    new = candidates[~np.asarray(candidates["known"], dtype=bool)]
    new_wave = np.asarray(new["wavelength"], dtype=np.float64)
    new_element = _text(new["element"])
    recovered = np.zeros(len(lines), dtype=bool)
    near_any = np.zeros(len(new), dtype=bool)
    for i, (wave, element) in enumerate(zip(lines["wavelength"], lines["element"], strict=True)):
        close = np.abs(new_wave - float(wave)) <= float(wave) / resolution
        near_any |= close
        recovered[i] = bool(np.any(close & (new_element == str(element))))
    table = Table(
        {
            "wavelength": np.asarray(lines["wavelength"], dtype=np.float64),
            "element": _text(lines["element"]),
            "depth_ref": np.asarray(lines["depth_ref"], dtype=np.float64),
            "recovered": recovered,
        }
    )
    summary = {
        "n_withheld": len(lines),
        "recovered": int(recovered.sum()),
        "recall": float(recovered.mean()) if len(lines) else float("nan"),
        "n_new_candidates": len(new),
        "precision": float(near_any.mean()) if len(new) else float("nan"),
    }
    return summary, table


def process_table() -> Table:
    """The mock's nucleosynthetic processes and the fraction of each element they make."""
    elements = list(PROCESS_VECTORS)
    columns: dict[str, Any] = {"element": elements}
    for process in PROCESSES:
        columns[process] = [PROCESS_VECTORS[element][process] for element in elements]
    return Table(columns)


def process_carriers(fraction: float = CARRIER_FRACTION) -> dict[str, set[str]]:
    """The elements (allStar column names) that carry each process beyond cc and ia.

    FE_H and MG_FE fix the core-collapse and Type Ia amplitudes; an element carries the
    AGB or odd-Z process when that process makes at least ``fraction`` of it.
    """
    from stellarflow.mock.constants import abundance_label

    return {
        process: {abundance_label(element) for element, vector in PROCESS_VECTORS.items()
                  if vector[process] >= fraction}
        for process in PROCESSES if process not in ("cc", "ia")
    }  # fmt: skip


def greedy_processes(greedy: Table) -> dict[str, Any]:
    """Which of the mock's processes a greedy conditioning path picked up, and where it stopped.

    Args:
        greedy: ``greedy.ecsv`` (``step``, ``added_element``, ``condition``, ``stop``).

    Returns:
        ``condition`` (the final set), ``added`` (elements added, in order),
        ``processes_added`` (the process each added element carries, "" for none),
        ``recovered``: True when exactly one element per extra process was added (the
        answer for a mock with the four processes of :data:`PROCESSES`).
    """
    carriers = process_carriers()
    added = [str(e) for e in _text(greedy["added_element"]) if str(e)]
    stops = np.asarray(greedy["stop"], dtype=bool)
    final = int(np.flatnonzero(stops)[0]) if stops.any() else len(greedy) - 1
    condition = str(_text(greedy["condition"])[final]).split(",")
    added = added[:final]
    carried = [next((p for p, names in carriers.items() if e in names), "") for e in added]
    recovered = sorted(carried) == sorted(carriers) and len(added) == len(carriers)
    return {"condition": condition, "added": added, "processes_added": carried,
            "recovered": bool(recovered)}  # fmt: skip
