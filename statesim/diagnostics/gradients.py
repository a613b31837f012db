"""Loss gradients through a model: ``||dE/d state_s||`` against lag, and the horizon truncated BPTT imposes."""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any, Callable

import torch
from torch import Tensor

from statesim.engine import Stepper, lengths_to_mask


def loss_gradients(model: Any, inputs: Tensor, targets: Tensor, loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
                   lengths: Tensor | None = None) -> dict[str, Tensor]:
    """``||dE/d state_s||`` for every part and ``s = 0..T`` (``s = 0``: the initial state), over the whole batch.

    This is the total derivative BPTT propagates (its ``delta_s``): through every later step and, for cells whose
    output reads the state (``y_s = h_s``), through the loss at step ``s`` itself.

    ``model`` is a :class:`statesim.model.SequenceModel` whose topology can be stepped; it runs on the engine's
    own loop (a :class:`~statesim.engine.Stepper` observing every step) and keeps every intermediate state.
    """
    model = copy.deepcopy(model).to(torch.float64)
    cell = model.step_cell()
    inputs = inputs.to(torch.float64)
    targets = targets.to(torch.float64) if targets.is_floating_point() else targets
    spec = cell.state_spec
    steps, batch = inputs.shape[0], inputs.shape[1]
    with torch.enable_grad():
        start = model.initial(batch, inputs=inputs, lengths=lengths)
        state = {k: v.detach().requires_grad_(True) for k, v in start.items()}
        states = [state]
        stepper = Stepper(cell, path="generic", on_step=lambda t, x, entering, y, new: states.append(new))
        out = model.read_out(stepper.run(inputs, state).outputs)
        mask = (lengths_to_mask(lengths, steps) if lengths is not None
                else torch.ones(steps, batch, dtype=torch.bool))
        loss = loss_fn(out, targets, mask)
        flat = [s[name] for s in states for name in spec]
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
    result = {name: torch.zeros(len(states), dtype=torch.float64) for name in spec}
    for index, grad in enumerate(grads):
        s, part = divmod(index, len(spec))
        if grad is not None:
            result[list(spec)[part]][s] = grad.norm()
    return result


# --------------------------------------------------------------------------- truncated BPTT horizon
def bptt_horizon(model: Any, data: Any, training: Any, loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor]
                 ) -> Tensor:
    """``||dL_u/dx_t||`` for each update ``u`` of one pass over a batch, measured through the real trainer.

    Returns ``[updates, T]``. With truncated BPTT (``k1``, ``k2``) row ``u`` is non-zero only on the ``k2``
    steps its graph spans: the gradient horizon. The model is copied and trained with a negligible SGD step.
    """
    from statesim.data import DataSplits, SequenceData
    from statesim.trainer import Trainer

    class _LeafBatches(SequenceData):
        """Each batch the trainer draws becomes a fresh leaf, so each update's input gradient is its own."""

        leaf: Tensor | None = None

        def select(self, index: Tensor | slice) -> SequenceData:
            picked = SequenceData.select(self, index)
            inputs = picked.inputs.detach().clone().requires_grad_(True)
            _LeafBatches.leaf = inputs
            return replace(picked, inputs=inputs)

    def f64(value: Tensor) -> Tensor:
        return value.to(torch.float64) if value.is_floating_point() else value

    def f64_or_none(value: Tensor | None) -> Tensor | None:
        return None if value is None else f64(value)

    source = _LeafBatches(f64(data.inputs.detach()), f64(data.targets), data.lengths, f64_or_none(data.condition),
                          data.condition_lengths, f64_or_none(data.prefix))
    truncated = training.bptt.mode == "truncated"
    k1 = (training.bptt.k1 or data.steps) if truncated else data.steps
    updates = math.ceil(data.steps / k1)
    config = training.model_copy(update={"optimizer": "sgd", "lr": 1e-12, "momentum": 0.0, "steps": updates,
                                         "batch_size": len(data), "early_stopping": None})
    rows: list[Tensor] = []

    def capture(trainer: Trainer, record: dict[str, Any]) -> None:
        leaf = _LeafBatches.leaf
        assert leaf is not None  # the trainer drew this update's batch through select()
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        rows.append(grad.detach().flatten(1).norm(dim=1))
        leaf.grad = None

    trainer = Trainer(copy.deepcopy(model).to(torch.float64), config, loss_fn=loss_fn, on_update=capture)
    trainer.fit(DataSplits(source))
    return torch.stack(rows)

