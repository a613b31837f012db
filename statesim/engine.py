"""The engine owns the time loop: unroll a cell over ``[T, B, F]``, or step it one tick.

Every topology, trainer and embedding path calls :func:`unroll` or :func:`step`; cells never loop.

Variable lengths: with ``lengths`` (one per sequence), steps at ``t >= lengths[b]`` leave sequence
``b``'s state unchanged and give a zero output, so the final state is each sequence's own last state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from statesim import fastpath
from statesim.cell import Cell, State
from statesim.forcing import Forcing


@dataclass
class Trajectory:
    """What an unroll returns: outputs ``[T, B, O]``, the final state, and optionally every state."""

    outputs: Tensor
    final_state: State
    states: dict[str, Tensor] | None = None  # each part ``[T, B, *shape]``: the state produced at step t


def lengths_to_mask(lengths: Tensor, steps: int) -> Tensor:
    """Boolean ``[T, B]`` mask, True where step ``t`` lies inside sequence ``b``."""
    return torch.arange(steps, device=lengths.device).unsqueeze(1) < lengths.to(torch.long).unsqueeze(0)


def unroll(cell: Cell, inputs: Tensor, state: State | None = None, *, lengths: Tensor | None = None,
           forcing: Forcing | None = None, return_states: bool = False, t0: int = 0) -> Trajectory:
    """Run ``cell`` over ``inputs [T, B, input_size]`` from ``state`` (zeros when None).

    ``t0`` is the global index of the first step, so forcing windows stay right across chunks.
    """
    cell.check_input(inputs, time_major=True)
    steps, batch = inputs.shape[0], inputs.shape[1]
    if state is None:
        state = cell.zero_state(batch, device=inputs.device, dtype=inputs.dtype)
    cell.check_state(state, batch)
    forcing = forcing or Forcing()
    if forcing:
        forcing.check(cell.state_spec)
        inputs = forcing.apply_to_inputs(inputs, t0)
    mask = None
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=inputs.device)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape [{batch}], got {list(lengths.shape)}")
        mask = lengths_to_mask(lengths, steps)

    forces_state = forcing.forces_state
    # A whole-sequence kernel (fused RNN, linear scan) replaces the loop when the cell offers one
    # and nothing needs per-step access; see statesim.fastpath.
    fast, why = fastpath.dispatch(cell, inputs, state, lengths, forces_state=forces_state,
                                  return_states=return_states)
    if fast is not None:
        return Trajectory(*fast)
    step_fn, hoisted = fastpath.step_function(cell, why)
    # Hoisted input work happens once for the whole sequence, not once per step.
    projected = cell.project_inputs(inputs) if hoisted else inputs
    # unbind once: indexing projected[t] in the loop would make backward allocate a full-size gradient
    # buffer per step (O(T^2)); unbind's backward is a single stack.
    xs = projected.unbind(0)
    if mask is not None:
        keeps, scales = mask.unbind(0), mask.unsqueeze(-1).to(inputs.dtype).unbind(0)

    outputs: list[Tensor] = []
    history: dict[str, list[Tensor]] = {name: [] for name in state} if return_states else {}
    for t in range(steps):
        read = forcing.apply_to_state(state, t0 + t) if forces_state else state
        y, new_state = step_fn(xs[t], read)
        if mask is not None:
            keep = keeps[t]
            y = y * scales[t].to(y.dtype)
            new_state = {name: torch.where(keep.view(batch, *([1] * (value.dim() - 1))), value, state[name])
                         for name, value in new_state.items()}
        state = new_state
        outputs.append(y)
        for name in history:
            history[name].append(state[name])
    states = {name: torch.stack(values) for name, values in history.items()} if return_states else None
    return Trajectory(torch.stack(outputs), state, states)


def step(cell: Cell, x: Tensor, state: State | None = None, *, forcing: Forcing | None = None,
         t: int = 0) -> tuple[Tensor, State]:
    """Advance ``cell`` by one tick from ``state``; equals one step of :func:`unroll` at global step ``t``."""
    cell.check_input(x)  # report a bad single-step input as [B, input_size], not as a sequence
    traj = unroll(cell, x.unsqueeze(0), state, forcing=forcing, t0=t)
    return traj.outputs[0], traj.final_state
