"""Lyapunov spectra (Benettin's QR method) and limit cycles (period, Floquet multipliers) of any cell.

Along a trajectory ``state_t = f(x_t, state_{t-1})`` the step Jacobians ``J_t`` are the gradient lab's
(:mod:`statesim.diagnostics`): there their products ``P_{s,t}`` decide whether gradients vanish; here
their growth rates are the Lyapunov exponents. A set of orthonormal directions ``Q`` is pushed through
every ``J_t`` and re-orthonormalised (``J_t Q = Q' R``); the running mean of ``log |diag R|`` converges to
the exponents, largest first. For the ``linear`` cell ``J_t = D`` and the exponents are ``log |eig(D)|``.

On a limit cycle of period ``P`` steps one exponent is zero (the phase: a shift along the cycle neither
grows nor decays) and the Floquet multipliers are ``exp(lambda_i P)``; the monodromy matrix (the product
of the Jacobians over one period) gives them directly when ``P`` is close to a whole number of steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from statesim.analysis.linearize import eigenvalues_by_modulus
from statesim.analysis.stepmap import StepMap, float64_copy
from statesim.cell import Cell
from statesim.engine import unroll

#: Steps whose Jacobians are computed in one batched call (memory: chunk x N x N doubles).
JACOBIAN_CHUNK = 256


@dataclass
class LyapunovSpectrum:
    """Exponents per step (largest first) and their running estimates, ``history [T, k]``."""

    exponents: Tensor
    history: Tensor
    dt: float | None = None

    def to_json(self) -> dict[str, Any]:
        """Exponents (per step and per second), their sum and the Kaplan-Yorke dimension."""
        lam = self.exponents.tolist()
        data: dict[str, Any] = {"per_step": lam, "steps": int(self.history.shape[0]),
                                "sum_per_step": float(sum(lam)), "kaplan_yorke_dimension": kaplan_yorke(lam)}
        if self.dt is not None:
            data["per_second"] = [v / self.dt for v in lam]
        tail = self.history[-max(1, self.history.shape[0] // 10):]
        data["last_tenth_spread"] = float((tail.max(0).values - tail.min(0).values).abs().max())
        return data


def kaplan_yorke(exponents: list[float]) -> float:
    """The Kaplan-Yorke dimension: ``j + sum_{i<=j} lambda_i / |lambda_{j+1}|`` (0 when all are negative)."""
    total = 0.0
    for j, value in enumerate(exponents):
        if total + value < 0:
            return j + total / abs(value) if j else 0.0
        total += value
    return float(len(exponents))


def _flat_state(step: StepMap, state: Any) -> Tensor:
    if isinstance(state, dict):
        return step.flatten({k: v.to(torch.float64) for k, v in state.items()})
    return torch.as_tensor(state, dtype=torch.float64).reshape(1, -1)


def _inputs(inputs: Tensor, steps: int | None) -> Tensor:
    x = torch.as_tensor(inputs, dtype=torch.float64)
    if x.dim() == 1:  # one constant input
        if steps is None:
            raise ValueError("a constant input needs steps=...")
        return x.expand(steps, -1)
    return x.reshape(x.shape[0], -1)


def trajectory(step: StepMap, inputs: Tensor, flat: Tensor, *, final: bool = False) -> Tensor:
    """Flat states entering each step of ``inputs [T, F]`` from ``flat [1, N]`` (``final``: the states after each)."""
    with torch.no_grad():
        traj = unroll(step.cell, inputs.unsqueeze(1), step.unflatten(flat), return_states=True)
    assert traj.states is not None  # return_states=True
    after = step.flatten({k: v[:, 0] for k, v in traj.states.items()})
    return after if final else torch.cat([flat, after[:-1]])


def lyapunov_spectrum(cell: Cell, inputs: Tensor, state: Any, *, steps: int | None = None, warmup: int = 0,
                      count: int | None = None, dt: float | None = None) -> LyapunovSpectrum:
    """The ``count`` largest Lyapunov exponents along the trajectory from ``state`` (one sample).

    ``inputs`` is ``[T, F]`` (or one constant ``[F]`` with ``steps``); the first ``warmup`` steps only
    move the state onto its attractor.
    """
    step = StepMap(float64_copy(cell))
    xs = _inputs(inputs, None if steps is None else steps + warmup)
    entering = trajectory(step, xs, _flat_state(step, state))[warmup:]  # the state each step starts from
    if len(entering) == 0:
        raise ValueError("lyapunov_spectrum needs at least one step after the warm-up")
    n = entering.shape[1]
    k = n if count is None else min(count, n)
    q = torch.eye(n, k, dtype=torch.float64)
    logs = torch.zeros(k, dtype=torch.float64)
    history: list[Any] = []
    states, xs = entering, xs[warmup:]
    for first in range(0, len(states), JACOBIAN_CHUNK):
        # The steps' Jacobians are independent given the trajectory: one batched call per chunk of steps.
        jacobians = step.state_jacobian(xs[first:first + JACOBIAN_CHUNK], states[first:first + JACOBIAN_CHUNK])
        for jac in jacobians:
            q, r = torch.linalg.qr(jac @ q)
            logs += torch.log(torch.diagonal(r).abs().clamp_min(1e-300))
            history.append(logs / (len(history) + 1))
    hist = torch.stack(history)
    order = torch.argsort(hist[-1], descending=True)  # QR keeps them ordered once converged; make sure
    return LyapunovSpectrum(hist[-1][order], hist[:, order], dt)


def dominant_period(signal: Tensor) -> float | None:
    """The period (in steps) of ``signal [T, O]`` from its autocorrelation's first peak, None when it is flat."""
    y = signal.to(torch.float64)
    y = y - y.mean(0)
    if float(y.std(0).max()) < 1e-6:
        return None
    steps = y.shape[0]
    spectrum = torch.fft.rfft(y, n=2 * steps, dim=0)
    auto = torch.fft.irfft(spectrum * spectrum.conj(), dim=0)[:steps].sum(1)
    auto = auto / auto[0]
    negative = torch.nonzero(auto < 0).flatten()
    if len(negative) == 0:
        return None
    start = int(negative[0])
    window = auto[start:steps // 2]
    if len(window) < 3:
        return None
    peak = start + int(torch.argmax(window))
    if peak <= 0 or peak >= steps - 1 or float(auto[peak]) < 0.5:
        return None
    a, b, c = float(auto[peak - 1]), float(auto[peak]), float(auto[peak + 1])
    denominator = a - 2 * b + c
    return peak + (0.5 * (a - c) / denominator if denominator != 0 else 0.0)


@dataclass
class LimitCycle:
    """A periodic orbit at a constant input: period and Floquet multipliers (largest modulus first)."""

    period_steps: float
    dt: float | None
    multipliers: Tensor  # exp(lambda_i P) from the Lyapunov exponents
    monodromy_multipliers: Tensor  # eigenvalues of the Jacobian product over round(P) steps
    spectrum: LyapunovSpectrum
    amplitude: Tensor  # [O] half the peak-to-peak of each output over the analysed window

    def to_json(self) -> dict[str, Any]:
        """Period, frequency, multipliers and the spectrum."""
        data: dict[str, Any] = {"period_steps": self.period_steps,
                                "floquet_multipliers": self.multipliers.tolist(),
                                "monodromy_multipliers_modulus": self.monodromy_multipliers.abs().tolist(),
                                "amplitude": self.amplitude.tolist(), "lyapunov": self.spectrum.to_json()}
        if self.dt is not None:
            data["period_seconds"] = self.period_steps * self.dt
            data["frequency_hz"] = 1.0 / (self.period_steps * self.dt)
        return data


def limit_cycle(cell: Cell, x: Tensor, state: Any, *, warmup: int = 500, steps: int = 1000,
                dt: float | None = None, count: int | None = None) -> LimitCycle | None:
    """The limit cycle the cell settles on at the constant input ``x``, or None when it settles on a point."""
    step = StepMap(float64_copy(cell))
    x64 = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    z = _flat_state(step, state)
    if warmup:
        z = trajectory(step, x64.expand(warmup, -1), z, final=True)[-1:]
    on_cycle = z
    with torch.no_grad():
        signal = unroll(step.cell, x64.expand(steps, 1, -1), step.unflatten(on_cycle)).outputs[:, 0]
    period = dominant_period(signal)
    if period is None:
        return None
    spectrum = lyapunov_spectrum(cell, x64, on_cycle, steps=steps, count=count, dt=dt)
    cycle_states = trajectory(step, x64.expand(max(1, round(period)), -1), on_cycle)
    monodromy = torch.eye(on_cycle.shape[1], dtype=torch.float64)
    for jac in step.state_jacobian(x64, cycle_states):
        monodromy = jac @ monodromy
    amplitude = (signal.max(0).values - signal.min(0).values) / 2
    return LimitCycle(period, dt, torch.exp(spectrum.exponents * period), eigenvalues_by_modulus(monodromy[None])[0],
                      spectrum, amplitude)


__all__ = ["LimitCycle", "LyapunovSpectrum", "dominant_period", "kaplan_yorke", "limit_cycle", "lyapunov_spectrum"]
