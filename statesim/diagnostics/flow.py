"""Gradient flow of a cell: ``||P_k||`` against lag, the per-step Jacobian spectrum, and the regime it implies.

:func:`gradient_flow` measures once; :class:`GradientFlowMonitor` measures during training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from statesim.cell import Cell, State, device_and_dtype
from statesim.diagnostics.jacobians import NormKind, geometric_mean, matrix_norms, product_norms, step_jacobians

#: Per-step growth factors inside ``[1 - TOLERANCE, 1 + TOLERANCE]`` count as norm-preserving.
TOLERANCE = 0.02


@dataclass
class GradientFlow:
    """What :func:`gradient_flow` measured; :meth:`to_json` gives the report written by `statesim diagnose`."""

    norm: NormKind
    parts: dict[str, tuple[int, ...]]
    lags: list[int]
    lag_norms: dict[str, Tensor]  # block -> [K + 1] geometric mean over the batch of ||P_k||
    sigma_max: Tensor  # [T] largest singular value of J_t (geometric mean over the batch)
    spectral_radius: Tensor  # [T] largest |eigenvalue| of J_t (mean over the batch)
    self_diagonal: dict[str, Tensor]  # part -> [T] mean diagonal of its own block of J_t (LSTM c: forget gate)
    self_diagonal_max: dict[str, Tensor]  # part -> [T] the largest such diagonal entry (the best-kept unit)
    rate: float  # measured growth factor per step of ||P_k|| over the second half of the lags
    verdict: str
    horizon: int | None  # first lag at which P_k is exactly zero (finite-memory cells), else None
    constant_jacobian: bool
    eigenvalues: Tensor | None = None  # of J when it is the same at every step (linear cell: D)
    closed_form: Tensor | None = None  # ||J^k|| for k = 0..K when J is constant
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def geometric_mean_sigma_max(self) -> float:
        """Geometric mean over time of the per-step largest singular value (an upper bound of the rate)."""
        return float(geometric_mean(self.sigma_max))

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``report.json``."""
        report: dict[str, Any] = {
            "norm": self.norm, "state_parts": {k: list(v) for k, v in self.parts.items()}, "max_lag": self.lags[-1],
            "rate_per_step": self.rate, "verdict": self.verdict, "horizon": self.horizon,
            "geometric_mean_sigma_max": self.geometric_mean_sigma_max,
            "mean_spectral_radius": float(self.spectral_radius.mean()),
            "lag_norms": {k: v.tolist() for k, v in self.lag_norms.items()},
            "sigma_max_per_step": self.sigma_max.tolist(), "spectral_radius_per_step": self.spectral_radius.tolist(),
            "self_diagonal_mean": {k: float(v.mean()) for k, v in self.self_diagonal.items()},
            "self_diagonal_per_step": {k: v.tolist() for k, v in self.self_diagonal.items()},
            "self_diagonal_max_mean": {k: float(v.mean()) for k, v in self.self_diagonal_max.items()},
            "constant_jacobian": self.constant_jacobian, **self.extra}
        if self.eigenvalues is not None:
            eig = sorted(self.eigenvalues.tolist(), key=lambda z: -abs(z))
            report["eigenvalues"] = [[z.real, z.imag] for z in eig]
            report["spectral_radius"] = abs(eig[0])
        if self.closed_form is not None:
            report["closed_form_norms"] = self.closed_form.tolist()
            measured = self.lag_norms["state"]
            scale = self.closed_form.abs().clamp_min(1e-300)
            report["closed_form_max_relative_error"] = float(((measured - self.closed_form).abs() / scale).max())
        return report


def tail_rate(curve: Tensor) -> float:
    """Growth factor per step of ``||P_k||`` over the second half of the lags (least-squares slope of the log).

    The tail, not ``||P_K||^(1/K)``, because a product often changes scale over its first few factors
    (transients, non-normal matrices) before settling into its asymptotic rate, which decides the regime.
    """
    max_k = len(curve) - 1
    if max_k < 1:
        return 1.0
    if (curve <= 0).any():
        return 0.0
    start = max_k // 2 if max_k >= 4 else 0
    k = torch.arange(start, max_k + 1, dtype=torch.float64)
    logs = torch.log(curve[start:].to(torch.float64))
    slope = ((k - k.mean()) * (logs - logs.mean())).sum() / ((k - k.mean()) ** 2).sum()
    return float(torch.exp(slope))


