"""Scenario ``flipflop``: the 3-bit flip-flop of Sussillo & Barak (2013), and the fixed points that solve it.

Each of ``bits`` input channels carries sparse pulses of +1 or -1; the matching output must hold the sign
of that channel's last pulse until the next one. A network that solves it stores ``2^bits`` memories, and
the analysis of "Opening the black box" finds them: at zero input, one stable fixed point per memory
(8 for 3 bits) with saddle points between neighbouring memories, whose unstable direction leads to the two
memories a pulse flips between. The scenario trains the run's model, then runs the fixed-point search of
:mod:`statesim.analysis` at zero input from starts sampled on the held-out trajectories and reports the
counts next to that expectation.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from statesim.analysis import FixedPointOptions, find_fixed_points, sample_starts
from statesim.analysis.report import plot_eigenvalues, plot_fixed_points
from statesim.config import RunConfig
from statesim.data import DataSplits, SequenceData, mse_loss
from statesim.hookimpl import hookimpl
from statesim.registry import Registration
from statesim.scenario import Probe, RunContext, Scenario, ScenarioParams, sized_probe


class FlipFlopParams(ScenarioParams):
    bits: int = Field(3, ge=1, le=6, description="input/output channels (memories: 2^bits)")
    steps: int = Field(64, gt=1, description="length of each sequence")
    pulse_probability: float = Field(0.05, gt=0, lt=1, description="chance of a pulse per channel and step")
    train_sequences: int = Field(1024, gt=0, description="training sequences")
    test_sequences: int = Field(256, gt=0, description="held-out sequences")
    starts: int = Field(1024, gt=0, description="starts of the fixed-point search")
    start_noise: float = Field(0.01, ge=0, description="noise added to each start (relative to the state spread)")
    min_accuracy: float = Field(0.99, gt=0, le=1, description="share of held-out outputs with the right sign")


def flipflop_data(p: FlipFlopParams, count: int, generator: torch.Generator) -> SequenceData:
    """``count`` sequences ``[steps, count, bits]``; every channel pulses at t = 0 so every target is +-1."""
    shape = (p.steps, count, p.bits)
    pulses = (torch.rand(shape, generator=generator) < p.pulse_probability).float()
    pulses[0] = 1.0
    signs = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0)
    inputs = pulses * signs
    targets = torch.empty(shape)
    held = inputs[0]
    for t in range(p.steps):
        held = torch.where(inputs[t] != 0, inputs[t], held)
        targets[t] = held
    return SequenceData(inputs, targets)


class FlipFlop(Scenario[FlipFlopParams]):
    """Train the run's model on the flip-flop task; count its fixed points at zero input."""

    Params = FlipFlopParams
    needs = frozenset({"stepping"})  # its model is run one tick at a time (evaluation, forcing)

    def _splits(self, seed: int) -> tuple[SequenceData, SequenceData]:
        gen = torch.Generator().manual_seed(seed)
        return (flipflop_data(self.params, self.params.train_sequences, gen),
                flipflop_data(self.params, self.params.test_sequences, gen))

    def diagnostic_batch(self, job: str, size: int, seed: int) -> Any:
        """Held-out sequences and the MSE loss (for `statesim diagnose` and `statesim analyze --inputs-from-data`)."""
        p = self.params.model_copy(update={"test_sequences": size})
        return flipflop_data(p, size, torch.Generator().manual_seed(seed + 1)), mse_loss

    def probes(self, config: RunConfig) -> list[Probe]:
        """The run's model: one input and one output per bit."""
        return [sized_probe(None, self.params.bits, self.params.bits)]

    def run(self, ctx: RunContext) -> dict[str, Any]:
        p = self.params
        train, test = self._splits(ctx.config.seed)
        model = ctx.build_model(None, p.bits, p.bits)
        ctx.train(model, DataSplits(train, test=test))
        results, points, starts, state0 = self.evaluate(model, test, ctx.config.seed, ctx.device)
        cell = model.step_cell()
        if ctx.plots_enabled:
            with torch.no_grad():
                traj = model.topology(test.inputs[:, :8].to(ctx.device), {k: v[:8] for k, v in state0.items()},
                                      return_states=True)
            flat = torch.cat([traj.states[k].flatten(2) for k in cell.state_spec], -1).cpu()
            ctx.save_plot(plot_fixed_points(points, starts.cpu(), flat, "flip-flop: fixed points at zero input"),
                          "fixed_points")
            ctx.save_plot(plot_eigenvalues(points, title="flip-flop: eigenvalues at the fixed points"), "eigenvalues")
        return results

    def evaluate(self, model: Any, test: SequenceData, seed: int, device: torch.device
                 ) -> tuple[dict[str, Any], Any, torch.Tensor, dict[str, torch.Tensor]]:
        """Held-out accuracy and the fixed points at zero input: ``(results, points, starts, initial state)``."""
        p = self.params
        model.eval()
        with torch.no_grad():
            outputs = model(test.inputs.to(device)).outputs.cpu()
        accuracy = float((torch.sign(outputs) == test.targets).float().mean())
        cell = model.step_cell()
        gen = torch.Generator().manual_seed(seed + 2)
        with torch.no_grad():
            state0 = model.initial(test.inputs.shape[1])
        starts = sample_starts(cell, test.inputs.to(device), state0, p.starts, noise=p.start_noise, generator=gen)
        points = find_fixed_points(cell, torch.zeros(p.bits), starts.cpu(), FixedPointOptions())
        unstable_dims = points.unstable_dimensions()
        fixed = [k for k, kind in enumerate(points.kinds) if kind == "fixed"]
        # An attractor: a fixed point (q <= tol_q) with no eigenvalue outside the unit circle. A memory may sit
        # on one whose slowest direction is within 1e-3 of the circle ("marginal": still |lambda| < 1).
        attractors = [k for k in fixed if unstable_dims[k] == 0]
        memories = 2 ** p.bits
        results: dict[str, Any] = {
            "test_accuracy": {"value": accuracy, "target": f">= {p.min_accuracy}", "met": accuracy >= p.min_accuracy},
            "stable_fixed_points": {"value": len(attractors), "expected": memories, "met": len(attractors) == memories,
                                    "marginal": sum(1 for k in attractors if points.stability[k] == "marginal")},
            "saddles": {"value": sum(1 for k in fixed if unstable_dims[k] == 1),
                        "note": f"fixed points with one unstable direction (between memories; "
                                f"{p.bits * 2 ** (p.bits - 1)} edges of the {p.bits}-cube in the textbook picture)"},
            "slow_points": sum(1 for kind in points.kinds if kind == "slow"),
            "fixed_point_search": points.counts,
            "unstable_dimensions_of_fixed_points": sorted(unstable_dims[k] for k in fixed),
            "stable_points_read_out": self._read_out(model, points, attractors),
        }
        return results, points, starts, state0

    @staticmethod
    def _read_out(model: Any, points: Any, indices: list[int]) -> list[list[int]]:
        """The sign pattern the model outputs at each of ``indices`` (each memory should appear once)."""
        cell = model.step_cell()
        dtype = next(cell.parameters()).dtype
        patterns = []
        with torch.no_grad():
            for k in indices:
                state = {n: v.to(dtype) for n, v in points.state(k, cell.state_spec).items()}
                y, _ = cell(torch.zeros(1, cell.input_size, dtype=dtype), state)
                patterns.append(torch.sign(model.read_out(y))[0].int().tolist())
        return sorted(patterns)


@hookimpl
def statesim_scenarios() -> list[Registration]:
    """Register the scenario."""
    return [Registration("flipflop", FlipFlop, FlipFlopParams,
                         "3-bit flip-flop (Sussillo & Barak 2013): train, then count the fixed points that store "
                         "the 2^3 memories")]
