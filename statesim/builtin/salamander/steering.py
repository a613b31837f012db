"""Steering the learned model by forcing only: clamps of its drive inputs (from the YAML ``forcing:`` section)
and clamps of hidden units chosen by a clamp sweep, each judged against the CPG."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from statesim.builtin.salamander.analysis import state_units
from statesim.builtin.salamander.cpg import SalamanderCPG, SalamanderCPGParams, gait_borders
from statesim.builtin.salamander.evaluation import rounded
from statesim.builtin.salamander.params import SalamanderParams, steps
from statesim.builtin.salamander.report import plot_input_steering, plot_neuron_steering
from statesim.builtin.salamander.rollout import Rig
from statesim.builtin.salamander.signals import gait_metrics
from statesim.errors import StatesimError
from statesim.forcing import Clamp, Forcing, forcing_from_config
from statesim.scenario import RunContext

GAIT_KEYS = ("frequency", "amplitude", "offset", "limb_amplitude")


def swim_conditions(p: SalamanderCPGParams) -> dict[str, tuple[float, float]]:
    """Drives of neuron steering: swimming around the middle of its range, faster, slower, turning either way.

    With the default CPG: base 4.0, fast / slow 4.5 / 3.5, left / right (4.4, 3.6) / (3.6, 4.4).
    """
    _, switch, stop = gait_borders(p)
    mid, step = (switch + stop) / 2, (stop - switch) / 4
    turn = 0.8 * step
    pairs = {"base": (mid, mid), "fast": (mid + step, mid + step), "slow": (mid - step, mid - step),
             "left": (mid + turn, mid - turn), "right": (mid - turn, mid + turn)}
    return {k: (round(a, 9), round(b, 9)) for k, (a, b) in pairs.items()}


def expected_effects(cpg: SalamanderCPG, conditions: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """The CPG's own response (from its saturation functions) to fast vs slow (Hz) and left vs right (rad)."""
    n = cpg.p.segments
    omega, R = cpg.targets(torch.tensor([conditions[k] for k in ("fast", "slow", "left", "right")],
                                        dtype=torch.float64))
    freq, offset = omega[:, 0] / (2 * math.pi), R[:, 0] - R[:, n]  # body oscillator 0 (left) and n (right)
    return float(freq[0] - freq[1]), float(offset[2] - offset[3])


# --------------------------------------------------------------------------- input forcing
def intended_effects(now: dict[str, Any], before: dict[str, Any] | None) -> list[str]:
    """Name the behaviour change between two windows: speed up, slow down, stop, gait switch, turn."""
    effects = []
    moving = now["amplitude"] > 0.05
    if not moving:
        effects.append("stop")
    elif before is not None and before["amplitude"] > 0.05:
        if now["frequency"] > before["frequency"] + 0.05:
            effects.append("speed up")
        elif now["frequency"] < before["frequency"] - 0.05:
            effects.append("slow down")
        walking, was_walking = now["limb_amplitude"] > 0.05, before["limb_amplitude"] > 0.05
        if walking != was_walking:
            effects.append("switch to walking" if walking else "switch to swimming")
    elif before is not None:
        effects.append("start")
    if moving and abs(now["offset"]) > 0.02:
        effects.append("turn left" if now["offset"] > 0 else "turn right")
    return effects


def same_behaviour(p: SalamanderParams, rnn: dict[str, Any], true: dict[str, Any]) -> bool:
    """Whether the model does what the CPG does: still alike, or same frequency, gait and turning side."""
    if true["amplitude"] < p.still_threshold:
        return rnn["amplitude"] < p.still_threshold
    return (abs(rnn["frequency"] - true["frequency"]) <= 2 * p.targets_frequency_hz
            and (rnn["limb_amplitude"] > 0.05) == (true["limb_amplitude"] > 0.05)
            and (abs(true["offset"]) < 0.02 or np.sign(rnn["offset"]) == np.sign(true["offset"])))


