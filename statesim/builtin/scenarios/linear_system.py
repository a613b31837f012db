"""Scenario ``linear_system``: identify A, B, C, D of a random stable system from input/output data.

The state basis of a linear system is not identifiable (``h -> T h`` changes B, C, D but not the
input/output map), so the scenario compares what is: the impulse response (Markov parameters
``G_0 = A``, ``G_k = B D^{k-1} C``) and the eigenvalues of D.
"""
from __future__ import annotations

import itertools
from typing import Any

import torch
from pydantic import Field

from statesim.builtin.cells import LinearCell
from statesim.config import RunConfig
from statesim.data import DataSplits, SequenceData
from statesim.engine import unroll
from statesim.hookimpl import hookimpl
from statesim.registry import Registration
from statesim.scenario import Probe, RunContext, Scenario, ScenarioParams, sized_probe


class LinearSystemParams(ScenarioParams):
    state_size: int = Field(4, gt=0, description="states of the true system")
    input_size: int = Field(2, gt=0, description="inputs of the true system")
    output_size: int = Field(2, gt=0, description="outputs of the true system")
    spectral_radius: float = Field(0.9, gt=0, lt=1, description="largest |eigenvalue| of the true D")
    steps: int = Field(200, gt=1, description="length of each input series")
    train_sequences: int = Field(128, gt=0, description="training series")
    test_sequences: int = Field(32, gt=0, description="held-out series")
    noise: float = Field(0.0, ge=0, description="std of measurement noise on the training outputs")
    impulse_steps: int = Field(50, gt=1, description="length of the impulse response compared")
    system_seed: int = Field(1234, ge=0, lt=2**63, description="seed of the true system")


