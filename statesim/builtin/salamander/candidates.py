"""Candidate weights for the salamander recipe's final choice: the trained weights and their running average.

The targets are read from 120 s autonomous runs at drives next to abrupt gait changes, so they depend on
fine details of the weights: two runs that differ only in floating-point summation order (the thread count)
end in weights of equal loss but different behaviour at the edges. An exponential moving average of the
weights (Polyak averaging, ``torch.optim.swa_utils``) removes most of the last updates' noise; snapshots of
both along the end of training let the scenario pick, on validation drives, the one that behaves best.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def _copy(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Candidates:
    """``on_update`` callback: keep an EMA of the weights and snapshot raw and averaged weights at ``steps``."""

    def __init__(self, model: nn.Module, decay: float | None, steps: set[int]) -> None:
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay)) if decay else None
        self.steps = steps
        self.weights: dict[str, dict[str, Tensor]] = {}
        self.trainer: Any = None  # the trainer that called back last (to checkpoint the chosen weights)

    @torch.no_grad()
    def __call__(self, trainer: Any, record: dict[str, Any]) -> None:
        self.trainer = trainer
        if self.average is not None:
            self.average.update_parameters(trainer.model)
        if trainer.step in self.steps:
            self.weights[f"raw@{trainer.step}"] = _copy(trainer.model)
            if self.average is not None:
                self.weights[f"average@{trainer.step}"] = _copy(self.average.module)

    def state_dict(self) -> dict[str, Any]:
        """The running average and the snapshots so far, checkpointed with the trainer (a resume continues them)."""
        return {"average": None if self.average is None else _copy(self.average),
                "weights": {name: dict(weights) for name, weights in self.weights.items()}}

    def load_state_dict(self, tree: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if self.average is not None and tree.get("average") is not None:
            self.average.load_state_dict(tree["average"])
        self.weights = {name: dict(weights) for name, weights in (tree.get("weights") or {}).items()}
