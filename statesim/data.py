"""Sequence datasets and losses shared by the trainer and every scenario."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from statesim.errors import ShapeError


@dataclass
class SequenceData:
    """A set of sequences, time-major: ``inputs [T, N, F]``, ``targets [T, N, O]`` (or ``[T, N]`` class ids).

    ``lengths [N]`` marks padded sequences; steps at ``t >= lengths[n]`` are ignored by losses.
    """

    inputs: Tensor
    targets: Tensor
    lengths: Tensor | None = None

    def __post_init__(self) -> None:
        if self.inputs.dim() != 3:
            raise ShapeError(f"SequenceData: inputs must be [T, N, F] (time, sequences, features), got shape "
                             f"{list(self.inputs.shape)}; add the missing dimension (x.unsqueeze(-1) for one feature).")
        if self.targets.shape[:2] != self.inputs.shape[:2]:
            raise ShapeError(f"SequenceData: targets {list(self.targets.shape)} must share [T, N] with inputs "
                             f"{list(self.inputs.shape)}; build both time-major from the same sequences.")

    def __len__(self) -> int:
        return self.inputs.shape[1]

    @property
    def steps(self) -> int:
        return self.inputs.shape[0]

    def select(self, index: Tensor | slice) -> "SequenceData":
        """The sequences at ``index`` (along N)."""
        return SequenceData(self.inputs[:, index], self.targets[:, index],
                            None if self.lengths is None else self.lengths[index])

    def window(self, start: int, stop: int) -> "SequenceData":
        """Time steps ``[start, stop)`` of every sequence (lengths shifted accordingly)."""
        lengths = None if self.lengths is None else (self.lengths - start).clamp(0, stop - start)
        return SequenceData(self.inputs[start:stop], self.targets[start:stop], lengths)

    def to(self, device: torch.device | str) -> "SequenceData":
        return replace(self, inputs=self.inputs.to(device), targets=self.targets.to(device),
                       lengths=None if self.lengths is None else self.lengths.to(device))

    def mask(self) -> Tensor:
        """Boolean ``[T, N]``: True at real (non-padded) steps."""
        steps = torch.arange(self.steps, device=self.inputs.device).unsqueeze(1)
        if self.lengths is None:
            return torch.ones(self.inputs.shape[:2], dtype=torch.bool, device=self.inputs.device)
        return steps < self.lengths.to(self.inputs.device).unsqueeze(0)


@dataclass
class DataSplits:
    """Train, validation and test sets of one task."""

    train: SequenceData
    val: SequenceData | None = None
    test: SequenceData | None = None


def mse_loss(outputs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over unmasked steps and all output units."""
    weight = mask.unsqueeze(-1).to(outputs.dtype)
    return ((outputs - targets) ** 2 * weight).sum() / (weight.sum() * outputs.shape[-1]).clamp_min(1)


def cross_entropy_loss(outputs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy of logits ``[T, B, C]`` against class ids ``[T, B]`` over unmasked steps."""
    losses = torch.nn.functional.cross_entropy(outputs.flatten(0, 1), targets.flatten().long(), reduction="none")
    weight = mask.flatten().to(outputs.dtype)
    return (losses * weight).sum() / weight.sum().clamp_min(1)


def split_by_fraction(data: SequenceData, val: float, test: float, seed: int) -> DataSplits:
    """Shuffle sequences with ``seed`` and cut them into train/val/test by fraction."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_val, n_test = int(round(len(data) * val)), int(round(len(data) * test))
    test_idx, val_idx, train_idx = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return DataSplits(data.select(train_idx), data.select(val_idx) if n_val else None,
                      data.select(test_idx) if n_test else None)