def _drive_clamps(ctx: RunContext) -> list[Any]:
    """The YAML ``forcing:`` clamps, refused unless each clamps drive inputs only."""
    clamps = ctx.config.forcing
    bad = [c for c in clamps if c.target != "input" or c.units is None or not set(c.units) <= {0, 1}]
    if bad:
        raise StatesimError("salamander: the `forcing:` clamps steer the drives, so each needs target: input "
                            "and units within [0, 1] (0 = d_L, 1 = d_R); hidden-unit forcing is chosen by the "
                            "scenario's own analysis.")
    return list(clamps)


def steer_inputs(ctx: RunContext, rig: Rig, figures: dict[str, str]) -> dict[str, Any]:
    """Apply the YAML ``forcing:`` clamps to the drive inputs of both the RNN and the CPG and compare."""
    p, dt, n = rig.params, rig.dt, rig.segments
    if not ctx.config.forcing:
        return {"commands": [], "note": "no `forcing:` section in the scenario file"}
    clamps = _drive_clamps(ctx)
    length = max(steps(p.steer_seconds, dt), max((c.stop or 0) for c in clamps))
    forcing = forcing_from_config(clamps)
    drives = torch.tensor(p.steer_base, dtype=torch.float32).view(1, 1, 2).expand(length, 1, 2).contiguous()
    forced_drives = forcing.apply_to_inputs(drives)  # what the CPG sees: same clamps, applied by the engine
    truth = rig.cpg_run(forced_drives, 2)
    learned, _ = rig.run_model(drives, truth, forcing=forcing)
    bounds = sorted({0, length, *[c.start for c in clamps], *[c.stop for c in clamps if c.stop is not None]})
    commands = []
    previous: dict[str, Any] | None = None
    previous_rnn: dict[str, Any] | None = None
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi - lo < steps(2.0, dt):
            continue
        settle = lo + min((hi - lo) // 3, steps(2.0, dt))  # skip the transient; keep >= 2 slow cycles
        # a command window holds few slow walking cycles: one whole period (two crossings) is enough here
        rnn = gait_metrics(learned[settle:hi, 0].numpy(), dt, n, min_crossings=2)
        true = gait_metrics(truth[settle:hi, 0].numpy(), dt, n, min_crossings=2)
        drive = forced_drives[settle, 0].tolist()
        effect = intended_effects(true, previous)
        got = intended_effects(rnn, previous_rnn) if previous is not None else effect
        same = same_behaviour(p, rnn, true)
        commands.append({"start_s": lo * dt, "stop_s": hi * dt, "d_L": rounded(drive[0], 3),
                         "d_R": rounded(drive[1], 3), "intended": effect, "rnn_effect": got,
                         "rnn": {k: rounded(rnn[k]) for k in GAIT_KEYS},
                         "cpg": {k: rounded(true[k]) for k in GAIT_KEYS},
                         "pass": bool(same and set(effect) <= set(got))})
        previous, previous_rnn = true, rnn
    if ctx.plots_enabled:
        figures["steering_inputs"] = plot_input_steering(ctx, rig, forced_drives, truth, learned, commands)
    return {"commands": commands, "all_pass": all(c["pass"] for c in commands)}


# --------------------------------------------------------------------------- neuron forcing
@dataclass
class NeuronClamps:
    """Batched runs of the model at the base swimming drive with chosen hidden units clamped (NaN: free)."""

    rig: Rig
    parts: list[str]  # the state parts whose units are clamped, each ``width`` wide
    width: int
    conditions: dict[str, tuple[float, float]]

    @property
    def total(self) -> int:
        """Number of clampable units over all parts."""
        return len(self.parts) * self.width

    def forcing(self, values: torch.Tensor) -> Forcing:
        """Per-sample clamps ``values [B, units]`` (NaN: leave the unit free) split into the state parts."""
        w = self.width
        return Forcing([Clamp(part, values[:, j * w:(j + 1) * w], None, start=self.rig.warmup)
                        for j, part in enumerate(self.parts)])

    def run(self, values: torch.Tensor, seconds: float, measure: float, seed_offset: int
            ) -> tuple[list[dict[str, Any]], torch.Tensor]:
        """Gait metrics of every sample over the last ``measure`` s, and body joint 1 of every sample."""
        rig = self.rig
        count, length = values.shape[0], steps(seconds, rig.dt)
        base = torch.tensor(self.conditions["base"]).view(1, 1, 2).expand(length, count, 2).contiguous()
        obs = rig.cpg_run(base[:, :1], seed_offset).expand(-1, count, -1)
        out, _ = rig.run_model(base, obs, forcing=self.forcing(values))
        window = out[length - steps(measure, rig.dt):]
        return [gait_metrics(window[:, b].numpy(), rig.dt, rig.segments) for b in range(count)], out[:, :, 0]


def unit_targets(rig: Rig, conditions: dict[str, tuple[float, float]], parts: list[str]
                 ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Each unit's cycle mean under each condition (its clamp value), and the model's gait there unclamped."""
    keys = list(conditions)
    length, tail = steps(30.0, rig.dt), steps(15.0, rig.dt)
    drives = torch.tensor([conditions[k] for k in keys]).unsqueeze(0).expand(length, -1, -1).contiguous()
    truth = rig.cpg_run(drives, 3)
    out, states = rig.run_model(drives, truth, return_states=True)
    assert states is not None
    feats = torch.cat([states[k][length - tail:] for k in parts], -1)  # [T, C, units]
    by_input = {k: gait_metrics(out[length - tail:, i].numpy(), rig.dt, rig.segments) for i, k in enumerate(keys)}
    return dict(zip(keys, feats.mean(0))), by_input


def single_clamp_sweep(clamps: NeuronClamps, target: dict[str, torch.Tensor]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clamp each unit alone to its value at each sweep condition: which clamps keep the rhythm, and the speed
    (fast - slow, Hz) and turning (left - right, rad) effect of each unit."""
    total, sweep = clamps.total, ["fast", "slow", "left", "right"]
    values = torch.full((1 + len(sweep) * total, total), float("nan"))  # sample 1 + j * units + u: unit u alone
    for j, key in enumerate(sweep):
        rows = 1 + j * total + torch.arange(total)
        values[rows, torch.arange(total)] = target[key]
    metrics, _ = clamps.run(values, 20.0, 10.0, 4)
    free = metrics[0]
    grid = {key: metrics[1 + j * total:1 + (j + 1) * total] for j, key in enumerate(sweep)}
    # a clamp that stops the rhythm steers nothing: keep units whose clamps leave most of the amplitude
    alive = np.array([min(grid[k][u]["amplitude"] for k in sweep) > 0.5 * free["amplitude"] for u in range(total)])
    speed_effect = np.array([grid["fast"][u]["frequency"] - grid["slow"][u]["frequency"] for u in range(total)])
    turn_effect = np.array([grid["left"][u]["offset"] - grid["right"][u]["offset"] for u in range(total)])
    return alive, speed_effect, turn_effect


def best_set_sizes(clamps: NeuronClamps, target: dict[str, torch.Tensor], ranked: dict[str, list[int]]
                   ) -> tuple[dict[str, list[int]], dict[str, dict[int, float]]]:
    """Clamp the top k ranked units together for every k (one batched run) and keep, per purpose, the k that
    steers furthest both ways while the rhythm lives.

    Single-unit effects do not simply add up (many clamps at once can stop the rhythm). The control holds the
    same units at their own values at the base drive, so only the clamped value differs.
    """
    sides = {"speed": ("fast", "base", "slow"), "turn": ("left", "base", "right")}
    plan = [(what, k, key) for what, keys in sides.items() for k in range(1, len(ranked[what]) + 1) for key in keys]
    values = torch.full((1 + len(plan), clamps.total), float("nan"))
    for b, (what, k, key) in enumerate(plan, start=1):
        units = ranked[what][:k]
        values[b, units] = target[key][units]
    metrics, _ = clamps.run(values, 20.0, 10.0, 4)
    free = metrics[0]
    score: dict[str, dict[int, float]] = {"speed": {}, "turn": {}}
    for b in range(1, len(plan), 3):
        (what, k, _), up, held, down = plan[b - 1], metrics[b], metrics[b + 1], metrics[b + 2]
        if min(up["amplitude"], held["amplitude"], down["amplitude"]) > 0.5 * free["amplitude"]:
            key = "frequency" if what == "speed" else "offset"
            score[what][k] = min(up[key] - held[key], held[key] - down[key])  # the smaller of the two moves
    chosen = {what: ranked[what][:max(score[what], key=lambda k: score[what][k])] if score[what]
              else ranked[what][:1] for what in score}
    return chosen, score


def _speed_results(parts: dict[str, Any], final: dict[str, dict[str, Any]], by_input: dict[str, dict[str, Any]],
                   cpg_speed: float) -> dict[str, Any]:
    base, held, fast, slow = final["base"], final["held_speed"], final["fast"], final["slow"]
    input_speed = by_input["fast"]["frequency"] - by_input["slow"]["frequency"]
    speed_hz = fast["frequency"] - slow["frequency"]
    return {**parts,
            "frequency_base": rounded(base["frequency"]), "frequency_clamped_held": rounded(held["frequency"]),
            "frequency_clamped_slow": rounded(slow["frequency"]), "frequency_clamped_fast": rounded(fast["frequency"]),
            "effect_hz": {"fast_minus_held": rounded(fast["frequency"] - held["frequency"]),
                          "slow_minus_held": rounded(slow["frequency"] - held["frequency"]),
                          "fast_minus_slow": rounded(speed_hz),
                          "fast_minus_unclamped": rounded(fast["frequency"] - base["frequency"]),
                          "slow_minus_unclamped": rounded(slow["frequency"] - base["frequency"])},
            "input_effect_hz": {"rnn_fast_minus_slow": rounded(input_speed), "cpg_fast_minus_slow": rounded(cpg_speed)},
            "fraction_of_input_effect": rounded(speed_hz / input_speed) if input_speed else None,
            "amplitude_base": rounded(base["amplitude"]), "amplitude_clamped_fast": rounded(fast["amplitude"]),
            "amplitude_clamped_slow": rounded(slow["amplitude"]),
            "pass": bool(fast["frequency"] > held["frequency"] > slow["frequency"] > 0),
            "pass_against_unclamped": bool(fast["frequency"] > base["frequency"] > slow["frequency"] > 0)}


def _turn_results(parts: dict[str, Any], final: dict[str, dict[str, Any]], by_input: dict[str, dict[str, Any]],
                  cpg_turn: float) -> dict[str, Any]:
    base, held, left, right = final["base"], final["held_turn"], final["left"], final["right"]
    input_turn = by_input["left"]["offset"] - by_input["right"]["offset"]
    turn_rad = left["offset"] - right["offset"]
    return {**parts,
            "offset_base": rounded(base["offset"]), "offset_clamped_held": rounded(held["offset"]),
            "offset_clamped_left": rounded(left["offset"]), "offset_clamped_right": rounded(right["offset"]),
            "effect_rad": rounded(turn_rad),
            "input_effect_rad": {"rnn_left_minus_right": rounded(input_turn), "cpg_expected": rounded(cpg_turn)},
            "fraction_of_input_effect": rounded(turn_rad / input_turn) if input_turn else None,
            "pass": bool(left["offset"] > held["offset"] > right["offset"]),
            "pass_against_unclamped": bool(left["offset"] > base["offset"] > right["offset"])}


def steer_neurons(ctx: RunContext, rig: Rig, figures: dict[str, str]) -> dict[str, Any]:
    """Pick the units that steer speed and turning by a clamp sweep, clamp them together, measure the effect.

    Every hidden unit (each unit of each state part) is clamped alone, in one batched run, to its cycle
    mean observed at a target drive (default CPG: fast/slow 4.5/3.5; left/right (4.4, 3.6)/(3.6, 4.4),
    around the middle of the swimming range) while the inputs stay at the base drive (4.0). The units whose
    single clamp moves frequency (or the mean body angle) furthest the intended way are chosen; the chosen
    set is then clamped together on a fresh run.
    """
    p, model = rig.params, rig.model
    parts = state_units(model)
    width = model.state_spec[parts[0]][0]
    names = [(part, u) for part in parts for u in range(width)]
    conditions = swim_conditions(rig.cpg.p)
    mid = conditions["base"][0]
    target, by_input = unit_targets(rig, conditions, parts)
    clamps = NeuronClamps(rig, parts, width, conditions)
    alive, speed_effect, turn_effect = single_clamp_sweep(clamps, target)
    ranked = {what: [int(u) for u in np.argsort(-effect) if alive[u] and effect[u] > 0][:p.forced_units]
              for what, effect in (("speed", speed_effect), ("turn", turn_effect))}
    chosen, score = best_set_sizes(clamps, target, ranked)
    speed_units, turn_units = chosen["speed"], chosen["turn"]

    # the chosen sets clamped together, on a fresh run from other initial phases
    plan = [("base", "base", []), ("held_speed", "base", speed_units), ("fast", "fast", speed_units),
            ("slow", "slow", speed_units), ("held_turn", "base", turn_units), ("left", "left", turn_units),
            ("right", "right", turn_units)]
    values = torch.full((len(plan), clamps.total), float("nan"))
    for b, (_, key, units) in enumerate(plan):
        if units:
            values[b, units] = target[key][units]
    measured, traces = clamps.run(values, 25.0, 15.0, 5)
    final = {name: m for (name, _, _), m in zip(plan, measured)}

    def unit_list(units: list[int], effect: np.ndarray, what: str, a: str, b: str) -> list[dict[str, Any]]:
        return [{"part": names[u][0], "unit": names[u][1], f"single_clamp_{what}": rounded(float(effect[u])),
                 "value_difference": rounded(float(target[a][u] - target[b][u]), 3)} for u in units]

    cpg_speed, cpg_turn = expected_effects(rig.cpg, conditions)
    results: dict[str, Any] = {
        "state_parts": parts, "candidates": clamps.total, "rhythm_preserving_candidates": int(alive.sum()),
        "set_size_effects": {what: {str(k): rounded(v) for k, v in sc.items()} for what, sc in score.items()},
        "method": "each unit clamped alone (batched run, NaN = free) to its cycle mean at the target drive; "
                  "units ranked by the single-clamp effect; the top k clamped together for k = 1.."
                  f"{p.forced_units}, keeping the k that moves the output furthest both ways from the same "
                  f"units held at their d = {mid:g} values (the control) and leaves the rhythm; that set measured "
                  "again on a fresh run from other initial phases; pass: up > held > down"}
    results["speed"] = _speed_results(
        {"units": unit_list(speed_units, speed_effect, "effect_hz", "fast", "slow"),
         "input_drive": list(conditions["base"]),
         "clamp_values_from": {"fast": list(conditions["fast"]), "slow": list(conditions["slow"])}},
        final, by_input, cpg_speed)
    results["turning"] = _turn_results(
        {"units": unit_list(turn_units, turn_effect, "effect_rad", "left", "right"),
         "input_drive": list(conditions["base"]),
         "clamp_values_from": {"left": list(conditions["left"]), "right": list(conditions["right"])}},
        final, by_input, cpg_turn)
    if ctx.plots_enabled:
        figures["steering_neurons"] = plot_neuron_steering(ctx, rig, conditions, final, traces, chosen,
                                                           speed_effect, turn_effect)
    return results
