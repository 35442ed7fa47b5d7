"""Build a model from its kind and JSON-serialisable config (checkpoint round trips).

``build_model(**model.config)`` rebuilds an architecture; ``load_state_dict`` then restores
every parameter and buffer (standardisation included)::

    config = model.config                      # JSON-serialisable dict, with "kind"
    state = model.state_dict()                 # tensors only
    clone = build_model(**config)
    clone.load_state_dict(state)
"""

from __future__ import annotations

from typing import Any

from stellarflow.flows._checks import FlowInputError
from stellarflow.flows.base import SpectralModel
from stellarflow.flows.coupling import SpectralCouplingFlow
from stellarflow.flows.gaussian import CannonModel, FactorAnalysisModel
from stellarflow.flows.latent import LatentFlowModel

__all__ = ["DEFAULT_KIND", "MODEL_KINDS", "build_model"]

MODEL_KINDS: dict[str, type[SpectralModel]] = {
    cls.kind: cls
    for cls in (CannonModel, FactorAnalysisModel, LatentFlowModel, SpectralCouplingFlow)
}

DEFAULT_KIND = LatentFlowModel.kind


def build_model(kind: str, n_pixels: int, n_context: int, **config: Any) -> SpectralModel:
    """Construct a model of the given kind.

    Args:
        kind: one of :data:`MODEL_KINDS` ("cannon", "factor_analysis", "latent_flow",
            "coupling").
        n_pixels: number of pixels.
        n_context: number of labels (0: unconditional).
        config: the kind's options (see each class), e.g. ``n_latent=8``.

    Returns:
        The freshly initialised model (call ``initialize_from_data`` before training).

    Raises:
        FlowInputError: unknown kind or unknown option.
    """
    if kind not in MODEL_KINDS:
        raise FlowInputError(f"unknown model kind {kind!r}; expected one of {sorted(MODEL_KINDS)}")
    cls = MODEL_KINDS[kind]
    try:
        return cls(n_pixels=n_pixels, n_context=n_context, **config)
    except TypeError as error:
        raise FlowInputError(f"invalid option for {kind!r}: {error}") from error
