r"""Fit the conditional abundance flow and use its mean as the conditional mean.

:func:`fit_abundance_flow` trains :class:`~stellarflow.flows.abundance.AbundanceFlow` on
p(targets | conditions) by maximum likelihood (Adam, mini-batches) with early stopping on a
held-out validation split (the best validation state is restored). :class:`FlowMean` turns
it into the ``MeanModel`` of :mod:`stellarflow.analysis.elements`: the conditional mean is a
Monte-Carlo average over ``n_samples`` base draws shared by all stars (common random
numbers, so it is a smooth function of the conditions); its gradient (used only to
propagate the conditioning errors) is a central finite difference with the same draws (step
0.05 of each condition's standard deviation) for up to 1,000 stars, and beyond that the
gradient of a degree-3 polynomial fitted to the flow's mean, because finite differences
through the spline inverse cost 2 x n_condition more flow evaluations (~0.25 ms per star and
draw on one CPU core).
The flow models the *observed* abundances (errors included); the noise accounting is the
same as for the polynomial mean.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from stellarflow.flows.abundance import AbundanceFlow

__all__ = ["FlowMean", "fit_abundance_flow", "flow_fitter"]

logger = logging.getLogger(__name__)

_FINITE_DIFFERENCE_MAX = 1000


@dataclass
class FlowMean:
    """Conditional mean and gradient of a trained abundance flow (a ``MeanModel``).

    Attributes:
        flow: the trained flow.
        n_samples: base draws per star for the mean.
        seed: seed of the shared base draws.
        validation_log_prob: mean held-out log p(y | c), nats per star.
    """

    flow: AbundanceFlow
    n_samples: int = 32
    seed: int = 0
    validation_log_prob: float = float("nan")

    def _mean(self, conditions: np.ndarray, base: torch.Tensor) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, conditions.shape[0], 1024):
                c = torch.as_tensor(conditions[start : start + 1024], dtype=base.dtype)
                out.append(self.flow.mean(c, base).numpy())
        return np.concatenate(out).astype(np.float64)

    def __call__(self, conditions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prediction `(n, k)` and gradient `(n, k, n_condition)` at ``conditions`` `(n, n_c)`."""
        from stellarflow.analysis.elements import PolynomialMean

        g = torch.Generator().manual_seed(self.seed)
        k = self.flow.y_center.shape[0]
        dtype = self.flow.y_center.dtype
        base = torch.randn(self.n_samples, k, generator=g, dtype=torch.float64).to(dtype)
        prediction = self._mean(conditions, base)
        if conditions.shape[0] > _FINITE_DIFFERENCE_MAX:
            _, gradient = PolynomialMean.fit(conditions, prediction, degree=3)(conditions)
            return prediction, gradient
        grads = []
        for j, h in enumerate(0.05 * self.flow.c_scale.double().numpy()):
            shift = np.zeros(conditions.shape[1])
            shift[j] = h
            up, down = self._mean(conditions + shift, base), self._mean(conditions - shift, base)
            grads.append((up - down) / (2.0 * h))
        return prediction, np.stack(grads, axis=2)


def fit_abundance_flow(
    conditions: np.ndarray,
    targets: np.ndarray,
    *,
    validation_fraction: float = 0.2,
    max_epochs: int = 200,
    patience: int = 15,
    batch_size: int = 512,
    learning_rate: float = 2e-3,
    transforms: int = 4,
    hidden: tuple[int, ...] = (64, 64),
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> FlowMean:
    """Train p(targets | conditions) with early stopping on a validation split.

    Args:
        conditions: `(n_stars, n_condition)`, e.g. [Fe/H], [Mg/Fe] in dex, Teff in K.
        targets: `(n_stars, k)`, abundances, dex.
        validation_fraction: fraction of stars held out for early stopping.
        max_epochs, patience: stop after ``patience`` epochs without a better validation
            log-likelihood, or at ``max_epochs``.
        dtype: precision of the flow (float32 is ~2x faster on CPU).
        generator: randomness for the initialisation, the split and the batches.

    Returns:
        The flow (at its best validation epoch) wrapped as a mean model.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    y = torch.as_tensor(targets, dtype=dtype)
    c = torch.as_tensor(conditions, dtype=dtype)
    n = y.shape[0]
    order = torch.randperm(n, generator=generator)
    n_val = max(1, int(validation_fraction * n))
    val, train = order[:n_val], order[n_val:]
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG untouched
        torch.manual_seed(seed)
        flow = AbundanceFlow(y.shape[1], c.shape[1], transforms=transforms, hidden=hidden)
    flow = flow.to(dtype)
    flow.set_standardisation(y[train], c[train])
    optimiser = torch.optim.Adam(flow.parameters(), lr=learning_rate)
    best, best_state, bad, epochs = -np.inf, None, 0, 0
    for _ in range(max_epochs):
        epochs += 1
        flow.train()
        perm = train[torch.randperm(train.numel(), generator=generator)]
        for start in range(0, perm.numel(), batch_size):
            idx = perm[start : start + batch_size]
            loss = -flow(c[idx]).log_prob(y[idx]).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        flow.eval()
        with torch.no_grad():
            score = float(flow(c[val]).log_prob(y[val]).mean())
        if score > best + 1e-4:
            best, bad = score, 0
            best_state = {k: v.clone() for k, v in flow.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        flow.load_state_dict(best_state)
    logger.info("abundance flow: %d epochs, validation log p %.3f nats/star", epochs, best)
    return FlowMean(flow, validation_log_prob=best)


def flow_fitter(**options: object) -> Callable[[np.ndarray, np.ndarray], FlowMean]:
    """A ``fitter`` for :func:`~stellarflow.analysis.elements.analyse_elements` using the flow."""
    return lambda c, y: fit_abundance_flow(c, y, **options)  # type: ignore[arg-type]
