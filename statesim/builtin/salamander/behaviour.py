""""Observed behaviour": drive schedules and CPG trajectories that the salamander scenario learns from."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from statesim.builtin.salamander.cpg import SalamanderCPG
from statesim.cell import State
from statesim.engine import unroll
from statesim.errors import StatesimError
from statesim.forcing import Forcing


@dataclass
class DriveRecipe:
    """How random drive schedules are drawn."""

    seconds: tuple[float, float] = (20.0, 40.0)
    segment_seconds: tuple[float, float] = (3.0, 9.0)
    drive_range: tuple[float, float] = (0.0, 6.0)
    ramp_probability: float = 0.4
    ramp_seconds: tuple[float, float] = (1.0, 4.0)
    turn_probability: float = 0.4
    max_turn: float = 1.0
    held_out: tuple[float, ...] = ()
    held_out_width: float = 0.1
    levels: tuple[float, ...] = ()  # when given, plateau means are drawn from these only
    # Drives where the behaviour changes abruptly (the CPG's saturation borders): a share of the plateaus is
    # drawn within edge_width of one of them, so the sharp transitions are seen often enough to be learned.
    edges: tuple[float, ...] = ()
    edge_probability: float = 0.0
    edge_width: float = 0.3


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _level(gen: torch.Generator, recipe: DriveRecipe) -> float:
    """A drive level outside every held-out band (so evaluation levels are never trained on as plateaus)."""
    if recipe.levels:
        return recipe.levels[int(torch.randint(len(recipe.levels), (), generator=gen))]
    low, high = recipe.drive_range
    if recipe.edges and float(torch.rand((), generator=gen)) < recipe.edge_probability:
        edge = recipe.edges[int(torch.randint(len(recipe.edges), (), generator=gen))]
        low, high = max(low, edge - recipe.edge_width), min(high, edge + recipe.edge_width)
    for _ in range(1000):
        value = _uniform(gen, low, high)
        if all(abs(value - h) > recipe.held_out_width for h in recipe.held_out):
            return value
    raise StatesimError(f"salamander drives: the held-out bands (drives {list(recipe.held_out)} +- "
                        f"{recipe.held_out_width}) cover the whole drive range {recipe.drive_range}, so no training "
                        f"plateau can be drawn; hold out fewer or narrower drive bands.")


def drive_schedule(gen: torch.Generator, steps: int, dt: float, recipe: DriveRecipe) -> Tensor:
    """One schedule ``[steps, 2]`` of (d_L, d_R): plateaus joined by steps or ramps, some with d_L != d_R."""
    out = torch.empty(steps, 2)
    t, previous = 0, None
    while t < steps:
        mean = _level(gen, recipe)
        turn = _uniform(gen, -recipe.max_turn, recipe.max_turn) \
            if float(torch.rand((), generator=gen)) < recipe.turn_probability else 0.0
        level = torch.tensor([mean + turn / 2, mean - turn / 2]).clamp(*recipe.drive_range)
        length = max(1, int(round(_uniform(gen, *recipe.segment_seconds) / dt)))
        stop = min(steps, t + length)
        out[t:stop] = level
        if previous is not None and float(torch.rand((), generator=gen)) < recipe.ramp_probability:
            ramp = min(stop - t, max(2, int(round(_uniform(gen, *recipe.ramp_seconds) / dt))))
            w = torch.linspace(0, 1, ramp + 1)[1:].unsqueeze(1)
            out[t:t + ramp] = previous + (level - previous) * w
        previous, t = level, stop
    return out


def canonical_state(cpg: SalamanderCPG, batch_size: int, *, phases: str, gen: torch.Generator) -> State:
    """The CPG at rest (r = 0) with the locked swimming phases, or uniformly random phases."""
    n = cpg.p.segments
    if phases == "random":
        return cpg.random_state(batch_size, gen)
    wave = torch.tensor([-k * cpg.p.phi_body for k in range(n)])
    theta = torch.cat([wave, wave + math.pi, torch.tensor([0.0, math.pi, math.pi, 0.0])]) % (2 * math.pi)
    theta = theta.expand(batch_size, -1).clone()
    zeros = torch.zeros_like(theta)
    return {"theta": theta, "r": zeros, "dr": zeros.clone()}


@torch.no_grad()
def simulate(cpg: SalamanderCPG, drives: Tensor, state: State | None = None, *, phases: str = "canonical",
             gen: torch.Generator | None = None, forcing: Forcing | None = None) -> Tensor:
    """CPG outputs ``[T, B, O]`` for drives ``[T, B, 2]`` (in float64 for accuracy, returned as float32).

    The integration runs on a float64 copy, so the caller's CPG keeps its dtype and values.
    """
    cpg64 = copy.deepcopy(cpg).double()
    gen = gen or torch.Generator().manual_seed(0)
    if state is None:
        state = canonical_state(cpg64, drives.shape[1], phases=phases, gen=gen)
    state = {k: v.double() for k, v in state.items()}
    return unroll(cpg64, drives.double(), state, forcing=forcing).outputs.float()


def mirror(drives: Tensor, outputs: Tensor, segments: int) -> tuple[Tensor, Tensor]:
    """The left-right mirror image of a run: d_L and d_R swapped, body angles negated, limbs LF<->RF, LH<->RH.

    The CPG is left-right symmetric, so the mirror image of a CPG run is itself a CPG run (from the mirrored
    initial state); training on both halves the data asymmetries a learned model could pick up.
    """
    body, limbs = outputs[..., :segments], outputs[..., segments:]
    return drives[..., [1, 0]], torch.cat([-body, limbs[..., [1, 0, 3, 2]]], -1)
