"""Per-step state Jacobians ``J_t = d state_t / d state_{t-1}`` of any cell, and norms of their products.

The state is flattened part by part (:func:`statesim.cell.flatten_state`) into one vector of size ``N``, so a
step has one ``[N, N]`` Jacobian and ``P_k = J_T ... J_{T-k+1}`` is a product of ``k`` of them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from statesim.cell import Cell, State, flatten_state, state_layout, unflatten_state
from statesim.engine import Stepper

NormKind = Literal["spectral", "frobenius"]


def _batched_jacobian(fn: Callable[[Tensor], Tensor], flat: Tensor) -> Tensor:
    """Per-sample Jacobians ``[B, N_out, N_in]`` of a map that treats batch rows independently."""
    def summed(z: Tensor) -> Tensor:
        return fn(z).sum(0)  # rows are independent, so d(sum_b out_b)/d z_b is sample b's Jacobian

    try:
        jac = torch.func.jacrev(summed)(flat)  # [N_out, B, N_in]
    except (RuntimeError, NotImplementedError, TypeError):
        # A cell using an operation functorch cannot vmap: one backward pass per output unit instead.
        z = flat.detach().requires_grad_(True)
        with torch.enable_grad():
            out = summed(z)
            rows = [torch.autograd.grad(out[i], z, retain_graph=True, allow_unused=True)[0] for i in range(out.numel())]
        jac = torch.stack([torch.zeros_like(z) if r is None else r for r in rows])
    return jac.permute(1, 0, 2)


@dataclass
class JacobianTrace:
    """Per-step state Jacobians along one trajectory."""

    jacobians: Tensor  # [T, B, N, N]: d state_t / d state_{t-1}
    layout: dict[str, slice]
    states: Tensor  # [T + 1, B, N]: the initial state and the state after each step


def _as_float64(cell: Cell) -> Cell:
    """A float64 copy, so products over hundreds of steps are exact to ~1e-12 and do not overflow early."""
    return copy.deepcopy(cell).to(torch.float64)


def step_jacobians(cell: Cell, inputs: Tensor, state: State | None = None, *, exact: bool = True) -> JacobianTrace:
    """Run ``cell`` over ``inputs [T, B, F]`` and return ``d state_t / d state_{t-1}`` for every step."""
    if exact:
        cell = _as_float64(cell)
        inputs = inputs.to(torch.float64)
        state = None if state is None else {k: v.to(torch.float64) for k, v in state.items()}
    spec = cell.state_spec
    jacobians: list[Tensor] = []
    states: list[Tensor] = []

    def observe(t: int, x_t: Tensor, entering: State, y: Tensor, new_state: State) -> None:
        def advance(z: Tensor) -> Tensor:
            return flatten_state(stepper.transition(x_t, unflatten_state(z, spec))[1], spec)

        if not states:
            states.append(flatten_state(entering, spec))
        jacobians.append(_batched_jacobian(advance, flatten_state(entering, spec)).detach())
        states.append(flatten_state(new_state, spec))

    # The engine's own loop, observed at every step (so on the generic path, whatever the policy).
    stepper = Stepper(cell, path="generic", on_step=observe)
    with torch.no_grad():
        stepper.run(inputs, state)
    return JacobianTrace(torch.stack(jacobians), state_layout(spec), torch.stack(states))


def matrix_norms(matrices: Tensor, norm: NormKind = "spectral") -> Tensor:
    """Spectral (largest singular value) or Frobenius norm of each matrix in ``[..., n, m]``."""
    return torch.linalg.matrix_norm(matrices, ord=2 if norm == "spectral" else "fro")


def product_norms(jacobians: Tensor, layout: dict[str, slice], max_lag: int | None = None,
                  norm: NormKind = "spectral") -> dict[str, Tensor]:
    """``||P_k||`` for lags ``k = 0..K`` ending at the last step: ``P_k = J_T J_{T-1} ... J_{T-k+1}``.

    Returns ``[K + 1, B]`` per block: ``"state"`` (the whole state) and ``"a<-b"`` for every pair of parts
    (``d a_T / d b_{T-k}``); ``P_0 = I``.
    """
    steps, batch, n, _ = jacobians.shape
    max_lag = steps if max_lag is None else min(max_lag, steps)
    product = torch.eye(n, dtype=jacobians.dtype, device=jacobians.device).expand(batch, n, n).clone()
    blocks = {"state": (slice(None), slice(None))}
    blocks.update({f"{a}<-{b}": (layout[a], layout[b]) for a in layout for b in layout})
    out: dict[str, list[Tensor]] = {name: [] for name in blocks}
    for k in range(max_lag + 1):
        if k:
            product = product @ jacobians[steps - k]
        for name, (rows, cols) in blocks.items():
            out[name].append(matrix_norms(product[:, rows, cols], norm))
    return {name: torch.stack(values) for name, values in out.items()}


def geometric_mean(values: Tensor, dim: int = -1) -> Tensor:
    """``exp(mean(log v))``; zero when any value is zero."""
    return torch.exp(torch.log(values.clamp_min(0)).mean(dim))
