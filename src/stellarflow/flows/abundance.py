r"""A conditional spline flow over a few dozen abundances, p(y | context).

:math:`y` (`(n_stars, n_features)`, dex) is standardised, :math:`u = (y - \mu)/\sigma`, and
modelled by a zuko neural spline flow conditioned on the standardised context
:math:`v = (c - \mu_c)/\sigma_c`; the density in the units of :math:`y` includes the
standardisation Jacobian,

.. math:: \log p(y \mid c) = \log p_{NSF}(u \mid v) - \sum_i \log \sigma_i .

Standardisation is stored as buffers, so a saved state dict is self-contained. Model code
takes no device: new tensors follow the inputs.
"""

from __future__ import annotations

import torch
import zuko
from torch import nn
from torch.distributions import AffineTransform, Distribution, TransformedDistribution

__all__ = ["AbundanceFlow"]


class AbundanceFlow(nn.Module):
    """Conditional NSF over abundances with stored standardisation.

    Args:
        n_features: number of abundances modelled.
        n_context: number of conditioning quantities.
        transforms: spline-coupling transforms.
        hidden: hidden widths of each transform's conditioner.
        bins: spline bins.
    """

    def __init__(
        self,
        n_features: int,
        n_context: int,
        *,
        transforms: int = 4,
        hidden: tuple[int, ...] = (64, 64),
        bins: int = 8,
    ) -> None:
        super().__init__()
        if n_features < 1 or n_context < 1:
            raise ValueError(
                f"need n_features >= 1 and n_context >= 1, got {n_features}, {n_context}"
            )
        self.flow = zuko.flows.NSF(
            n_features,
            n_context,
            bins=bins,
            transforms=transforms,
            hidden_features=hidden,
            passes=2 if n_features > 1 else None,
        )
        self.register_buffer("y_center", torch.zeros(n_features))
        self.register_buffer("y_scale", torch.ones(n_features))
        self.register_buffer("c_center", torch.zeros(n_context))
        self.register_buffer("c_scale", torch.ones(n_context))

    def set_standardisation(self, y: torch.Tensor, context: torch.Tensor) -> None:
        """Store mean and standard deviation of the training data.

        Args:
            y: `(n, n_features)` abundances.
            context: `(n, n_context)` conditions.
        """
        with torch.no_grad():
            self.y_center.copy_(y.mean(0))
            self.y_scale.copy_(y.std(0).clamp_min(1e-8))
            self.c_center.copy_(context.mean(0))
            self.c_scale.copy_(context.std(0).clamp_min(1e-8))

    def standardised(self, context: torch.Tensor) -> Distribution:
        """The flow over standardised abundances :math:`u` at ``context`` `(n, n_context)`."""
        return self.flow((context - self.c_center) / self.c_scale)

    def forward(self, context: torch.Tensor) -> Distribution:
        """p(y | context) in the units of y: `log_prob`, `sample`, `rsample`."""
        return TransformedDistribution(
            self.standardised(context), [AffineTransform(self.y_center, self.y_scale, event_dim=1)]
        )

    def mean(self, context: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        r"""Monte-Carlo conditional mean with common random numbers.

        Every star uses the same base draws ``base`` `(n_samples, n_features)`, so the
        estimate is a smooth, deterministic function of the context (and can be
        differentiated by finite differences):
        :math:`\hat m(c) = \mu + \sigma \langle f^{-1}(z_s; v) \rangle_s`.

        Returns:
            `(n, n_features)` in the units of y.
        """
        dist = self.standardised(context)
        u = dist.transform.inv(base[:, None, :].expand(-1, context.shape[0], -1))
        return self.y_center + self.y_scale * u.mean(0)
