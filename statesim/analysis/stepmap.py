"""A cell at a fixed input seen as a map on one flat state vector, with its Jacobians.

Every analysis here (fixed points, linearisation, Lyapunov spectra, limit cycles) asks the same question
of the cell contract: how does ``state_t = f(x_t, state_{t-1})`` respond to its arguments. The named state
parts (an LSTM's ``h`` and ``c``, a stack's ``layer1.h`` ...) are flattened in ``state_spec`` order into one
vector of size ``N``, exactly as the gradient lab does (:mod:`statesim.diagnostics`), so the results of
both speak about the same coordinates.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from statesim.cell import Cell, State, flatten_state, state_layout, unflatten_state
from statesim.diagnostics.jacobians import _batched_jacobian


def float64_copy(cell: Cell) -> Cell:
    """A float64 copy in eval mode: fixed points to 1e-12 and Jacobian products over thousands of steps."""
    twin = copy.deepcopy(cell).to(torch.float64)
    twin.eval()
    twin.requires_grad_(False)
    return twin


@dataclass
class StepMap:
    """``z -> f(x, z)`` on flat states ``[B, N]`` for inputs ``x [B, F]`` (or one ``[F]`` for every row)."""

    cell: Cell

    @property
    def spec(self) -> dict[str, tuple[int, ...]]:
        return self.cell.state_spec

    @property
    def layout(self) -> dict[str, slice]:
        return state_layout(self.spec)

    def flatten(self, state: State) -> Tensor:
        """``[B, N]`` from a named state."""
        return flatten_state(state, self.spec)

    def unflatten(self, flat: Tensor) -> State:
        """A named state from ``[B, N]``."""
        return unflatten_state(flat, self.spec)

    def _inputs(self, x: Tensor, batch: int) -> Tensor:
        return x.expand(batch, -1) if x.dim() == 1 else x

    def step(self, x: Tensor, flat: Tensor) -> tuple[Tensor, Tensor]:
        """``(y [B, O], next flat state [B, N])``."""
        y, state = self.cell(self._inputs(x, flat.shape[0]), self.unflatten(flat))
        return y, self.flatten(state)

    def advance(self, x: Tensor, flat: Tensor) -> Tensor:
        """The next flat state."""
        return self.step(x, flat)[1]

    def state_jacobian(self, x: Tensor, flat: Tensor) -> Tensor:
        """``d state_t / d state_{t-1}`` per row, ``[B, N, N]``."""
        inputs = self._inputs(x, flat.shape[0]).detach()
        return _batched_jacobian(lambda z: self.advance(inputs, z), flat.detach())

    def jacobians(self, x: Tensor, flat: Tensor) -> dict[str, Tensor]:
        """All four blocks at ``(x, state)``: ``dy/dx``, ``dy/dh``, ``dh/dx``, ``dh/dh`` (``[B, rows, cols]``)."""
        inputs = self._inputs(x, flat.shape[0]).detach()
        flat = flat.detach()
        n = flat.shape[1]

        def joint(z: Tensor) -> Tensor:  # one vector [x, state] in, [y, state'] out
            y, nxt = self.step(z[:, n:], z[:, :n])
            return torch.cat([y, nxt], dim=1)

        full = _batched_jacobian(joint, torch.cat([flat, inputs], dim=1))  # [B, O + N, N + F]
        o = full.shape[1] - n
        return {"dy_dx": full[:, :o, n:], "dy_dh": full[:, :o, :n], "dh_dx": full[:, o:, n:],
                "dh_dh": full[:, o:, :n]}


__all__ = ["StepMap", "float64_copy"]
