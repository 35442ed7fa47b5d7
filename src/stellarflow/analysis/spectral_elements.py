r"""The spectral version of "how many elements matter": variance left at fixed labels.

Two (or more) spectral models of the same survey, conditioned on different label sets (e.g.
TEFF, LOGG, FE_H, MG_FE versus TEFF, LOGG, FE_H, MG_FE, O_FE, SI_FE, CA_FE, AL_FE), are
evaluated at one label point (e.g. solar [Fe/H] = [X/Fe] = 0). The per-pixel variance of the
noise-free spectra at that point,

.. math:: v_p = \mathrm{diag}(L\,\mathrm{Cov}[z \mid c]\,L^\top)_p + \tau_p^2 ,

is exact for the linear-Gaussian families (``model.covariance``); for other models it is the
sample variance of ``n_samples`` draws. It is compared with the survey's noise variance
:math:`\sigma_p^2` (median over stars of ``1 / ivar``), per pixel and summed over the pixels
within ``half_width`` of each element's lines (from the line list's ``element`` column, or
the first word of ``species``): the chemical variance a conditioning set leaves shows up on
the lines of the elements it does not fix.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from astropy.table import Table

from stellarflow.analysis.sampling import sample_spectra
from stellarflow.errors import DataValidationError

__all__ = ["element_pixels", "spectral_variance", "variance_by_element"]


@torch.no_grad()
def spectral_variance(
    trained: object, point: Mapping[str, float], n_samples: int = 2000, seed: int = 0
) -> np.ndarray:
    """Per-pixel variance of noise-free spectra at ``point``: `(n_pixels,)`, flux units².

    Args:
        trained: a :class:`~stellarflow.train.checkpoint.TrainedModel`.
        point: label values by name (exactly the model's labels).
        n_samples: draws when the model has no analytic covariance.
        seed: seed of those draws.
    """
    model = trained.model  # type: ignore[attr-defined]
    names = trained.label_names  # type: ignore[attr-defined]
    missing = [n for n in names if n not in point]
    if missing:
        raise DataValidationError(f"the label point lacks {missing}; the model needs {list(names)}")
    if hasattr(model, "covariance"):
        param = next(model.parameters())
        context = torch.tensor([[point[n] for n in names]], dtype=param.dtype, device=param.device)
        f = model.covariance(context)
        loading = f.loading[0]
        var = torch.einsum("pk,kl,pl->p", loading, f.latent_cov[0], loading)
        intrinsic = f.intrinsic_var[0] if f.intrinsic_var.dim() > 1 else f.intrinsic_var
        return (var + intrinsic).double().cpu().numpy()
    flux = sample_spectra(trained, {n: point[n] for n in names}, n_samples, seed=seed)  # type: ignore[arg-type]
    return flux.astype(np.float64).var(axis=0)


def element_pixels(
    wavelength: np.ndarray, linelist: Table, half_width: float = 0.6
) -> dict[str, np.ndarray]:
    """Pixels within ``half_width`` Å of each element's lines.

    Args:
        wavelength: `(n_pixels,)`, vacuum Å.
        linelist: table with ``wavelength`` (vacuum Å) and ``element`` or ``species``.
        half_width: Å either side of each line centre.

    Returns:
        element -> `(n_pixels,)` bool mask (elements with no pixel on the grid left out).
    """
    if "element" in linelist.colnames:
        elements = np.asarray(linelist["element"]).astype(str)
    else:
        elements = np.array([str(s).split()[0] for s in linelist["species"]])
    centres = np.asarray(linelist["wavelength"], dtype=np.float64)
    out = {}
    for element in sorted(set(elements)):
        lines = centres[elements == element]
        lines = lines[(lines > wavelength[0] - half_width) & (lines < wavelength[-1] + half_width)]
        if lines.size == 0:
            continue
        near = np.abs(wavelength[:, None] - lines[None, :]).min(axis=1) <= half_width
        if near.any():
            out[element] = near
    return out


def variance_by_element(
    wavelength: np.ndarray,
    variances: Mapping[str, np.ndarray],
    noise_variance: np.ndarray,
    linelist: Table,
    half_width: float = 0.6,
) -> Table:
    """Spectral variance at fixed labels summed over each element's line pixels.

    Args:
        wavelength: `(n_pixels,)`, vacuum Å.
        variances: conditioning-set name -> `(n_pixels,)` variance at fixed labels.
        noise_variance: `(n_pixels,)`, typical per-pixel noise variance of the survey.
        linelist: the line list (``wavelength``, ``element`` or ``species``).

    Returns:
        One row per element: ``element, n_pixels, noise_variance`` and for each set
        ``variance_<name>`` and ``ratio_<name>`` (variance / noise variance).
    """
    masks = element_pixels(wavelength, linelist, half_width)
    table = Table()
    table["element"] = list(masks)
    table["n_pixels"] = [int(m.sum()) for m in masks.values()]
    table["noise_variance"] = [float(noise_variance[m].sum()) for m in masks.values()]
    for name, var in variances.items():
        table[f"variance_{name}"] = [float(var[m].sum()) for m in masks.values()]
        table[f"ratio_{name}"] = table[f"variance_{name}"] / table["noise_variance"]
    return table
