"""Fixed and slow points of any cell (Sussillo & Barak 2013, "Opening the black box").

For a constant input ``x*`` the search minimises ``q(h) = 1/2 ||f(x*, h) - h||^2`` over the cell's whole
flat state (``h`` and ``c`` of an LSTM) from many starts at once: every start is a row of one batch, so one
optimiser step moves all of them (the rows never interact: a cell treats batch rows independently, and
Adam's statistics are per element). Adam brings each start near a minimum; damped Gauss-Newton
(Levenberg-Marquardt) steps with the exact batched Jacobian then converge fixed points to machine precision.
Minima with ``q`` below ``tol_q`` are fixed points, those below ``slow_q`` slow points; the rest did not
converge. Points far outside the cloud of starts are outliers; points closer than ``unique_tol`` are one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from statesim.analysis.linearize import classify, eigenvalues_by_modulus, time_constants
from statesim.analysis.stepmap import StepMap, float64_copy
from statesim.cell import Cell, State, unflatten_state
from statesim.engine import unroll


@dataclass
class FixedPointOptions:
    """Knobs of the search (defaults follow Golub & Sussillo's FixedPointFinder)."""

    adam_steps: int = 1500
    lr: float = 0.01
    newton_steps: int = 40
    tol_q: float = 1e-12
    slow_q: float = 1e-6
    unique_tol: float = 1e-3
    outlier_scale: float = 10.0
    marginal: float = 1e-3


@dataclass
class FixedPoints:
    """The unique fixed and slow points found for one input, with their local dynamics."""

    x: Tensor  # [F] the constant input
    states: Tensor  # [K, N] flat states, float64
    q: Tensor  # [K]
    kinds: list[str]  # "fixed" or "slow"
    jacobians: Tensor  # [K, N, N] d state_t / d state_{t-1}
    eigenvalues: Tensor  # [K, N] complex, by decreasing modulus
    stability: list[str]  # "stable", "unstable" (saddles included) or "marginal"
    layout: dict[str, slice]
    counts: dict[str, int] = field(default_factory=dict)  # starts, converged, slow, outliers, duplicates

    def __len__(self) -> int:
        return self.states.shape[0]

    def state(self, index: int, spec: dict[str, tuple[int, ...]]) -> State:
        """Fixed point ``index`` as a named state (batch of one)."""
        return unflatten_state(self.states[index:index + 1], spec)

    def unstable_dimensions(self) -> list[int]:
        """How many eigenvalues lie outside the unit circle at each point (0: stable, 1: a saddle of index 1)."""
        return [int((ev.abs() > 1 + 1e-9).sum()) for ev in self.eigenvalues]

    def to_json(self, *, dt: float | None = None) -> dict[str, Any]:
        """Counts and, per point, q, kind, stability, the leading eigenvalues and time constants."""
        points = []
        for k in range(len(self)):
            ev = self.eigenvalues[k]
            points.append({"kind": self.kinds[k], "q": float(self.q[k]), "stability": self.stability[k],
                           "unstable_dimensions": self.unstable_dimensions()[k],
                           "max_modulus": float(ev.abs().max()),
                           "leading_eigenvalues": [[float(v.real), float(v.imag)] for v in ev[:6]],
                           "slowest_time_constants": time_constants(ev[:6], dt),
                           "state": {p: self.states[k, s].tolist() for p, s in self.layout.items()}})
        by_stability = {s: self.stability.count(s) for s in ("stable", "unstable", "marginal")}
        dims = self.unstable_dimensions()
        # Attractors: fixed (not slow) points with no eigenvalue outside the unit circle (marginal ones included).
        attractors = sum(1 for k in range(len(self)) if self.kinds[k] == "fixed" and dims[k] == 0)
        saddles = sum(1 for k in range(len(self)) if self.kinds[k] == "fixed" and dims[k] == 1)
        return {"input": self.x.tolist(), "counts": {**self.counts, **by_stability, "attractors": attractors,
                                                     "saddles": saddles,
                                                     "slow": self.kinds.count("slow")}, "points": points}


def sample_starts(cell: Cell, inputs: Tensor, state: State | None, count: int, *, noise: float = 0.01,
                  generator: torch.Generator | None = None) -> Tensor:
    """``[count, N]`` starts: states the cell visits over ``inputs [T, B, F]``, plus Gaussian noise.

    ``noise`` is relative to each state unit's spread along the trajectories.
    """
    with torch.no_grad():
        traj = unroll(cell, inputs, state, return_states=True)
    assert traj.states is not None  # return_states=True
    visited = torch.cat([traj.states[p].reshape(-1, *cell.state_spec[p]).flatten(1) for p in cell.state_spec], 1)
    pick = torch.randint(visited.shape[0], (count,), generator=generator)
    chosen = visited[pick].to(torch.float64)
    spread = visited.to(torch.float64).std(0).clamp_min(1e-6)
    return chosen + noise * spread * torch.randn(chosen.shape, generator=generator, dtype=torch.float64)


def _q(step: StepMap, x: Tensor, z: Tensor) -> Tensor:
    return 0.5 * (step.advance(x, z) - z).pow(2).sum(1)


def _adam(step: StepMap, x: Tensor, z: Tensor, options: FixedPointOptions) -> Tensor:
    z = z.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=options.lr)
    with torch.enable_grad():
        for _ in range(options.adam_steps):
            optimizer.zero_grad()
            q = _q(step, x, z)
            if float(q.detach().max()) < options.tol_q:
                break
            q.sum().backward()  # rows are independent: the sum's gradient is each row's own
            optimizer.step()
    return z.detach()


