r"""What every spectral model shares: standardisation buffers, checks, loss and the API.

Standardisation lives inside the model as buffers, so a checkpoint is self-contained:

* labels: :math:`l = (c - c_{loc}) / c_{scale}` (an input transform; no Jacobian term,
  since the density is over flux, not labels);
* flux: :math:`u = (x - m) / s` per pixel, which adds :math:`-\sum_{i \in O} \log s_i` to
  every ``log_prob`` (DESIGN-NOTES 1), so ``log_prob`` is in nats for the flux in its own
  (continuum-normalised) units.

Every model is called zuko-style, ``model(context, ivar=None, temperature=1.0)``, and returns
a :class:`torch.distributions.Distribution` with batch shape `(n_stars,)` and event shape
`(n_pixels,)`. A generic training loop needs only :meth:`SpectralModel.loss` and
:meth:`SpectralModel.initialize_from_data`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from stellarflow.flows._checks import (
    FlowInputError,
    check_context,
    check_context_err,
    check_flux,
    check_ivar,
)
from stellarflow.flows.linear_gaussian import (
    n_quadratic_terms,
    quadratic_feature_jacobian,
    quadratic_features,
)

__all__ = [
    "QuadraticMean",
    "SpectralModel",
    "check_positive",
    "in_row_blocks",
    "star_chunks",
]

_BLOCK_ELEMENTS = 1 << 23
"""Numbers per star-block of per-pixel work (32 MB in float32): :meth:`SpectralModel.block_rows`.

Measured at 7,514 pixels on the 2-core CPU (``benchmarks/flows_speed.py --blocks-only``):
factor analysis k = 16 scores 9,800-13,100 spectra/s in blocks of 139 stars and 1,300-5,300/s
(erratic) in one block of 1,024; with label-dependent loadings (a 7,514 x 16 loading per
star) 3,400-5,600/s in blocks of 46 against 375-1,300/s in one block. The work is
memory-bound: it pays to keep each block's arrays in the caches."""


def check_positive(name: str, value: int | float, *, allow_zero: bool = False) -> None:
    """Raise :class:`FlowInputError` unless ``value`` is > 0 (>= 0 with ``allow_zero``)."""
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise FlowInputError(f"{name} must be {bound}, got {value}")


