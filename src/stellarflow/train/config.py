"""Training configuration: one frozen, validated dataclass saved with every checkpoint."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from stellarflow.data.dataset import check_ranges
from stellarflow.errors import DataValidationError, StellarflowError

__all__ = ["TrainConfig", "TrainingError"]

_DEVICES = ("auto", "cpu", "cuda")
_PRECISIONS = ("float32", "float64", "tf32", "bf16")


class TrainingError(StellarflowError, RuntimeError):
    """Training could not continue (non-finite losses, inconsistent resume, ...)."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train a spectral model.

    Attributes:
        label_names: label columns the model is conditioned on, e.g. ("TEFF", "LOGG", "FE_H");
            empty for an unconditional model.
        model: model family (see ``stellarflow.flows.build_model``).
        model_options: keyword options of that family (JSON-serialisable).
        epochs: maximum number of passes over the training stars.
        batch_size: stars per optimisation step.
        learning_rate: peak Adam learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up before the cosine decay.
        validation_fraction: fraction of stars held out (in blocks) for early stopping.
        patience: epochs without a validation improvement before stopping.
        grad_clip: maximum global gradient norm.
        max_bad_steps: consecutive non-finite steps tolerated before training stops.
        seed: seeds the split, the batch order and the model's initial weights.
        time_limit: wall-clock budget in minutes (None = no limit); training stops at the
            end of the epoch that exceeds it, with a checkpoint.
        device: "auto" (CUDA when present), "cpu" or "cuda" (or "cuda:N").
        precision: "float32"; "float64" (double precision everywhere: reference runs and
            tests; the saved weights load as float32); on GPU also "tf32" (TF32 matmuls) or
            "bf16" (autocast).
        block_size: stars per contiguous block of the split and the shuffle (out-of-core
            friendly: blocks are read whole).
        min_good_fraction: stars with a smaller fraction of usable pixels are not trained on.
        label_errors: marginalise over each star's label uncertainties, read from the
            ``<LABEL>_ERR`` columns (e.g. ``TEFF_ERR`` in K): the likelihood becomes
            p(flux | measured labels, their errors), linearised in the labels
            (``stellarflow.flows.gaussian``); scoring then uses the errors too. Needs a
            noise-aware model (not "coupling"). False: labels are taken as exact.
        init_from: a trained model directory whose parameters start this model instead of
            the warm start from data, for every parameter and buffer the two share by name
            and shape (same grid and labels required). The staged recipe: fit
            ``factor_analysis`` (minutes), then ``latent_flow`` with the same ``n_latent``
            from it: the flow starts as the identity, so training begins exactly at the
            factor-analysis model and only has to improve on it. None: warm start from data.
        polish_iterations: after training, at most this many closed-form ECM iterations
            over the training stars take a factor-analysis model's mean, loadings and
            per-pixel scatter towards their maximum likelihood (with ``label_errors``
            marginalising them; :func:`stellarflow.flows.polish_factor_analysis`); each is
            kept only if the validation loss improves, and the first that does not ends the
            polish. With
            ``epochs = 0`` the model is fitted by ECM alone from the warm start. 0: no
            polish.
        within: label ranges ``{name: (low, high)}`` (physical units, inclusive): train on
            the stars inside them only (a *local* model;
            :func:`stellarflow.data.dataset.select_within`). Its label support is then
            that region, so stars outside it are flagged when scored. Empty: every star.
    """

    label_names: tuple[str, ...]
    model: str = "latent_flow"
    model_options: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 200
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    validation_fraction: float = 0.1
    patience: int = 15
    grad_clip: float = 10.0
    max_bad_steps: int = 20
    seed: int = 0
    time_limit: float | None = None
    device: str = "auto"
    precision: str = "float32"
    block_size: int = 256
    min_good_fraction: float = 0.5
    label_errors: bool = False
    init_from: str | None = None
    polish_iterations: int = 0
    within: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_names", tuple(self.label_names))
        try:
            object.__setattr__(self, "within", check_ranges(self.within))
        except DataValidationError as err:
            raise ValueError(f"within: {err}") from None
        object.__setattr__(self, "model_options", dict(self.model_options))
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"label_names {self.label_names} contain duplicates")
        ecm_only = self.epochs == 0 and self.polish_iterations > 0
        if not ecm_only and (int(self.epochs) != self.epochs or self.epochs < 1):
            raise ValueError(
                f"epochs must be a positive integer (0 only with polish_iterations), got "
                f"{self.epochs}"
            )
        positive = {
            "batch_size": self.batch_size,
            "patience": self.patience,
            "max_bad_steps": self.max_bad_steps,
            "block_size": self.block_size,
        }
        for name, value in positive.items():
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 < self.validation_fraction < 0.9:
            raise ValueError(
                f"validation_fraction must be in (0, 0.9), got {self.validation_fraction}"
            )
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be > 0 minutes, got {self.time_limit}")
        if self.device.split(":")[0] not in _DEVICES:
            raise ValueError(f"device must be one of {_DEVICES} (or cuda:N), got {self.device}")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {self.precision}")
        if self.grad_clip <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("grad_clip must be > 0; weight_decay and warmup_steps >= 0")
        if not 0.0 <= self.min_good_fraction < 1.0:
            raise ValueError(f"min_good_fraction must be in [0, 1), got {self.min_good_fraction}")
        if not isinstance(self.label_errors, bool):
            raise ValueError(f"label_errors must be true or false, got {self.label_errors!r}")
        if self.init_from is not None:
            object.__setattr__(self, "init_from", str(self.init_from))
        if self.label_errors and not self.label_names:
            raise ValueError("label_errors needs labels; an unconditional model has none")
        if int(self.polish_iterations) != self.polish_iterations or self.polish_iterations < 0:
            raise ValueError(
                f"polish_iterations must be an integer >= 0, got {self.polish_iterations}"
            )

    @property
    def error_names(self) -> tuple[str, ...]:
        """The label-error columns read when ``label_errors``: ``<LABEL>_ERR``, else ()."""
        if not self.label_errors:
            return ()
        return tuple(f"{name}_ERR" for name in self.label_names)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        out = asdict(self)
        out["label_names"] = list(self.label_names)
        out["model_options"] = dict(self.model_options)
        out["within"] = {name: list(bounds) for name, bounds in self.within.items()}
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output (unknown keys are refused)."""
        return cls(**dict(values))