def random_stable_system(p: LinearSystemParams) -> LinearCell:
    """A random system with D scaled to the requested spectral radius."""
    gen = torch.Generator().manual_seed(p.system_seed)
    n, m, q = p.state_size, p.input_size, p.output_size
    # Eigenvalues drawn with |lambda| in [0.5 rho, rho] (complex pairs, plus one real one if n is odd), so
    # every mode is excited for long enough to be identifiable; the largest has modulus rho exactly.
    blocks = []
    for index in range(n // 2):
        radius = (p.spectral_radius if index == 0
                  else float(p.spectral_radius * (0.5 + 0.5 * torch.rand(1, generator=gen))))
        angle = float(0.2 + (torch.pi - 0.4) * torch.rand(1, generator=gen))
        c, s = radius * torch.cos(torch.tensor(angle)), radius * torch.sin(torch.tensor(angle))
        blocks.append(torch.tensor([[c, -s], [s, c]]))
    if n % 2:
        radius = p.spectral_radius if n == 1 else float(p.spectral_radius * (0.5 + 0.5 * torch.rand(1, generator=gen)))
        blocks.append(torch.tensor([[radius if torch.rand(1, generator=gen) < 0.5 else -radius]]))
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
    D = basis @ torch.block_diag(*blocks) @ basis.T
    init = {"A": torch.randn(q, m, generator=gen) * 0.5, "B": torch.randn(q, n, generator=gen) / n ** 0.5,
            "C": torch.randn(n, m, generator=gen), "D": D}
    return LinearCell(m, n, q, fixed=["A", "B", "C", "D"], init={k: v.tolist() for k, v in init.items()})


def matched_eigenvalue_error(true: torch.Tensor, learned: torch.Tensor) -> float:
    """Largest distance between eigenvalues under the best one-to-one matching."""
    n = len(true)
    if n > 8:  # a greedy match keeps this cheap for big systems
        return float(max((learned - t).abs().min() for t in true))
    return min(float(max(abs(true[i] - learned[j]) for i, j in enumerate(perm)))
               for perm in itertools.permutations(range(n)))


class LinearSystem(Scenario[LinearSystemParams]):
    """Fit the run's ``model`` (a linear cell) to data from a random stable system."""

    Params = LinearSystemParams

    def probes(self, config: RunConfig) -> list[Probe]:
        """The run's model, on the system's input and output sizes."""
        return [sized_probe(None, self.params.input_size, self.params.output_size)]

    def run(self, ctx: RunContext) -> dict[str, Any]:
        p = self.params
        system = random_stable_system(p)
        gen = torch.Generator().manual_seed(ctx.config.seed)
        with torch.no_grad():
            x_train = torch.randn(p.steps, p.train_sequences, p.input_size, generator=gen)
            x_test = torch.randn(p.steps, p.test_sequences, p.input_size, generator=gen)
            y_train = unroll(system, x_train).outputs
            y_test = unroll(system, x_test).outputs
        y_train = y_train + p.noise * torch.randn(y_train.shape, generator=gen)
        data = DataSplits(SequenceData(x_train, y_train), test=SequenceData(x_test, y_test))
        model = ctx.build_model(None, p.input_size, p.output_size)
        ctx.train(model, data)
        with torch.no_grad():
            prediction = model(x_test.to(ctx.device)).outputs.cpu()
        results: dict[str, Any] = {"test_mse": float(((prediction - y_test) ** 2).mean()),
                                   "output_variance": float(y_test.var())}
        cell = model.topology.as_cell()
        if isinstance(cell, LinearCell) and model.head is None:
            with torch.no_grad():
                true_ir, learned_ir = system.impulse_response(p.impulse_steps), cell.impulse_response(p.impulse_steps)
                true_eig = torch.linalg.eigvals(system.D)
                learned_eig = torch.linalg.eigvals(cell.D.cpu())
            results.update({
                "impulse_response_relative_error": float((learned_ir.cpu() - true_ir).norm() / true_ir.norm()),
                "eigenvalues_true": _complex_list(true_eig), "eigenvalues_learned": _complex_list(learned_eig),
                "eigenvalue_match_error": matched_eigenvalue_error(true_eig, learned_eig)
                if len(true_eig) == len(learned_eig) else None,
                "spectral_radius_true": float(true_eig.abs().max()),
                "spectral_radius_learned": float(learned_eig.abs().max())})
            if ctx.plots_enabled:
                self._plot(ctx, true_ir, learned_ir.cpu(), true_eig, learned_eig)
        return results

    def _plot(self, ctx: RunContext, true_ir: torch.Tensor, learned_ir: torch.Tensor, true_eig: torch.Tensor,
              learned_eig: torch.Tensor) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        for i in range(true_ir.shape[1]):
            for j in range(true_ir.shape[2]):
                line, = left.plot(true_ir[:, i, j], lw=2, label=f"true y{i}<-x{j}")
                left.plot(learned_ir[:, i, j], "--", color=line.get_color(), lw=2, label=f"learned y{i}<-x{j}")
        left.set(title="impulse response G_k (true solid, learned dashed)", xlabel="lag k")
        left.legend(fontsize=7, ncol=2)
        circle = torch.linspace(0, 2 * torch.pi, 200)
        right.plot(torch.cos(circle), torch.sin(circle), color="0.7", lw=1)
        right.scatter(true_eig.real, true_eig.imag, s=120, facecolors="none", edgecolors="k", label="true D")
        right.scatter(learned_eig.real, learned_eig.imag, s=30, color="C1", label="learned D")
        right.set(title="eigenvalues of D", xlabel="Re", ylabel="Im", aspect="equal")
        right.legend()
        ctx.save_plot(fig, "identification")


def _complex_list(values: torch.Tensor) -> list[list[float]]:
    ordered = sorted(values.tolist(), key=lambda z: (-abs(z), z.imag))
    return [[round(z.real, 6), round(z.imag, 6)] for z in ordered]


@hookimpl
def statesim_scenarios() -> list[Registration]:
    """Register the scenario."""
    return [Registration("linear_system", LinearSystem, LinearSystemParams,
                         "identify A, B, C, D of a random stable linear system from input/output data")]
