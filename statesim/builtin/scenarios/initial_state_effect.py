"""Scenario ``initial_state_effect``: what the initial-state policy costs at the start of a sequence.

The task is one-step-ahead prediction of the chaotic Lorenz system observed through ``x`` alone: the
model reads ``x_t`` and predicts ``x_{t+1}``. Each window starts in the middle of a trajectory, so the
hidden variables (and the phase of the oscillation) are unknown at ``t = 0``; a model must infer them
from the inputs it has seen, and the initial state decides how wrong it is meanwhile. The same model
is trained once per policy (zeros, random, learned, warm-up on the 20 steps that precede the window), and
results.json reports each policy's mean squared error over the first ``first_steps`` steps and over the
rest; plots/initial_state_effect.png shows the error at every step.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import Field

from statesim.config import InitialStateSpec, RunConfig
from statesim.data import DataSplits, SequenceData
from statesim.hookimpl import hookimpl
from statesim.registry import Registration
from statesim.safepath import PathName
from statesim.scenario import Probe, RunContext, Scenario, ScenarioParams


def default_policies() -> dict[str, Any]:
    """The compared policies by label, as plain data (validated and resolved like a value given in the file)."""
    return {"zeros": {"type": "zeros"},
            "random": {"type": "random", "scale": 0.5},
            "learned": {"type": "learned"},
            "warmup": {"type": "warmup", "steps": 20, "prefix": "given"}}


class InitialStateEffectParams(ScenarioParams):
    prefix_steps: int = Field(20, ge=1, description="observed steps before each window (what warm-up may read)")
    window_steps: int = Field(60, gt=1, description="steps of each window the model predicts")
    first_steps: int = Field(20, ge=1, description="the early horizon whose error is reported separately")
    train_sequences: int = Field(512, gt=0, description="training windows")
    test_sequences: int = Field(256, gt=0, description="held-out windows (from other trajectories)")
    dt: float = Field(0.01, gt=0, description="RK4 step of the Lorenz system")
    every: int = Field(4, ge=1, description="observe x every this many RK4 steps")
    policies: dict[PathName, InitialStateSpec] = Field(default_factory=default_policies, validate_default=True,
                                                       description="policies compared, by label")


def lorenz_x(count: int, steps: int, dt: float, every: int, seed: int, burn_in: int = 500) -> torch.Tensor:
    """``x`` of ``count`` Lorenz trajectories (sigma 10, rho 28, beta 8/3), ``[steps, count]``, standardised."""
    gen = torch.Generator().manual_seed(seed)
    state = torch.randn(count, 3, generator=gen, dtype=torch.float64) * 5 + torch.tensor([0.0, 0.0, 25.0],
                                                                                      dtype=torch.float64)

    def f(s: torch.Tensor) -> torch.Tensor:
        x, y, z = s.unbind(-1)
        return torch.stack([10 * (y - x), x * (28 - z) - y, x * y - 8 / 3 * z], dim=-1)

    out = []
    for i in range(burn_in + steps * every):
        k1 = f(state)
        k2 = f(state + dt / 2 * k1)
        k3 = f(state + dt / 2 * k2)
        k4 = f(state + dt * k3)
        state = state + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if i >= burn_in and (i - burn_in) % every == 0:
            out.append(state[:, 0].clone())
    return (torch.stack(out) / 8.0).float()  # x has std ~8 on the attractor


def windows(count: int, p: InitialStateEffectParams, seed: int) -> SequenceData:
    """Inputs ``x_t`` and targets ``x_{t+1}`` of each window ``[window, count, 1]``, with the observed steps
    before it as the prefix ``[prefix, count, 1]`` (what a warm-up policy reads)."""
    series = lorenz_x(count, p.prefix_steps + p.window_steps + 1, p.dt, p.every, seed)
    k = p.prefix_steps
    return SequenceData(series[k:-1].unsqueeze(-1), series[k + 1:].unsqueeze(-1), prefix=series[:k].unsqueeze(-1))


class InitialStateEffect(Scenario[InitialStateEffectParams]):
    """Train the run's model once per initial-state policy; compare the early-step prediction error."""

    Params = InitialStateEffectParams
    supplies = frozenset({"prefix"})  # every sequence comes with the steps before it (for a warm-up)

    def probes(self, config: RunConfig) -> list[Probe]:
        """The run's model once per policy, on windows that come with their prefix (as the data's do)."""
        p = self.params
        batch = SequenceData(torch.zeros(3, 2, 1), torch.zeros(3, 2, 1), prefix=torch.zeros(p.prefix_steps, 2, 1))

        def builder(spec: InitialStateSpec) -> Callable[[RunContext], Any]:
            model = config.model.model_copy(update={"initial_state": spec}) if config.model is not None else None
            return lambda ctx: ctx.build_model(model, 1, 1)

        return [Probe(f"scenario.policies.{label}", builder(spec), batch) for label, spec in p.policies.items()]

    def run(self, ctx: RunContext) -> dict[str, Any]:
        p = self.params
        train, test = windows(p.train_sequences, p, ctx.config.seed), windows(p.test_sequences, p, ctx.config.seed + 1)
        results: dict[str, Any] = {"task": "one-step prediction of Lorenz x", "first_steps": p.first_steps,
                                   "target_variance": float(test.targets.var()), "policies": {}}
        curves = {}
        for label, spec in p.policies.items():
            assert ctx.config.model is not None  # ctx.build_model refused a run without one above
            config = ctx.config.model.model_copy(update={"initial_state": spec})
            model = ctx.build_model(config, 1, 1)
            ctx.train(model, DataSplits(train), job=label)
            model.eval()
            with torch.no_grad():
                torch.manual_seed(ctx.config.seed)  # the random policy draws the same states for every run
                batch = test.to(ctx.device)
                out = model(batch.inputs, prefix=batch.prefix).outputs
                per_step = ((out - batch.targets) ** 2).mean(dim=(1, 2)).cpu()
            curves[label] = per_step
            results["policies"][label] = {"policy": spec.model_dump(mode="json"),
                                          "mse_first_steps": float(per_step[:p.first_steps].mean()),
                                          "mse_later_steps": float(per_step[p.first_steps:].mean()),
                                          "mse_step0": float(per_step[0])}
        ranking = sorted(results["policies"], key=lambda n: results["policies"][n]["mse_first_steps"])
        results["ranking_first_steps"] = ranking
        if ctx.plots_enabled:
            self._plot(ctx, curves)
        return results

    def _plot(self, ctx: RunContext, curves: dict[str, torch.Tensor]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5))
        for label, curve in curves.items():
            ax.semilogy(curve.numpy(), lw=2, label=label)
        ax.axvline(self.params.first_steps - 0.5, color="0.6", ls="--", lw=1)
        ax.set(xlabel="step t of the window", ylabel="test MSE at step t (log)",
               title="one-step prediction error of Lorenz x by initial-state policy")
        ax.legend()
        ctx.save_plot(fig, "initial_state_effect")


@hookimpl
def statesim_scenarios() -> list[Registration]:
    """Register the scenario."""
    return [Registration("initial_state_effect", InitialStateEffect, InitialStateEffectParams,
                         "early-step prediction error of a chaotic series under each initial-state policy")]