def star_chunks(n_stars: int, chunk_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``chunk_size`` stars."""
    for start in range(0, n_stars, chunk_size):
        yield slice(start, min(start + chunk_size, n_stars))


def in_row_blocks(fn: Callable[..., Any], rows: int, *arrays: Tensor | None) -> Any:
    """``fn(*arrays)`` evaluated on consecutive blocks of at most ``rows`` stars.

    Args:
        fn: maps row-aligned arrays `(n_stars, ...)` (or None) to a tensor `(n_stars, ...)`
            or a NamedTuple of such tensors.
        rows: stars per block (>= 1).
        *arrays: the inputs; None passes through to every block.

    Returns:
        The per-block results concatenated along the star dimension; ``fn(*arrays)`` itself
        when one block suffices (same random draws as an unblocked call then).
    """
    present = [a for a in arrays if a is not None]
    n_stars = present[0].shape[0] if present and present[0].ndim > 1 else 0
    if n_stars <= rows or any(a.ndim < 1 or a.shape[0] != n_stars for a in present):
        return fn(*arrays)
    parts = [
        fn(*(None if a is None else a[block] for a in arrays))
        for block in star_chunks(n_stars, rows)
    ]
    first = parts[0]
    if isinstance(first, tuple):
        return type(first)(*(torch.cat(field, dim=0) for field in zip(*parts, strict=True)))
    return torch.cat(parts, dim=0)


class QuadraticMean(nn.Module):
    r"""The label-dependent mean in standardised pixel units.

    .. math:: \mu(l) = a(l)^T \Theta + \mathrm{MLP}(l), \qquad
              a(l) = [1, l_i, l_i l_j\ (i \le j)]

    with :math:`\Theta` `(n_terms, n_pixels)` (The Cannon's quadratic model) and an optional
    small MLP residual (SiLU, two hidden layers of width ``hidden``).

    Args:
        n_pixels: number of pixels.
        n_context: number of labels ``L``.
        hidden: width of the MLP residual; 0 disables it.
    """

    def __init__(self, n_pixels: int, n_context: int, hidden: int = 0) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(n_quadratic_terms(n_context), n_pixels))
        self.mlp: nn.Sequential | None = None
        if hidden > 0 and n_context > 0:
            self.mlp = nn.Sequential(
                nn.Linear(n_context, hidden),
                nn.SiLU(),
                nn.Linear(hidden, hidden),
                nn.SiLU(),
                nn.Linear(hidden, n_pixels),
            )
            # Nearly zero at start, so the least-squares warm start is what the model uses.
            nn.init.normal_(self.mlp[-1].weight, std=1e-4)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, labels: Tensor | None) -> Tensor:
        """Mean for standardised labels `(*batch, L)` (or None): `(*batch, n_pixels)`."""
        mean = quadratic_features(labels, self.theta) @ self.theta
        if self.mlp is not None and labels is not None:
            mean = mean + self.mlp(labels)
        return mean

    def jacobian(self, labels: Tensor) -> Tensor:
        r""":math:`J = \partial \mu / \partial l`, `(*batch, n_pixels, L)`, standardised units.

        Analytic: for the quadratic part
        :math:`\partial a / \partial l_m = [0, e_m, \delta_{im} l_j + \delta_{jm} l_i]`;
        through the MLP residual the chain rule layer by layer (forward mode, one pass),
        :math:`J \leftarrow A J` for a linear layer and
        :math:`J \leftarrow \mathrm{diag}(\sigma(h)(1 + h(1 - \sigma(h)))) J` for SiLU.

        Args:
            labels: `(*batch, L)` standardised labels (dimensionless).
        """
        jac = self.theta.T @ quadratic_feature_jacobian(labels)  # (*batch, P, L)
        if self.mlp is not None:
            jac = jac + _mlp_jacobian(self.mlp, labels)
        return jac


def _mlp_jacobian(mlp: nn.Sequential, x: Tensor) -> Tensor:
    """Jacobian `(*batch, out, in)` of Linear and SiLU layers in sequence, at x `(*batch, in)`."""
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    jac = eye.expand(*x.shape, x.shape[-1])
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            jac = layer.weight @ jac
            x = layer(x)
        elif isinstance(layer, nn.SiLU):
            gate = torch.sigmoid(x)
            jac = (gate * (1 + x * (1 - gate)))[..., None] * jac
            x = layer(x)
        else:  # QuadraticMean builds only these two; anything else is a programming error
            raise TypeError(f"no Jacobian rule for {type(layer).__name__}")
    return jac


class SpectralModel(nn.Module):
    """Base class: standardisation buffers, argument checks, ``loss`` and ``config``.

    Subclasses set ``kind``, ``noise_aware``, ``self.options`` (a frozen config dataclass
    holding ``n_pixels``, ``n_context`` and every constructor option) and implement
    ``forward`` and ``initialize_from_data``.

    Buffers (all saved in ``state_dict``):
        flux_loc, flux_scale: `(n_pixels,)`, flux units; :math:`u = (x - m) / s`.
        context_loc, context_scale: `(n_context,)`, label units; :math:`l = (c - c_0)/c_s`.
        context_min, context_max: `(n_context,)`, the training labels' range (for
            :meth:`context_in_support`); infinite until :meth:`initialize_from_data`.
    """

    kind: ClassVar[str] = ""
    noise_aware: ClassVar[bool] = True
    options: Any

    def __init__(self, n_pixels: int, n_context: int) -> None:
        super().__init__()
        self.n_pixels = int(n_pixels)
        self.n_context = int(n_context)
        self.register_buffer("flux_loc", torch.zeros(n_pixels))
        self.register_buffer("flux_scale", torch.ones(n_pixels))
        self.register_buffer("context_loc", torch.zeros(n_context))
        self.register_buffer("context_scale", torch.ones(n_context))
        self.register_buffer("context_min", torch.full((n_context,), -math.inf))
        self.register_buffer("context_max", torch.full((n_context,), math.inf))

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments: ``build_model(**model.config)`` rebuilds."""
        return {"kind": self.kind, **asdict(self.options)}

    def standardize_context(self, context: Tensor | None) -> Tensor | None:
        """Standardised labels `(*batch, n_context)`, dimensionless (None stays None)."""
        if context is None:
            return None
        return (context - self.context_loc) / self.context_scale

    def context_in_support(self, context: Tensor) -> Tensor:
        """True per star `(*batch,)` where every label lies in the training range."""
        inside = (context >= self.context_min) & (context <= self.context_max)
        return inside.all(-1)

    def _check_inputs(
        self, context: Tensor | None, ivar: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        context = check_context(context, self.n_context, self.flux_loc)
        ivar = check_ivar(ivar, self.n_pixels, self.flux_loc)
        return context, ivar

    def _check_context_err(self, context_err: Tensor | None, context: Tensor | None) -> None:
        check_context_err(context_err, context, self.flux_loc)

    def standardize_context_err(self, context_err: Tensor | None) -> Tensor | None:
        """Label errors in standardised units, ``err / context_scale`` (None stays None)."""
        if context_err is None:
            return None
        return context_err / self.context_scale

    def observed_log_prob(
        self,
        flux: Tensor,
        ivar: Tensor | None,
        context: Tensor | None,
        generator: torch.Generator | None = None,
        context_err: Tensor | None = None,
    ) -> Tensor:
        """log p(observed flux | context) in nats per star, with each star's noise and mask.

        For noise-aware models this is
        ``model(context, ivar=ivar, context_err=context_err).log_prob(flux)``; see the
        subclass for whether it is exact or an estimate.

        Args:
            flux: `(n_stars, n_pixels)`, continuum-normalised; anything at masked pixels.
            ivar: `(n_stars, n_pixels)`, 1 / flux units squared, 0 = masked; None means
                noise-free, fully observed spectra.
            context: `(n_stars, n_context)` labels in physical units, or None.
            generator: random numbers for stochastic estimates.
            context_err: `(n_stars, n_context)` one-sigma errors of the labels, physical
                units, >= 0; the likelihood then marginalises over the true labels
                (linearised; see the model's ``forward``). None: exact labels.

        Returns:
            `(n_stars,)`, nats.
        """
        check_flux(flux, self.n_pixels, self.flux_loc, finite=False)

        def evaluate(flux: Tensor, ivar: Tensor | None, context: Tensor | None, err: Any) -> Any:
            return self(context, ivar=ivar, generator=generator, context_err=err).log_prob(flux)

        rows = self.block_rows(context_err is not None, torch.is_grad_enabled())
        log_prob = in_row_blocks(evaluate, rows, flux, ivar, context, context_err)
        self._check_result(log_prob, flux, ivar)
        return log_prob

    def block_rows(self, label_errors: bool = False, gradient: bool = False) -> int:
        """Stars per block when evaluating the likelihood of many stars at once.

        The blocks hold about :data:`_BLOCK_ELEMENTS` numbers of per-pixel work: eight
        arrays of ``n_pixels`` per star plus :meth:`_per_star_columns` (a per-star loading
        matrix). Results do not depend on it (apart from the order of random draws).

        Args:
            label_errors: whether label errors are marginalised (more per-star columns).
            gradient: whether gradients will be taken. Training blocks only when each star
                has its own loading matrix: measured at 7,514 pixels
                (``benchmarks/flows_speed.py --blocks-only``), blocks make a training step
                with one shared loading 5-12% slower and one with per-star loadings
                2.0-2.6x faster.

        Returns:
            Stars per block (>= 8; a huge number when blocking does not pay).
        """
        extra = self._per_star_columns(label_errors)
        if gradient and extra == 0:
            return 1 << 62
        return max(8, _BLOCK_ELEMENTS // (self.n_pixels * (8 + extra)))

    def _per_star_columns(self, label_errors: bool) -> int:
        """Columns of per-star ``n_pixels``-long work beyond the basic eight (0 here)."""
        return 0

    def _check_result(self, log_prob: Tensor, flux: Tensor, ivar: Tensor | None) -> None:
        """Explain a non-finite log_prob if bad flux caused it (cheaper than checking first)."""
        if not bool(torch.isfinite(log_prob).all()):
            check_flux(flux, self.n_pixels, self.flux_loc, None if ivar is None else ivar > 0)

    def loss(
        self,
        flux: Tensor,
        ivar: Tensor | None,
        context: Tensor | None,
        context_err: Tensor | None = None,
    ) -> Tensor:
        """Training objective: mean negative log-likelihood per star, nats (a scalar).

        ``context_err`` (label errors, as in :meth:`observed_log_prob`) is optional.
        """
        return -self.observed_log_prob(flux, ivar, context, context_err=context_err).mean()

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups with suggested learning rates (one group by default).

        ``torch.optim.Adam(model.parameter_groups(lr))``; subclasses may slow down parts that
        overfit easily.
        """
        return [{"params": list(self.parameters()), "lr": lr}]

    @torch.no_grad()
    def set_standardization(
        self, flux: Tensor, ivar: Tensor | None, context: Tensor | None, chunk_size: int = 4096
    ) -> None:
        r"""Set the buffers from data: masked per-pixel mean and std of flux, label moments.

        :math:`m_i` and :math:`s_i` are the mean and standard deviation of the observed
        (``ivar > 0``) flux of pixel i across stars (1 and 1 for a pixel never observed;
        :math:`s_i \geq 10^{-6}`); labels get their mean, standard deviation and range.
        """
        context, ivar = self._check_inputs(context, ivar)
        check_flux(flux, self.n_pixels, self.flux_loc, None if ivar is None else ivar > 0)
        acc = torch.zeros(3, self.n_pixels, dtype=torch.float64, device=flux.device)
        for part in star_chunks(flux.shape[0], chunk_size):
            x = flux[part].double()
            obs = torch.ones_like(x, dtype=torch.bool) if ivar is None else ivar[part] > 0
            x = torch.where(obs, x, torch.zeros_like(x))
            acc += torch.stack([obs.sum(0), x.sum(0), (x * x).sum(0)])
        count, total, squares = acc
        seen = count > 0
        mean = torch.where(seen, total / count.clamp(min=1), torch.ones_like(total))
        var = (squares / count.clamp(min=1) - mean**2).clamp(min=0)
        std = torch.where(seen, var.sqrt().clamp(min=1e-6), torch.ones_like(var))
        self.flux_loc.copy_(mean)
        self.flux_scale.copy_(std)
        if context is not None and self.n_context > 0:
            c = context.double()
            scale = c.std(0) if c.shape[0] > 1 else torch.ones_like(c[0])
            self.context_loc.copy_(c.mean(0))
            self.context_scale.copy_(torch.where(scale > 0, scale, torch.ones_like(scale)))
            self.context_min.copy_(c.min(0).values)
            self.context_max.copy_(c.max(0).values)

    def standardized(self, flux: Tensor, ivar: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Standardised flux and ivar: ``u = (x - m)/s`` (0 at masked) and ``ivar * s**2``."""
        if ivar is None:
            return (flux - self.flux_loc) / self.flux_scale, None
        observed = ivar > 0
        # torch.where first: garbage (NaN, 1e6) at masked pixels never enters arithmetic.
        clean = torch.where(observed, flux, self.flux_loc)
        return (clean - self.flux_loc) / self.flux_scale, ivar * self.flux_scale**2
