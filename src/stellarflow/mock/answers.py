"""Answer-key quantities of a mock survey that are not stored in its file.

:func:`spectra_at_labels` draws the mock population's noise-free spectra at a fixed label
point: the "known intrinsic scatter at fixed labels" that a deconvolved model should
reproduce (issue: noise-aware likelihood).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from stellarflow.errors import DataValidationError
from stellarflow.mock.config import MockConfig
from stellarflow.mock.linelist import make_mock_linelist
from stellarflow.mock.population import sample_population
from stellarflow.mock.spectra import SpectrumModel, StarParameters

__all__ = ["spectra_at_labels"]

# half-widths of the box in which population stars are taken before being moved to the point
_DEFAULT_BOX = {"TEFF": 60.0, "LOGG": 0.12, "FE_H": 0.05}


def spectra_at_labels(
    config: MockConfig,
    point: Mapping[str, float],
    n_stars: int = 1000,
    *,
    box: Mapping[str, float] | None = None,
    seed: int = 12345,
    max_draws: int = 2_000_000,
) -> np.ndarray:
    """Noise-free mock spectra of stars whose true labels are exactly ``point``.

    Population stars (no outliers) are drawn with the mock's population law until
    ``n_stars`` fall in a small box around the point (default half-widths: 60 K, 0.12 dex
    in LOGG, 0.05 dex in FE_H, 0.05 otherwise); their labels named in ``point`` are then set
    to the point exactly and everything else (abundances, mixing, broadening, resolution) is
    kept, so the spectra sample p(spectrum | labels = point) of the mock's population.

    Args:
        config: the mock's configuration (grid, line list seed, population law).
        point: true label values by name (e.g. TEFF, LOGG, FE_H).
        n_stars: spectra wanted.
        box: half-widths of the selection box per label.
        seed: seed of the population draws (independent of the survey's own stars).
        max_draws: give up after this many population draws.

    Returns:
        `(n_stars, n_pixels)` float64 flux on ``config.wavelength()``.

    Raises:
        DataValidationError: unknown label, or too few population stars near the point.
    """
    clean = MockConfig.from_dict({**config.to_dict(), "outlier_fraction": 0.0})
    rng = np.random.default_rng(seed)
    widths = {**_DEFAULT_BOX, **(box or {})}
    kept = []
    n_kept, n_drawn = 0, 0
    while n_kept < n_stars and n_drawn < max_draws:
        batch = sample_population(clean, rng, 50_000)
        n_drawn += len(batch)
        inside = np.ones(len(batch), dtype=bool)
        for name, value in point.items():
            if name not in batch.colnames:
                raise DataValidationError(
                    f"label {name!r} is not a mock label; expected one of {batch.colnames[1:]}"
                )
            inside &= np.abs(np.asarray(batch[name]) - value) <= widths.get(name, 0.05)
        if np.any(inside):
            kept.append(batch[inside])
            n_kept += int(inside.sum())
    if n_kept < n_stars:
        raise DataValidationError(
            f"only {n_kept} of {n_drawn} mock stars lie near {dict(point)}; choose a "
            "well-populated label point or fewer stars"
        )
    from astropy.table import vstack

    stars = vstack(kept)[:n_stars]
    for name, value in point.items():
        stars[name] = np.full(len(stars), float(value))
    linelist = make_mock_linelist(
        clean.linelist_seed,
        withheld_fraction=clean.withheld_fraction,
        withheld_elements=clean.withheld_elements,
    )
    model = SpectrumModel(linelist, clean.wavelength())
    return model.flux(StarParameters.from_labels(stars))
