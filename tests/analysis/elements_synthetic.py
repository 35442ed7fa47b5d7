"""A synthetic abundance catalogue with a known answer, shared by the element tests.

Two conditioning abundances ``A_H`` and ``B_FE`` (stand-ins for [Fe/H], [Mg/Fe]) plus two
hidden processes ``z1``, ``z2``; eight targets::

    y_i = f_i(A, B) + l1_i z1 + l2_i z2 + s_i eps_i + err_i

with E1-E3 carrying z1, E4-E6 carrying z2 and E7, E8 neither. Errors are uniform in
0.01-0.03 dex per star and column.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

TARGETS = tuple(f"E{i}_FE" for i in range(1, 9))
LOAD1 = np.array([0.07, 0.05, 0.04, 0, 0, 0, 0, 0])
LOAD2 = np.array([0, 0, 0, 0.06, 0.05, 0.04, 0, 0])
SCATTER = np.array([0.01, 0.02, 0.015, 0.01, 0.025, 0.02, 0.03, 0.015])
CARRIERS = ({"E1_FE", "E2_FE", "E3_FE"}, {"E4_FE", "E5_FE", "E6_FE"})


def synthetic_catalogue(
    n: int,
    seed: int,
    *,
    scatter: bool = True,
    latent: bool = True,
    truth: dict[str, np.ndarray] | None = None,
) -> Table:
    """The catalogue (observed values with ``_ERR`` columns, plus TEFF, LOGG)."""
    rng = np.random.default_rng(seed)
    if truth is None:
        truth = {"A_H": rng.normal(-0.2, 0.3, n), "B_FE": rng.normal(0.1, 0.1, n)}
        truth["z"] = rng.standard_normal((n, 2))
        truth["eps"] = rng.standard_normal((n, len(TARGETS)))
    a, b = truth["A_H"], truth["B_FE"]
    n = a.size
    coef = np.linspace(-0.4, 0.6, len(TARGETS))
    values = (
        coef * a[:, None]
        + (1.0 - coef) * b[:, None]
        + 0.3 * (a * b)[:, None] * coef
        + 0.1 * (a**2)[:, None]
    )
    if latent:
        values = values + truth["z"][:, :1] * LOAD1 + truth["z"][:, 1:] * LOAD2
    if scatter:
        values = values + truth["eps"] * SCATTER
    table = Table()
    for name, value in [("A_H", a), ("B_FE", b), *zip(TARGETS, values.T, strict=True)]:
        err = rng.uniform(0.01, 0.03, n)
        table[name] = value + err * rng.standard_normal(n)
        table[f"{name}_ERR"] = err
    table["TEFF"] = rng.normal(4700.0, 200.0, n)
    table["LOGG"] = rng.normal(2.5, 0.4, n)
    return table
