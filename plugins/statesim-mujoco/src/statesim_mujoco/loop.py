"""Closed-loop episodes: controller tick -> PD joint targets -> MuJoCo physics for one control period, repeated.

Forcing commands are applied at step time through ``statesim.embed`` (``sim.force(...)`` when the command's
tick comes, for as many ticks as it lasts), exactly as a robotics host would steer an embedded model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from statesim_mujoco.controllers import CPGController, RNNController
from statesim_mujoco.swimmer import Swimmer


@dataclass
class Force:
    """One clamp set at tick ``start`` for ``stop - start`` ticks: ``target`` ("input" or a state part)
    units <- value."""

    start: int
    stop: int
    target: str
    units: list[int]
    value: Any


@dataclass
class Episode:
    """What one closed-loop run recorded, tick by tick (``[T, B, ...]``)."""

    dt: float
    com: np.ndarray
    joints: np.ndarray
    targets: np.ndarray
    qpos: np.ndarray
    drives: np.ndarray
    warmup: int = 0
    states: dict[str, np.ndarray] = field(default_factory=dict)

    def agent(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """COM track and measured joint angles of agent ``b``."""
        return self.com[:, b], self.joints[:, b]


def _apply(sim: Any, forces: Sequence[Force], t: int) -> None:
    for f in forces:
        if f.start == t:
            sim.force(f.target, f.value, units=f.units, steps=f.stop - f.start)


def _record(swimmer: Swimmer, log: dict[str, list], targets: np.ndarray) -> None:
    log["com"].append(swimmer.com())
    log["joints"].append(swimmer.joint_angles())
    log["targets"].append(swimmer.p.joint_gain * targets)
    log["qpos"].append(swimmer.qpos())


def _episode(log: dict[str, list], dt: float, drives: np.ndarray, warmup: int = 0,
             states: dict[str, list] | None = None) -> Episode:
    com, joints, targets, qpos = (np.stack(log[k]) for k in ("com", "joints", "targets", "qpos"))
    return Episode(dt, com, joints, targets, qpos, drives=drives,
                   warmup=warmup, states={k: np.stack(v) for k, v in (states or {}).items()})


def run_cpg(cpg: CPGController, swimmer: Swimmer, drives: np.ndarray, seed: int | None,
            forces: Sequence[Force] = ()) -> Episode:
    """The CPG drives the swimmers for drives ``[T, B, 2]`` (input clamps in ``forces`` act on the CPG's drives)."""
    steps, batch, _ = drives.shape
    cpg.sim.release()
    cpg.reset(drives[0], seed)
    swimmer.reset()
    n = swimmer.p.joints
    log: dict[str, list] = {k: [] for k in ("com", "joints", "targets", "qpos")}
    for t in range(steps):
        _apply(cpg.sim, forces, t)
        y = cpg.step(drives[t])
        swimmer.step(y[:, :n])
        _record(swimmer, log, y[:, :n])
    return _episode(log, cpg.dt, drives)


def run_rnn(rnn: RNNController, cpg: CPGController, swimmer: Swimmer, drives: np.ndarray, seed: int | None,
            warmup: int, forces: Sequence[Force] = (), record_states: bool = False) -> Episode:
    """The learned RNN drives the swimmers after a ``warmup``-tick observation phase.

    During the warm-up the CPG (random phases from ``seed``) moves the swimmer and the RNN observes the
    measured joint angles (in the controller's units) and the CPG's limb signals, flag on; this is the
    warm-up the RNN was trained with. From tick ``warmup`` on, the RNN's body outputs are the joint targets
    and its observation inputs are zero. ``forces`` act on the RNN (inputs or hidden units).
    """
    steps, batch, _ = drives.shape
    rnn.reset(batch)
    cpg.sim.release()
    cpg.reset(drives[0], seed)
    swimmer.reset()
    n = swimmer.p.joints
    log: dict[str, list] = {k: [] for k in ("com", "joints", "targets", "qpos")}
    states: dict[str, list] = {}
    for t in range(steps):
        _apply(rnn.sim, forces, t)
        if t < warmup:
            y = cpg.step(drives[t])
            swimmer.step(y[:, :n])
            observed = np.concatenate([swimmer.body_signals(), y[:, n:]], axis=1)
            rnn.step(drives[t], observed)
        else:
            y = rnn.step(drives[t])
            swimmer.step(y[:, :n])
        _record(swimmer, log, y[:, :n])
        if record_states:
            for part, value in rnn.sim.get_state().items():
                states.setdefault(part, []).append(value)
    return _episode(log, cpg.dt, drives, warmup, states)


def rnn_open_loop(rnn: RNNController, cpg: CPGController, drives: np.ndarray, seed: int, warmup: int,
                  keep_from: int, forces: Sequence[Force] = (), states: bool = False
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Outputs ``[T', B, O]`` (and optionally states ``{part: [T', B, U]}``) of the RNN without a body, from
    ``keep_from``.

    After the warm-up the RNN runs autonomously (its observation inputs are then zero), so its outputs and
    neurons at a drive do not depend on the body; the warm-up observes the CPG's own outputs.
    """
    steps, batch, _ = drives.shape
    rnn.reset(batch)
    cpg.sim.release()
    cpg.reset(drives[0], seed)
    outputs: list[np.ndarray] = []
    kept: dict[str, list[np.ndarray]] = {}
    for t in range(steps):
        _apply(rnn.sim, forces, t)
        y = rnn.step(drives[t], cpg.step(drives[t])) if t < warmup else rnn.step(drives[t])
        if t >= keep_from:
            outputs.append(y)
            if states:
                for part, value in rnn.sim.get_state().items():
                    kept.setdefault(part, []).append(value)
    return np.stack(outputs), {part: np.stack(v) for part, v in kept.items()}


def constant(drives: Sequence[Sequence[float]], steps: int) -> np.ndarray:
    """Constant drives ``[steps, B, 2]`` from ``B`` pairs (d_L, d_R)."""
    return np.broadcast_to(np.asarray(drives, dtype=np.float32)[None], (steps, len(drives), 2)).copy()