def _levenberg_marquardt(step: StepMap, x: Tensor, z: Tensor, options: FixedPointOptions) -> Tensor:
    """Damped Gauss-Newton on ``r(z) = f(z) - z`` per row, with each row's own damping."""
    n = z.shape[1]
    eye = torch.eye(n, dtype=z.dtype)
    damping = torch.full((z.shape[0],), 1e-3, dtype=z.dtype)
    q = _q(step, x, z)
    for _ in range(options.newton_steps):
        if float(q.max()) < options.tol_q * 1e-3:
            break
        residual = step.advance(x, z) - z
        a = step.state_jacobian(x, z) - eye
        normal = a.transpose(1, 2) @ a + damping.view(-1, 1, 1) * eye
        delta = torch.linalg.solve(normal, -(a.transpose(1, 2) @ residual.unsqueeze(-1))).squeeze(-1)
        candidate = z + delta
        q_new = _q(step, x, candidate)
        better = q_new < q
        z = torch.where(better.unsqueeze(1), candidate, z)
        q = torch.where(better, q_new, q)
        damping = torch.where(better, damping * 0.3, damping * 10).clamp(1e-12, 1e8)
    return z


def _deduplicate(z: Tensor, q: Tensor, tol: float) -> Tensor:
    """Indices of the points kept: lowest q first, each at least ``tol`` from every kept one."""
    kept: list[int] = []
    for i in torch.argsort(q).tolist():
        if all(float((z[i] - z[j]).norm()) > tol for j in kept):
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


def find_fixed_points(cell: Cell, x: Tensor, starts: Tensor, options: FixedPointOptions | None = None
                      ) -> FixedPoints:
    """Fixed and slow points of ``cell`` at the constant input ``x [F]`` from ``starts [K, N]`` (flat)."""
    options = options or FixedPointOptions()
    cell = float64_copy(cell)
    step = StepMap(cell)
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    z0 = starts.to(torch.float64)
    with torch.no_grad():
        z = _adam(step, x, z0, options)
    z = _levenberg_marquardt(step, x, z, options)
    with torch.no_grad():
        q = _q(step, x, z)
    centre = z0.mean(0)
    radius = (z0 - centre).norm(dim=1).mean().clamp_min(1e-9)
    converged = q <= options.slow_q
    inside = (z - centre).norm(dim=1) <= options.outlier_scale * radius
    candidates = torch.nonzero(converged & inside).flatten()
    kept = candidates[_deduplicate(z[candidates], q[candidates], options.unique_tol)] if len(candidates) else candidates
    points, q_kept = z[kept], q[kept]
    jac = step.state_jacobian(x, points) if len(kept) else torch.zeros(0, z.shape[1], z.shape[1], dtype=z.dtype)
    eig = eigenvalues_by_modulus(jac)
    counts = {"starts": int(z.shape[0]), "converged": int(converged.sum()),
              "not_converged": int((~converged).sum()), "outliers": int((converged & ~inside).sum()),
              "duplicates": int(len(candidates) - len(kept)), "unique": int(len(kept))}
    kinds = ["fixed" if float(v) <= options.tol_q else "slow" for v in q_kept]
    return FixedPoints(x, points, q_kept, kinds, jac, eig, [classify(e, options.marginal) for e in eig],
                       step.layout, counts)


__all__ = ["FixedPointOptions", "FixedPoints", "find_fixed_points", "sample_starts"]
