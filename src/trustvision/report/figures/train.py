"""PNG figure of ``trustvision train``: per-epoch loss and clean / PGD accuracy.

Same conventions as :mod:`.common` (pyplot-free matplotlib, Agg canvas).
"""
from __future__ import annotations

from pathlib import Path

from .common import figure_helper, plain, save, subplots

__all__ = ["training_curves"]


@figure_helper
def training_curves(history: list[dict], path: str | Path, *, title: str = "") -> None:
    """Left: training loss per epoch; right: train, held-out clean and held-out PGD accuracy per epoch.

    ``history``: the trainer's per-epoch rows (``epoch``, ``train_loss``, ``train_accuracy`` and, when an
    evaluation set was given, ``clean_accuracy``, ``robust_accuracy``, ``eval_eps``).
    """
    epochs = [h["epoch"] for h in history]
    fig, axes = subplots(1, 2, figsize=(9.6, 3.6))
    loss, acc = axes[0][0], axes[0][1]
    loss.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:grey")
    loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    acc.plot(epochs, [h["train_accuracy"] for h in history], "o--", color="tab:grey", label="train (on its inputs)")
    if history and "clean_accuracy" in history[0]:
        acc.plot(epochs, [h["clean_accuracy"] for h in history], "o-", color="tab:blue", label="held-out clean")
        acc.plot(epochs, [h["robust_accuracy"] for h in history], "o-", color="tab:red",
                 label=f"held-out PGD (L∞ ε={history[0]['eval_eps']:.3g})")
    acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title="accuracy")
    acc.legend(fontsize=8, loc="lower right")
    for ax in (loss, acc):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(plain(title))
    save(fig, path)
