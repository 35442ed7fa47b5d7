"""Where a hidden-line search gets its spectra: model draws, or survey residuals (baseline).

:func:`model_correlation` accumulates the pixel correlation of noise-free spectra drawn from
a trained model at a label point; :func:`empirical_correlation` is what one could do without
a model: the correlation of observed spectra's residuals (about a per-pixel linear fit in
the labels) among the survey stars in a narrow Teff/logg bin, noise included.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from stellarflow.analysis.correlation import CorrelationAccumulator, PixelCorrelation
from stellarflow.analysis.sampling import _context, stars_near
from stellarflow.errors import DataValidationError

__all__ = ["draw_chunks", "empirical_correlation", "model_correlation"]

_BASELINE_WIDTHS = {"TEFF": 50.0, "LOGG": 0.1}


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="spectra", leave=False)


@torch.no_grad()
def draw_chunks(
    trained: Any,
    point: Mapping[str, float],
    n_samples: int,
    *,
    box: Mapping[str, float] | None = None,
    chunk_size: int = 1024,
    seed: int = 0,
    temperature: float = 1.0,
    progress: bool = False,
) -> Iterator[np.ndarray]:
    """Yield `(n_chunk, n_pixels)` float64 spectra drawn from the model, ``n_samples`` in all.

    Labels are the point, or uniform in ``point +- box`` (half-widths in the labels' units)
    when ``box`` is given. Randomness comes from ``seed`` only (global state untouched).
    """
    if n_samples < 2 or chunk_size < 1:
        raise DataValidationError(
            f"need n_samples >= 2 and chunk_size >= 1, got {n_samples} and {chunk_size}"
        )
    centre = _context(trained, point)
    half = np.zeros_like(centre)
    if box:
        unknown = sorted(set(box) - set(trained.label_names))
        bad = [k for k, v in box.items() if not (np.isfinite(v) and v >= 0)]
        if unknown or bad:
            raise DataValidationError(
                f"box must give finite half-widths >= 0 for the model's labels "
                f"{list(trained.label_names)}; got {dict(box)}"
            )
        half[0] = [float(box.get(name, 0.0)) for name in trained.label_names]
    rng = np.random.default_rng(seed)
    device = next(trained.model.parameters()).device
    bar = _progress(n_samples, progress, "sampling")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, n_samples, chunk_size):
            n = min(chunk_size, n_samples - start)
            labels = centre + half * rng.uniform(-1.0, 1.0, (n, centre.shape[1]))
            context = torch.as_tensor(labels, device=device).float()
            distribution = trained.model(context if trained.label_names else None)
            if temperature == 1.0:
                draw = distribution.sample()
            else:
                draw = distribution.sample(temperature=temperature)  # type: ignore[call-arg]
            bar.update(n)
            yield draw.double().cpu().numpy()
    bar.close()


def model_correlation(
    trained: Any,
    point: Mapping[str, float],
    n_samples: int = 20_000,
    *,
    box: Mapping[str, float] | None = None,
    chunk_size: int = 1024,
    seed: int = 0,
    temperature: float = 1.0,
    progress: bool = False,
) -> PixelCorrelation:
    """Pixel correlation of spectra drawn from a trained model at a label point (or box).

    Spectra are drawn ``chunk_size`` at a time and accumulated in float64, so memory is one
    `(n_pixels, n_pixels)` matrix whatever ``n_samples``.

    Args:
        trained: a :class:`~stellarflow.train.checkpoint.TrainedModel`.
        point: label values by name (exactly the model's labels).
        n_samples: spectra to draw (>= 2).
        box: optional half-widths per label: labels are drawn uniformly in
            ``point +- box`` instead of fixed at the point.
        chunk_size: spectra per model call.
        seed: seed of the draws.
        temperature: base-distribution scale (1 = the model).
        progress: show a tqdm bar.

    Returns:
        The :class:`PixelCorrelation`; ``meta`` records the point, box and model.

    Raises:
        LabelError: labels not the model's; DataValidationError: bad sizes or box.
    """
    accumulator = CorrelationAccumulator(trained.n_pixels)
    for chunk in draw_chunks(
        trained, point, n_samples, box=box, chunk_size=chunk_size, seed=seed,
        temperature=temperature, progress=progress,
    ):  # fmt: skip
        accumulator.update(chunk)
    meta = {
        "source": "model",
        "model": str(getattr(trained, "path", "")),
        "temperature": temperature,
        **{f"label_{k}": float(v) for k, v in point.items()},
        **{f"box_{k}": float(v) for k, v in (box or {}).items()},
    }
    return accumulator.finish(trained.wavelength, meta)


def _select(data: Any, rows: np.ndarray, chunk_size: int = 4096) -> Any:
    """Rows of an in-memory dataset, or of a survey file read chunk by chunk."""
    from stellarflow.data.dataset import SpectralDataset, concatenate

    if isinstance(data, SpectralDataset):
        return data[rows]
    parts = []
    for start in range(0, len(data), chunk_size):
        inside = rows[(rows >= start) & (rows < start + chunk_size)]
        if inside.size:
            parts.append(data.read(start, start + chunk_size)[inside - start])
    return concatenate(parts)


def empirical_correlation(
    data: Any,
    point: Mapping[str, float],
    *,
    widths: Mapping[str, float] | None = None,
    min_stars: int = 50,
    fit_labels: tuple[str, ...] | None = None,
    chunk_size: int = 1024,
) -> PixelCorrelation:
    r"""Baseline: correlation of observed spectra's residuals in a narrow Teff/logg bin.

    Stars within ``widths`` (default 50 K in TEFF, 0.1 dex in LOGG; doubled until
    ``min_stars`` are in, see :func:`~stellarflow.analysis.sampling.stars_near`) of the
    point's TEFF and LOGG are taken; at every pixel the flux is fitted by weighted least
    squares (weights: usable pixels) with a linear function of ``fit_labels`` (default: the
    point's labels), :math:`f_{ip} = a_p + b_p^T (l_i - l_0) + r_{ip}`, and the residuals
    :math:`r` (0 at masked pixels) are accumulated. The returned ``mean`` is the fit at the
    point, :math:`a_p`; ``std`` and ``correlation`` are of the residuals, noise included.

    Args:
        data: a :class:`~stellarflow.data.dataset.SpectralDataset` or an open survey file.
        point: label values by name; TEFF and LOGG select the bin.
        widths: half-widths of the bin per label.
        min_stars: stars wanted in the bin.
        fit_labels: labels of the per-pixel linear fit.
        chunk_size: stars per accumulation chunk.

    Raises:
        DataValidationError: fewer stars in the bin than fit terms + 2, or unknown labels.
    """
    select = {k: point[k] for k in ("TEFF", "LOGG") if k in point}
    if not select:
        raise DataValidationError(f"the point needs TEFF and/or LOGG to select a bin; got {point}")
    rows = stars_near(data.labels, select, {**_BASELINE_WIDTHS, **(widths or {})},
                      min_stars=min_stars)  # fmt: skip
    names = tuple(point) if fit_labels is None else tuple(fit_labels)
    if rows.size < len(names) + 3:
        raise DataValidationError(
            f"only {rows.size} stars near {select}; need at least {len(names) + 3} for the "
            "baseline's fit; widen the bin or use a larger survey"
        )
    stars = _select(data, np.sort(rows))
    centre = np.array([point.get(n, 0.0) for n in names])
    labels = stars.label_array(list(names)) - centre
    scale = np.where(labels.std(0) > 0, labels.std(0), 1.0)
    design = np.column_stack([np.ones(len(stars)), labels / scale])
    good = (~stars.mask) & (stars.ivar > 0)
    flux = np.where(good, stars.flux, 0.0).astype(np.float64)
    weight = good.astype(np.float64)
    normal = np.einsum("sa,sb,sp->pab", design, design, weight)
    normal += 1e-9 * np.eye(design.shape[1])
    rhs = np.einsum("sa,sp->pa", design, weight * flux)
    coef = np.linalg.solve(normal, rhs[..., None])[..., 0]
    accumulator = CorrelationAccumulator(stars.n_pixels)
    for start in range(0, len(stars), chunk_size):
        part = slice(start, start + chunk_size)
        fitted = design[part] @ coef.T
        accumulator.update(np.where(good[part], flux[part] - fitted, 0.0))
    meta = {
        "source": "survey residuals",
        "n_stars": int(rows.size),
        **{f"label_{k}": float(v) for k, v in point.items()},
    }
    result = accumulator.finish(stars.wavelength, meta)
    result.mean = coef[:, 0]
    return result
