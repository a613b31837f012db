"""Scores of the ``sequences`` scenario next to naive baselines, and its plots."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor


def regression_scores(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MSE, MAE and NRMSE (RMSE over the truth's std, per column, averaged) of ``[S, O]`` arrays."""
    error = prediction - truth
    spread = truth.std(axis=0)
    rmse = np.sqrt((error ** 2).mean(axis=0))
    nrmse = np.where(spread > 1e-12, rmse / np.where(spread > 1e-12, spread, 1.0), np.nan)
    return {"mse": float((error ** 2).mean()), "mae": float(np.abs(error).mean()),
            "nrmse": float(np.nanmean(nrmse)) if np.isfinite(nrmse).any() else float("nan")}


def classification_scores(prediction: np.ndarray, truth: np.ndarray, classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (the mean of each class's F1; a class never predicted nor present is left out)."""
    f1 = []
    for c in range(classes):
        tp = int(((prediction == c) & (truth == c)).sum())
        fp = int(((prediction == c) & (truth != c)).sum())
        fn = int(((prediction != c) & (truth == c)).sum())
        if tp + fp + fn:
            f1.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float((prediction == truth).mean()), "macro_f1": float(np.mean(f1)) if f1 else 0.0}


def last_steps(mask: Tensor) -> Tensor:
    """Index of each sequence's last real step, from a ``[T, B]`` mask."""
    return (mask.sum(0).long() - 1).clamp_min(0)


def last_step_cross_entropy(outputs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy of the logits at each sequence's last real step: one label per sequence, seen whole."""
    last, rows = last_steps(mask), torch.arange(outputs.shape[1], device=outputs.device)
    return torch.nn.functional.cross_entropy(outputs[last, rows], targets[last, rows].long())


Loss = Callable[[Tensor, Tensor, Tensor], Tensor]


def after_warmup(loss: Loss, warmup: int) -> Loss:
    """``loss`` with the first ``warmup`` steps of every sequence masked out."""
    if warmup == 0:
        return loss

    def masked(outputs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        mask = mask.clone()
        mask[:warmup] = False
        return loss(outputs, targets, mask)

    return masked


def standardised(loss: Loss, mean: list[float], std: list[float]) -> Loss:
    """``loss`` of outputs and targets both z-scored: the model writes the data's units, the loss weighs every
    target column alike (an MSE in metres and one in millimetres train at the same pace)."""
    mean_t, std_t = torch.tensor(mean), torch.tensor(std)

    def scaled(outputs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        m, s = mean_t.to(outputs), std_t.to(outputs)
        return loss((outputs - m) / s, (targets - m) / s, mask)

    return scaled


def plot_predictions(ctx: Any, name: str, title: str, series: list[dict[str, Any]], names: list[str]) -> None:
    """One panel per target column: truth, prediction and (forecast) persistence of a few held-out pieces."""
    if not ctx.plots_enabled or not series:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = len(names)
    fig, axes = plt.subplots(len(series), columns, figsize=(6 * columns, 2.6 * len(series)), squeeze=False)
    for row, item in enumerate(series):
        for col, target in enumerate(names):
            ax = axes[row][col]
            ax.plot(item["t"], item["truth"][:, col], color="k", lw=1.5, label="truth")
            ax.plot(item["t"], item["prediction"][:, col], color="C1", lw=1.5, label="model")
            if item.get("persistence") is not None:
                ax.plot(item["t"], item["persistence"][:, col], color="0.6", lw=1, ls=":", label="persistence")
            ax.set_title(f"{item['label']}: {target}", fontsize=9)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    ctx.save_plot(fig, name)


def fan_origins(steps: int, horizon: int, count: int) -> list[int]:
    """Up to ``count`` evenly spaced steps of a ``steps``-step piece whose whole ``horizon`` path lies inside it."""
    last = steps - horizon
    if last < 0 or count < 1:
        return []
    return sorted({int(i) for i in np.linspace(0, last, min(count, last + 1)).round()})


def plot_fan(ctx: Any, item: dict[str, Any], horizon: int, names: list[str], count: int) -> None:
    """``plots/forecast_fan.png``: from a few origins of one held-out piece, the predicted path y_{t+1..t+H}
    (one line per origin) over the truth."""
    origins = fan_origins(len(item["truth"]), horizon, count)
    if not ctx.plots_enabled or not origins:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = len(names)
    fig, axes = plt.subplots(width, 1, figsize=(9, 2.8 * width), squeeze=False)
    for col, target in enumerate(names):
        ax = axes[col][0]
        # The truth is the path's first block, y_{t+1}: row i of a piece is one step after its origin.
        ax.plot(item["t"], item["truth"][:, col], color="k", lw=1.5, label="truth")
        for n, i in enumerate(origins):
            path = item["prediction"][i].reshape(horizon, width)[:, col]
            ax.plot(item["t"][i:i + horizon], path, color=f"C{1 + n % 9}", lw=1.3, marker=".",
                    label="predicted paths" if n == 0 else None)
        ax.set_title(f"{item['label']}: {target}, {horizon}-step paths from {len(origins)} origins", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    ctx.save_plot(fig, "forecast_fan")


def plot_confusion(ctx: Any, prediction: np.ndarray, truth: np.ndarray, classes: list[str]) -> None:
    """The test split's confusion matrix (rows: true class)."""
    if not ctx.plots_enabled or not len(truth):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(matrix, (truth, prediction), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title="test confusion matrix")
    fig.tight_layout()
    ctx.save_plot(fig, "confusion")
