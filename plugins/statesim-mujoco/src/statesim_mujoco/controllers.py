"""The two controllers of the closed loop, both stepped one tick per control step through ``statesim.embed``.

* :class:`CPGController`: the ground-truth ``salamander_cpg`` cell, built through the plugin registry and
  wrapped with :func:`statesim.embed.as_embedded` (so it is stepped by the same public API as the RNN).
* :class:`RNNController`: a trained ``salamander`` run loaded with :func:`statesim.embed.load`. Its 15 inputs
  are the drives (0, 1), the observed joint signals (2..13: body angles then limb signals) and a warm-up flag
  (14). As in training, the observed signals and the flag are given only during the warm-up; afterwards the
  RNN runs on the drives alone and its body outputs drive the swimmer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from statesim.errors import StatesimError


class ClosedLoopError(StatesimError):
    """A trained run or setting that the closed loop cannot use."""


def build_cpg(registry: Any, cpg_params: dict[str, Any]) -> Any:
    """A ``SequenceModel`` around the registered ``salamander_cpg`` cell (no head: outputs are the CPG's own)."""
    from statesim.config import ModelConfig, validate_as
    from statesim.errors import ConfigError

    try:
        config = validate_as(ModelConfig, {"cell": {"type": "salamander_cpg", **cpg_params}, "head": "none"},
                             registry, "<salamander_swim>", path=("scenario", "cpg"))
    except ConfigError as exc:
        raise ClosedLoopError("salamander_swim: the CPG parameters are invalid: "
                              + "; ".join(map(str, exc.issues))) from None
    from statesim import build_model

    return build_model(registry, config, 2, None)


class CPGController:
    """The salamander CPG, stepped one tick per call via ``statesim.embed``; outputs ``[B, joints + 4]``."""

    def __init__(self, registry: Any, cpg_params: dict[str, Any], batch_size: int = 1) -> None:
        import statesim.embed

        self.model = build_cpg(registry, cpg_params)
        self.cell = self.model.step_cell()
        self.sim = statesim.embed.as_embedded(self.model, batch_size=batch_size)
        self.segments = self.cell.p.segments
        self.dt = self.cell.p.dt

    def reset(self, drives: np.ndarray, seed: int | None) -> None:
        """Random phases (``seed``; None: the locked swimming wave) with amplitudes already at the first drive's."""
        import torch

        drives = np.asarray(drives, dtype=np.float32).reshape(-1, 2)
        batch = len(drives)
        with torch.no_grad():
            _, amplitude = self.cell.targets(torch.as_tensor(drives))
        if seed is None:
            n = self.segments
            wave = -np.arange(n) * self.cell.p.phi_body
            theta = np.tile(np.concatenate([wave, wave + np.pi, [0.0, np.pi, np.pi, 0.0]]) % (2 * np.pi), (batch, 1))
        else:
            theta = np.random.default_rng(seed).uniform(0, 2 * np.pi, (batch, self.cell.oscillators))
        self.sim.reset(batch_size=batch, initial_state={"theta": theta, "r": amplitude.numpy(),
                                                        "dr": np.zeros_like(theta)})

    def step(self, drives: np.ndarray) -> np.ndarray:
        """One tick with drives ``[B, 2]``: the body angles and limb signals."""
        return self.sim.step(np.asarray(drives, dtype=np.float32))


class RNNController:
    """A trained salamander RNN (a run folder), stepped one tick per call via ``statesim.embed``."""

    def __init__(self, run: str | Path | Any, segments: int, batch_size: int = 1, registry: Any = None) -> None:
        """``run``: a run folder or checkpoint (loaded with ``statesim.embed.load``), or an ``EmbeddedModel``."""
        import statesim.embed

        if isinstance(run, statesim.embed.EmbeddedModel):
            self.sim = run
            self.sim.reset(batch_size=batch_size)
        else:
            try:
                self.sim = statesim.embed.load(run, batch_size=batch_size, registry=registry)
            except StatesimError:
                raise
            except (OSError, ValueError) as exc:
                raise ClosedLoopError(f"salamander_swim: cannot load the trained RNN from '{run}': {exc}") from None
        outputs = segments + 4
        if self.sim.output_size != outputs or self.sim.input_size != 2 + outputs + 1:
            raise ClosedLoopError(
                f"salamander_swim: the run '{run}' has input_size {self.sim.input_size} and output_size "
                f"{self.sim.output_size}; a salamander RNN for {segments} body joints takes {2 + outputs + 1} inputs "
                f"(drives, observed signals, warm-up flag) and gives {outputs} outputs. Train it with "
                f"`statesim run scenarios/salamander.yaml`.")
        self.segments, self.outputs = segments, outputs

    def reset(self, batch_size: int) -> None:
        """The model's own initial state for ``batch_size`` agents, clock at 0, clamps of limited length dropped."""
        self.sim.release()
        self.sim.reset(batch_size=batch_size)

    def inputs(self, drives: np.ndarray, observed: np.ndarray | None) -> np.ndarray:
        """The 15 inputs: drives, then (warm-up only) the observed signals and the flag."""
        drives = np.asarray(drives, dtype=np.float32).reshape(-1, 2)
        x = np.zeros((len(drives), self.sim.input_size), dtype=np.float32)
        x[:, :2] = drives
        if observed is not None:
            x[:, 2:2 + self.outputs] = observed
            x[:, -1] = 1.0
        return x

    def step(self, drives: np.ndarray, observed: np.ndarray | None = None) -> np.ndarray:
        """One tick: outputs ``[B, joints + 4]``; pass ``observed`` ``[B, joints + 4]`` during the warm-up only."""
        return self.sim.step(self.inputs(drives, observed))
