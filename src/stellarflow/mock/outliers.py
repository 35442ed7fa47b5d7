"""Chemically peculiar stars injected into the mock population.

An outlier keeps the TEFF, LOGG and FE_H of the normal star it was drawn as; only some
abundances move. Each outlier draws one amplitude ``u ~ U(0, 1)`` shared by all the elements
its kind touches, and element ``X`` shifts by ``lo_X + u (hi_X - lo_X)`` dex
(:data:`OUTLIER_SHIFTS`):

================  =============================================================
kind              chemistry (dex)
================  =============================================================
N_rich_C_poor     globular-cluster escapee: N +0.6..1.1, C -0.45..-0.2,
                  Al +0.3..0.8, Na +0.2..0.5, Mg -0.15..-0.05
Mg_poor_Al_rich   extreme Mg-Al anticorrelation: Mg -0.5..-0.3, Al +0.5..1.0,
                  Si +0.05..0.15
Ce_rich           s-process enhanced (Ba-star-like): Ce +0.6..1.1, Nd +0.3..0.6
Nd_rich           r-process enhanced: Nd +0.7..1.2, Ce +0.1..0.3
alpha_poor        accreted-dwarf-like: O, Mg, Si, S, Ca, Ti -0.35..-0.2
Na_rich           Na +0.5..0.9, Al +0.1..0.3
================  =============================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Final

import numpy as np

from stellarflow.mock.constants import ABUNDANCE_ELEMENTS

__all__ = [
    "OUTLIER_KINDS",
    "OUTLIER_SHIFTS",
    "apply_outlier_shifts",
    "dominant_elements",
    "draw_outlier_kinds",
]

_ALPHA = ("O", "Mg", "Si", "S", "Ca", "Ti")

OUTLIER_SHIFTS: Final = MappingProxyType(
    {
        "N_rich_C_poor": {
            "N": (0.6, 1.1),
            "C": (-0.45, -0.2),
            "Al": (0.3, 0.8),
            "Na": (0.2, 0.5),
            "Mg": (-0.15, -0.05),
        },
        "Mg_poor_Al_rich": {"Mg": (-0.5, -0.3), "Al": (0.5, 1.0), "Si": (0.05, 0.15)},
        "Ce_rich": {"Ce": (0.6, 1.1), "Nd": (0.3, 0.6)},
        "Nd_rich": {"Nd": (0.7, 1.2), "Ce": (0.1, 0.3)},
        "alpha_poor": {element: (-0.35, -0.2) for element in _ALPHA},
        "Na_rich": {"Na": (0.5, 0.9), "Al": (0.1, 0.3)},
    }
)
"""Per kind, the [X/Fe] shift range (dex) of each element it touches."""

OUTLIER_KINDS: Final[tuple[str, ...]] = tuple(OUTLIER_SHIFTS)


def draw_outlier_kinds(
    rng: np.random.Generator, n_stars: int, fraction: float, kinds: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Which stars are outliers, of which kind, and with what amplitude.

    Each star is an outlier independently with probability ``fraction``; its kind is uniform
    over ``kinds``. The same number of random draws is made whatever ``fraction`` is.

    Args:
        rng: the generator of this block of stars.
        n_stars: number of stars.
        fraction: probability that a star is an outlier, in [0, 1].
        kinds: names from :data:`OUTLIER_KINDS`.

    Returns:
        (kind, amplitude): `(n_stars,)` str (``""`` for normal stars) and `(n_stars,)` float
        amplitudes in [0, 1).
    """
    is_outlier = rng.random(n_stars) < fraction
    which = rng.integers(0, max(len(kinds), 1), n_stars)
    amplitude = rng.random(n_stars)
    names = np.array([*kinds, ""], dtype=f"<U{max([len(k) for k in kinds] + [1])}")
    kind = np.where(is_outlier & (len(kinds) > 0), names[which], "")
    return kind, amplitude


def apply_outlier_shifts(x_fe: np.ndarray, kind: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    """Abundances of outliers moved by their kind's shifts.

    Args:
        x_fe: `(n_stars, n_elements)`, [X/Fe] in dex, columns in
            :data:`~stellarflow.mock.constants.ABUNDANCE_ELEMENTS` order.
        kind: `(n_stars,)` str, ``""`` for normal stars.
        amplitude: `(n_stars,)` in [0, 1).

    Returns:
        `(n_stars, n_elements)` copy with the shifts added.
    """
    out = np.array(x_fe, dtype=np.float64, copy=True)
    for name, shifts in OUTLIER_SHIFTS.items():
        rows = kind == name
        if not rows.any():
            continue
        for element, (lo, hi) in shifts.items():
            col = ABUNDANCE_ELEMENTS.index(element)
            out[rows, col] += lo + amplitude[rows] * (hi - lo)
    return out


def dominant_elements(
    kind: str, amplitude: float, available: set[str] | None = None
) -> tuple[set[str], dict[str, float]]:
    """The elements an outlier of ``kind`` mostly shows: the answer key of attribution.

    Each shift is ``lo + amplitude (hi - lo)`` dex (:data:`OUTLIER_SHIFTS`); the dominant
    elements are those whose ``|shift|`` is at least 2/3 of the largest among the elements
    in ``available`` (those with lines in the spectrum; default all).

    Args:
        kind: an outlier kind of :data:`OUTLIER_KINDS`.
        amplitude: the star's amplitude ``u`` in [0, 1].
        available: element symbols that can show in the spectrum.

    Returns:
        ``(dominant, shifts)``: the dominant symbols and every available element's shift, dex.
    """
    shifts = {
        element: lo + amplitude * (hi - lo)
        for element, (lo, hi) in OUTLIER_SHIFTS[kind].items()
        if available is None or element in available
    }
    if not shifts:
        return set(), {}
    largest = max(abs(value) for value in shifts.values())
    return {el for el, value in shifts.items() if abs(value) >= 2 / 3 * largest - 1e-12}, shifts
