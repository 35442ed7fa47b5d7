r"""Rational-quadratic spline with a cheaper, identity-at-zero parametrisation.

The spline itself (bin search, forward, inverse, log-derivative) is zuko's
:class:`~zuko.transforms.MonotonicRQSTransform`; only the map from unconstrained parameters
to knots differs (Durkan et al. 2019, "Neural Spline Flows"):

.. math::

    \Delta x_k = \delta + (1 - K\delta)\, \mathrm{softmax}(w)_k, \qquad
    \Delta y_k = \delta + (1 - K\delta)\, \mathrm{softmax}(h)_k, \qquad
    d_j = s + (1 - s)\, \frac{\mathrm{softplus}(v_j)}{\log 2},

with knots :math:`x_k = B(2 \sum_{j \le k} \Delta x_j - 1)` (same for y) on
:math:`[-B, B]`, boundary derivatives 1 and the identity outside. All-zero parameters give
exactly the identity. The softmax is written out (max-subtracted ``exp`` / ``sum``) because
``torch.softmax`` over a last dimension of ~8 is several times slower on CPU, and the softplus
keeps derivatives from overflowing where ``exp`` would. Inputs are made contiguous first:
element-wise kernels on strided views are an order of magnitude slower on CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from zuko.transforms import MonotonicRQSTransform

__all__ = ["RationalQuadraticSpline"]


def _bin_sizes(raw: Tensor, min_size: float) -> Tensor:
    """Bin sizes summing to 1 along the last dim, each >= ``min_size``."""
    raw = raw.contiguous()  # element-wise kernels on strided views are ~10x slower on CPU
    e = torch.exp(raw - raw.amax(dim=-1, keepdim=True))
    k = raw.shape[-1]
    return min_size + (1 - k * min_size) * e / e.sum(dim=-1, keepdim=True)


class RationalQuadraticSpline(MonotonicRQSTransform):
    r"""Monotonic rational-quadratic spline on :math:`[-B, B]` (identity outside).

    Args:
        widths: `(*, K)` unconstrained bin widths :math:`w`.
        heights: `(*, K)` unconstrained bin heights :math:`h`.
        derivatives: `(*, K - 1)` unconstrained interior knot derivatives :math:`v`.
        bound: :math:`B`, in the units of the transformed variable.
        slope: :math:`s`, the smallest knot derivative.
        min_bin: :math:`\delta`, the smallest bin width/height as a fraction of 2B.
    """

    def __init__(
        self,
        widths: Tensor,
        heights: Tensor,
        derivatives: Tensor,
        bound: float = 5.0,
        slope: float = 1e-3,
        min_bin: float = 1e-3,
    ) -> None:
        # Deliberately skip MonotonicRQSTransform.__init__: we set its knots ourselves.
        super(MonotonicRQSTransform, self).__init__()
        dx = F.pad(_bin_sizes(widths, min_bin), (1, 0), value=0.0)
        dy = F.pad(_bin_sizes(heights, min_bin), (1, 0), value=0.0)
        interior = slope + (1 - slope) * F.softplus(derivatives.contiguous()) / math.log(2)
        self.horizontal = bound * (2 * torch.cumsum(dx, dim=-1) - 1)
        self.vertical = bound * (2 * torch.cumsum(dy, dim=-1) - 1)
        self.derivatives = F.pad(interior, (1, 1), value=1.0)
