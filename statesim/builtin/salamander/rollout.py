"""Running the learned model and the ground-truth CPG side by side on the same drives."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from statesim.builtin.salamander.behaviour import simulate
from statesim.builtin.salamander.cpg import SalamanderCPG
from statesim.builtin.salamander.data import model_inputs
from statesim.builtin.salamander.params import SalamanderParams
from statesim.cell import device_and_dtype
from statesim.forcing import Forcing
from statesim.model import SequenceModel


@torch.no_grad()
def run_model(model: SequenceModel, drives: torch.Tensor, observed: torch.Tensor, warmup: int,
              forcing: Forcing | None = None, return_states: bool = False
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """Run the RNN on drives ``[T, B, 2]`` after an observation warm-up; outputs and optionally states."""
    model.eval()
    device = device_and_dtype(model)[0]
    x = model_inputs(drives, observed, warmup).to(device)
    traj = model(x, forcing=forcing, return_states=return_states)
    states = {k: v.cpu() for k, v in traj.states.items()} if return_states else None
    return traj.outputs.cpu(), states


def cpg_run(cpg: SalamanderCPG, drives: torch.Tensor, seed: int, forcing: Forcing | None = None) -> torch.Tensor:
    """The CPG's outputs for drives ``[T, B, 2]`` from random phases on the cycle of the first drive."""
    gen = torch.Generator().manual_seed(seed)
    state = cpg.random_state(drives.shape[1], gen)
    state["r"] = cpg.targets(drives[0])[1].clone()
    return simulate(cpg, drives, state, forcing=forcing)


@dataclass
class Rig:
    """What every evaluation, steering and analysis step shares: the recipe, the CPG, the model and its warm-up."""

    params: SalamanderParams
    cpg: SalamanderCPG
    model: SequenceModel
    warmup: int
    seed: int  # the run's seed; each experiment adds its own offset, so each sees its own initial phases

    @property
    def dt(self) -> float:
        """Sampling interval, s."""
        return self.cpg.p.dt

    @property
    def segments(self) -> int:
        """Body segments (the first outputs are the body joints)."""
        return self.cpg.p.segments

    def run_model(self, drives: torch.Tensor, observed: torch.Tensor, forcing: Forcing | None = None,
                  return_states: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """The learned model on ``drives`` after the warm-up on ``observed``."""
        return run_model(self.model, drives, observed, self.warmup, forcing, return_states)

    def cpg_run(self, drives: torch.Tensor, seed_offset: int, forcing: Forcing | None = None) -> torch.Tensor:
        """The CPG on ``drives`` from the initial phases of seed ``seed + seed_offset``."""
        return cpg_run(self.cpg, drives, self.seed + seed_offset, forcing)
