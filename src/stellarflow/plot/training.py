"""Training-curve figure."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["plot_training_curve"]


def plot_training_curve(history: Sequence[dict[str, float]], ax: Axes | None = None) -> Figure:
    """Train and validation loss (nats per usable pixel) against epoch, best epoch marked."""
    if ax is None:
        figure, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    else:
        figure = ax.figure
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["train"] for row in history], label="train")
    ax.plot(epochs, [row["validation"] for row in history], label="validation")
    if history:
        best = min(history, key=lambda row: row["validation"])
        ax.axvline(best["epoch"], color="0.6", ls=":", label=f"best (epoch {best['epoch']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("-log p  [nats per usable pixel]")
    ax.legend()
    return figure
