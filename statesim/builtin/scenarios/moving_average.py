"""Scenario ``moving_average`` (lecture Part 1): stateless vs stateful predictors.

Two ground truths over the same random input series: the finite-window moving average
``y_t = 0.5 x_t + 0.3 x_{t-1} + 0.2 x_{t-2}`` and the infinite-horizon EMA
``h_t = g h_{t-1} + (1 - g) x_t, y_t = h_t``. A ``window`` (k = 3) model and a 1-unit ``linear`` model
are trained on each; each recovers its own system's coefficients, and the window cannot fit the EMA.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from statesim.config import ModelConfig, RunConfig
from statesim.data import DataSplits, SequenceData
from statesim.hookimpl import hookimpl
from statesim.registry import Registration
from statesim.safepath import PathName
from statesim.scenario import Probe, RunContext, Scenario, ScenarioParams, sized_probe


def moving_average(x: torch.Tensor, coefficients: list[float]) -> torch.Tensor:
    """``y_t = sum_k c_k x_{t-k}`` over time-major ``x [T, N, 1]`` (zeros before the start)."""
    y = torch.zeros_like(x)
    for k, c in enumerate(coefficients):
        y[k:] += c * x[: x.shape[0] - k]
    return y


def exponential_moving_average(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """``h_t = gamma h_{t-1} + (1 - gamma) x_t`` from ``h_0 = 0``; returns every ``h_t``."""
    h, out = torch.zeros_like(x[0]), []
    for x_t in x:
        h = gamma * h + (1 - gamma) * x_t
        out.append(h)
    return torch.stack(out)


def _default_models() -> dict[str, Any]:
    # Plain data, validated (and its cells resolved against the registry) like a value given in the file.
    return {
        "window": {"cell": {"type": "window", "window": 3, "output_size": 1}, "head": "none"},
        "linear": {"cell": {"type": "linear", "hidden_size": 1, "output_size": 1}, "head": "none"},
    }


class MovingAverageParams(ScenarioParams):
    coefficients: list[float] = Field([0.5, 0.3, 0.2], description="moving-average weights of x_t, x_{t-1}, ...")
    gamma: float = Field(0.9, gt=0, lt=1, description="EMA decay")
    steps: int = Field(100, gt=3, description="length of each input series")
    train_sequences: int = Field(256, gt=0, description="training series")
    test_sequences: int = Field(64, gt=0, description="held-out series")
    noise: float = Field(0.0, ge=0, description="std of Gaussian noise added to the training targets")
    tolerance: float = Field(0.01, gt=0, description="coefficient error that counts as recovered")
    models: dict[PathName, ModelConfig] = Field(default_factory=_default_models, validate_default=True,
                                                description="models to train on each system, by name")


class MovingAverage(Scenario[MovingAverageParams]):
    """Train each model on each system; report coefficients, test MSE and whether each recovers its system."""

    Params = MovingAverageParams

    def _systems(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.params
        return {"moving_average": moving_average(x, p.coefficients), "ema": exponential_moving_average(x, p.gamma)}

    def probes(self, config: RunConfig) -> list[Probe]:
        """Each of ``models``, on one input and one output."""
        return [sized_probe(model, 1, 1, key=f"scenario.models.{name}") for name, model in self.params.models.items()]

    def run(self, ctx: RunContext) -> dict[str, Any]:
        p = self.params
        gen = torch.Generator().manual_seed(ctx.config.seed)
        x_train = torch.randn(p.steps, p.train_sequences, 1, generator=gen)
        x_test = torch.randn(p.steps, p.test_sequences, 1, generator=gen)
        truth_train, truth_test = self._systems(x_train), self._systems(x_test)
        pairings: dict[str, Any] = {}
        fits: dict[str, torch.Tensor] = {}
        for system in truth_train:
            target = truth_train[system] + p.noise * torch.randn(x_train.shape, generator=gen)
            data = DataSplits(SequenceData(x_train, target), test=SequenceData(x_test, truth_test[system]))
            for name, model_config in p.models.items():
                model = ctx.build_model(model_config, 1, 1)
                ctx.train(model, data, job=f"{name}-on-{system}")
                with torch.no_grad():
                    prediction = model(x_test.to(ctx.device)).outputs.cpu()
                fits[f"{name}-on-{system}"] = prediction
                pairings[f"{name}-on-{system}"] = {
                    "model": name, "system": system,
                    "test_mse": float(((prediction - truth_test[system]) ** 2).mean()),
                    "coefficients": self._coefficients(model)}
        results = {"pairings": pairings, **self._verdicts(pairings)}
        if "window_vs_linear_on_ema" in results:
            # The share of the EMA's variance the window leaves unexplained: the infinite tail beyond k.
            variance = float(truth_test["ema"].var())
            results["window_vs_linear_on_ema"]["window_unexplained_variance"] = (
                pairings["window-on-ema"]["test_mse"] / variance)
        if ctx.plots_enabled:
            self._plot(ctx, x_test, truth_test, fits)
        return results

    def _coefficients(self, model: Any) -> dict[str, Any]:
        cell = model.topology.as_cell()
        if hasattr(cell, "weights"):
            return {"window_weights": [round(float(w), 6) for w in cell.weights.detach().flatten()]}
        if all(hasattr(cell, m) for m in "ABCD"):
            A, B, C, D = (getattr(cell, m).detach() for m in "ABCD")
            out = {m: getattr(cell, m).detach().flatten().tolist() for m in "ABCD"}
            if A.numel() == B.numel() == C.numel() == D.numel() == 1:
                # h is only defined up to scale, so B and C alone are not identifiable; B*C is.
                out.update({"direct_A": float(A), "pole_D": float(D), "gain_BC": float(B * C)})
            return out
        return {}

    def _verdicts(self, pairings: dict[str, Any]) -> dict[str, Any]:
        p, verdicts = self.params, {}
        window = pairings.get("window-on-moving_average", {}).get("coefficients", {}).get("window_weights")
        if window is not None:
            padded = p.coefficients + [0.0] * max(0, len(window) - len(p.coefficients))
            error = max(abs(a - b) for a, b in zip(window, padded))
            verdicts["window_recovers_moving_average"] = {"max_coefficient_error": error,
                                                          "recovered": error <= p.tolerance}
        linear = pairings.get("linear-on-ema", {}).get("coefficients", {})
        if "pole_D" in linear:
            truth = {"direct_A": 1 - p.gamma, "pole_D": p.gamma, "gain_BC": p.gamma * (1 - p.gamma)}
            error = max(abs(linear[k] - v) for k, v in truth.items())
            verdicts["linear_recovers_ema"] = {"true": truth, "max_coefficient_error": error,
                                               "recovered": error <= p.tolerance}
        if "window-on-ema" in pairings and "linear-on-ema" in pairings:
            w, s = pairings["window-on-ema"]["test_mse"], pairings["linear-on-ema"]["test_mse"]
            verdicts["window_vs_linear_on_ema"] = {
                "window_test_mse": w, "linear_test_mse": s,
                "window_fails": w > 100 * max(s, 1e-8), "mse_ratio": w / max(s, 1e-12)}
        return verdicts

    def _plot(self, ctx: RunContext, x: torch.Tensor, truth: dict[str, torch.Tensor],
              fits: dict[str, torch.Tensor]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(self.params.models)
        systems = list(truth)
        fig, axes = plt.subplots(len(systems), len(names), figsize=(6 * len(names), 3.2 * len(systems)),
                                 squeeze=False, sharex=True)
        span = slice(0, min(60, x.shape[0]))
        for i, system in enumerate(systems):
            for j, name in enumerate(names):
                ax = axes[i][j]
                ax.plot(x[span, 0, 0], color="0.75", lw=1, label="input x")
                ax.plot(truth[system][span, 0, 0], "k", lw=2, label=f"true {system}")
                ax.plot(fits[f"{name}-on-{system}"][span, 0, 0], "--", color="C1", lw=2, label=f"{name} model")
                ax.set_title(f"{name} model on {system}")
                ax.legend(loc="upper right", fontsize=8)
        for ax in axes[-1]:
            ax.set_xlabel("t")
        ctx.save_plot(fig, "fits")


@hookimpl
def statesim_scenarios() -> list[Registration]:
    """Register the scenario."""
    return [Registration("moving_average", MovingAverage, MovingAverageParams,
                         "stateless moving average vs stateful EMA, window vs linear model (lecture part 1)")]
