r"""Small pure bijections used by the spectral flows (``torch.distributions.Transform``)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Transform, constraints

__all__ = ["PixelAffineTransform"]


class PixelAffineTransform(Transform):
    r"""Per-pixel standardisation :math:`y = (x - a) / b`, one event of ``n_pixels``.

    .. math:: \log |\det J| = -\sum_i \log b_i

    Args:
        shift: :math:`a`, `(*batch, n_pixels)` or `(n_pixels,)`, flux units.
        scale: :math:`b > 0`, `(*batch, n_pixels)` or `(n_pixels,)`, flux units.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, shift: Tensor, scale: Tensor) -> None:
        super().__init__()
        self.shift = shift
        self.scale = scale
        self._log_scale = torch.log(scale).sum(-1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(n_pixels={self.shift.shape[-1]})"

    def _call(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale

    def _inverse(self, y: Tensor) -> Tensor:
        return self.shift + self.scale * y

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        r"""`(*batch)`: :math:`-\sum_i \log b_i`, broadcast to x's leading shape."""
        return (-self._log_scale).expand(x.shape[:-1])
