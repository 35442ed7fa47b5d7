"""Argument checks at the public boundary of :mod:`stellarflow.flows`.

``flows`` imports nothing else of stellarflow, so it carries its own small error class;
:class:`FlowInputError` is a :class:`ValueError`, which the rest of the package may catch or
translate into its own hierarchy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "FlowInputError",
    "check_context",
    "check_context_err",
    "check_flux",
    "check_ivar",
    "check_temperature",
]


class FlowInputError(ValueError):
    """Arguments to a flow model with the wrong shape, dtype or values."""


def _check_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise FlowInputError(
            f"{name} must be a torch.Tensor, got {type(x).__name__}; convert it with "
            "torch.as_tensor(..., dtype=torch.float32)"
        )
    if not x.is_floating_point():
        raise FlowInputError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype}; cast it with .float()"
        )
    return x


def _check_dtype(x: Tensor, name: str, like: Tensor) -> None:
    if x.dtype != like.dtype or x.device != like.device:
        raise FlowInputError(
            f"{name} is {x.dtype} on {x.device} but the model is {like.dtype} on "
            f"{like.device}; move one of them, e.g. model.to(flux.dtype) or "
            f"{name}.to(model_dtype)"
        )


def check_context(context: Tensor | None, n_context: int, like: Tensor) -> Tensor | None:
    """Validate the labels passed as context.

    Args:
        context: `(*batch, n_context)` labels in their physical units, or None.
        n_context: the number of labels the model was built for.
        like: a model tensor whose dtype and device the context must share.

    Returns:
        The context (unchanged), or None for an unconditional model.

    Raises:
        FlowInputError: missing context for a conditional model, wrong last dimension,
            non-finite values, or dtype/device mismatch.
    """
    if context is None:
        if n_context > 0:
            raise FlowInputError(
                f"the model is conditional on {n_context} labels but context is None; pass "
                f"context of shape (n_stars, {n_context})"
            )
        return None
    context = _check_tensor(context, "context")
    if context.ndim < 1 or context.shape[-1] != n_context:
        raise FlowInputError(
            f"context must have shape (n_stars, {n_context}), got {tuple(context.shape)}"
        )
    _check_dtype(context, "context", like)
    if not bool(torch.isfinite(context).all()):
        raise FlowInputError("context contains NaN or infinite labels; drop or impute those stars")
    return context


def check_context_err(
    context_err: Tensor | None, context: Tensor | None, like: Tensor
) -> Tensor | None:
    """Validate the labels' own uncertainties.

    Args:
        context_err: `(*batch, n_context)` one-sigma errors of the labels, in the labels'
            physical units, finite and >= 0 (0 = exact); None for exact labels.
        context: the (checked) context it belongs to, or None.
        like: a model tensor whose dtype and device context_err must share.

    Returns:
        context_err (unchanged) or None.

    Raises:
        FlowInputError: errors without labels, a shape different from the context's,
            negative or non-finite values, dtype/device mismatch.
    """
    if context_err is None:
        return None
    context_err = _check_tensor(context_err, "context_err")
    if context is None:
        raise FlowInputError(
            "context_err was given but context is None; label errors need labels (pass "
            "context, or context_err=None for an unconditional model)"
        )
    if context_err.shape != context.shape:
        raise FlowInputError(
            f"context_err must have the shape of context, {tuple(context.shape)}, got "
            f"{tuple(context_err.shape)}; give one error per label and star"
        )
    _check_dtype(context_err, "context_err", like)
    if context_err.numel() > 0:
        low, high = torch.aminmax(context_err)  # NaN fails both tests
        if not (bool(low >= 0) and bool(high < math.inf)):
            raise FlowInputError(
                "context_err must be finite and >= 0 (one-sigma label errors in the labels' "
                "units; 0 = exact); replace NaN, inf or negative values"
            )
    return context_err


def check_ivar(ivar: Tensor | None, n_pixels: int, like: Tensor) -> Tensor | None:
    """Validate inverse variances.

    Args:
        ivar: `(*batch, n_pixels)`, 1 / flux units squared, finite and >= 0 (0 = masked),
            or None for noise-free spectra.
        n_pixels: the model's number of pixels.
        like: a model tensor whose dtype and device ivar must share.

    Returns:
        ivar (unchanged) or None.

    Raises:
        FlowInputError: wrong shape, negative or non-finite values, dtype/device mismatch.
    """
    if ivar is None:
        return None
    ivar = _check_tensor(ivar, "ivar")
    if ivar.ndim < 1 or ivar.shape[-1] != n_pixels:
        raise FlowInputError(
            f"ivar must have shape (n_stars, {n_pixels}), got {tuple(ivar.shape)}; the model "
            f"was built for {n_pixels} pixels"
        )
    _check_dtype(ivar, "ivar", like)
    if ivar.numel() > 0:
        low, high = torch.aminmax(ivar)  # one pass; NaN propagates and fails both tests
        if not (bool(low >= 0) and bool(high < math.inf)):
            raise FlowInputError(
                "ivar must be finite and >= 0 (0 marks a masked pixel); replace NaN, inf or "
                "negative values by 0"
            )
    return ivar


def check_flux(
    flux: Tensor,
    n_pixels: int,
    like: Tensor,
    observed: Tensor | None = None,
    finite: bool = True,
) -> Tensor:
    """Validate flux; only observed pixels must be finite.

    Args:
        flux: `(*sample, *batch, n_pixels)`, continuum-normalised, dimensionless. Masked
            pixels may hold anything (NaN included).
        n_pixels: the model's number of pixels.
        like: a model tensor whose dtype and device flux must share.
        observed: `(*batch, n_pixels)` bool, True where the pixel counts, or None (all).
        finite: also check that observed pixels are finite (a full pass over the data;
            callers may instead check their finite result and only then call this).

    Returns:
        flux (unchanged).

    Raises:
        FlowInputError: wrong shape, dtype/device mismatch, or a non-finite observed pixel.
    """
    flux = _check_tensor(flux, "flux")
    if flux.ndim < 1 or flux.shape[-1] != n_pixels:
        raise FlowInputError(
            f"flux has {flux.shape[-1] if flux.ndim else 0} pixels but the model was built "
            f"for {n_pixels}; resample the spectra onto the model's wavelength grid"
        )
    _check_dtype(flux, "flux", like)
    if finite:
        bad = ~torch.isfinite(flux)
        if observed is not None:
            bad = bad & observed
        if bool(bad.any()):
            raise FlowInputError(
                f"flux has {int(bad.sum())} non-finite values at observed pixels; mask them "
                "(ivar = 0) or repair the spectra"
            )
    return flux


def check_temperature(temperature: float) -> float:
    """Validate a sampling temperature (the base Gaussian's standard deviation), > 0."""
    temperature = float(temperature)
    if not temperature > 0:  # also rejects NaN
        raise FlowInputError(f"temperature must be > 0, got {temperature}")
    return temperature
