"""The local linear picture of any cell at a point: the lecture's ABCD model, recovered.

Around ``(x*, h*)`` a step ``(y_t, h_t) = f(x_t, h_{t-1})`` is, to first order in the deviations
``dx = x - x*``, ``dh = h - h*``,

    dy_t = A dx_t + B dh_{t-1}        A = dy/dx,  B = dy/dh   (times the head's weight when there is one)
    dh_t = C dx_t + D dh_{t-1}        C = dh/dx,  D = dh/dh

which is exactly the ``linear`` cell. At a fixed point ``h* = f(x*, h*)`` the deviations obey it for all
time; the eigenvalues of ``D`` say which directions decay (|lambda| < 1), grow, or persist (memory).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from statesim.analysis.stepmap import StepMap, float64_copy
from statesim.cell import Cell


def eigenvalues_by_modulus(jacobians: Tensor) -> Tensor:
    """Eigenvalues of each ``[N, N]`` matrix of ``[K, N, N]``, sorted by decreasing modulus (complex)."""
    if jacobians.shape[0] == 0:
        return torch.zeros(0, jacobians.shape[-1], dtype=torch.complex128)
    ev = torch.linalg.eigvals(jacobians)
    order = torch.argsort(ev.abs(), dim=-1, descending=True)
    return torch.gather(ev, -1, order)


def classify(eigenvalues: Tensor, marginal: float = 1e-3) -> str:
    """``stable`` (all |lambda| < 1 - marginal), ``unstable`` (any > 1 + marginal), else ``marginal``."""
    top = float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0
    if top > 1 + marginal:
        return "unstable"
    return "stable" if top < 1 - marginal else "marginal"


def time_constants(eigenvalues: Tensor, dt: float | None = None) -> list[float | None]:
    """``-1 / log|lambda|`` per eigenvalue in steps (seconds when ``dt`` is given); None where |lambda| >= 1."""
    out: list[float | None] = []
    for value in eigenvalues.abs().tolist():
        if value >= 1 or value <= 0:
            out.append(None if value >= 1 else 0.0)
        else:
            out.append(-(dt or 1.0) / math.log(value))
    return out


@dataclass
class LocalLinear:
    """``A, B, C, D`` of the local linear model at ``(x*, h*)``, with the point and its output ``y*``."""

    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor
    x: Tensor
    state: Tensor  # flat h*
    y: Tensor
    layout: dict[str, slice]

    def model_config(self) -> dict[str, Any]:
        """A ``model:`` section for a ``linear`` cell holding these matrices (``statesim run``/``build_model``)."""
        init = {name: getattr(self, name).tolist() for name in "ABCD"}
        return {"cell": {"type": "linear", "hidden_size": int(self.D.shape[0]), "output_size": int(self.A.shape[0]),
                         "init": init}, "head": "none"}

    def build(self, registry: Any = None) -> Any:
        """The local model as a :class:`~statesim.model.SequenceModel` (float64), e.g. for
        ``statesim.embed.as_embedded``."""
        from statesim.model import build_model
        from statesim.runfolder import resolve_model_config

        if registry is None:
            from statesim.plugin_manager import build_plugin_host

            registry = build_plugin_host(autoload=False).registry
        config = resolve_model_config(self.model_config(), registry, "local linear model")
        with torch.no_grad():
            model = build_model(registry, config, int(self.A.shape[1]), int(self.A.shape[0])).double()
            cell = model.step_cell()
            for name in "ABCD":  # exact float64 values (the config's nested lists went through the default dtype)
                getattr(cell, name).copy_(getattr(self, name))
        return model.eval()

    def to_json(self) -> dict[str, Any]:
        """The matrices, the operating point and the state layout (what the flat coordinates are)."""
        return {"model": self.model_config(), "operating_point": {
            "x": self.x.tolist(), "y": self.y.tolist(), "state": self.state.tolist(),
            "layout": {p: [s.start, s.stop] for p, s in self.layout.items()}},
            "note": "in deviations: y - y* = A (x - x*) + B (h_prev - h*); h - h* = C (x - x*) + D (h_prev - h*)"}


def linearize(cell: Cell, x: Tensor, state: Tensor, head: nn.Module | None = None) -> LocalLinear:
    """The local linear model of ``cell`` (and an optional linear ``head`` on its output) at flat ``state [N]``."""
    cell64 = float64_copy(cell)
    step = StepMap(cell64)
    x64 = torch.as_tensor(x, dtype=torch.float64).reshape(1, -1)
    z = torch.as_tensor(state, dtype=torch.float64).reshape(1, -1)
    blocks = {k: v[0] for k, v in step.jacobians(x64, z).items()}
    with torch.no_grad():
        y, _ = step.step(x64, z)
    a, b = blocks["dy_dx"], blocks["dy_dh"]
    if head is not None:
        if not isinstance(head, nn.Linear):
            raise TypeError(f"linearize: the head must be a torch.nn.Linear, got {type(head).__name__}")
        weight = head.weight.detach().to(torch.float64)
        a, b = weight @ a, weight @ b
        y = y @ weight.T + (head.bias.detach().to(torch.float64) if head.bias is not None else 0.0)
    return LocalLinear(a, b, blocks["dh_dx"], blocks["dh_dh"], x64[0], z[0], y[0], step.layout)


__all__ = ["LocalLinear", "classify", "eigenvalues_by_modulus", "linearize", "time_constants"]
