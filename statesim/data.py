"""Sequence datasets and losses shared by the trainer and every scenario."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from statesim.errors import ShapeError


@dataclass
class SequenceData:
    """A set of sequences, time-major: ``inputs [T, N, F]`` (or ``[T, N]`` token ids for a model with an input
    embedding), ``targets [T, N, O]`` (or ``[T, N]`` class ids).

    ``lengths [N]`` marks padded sequences; steps at ``t >= lengths[n]`` are ignored by losses.
    ``condition`` is what a model's conditioning encoder reads once per sequence (a source sentence
    ``[S, N]`` of ids or ``[S, N, F]``, an image ``[1, N, C, H, W]``: the sequences on dim 1), with its own
    ``condition_lengths [N]``; ``prefix [K, N, F]`` holds the steps before each sequence, for initial-state
    policies that warm up on them. Both travel with their sequences through ``select`` and ``to``.

    >>> import torch
    >>> from statesim import SequenceData
    >>> data = SequenceData(torch.zeros(5, 3, 2), torch.zeros(5, 3, 1), lengths=torch.tensor([5, 2, 4]))
    >>> len(data), data.steps, data.mask().sum().item(), len(data.select(slice(0, 2)))
    (3, 5, 11, 2)
    """

    inputs: Tensor
    targets: Tensor
    lengths: Tensor | None = None
    condition: Tensor | None = None
    condition_lengths: Tensor | None = None
    prefix: Tensor | None = None
    #: ``select`` drops the steps past the longest selected sequence (padded token data; a batch of short
    #: sentences then runs short).
    trim: bool = False

    def __post_init__(self) -> None:
        ids = self.inputs.dim() == 2 and not self.inputs.is_floating_point()
        if self.inputs.dim() != 3 and not ids:
            raise ShapeError(f"SequenceData: inputs must be [T, N, F] (time, sequences, features) or [T, N] token "
                             f"ids, got shape {list(self.inputs.shape)}; add the missing dimension "
                             f"(x.unsqueeze(-1) for one feature).")
        if self.targets.shape[:2] != self.inputs.shape[:2]:
            raise ShapeError(f"SequenceData: targets {list(self.targets.shape)} must share [T, N] with inputs "
                             f"{list(self.inputs.shape)}; build both time-major from the same sequences.")
        for name in ("condition", "prefix"):
            value = getattr(self, name)
            if value is not None and (value.dim() < 2 or value.shape[1] != self.inputs.shape[1]):
                raise ShapeError(f"SequenceData: {name} {list(value.shape)} must hold the {self.inputs.shape[1]} "
                                 f"sequences on dim 1, as inputs {list(self.inputs.shape)} do.")

    def __len__(self) -> int:
        return self.inputs.shape[1]

    @property
    def steps(self) -> int:
        return self.inputs.shape[0]

    def select(self, index: Tensor | slice) -> "SequenceData":
        """The sequences at ``index`` (along N); a condition with lengths is trimmed to its longest member."""
        condition, condition_lengths = self.condition, self.condition_lengths
        if condition is not None:
            condition = condition[:, index]
            if condition_lengths is not None:
                condition_lengths = condition_lengths[index]
                condition = condition[:max(int(condition_lengths.max()), 1)] if len(condition_lengths) else condition
        lengths = None if self.lengths is None else self.lengths[index]
        steps = self.steps
        if self.trim and lengths is not None and len(lengths):
            steps = max(int(lengths.max()), 1)
        return SequenceData(self.inputs[:steps, index], self.targets[:steps, index], lengths, condition,
                            condition_lengths, None if self.prefix is None else self.prefix[:, index], self.trim)

    def window(self, start: int, stop: int) -> "SequenceData":
        """Time steps ``[start, stop)`` of every sequence (lengths shifted accordingly; condition and prefix kept)."""
        lengths = None if self.lengths is None else (self.lengths - start).clamp(0, stop - start)
        return replace(self, inputs=self.inputs[start:stop], targets=self.targets[start:stop], lengths=lengths)

    def to(self, device: torch.device | str) -> "SequenceData":
        def move(value: Tensor | None) -> Tensor | None:
            return None if value is None else value.to(device)

        return replace(self, inputs=self.inputs.to(device), targets=self.targets.to(device), lengths=move(self.lengths),
                       condition=move(self.condition), condition_lengths=move(self.condition_lengths),
                       prefix=move(self.prefix))

    def mask(self) -> Tensor:
        """Boolean ``[T, N]``: True at real (non-padded) steps."""
        steps = torch.arange(self.steps, device=self.inputs.device).unsqueeze(1)
        if self.lengths is None:
            return torch.ones(self.inputs.shape[:2], dtype=torch.bool, device=self.inputs.device)
        return steps < self.lengths.to(self.inputs.device).unsqueeze(0)


@dataclass
class DataSplits:
    """Train, validation and test sets of one task.

    >>> import torch
    >>> from statesim import DataSplits, SequenceData
    >>> splits = DataSplits(SequenceData(torch.zeros(5, 8, 2), torch.zeros(5, 8, 1)))
    >>> len(splits.train), splits.val, splits.test
    (8, None, None)
    """

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