def verdict_of(rate: float, horizon: int | None) -> str:
    """Name the regime from the measured per-step growth factor of ``||P_k||``."""
    if horizon is not None:
        return f"finite memory: gradients are exactly zero beyond lag {horizon - 1}"
    if rate < 1 - TOLERANCE:
        return "vanishing"
    if rate > 1 + TOLERANCE:
        return "exploding"
    return "norm-preserving (neither vanishing nor exploding)"


def gradient_flow(cell: Cell, inputs: Tensor, state: State | None = None, *, max_lag: int | None = None,
                  norm: NormKind = "spectral") -> GradientFlow:
    """Measure ``||P_k||`` against lag, the per-step Jacobian spectrum and the regime, for any cell."""
    trace = step_jacobians(cell, inputs, state)
    jac = trace.jacobians
    steps = jac.shape[0]
    norms = product_norms(jac, trace.layout, max_lag, norm)
    lag_norms = {k: geometric_mean(v, dim=1) for k, v in norms.items()}
    sigma = geometric_mean(torch.linalg.matrix_norm(jac, ord=2), dim=1)
    radius = torch.linalg.eigvals(jac).abs().amax(-1).mean(1)
    diagonals = {name: torch.diagonal(jac[:, :, sl, sl], dim1=-2, dim2=-1) for name, sl in trace.layout.items()}
    self_diag = {name: d.mean((1, 2)) for name, d in diagonals.items()}
    self_diag_max = {name: d.amax(2).mean(1) for name, d in diagonals.items()}
    state_curve = lag_norms["state"]
    max_k = len(state_curve) - 1
    zero = (norms["state"] == 0).all(dim=1).nonzero()
    horizon = int(zero[0]) if len(zero) else None
    rate = tail_rate(state_curve)
    constant = bool(torch.allclose(jac, jac[:1].expand_as(jac), rtol=1e-10, atol=1e-12))
    eigenvalues = closed_form = None
    if constant:
        single = jac[0, 0]
        eigenvalues = torch.linalg.eigvals(single)
        powers = [torch.eye(single.shape[0], dtype=single.dtype)]
        for _ in range(max_k):
            powers.append(powers[-1] @ single)
        closed_form = matrix_norms(torch.stack(powers), norm)
    return GradientFlow(norm, dict(cell.state_spec), list(range(max_k + 1)), lag_norms, sigma, radius, self_diag,
                        self_diag_max, rate, verdict_of(rate, horizon), horizon, constant, eigenvalues, closed_form,
                        extra={"steps": steps, "batch": int(jac.shape[1])})


class GradientFlowMonitor:
    """Training callback (``ctx.train(..., on_update=monitor)``): measure ``||P_k||`` every ``every`` updates.

    Each measurement is appended to :attr:`history` and logged to ``metrics.jsonl`` as ``gradflow_rate`` and
    ``gradflow_norm_at_max_lag``; :func:`plot_monitor` draws how the lag curve changes over training.
    """

    def __init__(self, inputs: Tensor, every: int = 100, max_lag: int | None = None,
                 norm: NormKind = "spectral") -> None:
        self.inputs, self.every, self.max_lag, self.norm = inputs, every, max_lag, norm
        self.history: list[tuple[int, GradientFlow]] = []

    def measure(self, model: Any, step: int) -> GradientFlow:
        """Measure now and remember it."""
        cell = model.step_cell()
        flow = gradient_flow(cell, self.inputs.to(device_and_dtype(cell)[0]), max_lag=self.max_lag,
                             norm=self.norm)
        self.history.append((step, flow))
        return flow

    def __call__(self, trainer: Any, record: dict[str, Any]) -> None:
        step = record["step"]
        if step % self.every and step != trainer.config.steps:
            return
        flow = self.measure(trainer.model, step)
        if trainer.log is not None:
            trainer.log({"job": trainer.job, "step": step, "gradflow_rate": flow.rate,
                         "gradflow_norm_at_max_lag": float(flow.lag_norms["state"][-1]),
                         "gradflow_verdict": flow.verdict})
