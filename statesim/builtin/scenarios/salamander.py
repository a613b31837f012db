"""Scenario ``salamander``: learn an RNN model of salamander locomotion from a spinal CPG, steer it, analyse it.

1. "Observed behaviour" comes from the ``salamander_cpg`` cell (Ijspeert et al. 2007) driven by random
   piecewise-constant and ramped drives (d_L, d_R) in [0, 6] at 50 Hz, from random initial phases.
2. An RNN (any registered cell, from ``model:``) learns to map the drives to the 8 body joint angles and
   4 limb signals. A limit cycle's phase cannot be read from the drives, so every training window opens
   with an observation warm-up: for ``warmup_seconds`` the RNN also sees the observed joint signals (input
   units 2..13, flag unit 14); afterwards those inputs are zero and the RNN runs on the drives alone. The
   evaluation runs it that way for far longer (``eval_seconds``) than any training window.
3. Steering uses the engine's forcing only: input clamps of the drives from the YAML ``forcing:`` section
   (units 0 = d_L, 1 = d_R; steps at 50 Hz), and clamps of hidden units picked by correlation with drive
   level and with left-right asymmetry.
4. Analysis: PCA of the hidden states (limit cycles, their radius and rotation frequency, collapse to a
   fixed point outside [1, 5]), a unit-ablation map, and a Markdown report with the figures.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from statesim.builtin.salamander import signals
from statesim.builtin.salamander.behaviour import DriveRecipe, canonical_state, drive_schedule, mirror, simulate
from statesim.builtin.salamander.candidates import Candidates
from statesim.builtin.salamander.cpg import SalamanderCPG, SalamanderCPGParams, gait_borders
from statesim.cell import device_and_dtype
from statesim.data import DataSplits, SequenceData
from statesim.forcing import Clamp, Forcing, forcing_from_config
from statesim.hookimpl import hookimpl
from statesim.model import SequenceModel
from statesim.registry import Registration
from statesim.scenario import RunContext, Scenario, ScenarioParams

N_DRIVES = 2  # input units 0, 1: d_L, d_R

#: Range of each target's measure (walk_to_swim_jump: |RNN jump - CPG jump|; turning_offset: its relative error)
#: over the runs of scenarios/salamander.yaml as shipped that docs/salamander.md tables (seeds 0-4, 1 and 2
#: threads); report.md and results.json quote it so that a user knows how far another seed may move the numbers.
SHIPPED_SPREAD: dict[str, tuple[float, float]] = {
    "frequency_vs_drive": (0.0076, 0.1042),
    "walk_to_swim_jump": (0.0037, 0.0815),
    "stillness_outside_1_5": (0.0, 0.0254),
    "swim_phase_lag": (0.0365, 0.0801),
    "amplitude": (0.0516, 0.2768),
    "turning_offset": (0.1072, 0.3064),
    "amplitude_drift": (0.0188, 0.2623),
}


class SalamanderParams(ScenarioParams):
    cpg: SalamanderCPGParams = Field(default_factory=SalamanderCPGParams,
                                     description="parameters of the ground-truth CPG (see the salamander_cpg cell)")
    train_trajectories: int = Field(64, gt=0, description="observed trajectories used for training")
    val_trajectories: int = Field(8, ge=0, description="observed trajectories used for validation")
    test_trajectories: int = Field(4, gt=0, description="held-out trajectories (held-out drive levels only)")
    trajectory_seconds: tuple[float, float] = Field((20.0, 40.0), description="length range of a trajectory, s")
    segment_seconds: tuple[float, float] = Field((3.0, 9.0), description="length range of a drive plateau, s")
    ramp_probability: float = Field(0.4, ge=0, le=1, description="chance that a plateau is reached by a ramp")
    turn_probability: float = Field(0.5, ge=0, le=1, description="chance that a plateau has d_L != d_R")
    max_turn: float = Field(1.5, ge=0, description="largest |d_L - d_R| of a turning plateau")
    edge_levels: list[float] | None = Field(None, description="drives where the behaviour changes abruptly, some "
                                            "plateaus are drawn near them; default: the CPG's stop/walk, walk/swim "
                                            "and swim/stop borders (1, 3, 5 for the default CPG)")
    edge_probability: float = Field(0.35, ge=0, le=1, description="chance that a plateau is drawn near an edge level")
    edge_width: float = Field(0.3, gt=0, description="half-width of the band around an edge level that "
                                                     "plateaus are drawn from (held-out bands still excluded)")
    mirror: bool = Field(True, description="also train on the left-right mirror image of every training "
                                           "trajectory (the CPG is left-right symmetric)")
    offset_loss_weight: float = Field(10.0, ge=0, description="weight of the loss on each output's mean over the "
                                      "scored part of a window (the small left-right offset that turns the body)")
    amplitude_loss_weight: float = Field(3.0, ge=0, description="weight of the loss on each output's standard "
                                         "deviation over the scored part of a window (phase-blind: keeps the "
                                         "oscillation's size where its phase cannot be known, e.g. on a restart)")
    window_seconds: float = Field(5.0, gt=0, description="length of a training window cut from a trajectory, s")
    window_stride_seconds: float = Field(2.5, gt=0, description="stride between training windows, s")
    warmup_seconds: float = Field(1.0, ge=0, description="observation warm-up at the start of every window, s")
    eval_levels: list[float] = Field(
        [0.5, 0.9, 1.1, 1.25, 1.75, 2.25, 2.75, 2.9, 3.1, 3.5, 4.0, 4.5, 4.9, 5.1, 5.5],
        description="constant drives evaluated; training plateaus avoid them (held out)")
    held_out_width: float = Field(0.05, ge=0, description="half-width of the band kept free around each eval level")
    turn_conditions: list[tuple[float, float]] = Field(
        [(4.5, 3.5), (3.5, 4.5), (2.3, 1.7), (1.7, 2.3)], description="(d_L, d_R) pairs for the turning test")
    eval_seconds: float = Field(120.0, gt=0, description="autonomous run length of the evaluation, s")
    measure_seconds: float = Field(20.0, gt=0, description="window at the end of a run where metrics are read, s")
    steer_base: tuple[float, float] = Field((2.0, 2.0), description="drives of the steering run outside clamps")
    steer_seconds: float = Field(70.0, gt=0, description="length of the steering run, s")
    forced_units: int = Field(4, gt=0, description="most hidden units clamped for neuron steering, per purpose "
                                                   "(the best set size up to this is chosen by a clamp sweep)")
    ablation_seconds: float = Field(15.0, gt=0, description="run length per unit ablation, s")
    ablation_drives: list[float] = Field([2.0, 4.0], description="drives of the ablation runs (walk, swim)")
    still_threshold: float = Field(0.05, gt=0, description="body amplitude (rad) below which the body counts as still")
    average_decay: float | None = Field(0.998, gt=0, lt=1, description="decay of the exponential moving average "
                                        "of the weights kept during training (a candidate for the final choice); "
                                        "null: no average")
    choose_from: float = Field(0.75, ge=0, le=1, description="candidate weights (raw and averaged) are snapshotted "
                               "every choose_every updates from this fraction of training.steps on; the one that "
                               "meets the most targets on the validation drives is kept")
    choose_every: int = Field(500, gt=0, description="updates between candidate snapshots")
    validation_levels: list[float] = Field(
        [0.8, 1.18, 1.5, 2.0, 2.5, 2.82, 3.2, 3.75, 4.25, 4.75, 5.2, 5.8],
        description="constant drives the final choice of weights is judged on (never eval_levels: each must lie "
                    "outside their held-out bands)")
    validation_turns: list[tuple[float, float]] = Field(
        [(4.3, 3.7), (3.7, 4.3), (2.45, 1.85), (1.85, 2.45)], description="(d_L, d_R) turning pairs of the choice")
    targets_frequency_hz: float = Field(0.05, gt=0, description="target: |f_rnn - f_cpg| per drive, Hz")
    targets_phase_lag: float = Field(0.1, gt=0, description="target: |lag - 2 pi / n| per segment while swimming, rad")
    targets_amplitude: float = Field(0.10, gt=0, description="target: relative amplitude error")
    targets_drift: float = Field(0.10, gt=0, description="target: relative amplitude drift over the evaluation run")
    targets_turn: float = Field(0.30, gt=0, description="target: relative error of the turning offset")

    @model_validator(mode="after")
    def _lengths(self) -> "SalamanderParams":
        if self.warmup_seconds >= self.window_seconds:
            raise ValueError("warmup_seconds must be shorter than window_seconds")
        if self.trajectory_seconds[0] < self.window_seconds:
            raise ValueError("trajectory_seconds must be at least window_seconds")
        if self.measure_seconds * 2 > self.eval_seconds:
            raise ValueError("eval_seconds must be at least twice measure_seconds")
        close = [v for v in self.validation_levels + [d for t in self.validation_turns for d in t]
                 if any(abs(v - e) <= self.held_out_width for e in self.eval_levels)]
        if close:
            raise ValueError(f"validation drives {close} lie within held_out_width of an eval level; the choice "
                             f"of weights must not see the evaluation's drives: move them or the eval_levels")
        return self


# --------------------------------------------------------------------------- helpers
def _steps(seconds: float, dt: float) -> int:
    return max(1, int(round(seconds / dt)))


def model_inputs(drives: torch.Tensor, observed: torch.Tensor, warmup: int) -> torch.Tensor:
    """RNN inputs ``[T, B, 2 + O + 1]``: drives, then the observations and a flag during the warm-up only."""
    steps, batch, _ = drives.shape
    outputs = observed.shape[-1]
    x = torch.zeros(steps, batch, N_DRIVES + outputs + 1, dtype=drives.dtype)
    x[:, :, :N_DRIVES] = drives
    if warmup > 0:
        x[:warmup, :, N_DRIVES:N_DRIVES + outputs] = observed[:warmup]
        x[:warmup, :, -1] = 1.0
    return x


def gait_metrics(out: np.ndarray, dt: float, n: int, min_crossings: int = 3) -> dict[str, Any]:
    """Frequency, body amplitude, mean offset, per-segment lags and limb amplitude of outputs ``[T, O]``."""
    body, limbs = out[:, :n], out[:, n:]
    amp = signals.amplitude(body)
    f = signals.frequency(body[:, 0], dt, min_crossings=min_crossings) if amp > 1e-3 else 0.0
    lags = signals.phase_lags(body, dt, f) if f > 0 else np.full(n - 1, np.nan)
    if f > 0:  # average over whole periods so the offset is not biased by a partial cycle
        whole = int(math.floor(len(body) * dt * f) / f / dt)
        offset = signals.mean_offset(body[-whole:]) if whole > 0 else signals.mean_offset(body)
    else:
        offset = signals.mean_offset(body)
    return {"frequency": f, "amplitude": amp, "offset": offset, "lags": lags, "limb_amplitude": signals.amplitude(limbs)}


def offset_weighted_loss(weight: float, std_weight: float = 0.0):
    """MSE plus ``weight`` x the squared error of each output's mean and ``std_weight`` x that of its standard
    deviation, both over the scored steps of a window.

    The turning offset (~0.065 rad per unit of d_L - d_R) is tiny next to the oscillation (~0.7 rad), so
    plain MSE barely rewards it; the window mean isolates it. Where the phase cannot be known (a restart
    after the body was still, slow phase drift over a long run) MSE is smallest for a shrunken or silent
    output; the standard-deviation term, blind to phase, asks for the right amount of oscillation instead.
    """
    def loss(outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = mask.unsqueeze(-1).to(outputs.dtype)
        count = w.sum(0).clamp_min(1)
        total = ((outputs - targets) ** 2 * w).sum() / (w.sum() * outputs.shape[-1]).clamp_min(1)
        if weight == 0 and std_weight == 0:
            return total
        mean_o, mean_t = (outputs * w).sum(0) / count, (targets * w).sum(0) / count  # [B, O]
        if weight:
            total = total + weight * ((mean_o - mean_t) ** 2).mean()
        if std_weight:
            std_o = (((outputs - mean_o) ** 2 * w).sum(0) / count + 1e-8).sqrt()
            std_t = (((targets - mean_t) ** 2 * w).sum(0) / count + 1e-8).sqrt()
            total = total + std_weight * ((std_o - std_t) ** 2).mean()
        return total
    return loss


def rotation_frequency(plane: np.ndarray, dt: float) -> float:
    """Turns per second of a trajectory ``[T, 2]`` around its centre: slope of the unwrapped angle (least squares)."""
    centred = plane - plane.mean(0)
    angle = np.unwrap(np.arctan2(centred[:, 1], centred[:, 0]))
    t = np.arange(len(angle)) * dt
    slope = np.polyfit(t, angle, 1)[0]
    return float(abs(slope) / (2 * math.pi))


def _f(value: float | None, digits: int = 4) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)


def _metric(value: float | None, target: str, passed: bool) -> dict[str, Any]:
    return {"value": value, "target": target, "pass": bool(passed)}


def state_units(model: SequenceModel) -> list[str]:
    """State parts whose per-sample shape is one vector of hidden units (the parts neurons live in)."""
    spec = model.state_spec
    sizes = {shape for shape in spec.values() if len(shape) == 1}
    width = max((s[0] for s in sizes), default=0)
    return [name for name, shape in spec.items() if shape == (width,)]


def activity_parts(model: SequenceModel) -> list[str]:
    """State parts that hold the cell's output (the units' activity the readout sees); all unit parts if none does."""
    parts = state_units(model)
    declared = model.step_cell().output_part  # the cell contract says which part y_t is
    return [declared] if declared in parts else parts


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


# --------------------------------------------------------------------------- the scenario
class Salamander(Scenario):
    """Learn, steer and analyse an RNN model of salamander locomotion generated by a spinal CPG."""

    Params = SalamanderParams

    # ------------------------------------------------------------------ data
    def make_data(self, cpg: SalamanderCPG, seed: int) -> tuple[DataSplits, dict[str, Any]]:
        """Simulate observed trajectories and cut them into warm-up windows (train/val) and whole test runs."""
        p, dt = self.params, cpg.p.dt
        gen = torch.Generator().manual_seed(seed)
        recipe = DriveRecipe(seconds=p.trajectory_seconds, segment_seconds=p.segment_seconds,
                             ramp_probability=p.ramp_probability, turn_probability=p.turn_probability,
                             max_turn=p.max_turn, held_out=tuple(p.eval_levels), held_out_width=p.held_out_width,
                             edges=tuple(gait_borders(cpg.p) if p.edge_levels is None else p.edge_levels),
                             edge_probability=p.edge_probability,
                             edge_width=p.edge_width)
        longest = _steps(p.trajectory_seconds[1], dt)
        warmup, window, stride = _steps(p.warmup_seconds, dt), _steps(p.window_seconds, dt), \
            _steps(p.window_stride_seconds, dt)

        def trajectories(count: int, rec: DriveRecipe) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
            lengths = [_steps(float(torch.empty(()).uniform_(*p.trajectory_seconds, generator=gen)), dt)
                       for _ in range(count)]
            drives = torch.stack([drive_schedule(gen, longest, dt, rec) for _ in range(count)], 1)
            state = cpg.random_state(count, gen)
            _, R = cpg.targets(drives[0])
            state["r"] = R.clone()  # start on the cycle: random phases at the first plateau's amplitude
            return drives, simulate(cpg, drives, state), lengths

        def windows(drives: torch.Tensor, observed: torch.Tensor, lengths: list[int]) -> SequenceData:
            xs, ys = [], []
            for b, length in enumerate(lengths):
                for start in range(0, length - window + 1, stride):
                    d, y = drives[start:start + window, b:b + 1], observed[start:start + window, b:b + 1]
                    xs.append(model_inputs(d, y, warmup))
                    ys.append(y)
            return SequenceData(torch.cat(xs, 1), torch.cat(ys, 1))

        drives, observed, lengths = trajectories(p.train_trajectories, recipe)
        if p.mirror:
            flipped = mirror(drives, observed, cpg.p.segments)
            drives, observed, lengths = torch.cat([drives, flipped[0]], 1), torch.cat([observed, flipped[1]], 1), \
                lengths * 2
        train = windows(drives, observed, lengths)
        val = windows(*trajectories(p.val_trajectories, recipe)) if p.val_trajectories else None
        test_recipe = DriveRecipe(seconds=p.trajectory_seconds, segment_seconds=p.segment_seconds,
                                  ramp_probability=p.ramp_probability, turn_probability=p.turn_probability,
                                  max_turn=p.max_turn, levels=tuple(p.eval_levels))
        test_drives, test_observed, _ = trajectories(p.test_trajectories, test_recipe)
        info = {"train_windows": len(train), "val_windows": len(val) if val is not None else 0,
                "window_steps": window, "warmup_steps": warmup}
        return DataSplits(train, val), {"info": info, "test": (test_drives, test_observed)}

    # ------------------------------------------------------------------ running the learned model
    @torch.no_grad()
    def run_model(self, model: SequenceModel, drives: torch.Tensor, observed: torch.Tensor, warmup: int,
                  forcing: Forcing | None = None, return_states: bool = False):
        """Run the RNN on drives ``[T, B, 2]`` after an observation warm-up; outputs and optionally states."""
        model.eval()
        device = device_and_dtype(model)[0]
        x = model_inputs(drives, observed, warmup).to(device)
        traj = model(x, forcing=forcing, return_states=return_states)
        states = {k: v.cpu() for k, v in traj.states.items()} if return_states else None
        return traj.outputs.cpu(), states

    def cpg_run(self, cpg: SalamanderCPG, drives: torch.Tensor, seed: int, forcing: Forcing | None = None
                ) -> torch.Tensor:
        """The CPG's outputs for drives ``[T, B, 2]`` from random phases on the cycle of the first drive."""
        gen = torch.Generator().manual_seed(seed)
        state = cpg.random_state(drives.shape[1], gen)
        state["r"] = cpg.targets(drives[0])[1].clone()
        return simulate(cpg, drives, state, forcing=forcing)

    # ------------------------------------------------------------------ main
    def run(self, ctx: RunContext) -> dict[str, Any]:
        p = self.params
        cpg = SalamanderCPG(2, **p.cpg.model_dump())
        dt, n = cpg.p.dt, cpg.p.segments
        data, extra = self.make_data(cpg, ctx.config.seed)
        warmup = extra["info"]["warmup_steps"]
        model = ctx.build_model(None, data.train.inputs.shape[-1], cpg.output_size)
        ctx.echo(f"salamander: {extra['info']['train_windows']} training windows of "
                 f"{extra['info']['window_steps']} steps; training {type(model.step_cell()).__name__}")
        steps = ctx.config.training.steps
        first = int(math.ceil(p.choose_from * steps / p.choose_every)) * p.choose_every
        candidates = Candidates(model, p.average_decay, {*range(max(first, p.choose_every), steps + 1, p.choose_every),
                                                          steps})
        train = ctx.train(model, data, loss_fn=offset_weighted_loss(p.offset_loss_weight, p.amplitude_loss_weight),
                          on_update=candidates, state={"candidates": candidates})
        choice = self.choose(ctx, model, cpg, warmup, candidates)
        outputs = cpg.output_size
        layout = {"size": N_DRIVES + outputs + 1, "drives": {"d_L": 0, "d_R": 1},
                  "observations_during_warmup": [N_DRIVES, N_DRIVES + outputs - 1], "warmup_flag": N_DRIVES + outputs,
                  "warmup_steps": warmup, "outputs": cpg.output_names(),
                  "note": "after the warm-up the observation units and the flag are 0; the RNN runs on the drives"}
        results: dict[str, Any] = {"model_inputs": layout, "data": extra["info"], "final_loss": _f(train.final_loss, 6),
                                   "best_val_loss": _f(train.best_val_loss, 6), "weights_choice": choice}
        figures: dict[str, str] = {}

        ev = self.evaluate(ctx, model, cpg, warmup)
        results["evaluation"] = ev["results"]
        results["test_trajectories"] = self.test_error(ctx, model, extra["test"], warmup, figures)
        self.plot_evaluation(ctx, ev, figures)
        results["steering"] = {"input": self.steer_inputs(ctx, model, cpg, warmup, figures),
                               "neurons": self.steer_neurons(ctx, model, cpg, warmup, figures)}
        results["analysis"] = {"pca": self.pca_analysis(ctx, ev, figures, activity_parts(model)),
                               "ablation": self.ablation(ctx, model, cpg, warmup, figures)}
        results["targets_met"] = {k: v["pass"] for k, v in results["evaluation"]["targets"].items()}
        results["provenance"] = {
            "torch": torch.__version__, "threads": torch.get_num_threads(), "seed": ctx.config.seed,
            "note": "the same seed and thread count on the same machine give identical results; on the 2-core "
                    "machine of docs/salamander.md 1 and 2 threads gave identical numbers too, but another machine "
                    "or torch build can change the floating-point sums, and then training ends elsewhere",
            "shipped_recipe_spread": {k: list(v) for k, v in SHIPPED_SPREAD.items()},
            "shipped_recipe_spread_from": "the runs of scenarios/salamander.yaml as shipped tabled in "
                                          "docs/salamander.md (seeds 0-4 at 1 and 2 threads)"}
        self.write_report(ctx, results, figures)
        return results

    # ------------------------------------------------------------------ 2. choice of weights, evaluation
    def choose(self, ctx: RunContext, model: SequenceModel, cpg: SalamanderCPG, warmup: int,
               candidates: Candidates) -> dict[str, Any]:
        """Keep the candidate weights that meet the most targets on the validation drives (never the eval levels).

        Ties go to the smaller sum of errors relative to their tolerances. The chosen weights are loaded into
        ``model`` and written as the job's final checkpoint, so every later reader of the run sees them.
        """
        p = self.params
        if not candidates.weights:  # a resumed run that had finished training: its checkpoint holds the choice
            return {"chosen": "checkpoint", "note": "resumed after training; the checkpoint holds the chosen weights"}
        pairs, drives, truth = self.condition_runs(cpg, p.validation_levels, p.validation_turns, ctx.config.seed + 6)
        scores: dict[str, dict[str, Any]] = {}
        for name, weights in candidates.weights.items():
            model.load_state_dict(weights)
            rows = self.condition_rows(model, cpg, warmup, pairs, drives, truth)[0]
            targets = self.targets(cpg, rows, len(p.validation_levels))
            errors = self.relative_errors(targets)
            scores[name] = {"met": sum(t["pass"] for t in targets.values()),
                            "error_sum": _f(sum(min(e, 10.0) for e in errors.values())),
                            "relative_errors": {k: _f(v, 3) for k, v in errors.items()}}
        chosen = min(scores, key=lambda k: (-scores[k]["met"], scores[k]["error_sum"]))
        model.load_state_dict(candidates.weights[chosen])
        if candidates.trainer is not None:
            candidates.trainer.save()  # the chosen weights become the job's final checkpoint
        ctx.echo(f"salamander: kept weights {chosen} ({scores[chosen]['met']}/{len(errors)} targets met on the "
                 f"validation drives; {len(scores)} candidates)")
        return {"chosen": chosen, "validation_levels": p.validation_levels,
                "validation_turns": [list(t) for t in p.validation_turns], "candidates": scores,
                "method": f"raw and averaged (EMA, decay {p.average_decay}) weights every {p.choose_every} updates "
                          f"from {p.choose_from:.0%} of training on; each run autonomously at the validation "
                          f"drives for {p.eval_seconds:g} s and judged by the seven targets; most met wins, ties "
                          f"to the smallest sum of errors relative to their tolerances"}

    def relative_errors(self, targets: dict[str, dict[str, Any]]) -> dict[str, float]:
        """Each target's error divided by its tolerance (1 = on the goal; inf where nothing could be measured)."""
        p = self.params

        def ratio(value: float | None, tolerance: float) -> float:
            return float("inf") if value is None else abs(value) / tolerance

        jump, turn = targets["walk_to_swim_jump"]["value"], targets["turning_offset"]["value"]
        return {"frequency_vs_drive": ratio(targets["frequency_vs_drive"]["value"], p.targets_frequency_hz),
                "walk_to_swim_jump": ratio(None if jump["rnn"] is None else jump["rnn"] - jump["cpg"],
                                           2 * p.targets_frequency_hz),
                "stillness_outside_1_5": ratio(targets["stillness_outside_1_5"]["value"], p.still_threshold),
                "swim_phase_lag": ratio(targets["swim_phase_lag"]["value"], p.targets_phase_lag),
                "amplitude": ratio(targets["amplitude"]["value"], p.targets_amplitude),
                "turning_offset": ratio(turn["max_relative_error"], p.targets_turn)
                + (0.0 if turn["signs_correct"] else 10.0),
                "amplitude_drift": ratio(targets["amplitude_drift"]["value"], p.targets_drift)}

    def condition_runs(self, cpg: SalamanderCPG, levels: list[float], turns: list[tuple[float, float]], seed: int
                       ) -> tuple[list[tuple[float, float]], torch.Tensor, torch.Tensor]:
        """The conditions (constant levels, then turning pairs), their drives ``[T, C, 2]`` and the CPG's outputs."""
        pairs = [(d, d) for d in levels] + [tuple(t) for t in turns]
        steps = _steps(self.params.eval_seconds, cpg.p.dt)
        drives = torch.tensor(pairs, dtype=torch.float32).unsqueeze(0).expand(steps, -1, -1).contiguous()
        return pairs, drives, self.cpg_run(cpg, drives, seed)

    def condition_rows(self, model: SequenceModel, cpg: SalamanderCPG, warmup: int, pairs: list[tuple[float, float]],
                       drives: torch.Tensor, truth: torch.Tensor, return_states: bool = False
                       ) -> tuple[list[dict[str, Any]], torch.Tensor, dict[str, torch.Tensor] | None, slice]:
        """Run the model autonomously under each condition; gait metrics of both over the last measure window."""
        p, dt, n = self.params, cpg.p.dt, cpg.p.segments
        steps = drives.shape[0]
        learned, states = self.run_model(model, drives, truth, warmup, return_states=return_states)
        measure = _steps(p.measure_seconds, dt)
        early = slice(warmup + _steps(5.0, dt), warmup + _steps(5.0, dt) + measure)
        late = slice(steps - measure, steps)
        rows = []
        for b, (dl, dr) in enumerate(pairs):
            rnn, true = (gait_metrics(o[late, b].numpy(), dt, n) for o in (learned, truth))
            rnn_early = gait_metrics(learned[early, b].numpy(), dt, n)
            rows.append({"d_L": dl, "d_R": dr, "rnn": rnn, "cpg": true, "rnn_early_amplitude": rnn_early["amplitude"]})
        return rows, learned, states, late

    def evaluate(self, ctx: RunContext, model: SequenceModel, cpg: SalamanderCPG, warmup: int) -> dict[str, Any]:
        """Long autonomous runs at held-out constant drives and turning pairs, measured like the CPG."""
        p = self.params
        pairs, drives, truth = self.condition_runs(cpg, p.eval_levels, p.turn_conditions, ctx.config.seed + 1)
        rows, learned, states, late = self.condition_rows(model, cpg, warmup, pairs, drives, truth, return_states=True)
        targets = self.targets(cpg, rows, len(p.eval_levels))
        table = [{"d_L": r["d_L"], "d_R": r["d_R"],
                  **{f"{who}_{key}": _f(r[who][key]) for who in ("rnn", "cpg")
                     for key in ("frequency", "amplitude", "offset", "limb_amplitude")},
                  "rnn_lags": [_f(v, 3) for v in r["rnn"]["lags"]], "cpg_lags": [_f(v, 3) for v in r["cpg"]["lags"]],
                  "rnn_amplitude_start": _f(r["rnn_early_amplitude"])} for r in rows]
        return {"results": {"targets": targets, "per_condition": table, "eval_seconds": p.eval_seconds},
                "rows": rows, "pairs": pairs, "learned": learned, "truth": truth, "states": states,
                "late": late, "levels": len(p.eval_levels)}

    def targets(self, cpg: SalamanderCPG, rows: list[dict[str, Any]], levels: int) -> dict[str, dict[str, Any]]:
        """The seven targets from condition rows: the first ``levels`` rows are constant drives, the rest turns."""
        p, n = self.params, cpg.p.segments
        two_pi_n = 2 * math.pi / n
        level_rows = rows[:levels]
        start, switch, stop = gait_borders(cpg.p)
        span = f"[{start:g}, {stop:g}]"
        moving = [r for r in level_rows if start <= r["d_L"] <= stop]
        still = [r for r in level_rows if not start <= r["d_L"] <= stop]
        freq_err = [abs(r["rnn"]["frequency"] - r["cpg"]["frequency"]) for r in moving]
        amp_err = [abs(r["rnn"]["amplitude"] / r["cpg"]["amplitude"] - 1) for r in moving]
        # drift is judged where the RNN oscillates at all; a level where it is still fails the other targets
        drift = [abs(r["rnn"]["amplitude"] / r["rnn_early_amplitude"] - 1) for r in moving
                 if r["rnn_early_amplitude"] > p.still_threshold]
        still_amp = [r["rnn"]["amplitude"] for r in still]
        swim = [r for r in moving if r["d_L"] > switch]
        lag_err = [float(np.max(np.abs(r["rnn"]["lags"] - two_pi_n))) for r in swim]
        by_level = {r["d_L"]: r for r in level_rows}
        below = max((d for d in by_level if d <= switch), default=None)
        above = min((d for d in by_level if switch < d <= stop), default=None)
        jump_rnn = jump_cpg = None
        if below is not None and above is not None:
            jump_rnn = by_level[above]["rnn"]["frequency"] - by_level[below]["rnn"]["frequency"]
            jump_cpg = by_level[above]["cpg"]["frequency"] - by_level[below]["cpg"]["frequency"]
        turn_rows = rows[levels:]
        turn_err = [abs(r["rnn"]["offset"] - r["cpg"]["offset"]) / max(abs(r["cpg"]["offset"]), 1e-6)
                    for r in turn_rows]
        turn_sign = [np.sign(r["rnn"]["offset"]) == np.sign(r["d_L"] - r["d_R"]) for r in turn_rows]
        targets = {
            "frequency_vs_drive": _metric(_f(max(freq_err, default=None)), f"max |f_rnn - f_cpg| <= "
                                          f"{p.targets_frequency_hz} Hz over drives in {span}",
                                          bool(freq_err) and max(freq_err) <= p.targets_frequency_hz),
            "walk_to_swim_jump": _metric({"rnn": _f(jump_rnn), "cpg": _f(jump_cpg), "between": [below, above]},
                                         f"jump within {2 * p.targets_frequency_hz} Hz of the CPG's",
                                         jump_rnn is not None and abs(jump_rnn - jump_cpg) <= 2 * p.targets_frequency_hz),
            "stillness_outside_1_5": _metric(_f(max(still_amp, default=None)),
                                             f"body amplitude < {p.still_threshold} rad for drives outside {span}",
                                             bool(still_amp) and max(still_amp) < p.still_threshold),
            "swim_phase_lag": _metric(_f(max(lag_err, default=None)), f"every segment lag within "
                                      f"{p.targets_phase_lag} rad of 2pi/{n} = {two_pi_n:.4f}",
                                      bool(lag_err) and max(lag_err) <= p.targets_phase_lag),
            "amplitude": _metric(_f(max(amp_err, default=None)), f"relative amplitude error <= {p.targets_amplitude}",
                                 bool(amp_err) and max(amp_err) <= p.targets_amplitude),
            "turning_offset": _metric({"max_relative_error": _f(max(turn_err, default=None)),
                                       "signs_correct": bool(all(turn_sign))},
                                      f"sign right and size within {p.targets_turn:.0%} of the CPG's "
                                      f"(~{cpg.p.body.R_gain:g} (d_L - d_R))",
                                      bool(turn_rows) and all(turn_sign) and max(turn_err) <= p.targets_turn),
            "amplitude_drift": _metric(_f(max(drift, default=None)), f"|A(end) / A(start) - 1| <= {p.targets_drift} "
                                       f"over {p.eval_seconds:.0f} s ({p.eval_seconds / p.window_seconds:.0f}x the "
                                       f"training window, {p.eval_seconds / p.trajectory_seconds[1]:.1f}x the longest "
                                       f"trajectory)", bool(drift) and max(drift) <= p.targets_drift),
        }
        return targets

    def test_error(self, ctx: RunContext, model: SequenceModel, test: tuple[torch.Tensor, torch.Tensor],
                   warmup: int, figures: dict[str, str]) -> dict[str, Any]:
        """Error on whole held-out trajectories (plateaus only at held-out levels) after the warm-up."""
        drives, truth = test
        learned, _ = self.run_model(model, drives, truth, warmup)
        err = (learned[warmup:] - truth[warmup:]) ** 2
        results = {"rmse": _f(float(err.mean().sqrt())), "signal_std": _f(float(truth[warmup:].std())),
                   "seconds": drives.shape[0] * self.params.cpg.dt}
        if ctx.plots_enabled:
            import matplotlib.pyplot as plt

            dt = self.params.cpg.dt
            t = np.arange(drives.shape[0]) * dt
            fig, axes = plt.subplots(5, 1, figsize=(11, 9), sharex=True)
            axes[0].plot(t, drives[:, 0, 0], label="d_L")
            axes[0].plot(t, drives[:, 0, 1], "--", label="d_R")
            axes[0].set(ylabel="drive")
            axes[0].legend(loc="upper right", fontsize=8)
            n = self.params.cpg.segments
            for ax, (k, name) in zip(axes[1:], [(0, "body 1"), (n // 2 - 1, f"body {n // 2}"),
                                                (n - 1, f"body {n}"), (n, "limb LF")]):
                ax.plot(t, truth[:, 0, k], color="k", lw=1.2, label="CPG (true)")
                ax.plot(t, learned[:, 0, k], color="C1", lw=1, label="RNN (learned)")
                ax.axvspan(0, warmup * dt, color="0.9")
                ax.set(ylabel=name)
            axes[1].legend(loc="upper right", fontsize=8)
            axes[-1].set(xlabel="time (s); grey: observation warm-up, then the RNN runs on the drives alone")
            fig.suptitle("held-out trajectory: learned vs true joint signals")
            figures["learned_vs_true"] = self._save(ctx, fig, "learned_vs_true")
        return results

    # ------------------------------------------------------------------ 3a. input forcing
    def steer_inputs(self, ctx: RunContext, model: SequenceModel, cpg: SalamanderCPG, warmup: int,
                     figures: dict[str, str]) -> dict[str, Any]:
        """Apply the YAML ``forcing:`` clamps to the drive inputs of both the RNN and the CPG and compare."""
        p, dt, n = self.params, cpg.p.dt, cpg.p.segments
        clamps = ctx.config.forcing
        if not clamps:
            return {"commands": [], "note": "no `forcing:` section in the scenario file"}
        bad = [c for c in clamps if c.target != "input" or c.units is None or not set(c.units) <= {0, 1}]
        if bad:
            from statesim.errors import StatesimError

            raise StatesimError("salamander: the `forcing:` clamps steer the drives, so each needs target: input "
                                "and units within [0, 1] (0 = d_L, 1 = d_R); hidden-unit forcing is chosen by the "
                                "scenario's own analysis.")
        steps = max(_steps(p.steer_seconds, dt), max((c.stop or 0) for c in clamps))
        forcing = forcing_from_config(clamps)
        drives = torch.tensor(p.steer_base, dtype=torch.float32).view(1, 1, 2).expand(steps, 1, 2).contiguous()
        forced_drives = forcing.apply_to_inputs(drives)  # what the CPG sees: same clamps, applied by the engine
        truth = self.cpg_run(cpg, forced_drives, ctx.config.seed + 2)
        learned, _ = self.run_model(model, drives, truth, warmup, forcing=forcing)
        bounds = sorted({0, steps, *[c.start for c in clamps], *[c.stop for c in clamps if c.stop is not None]})
        commands = []
        previous: dict[str, Any] | None = None
        previous_rnn: dict[str, Any] | None = None
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi - lo < _steps(2.0, dt):
                continue
            settle = lo + min((hi - lo) // 3, _steps(2.0, dt))  # skip the transient; keep >= 2 slow cycles
            # a command window holds few slow walking cycles: one whole period (two crossings) is enough here
            rnn = gait_metrics(learned[settle:hi, 0].numpy(), dt, n, min_crossings=2)
            true = gait_metrics(truth[settle:hi, 0].numpy(), dt, n, min_crossings=2)
            drive = forced_drives[settle, 0].tolist()
            effect = self._intended(true, previous)
            got = self._intended(rnn, previous_rnn) if previous is not None else effect
            same = self._same_behaviour(rnn, true)
            commands.append({"start_s": lo * dt, "stop_s": hi * dt, "d_L": _f(drive[0], 3), "d_R": _f(drive[1], 3),
                             "intended": effect, "rnn_effect": got,
                             "rnn": {k: _f(rnn[k]) for k in ("frequency", "amplitude", "offset", "limb_amplitude")},
                             "cpg": {k: _f(true[k]) for k in ("frequency", "amplitude", "offset", "limb_amplitude")},
                             "pass": bool(same and set(effect) <= set(got))})
            previous, previous_rnn = true, rnn
        if ctx.plots_enabled:
            import matplotlib.pyplot as plt

            t = np.arange(steps) * dt
            fig, axes = plt.subplots(3, 1, figsize=(11, 7), sharex=True)
            axes[0].plot(t, forced_drives[:, 0, 0], label="d_L (forced)")
            axes[0].plot(t, forced_drives[:, 0, 1], "--", label="d_R (forced)")
            axes[0].set(ylabel="drive")
            axes[0].legend(fontsize=8)
            axes[1].plot(t, truth[:, 0, 0], "k", lw=1, label="CPG")
            axes[1].plot(t, learned[:, 0, 0], "C1", lw=1, label="RNN")
            axes[1].set(ylabel="body joint 1 (rad)")
            axes[1].legend(fontsize=8)
            axes[2].plot(t, truth[:, 0, n], "k", lw=1)
            axes[2].plot(t, learned[:, 0, n], "C1", lw=1)
            axes[2].set(ylabel="limb LF", xlabel="time (s)")
            for ax in axes:
                for c in commands:
                    ax.axvline(c["start_s"], color="0.7", lw=0.8)
            fig.suptitle("steering by input forcing (clamps from the scenario's `forcing:` section)")
            figures["steering_inputs"] = self._save(ctx, fig, "steering_inputs")
        return {"commands": commands, "all_pass": all(c["pass"] for c in commands)}

    @staticmethod
    def _intended(now: dict[str, Any], before: dict[str, Any] | None) -> list[str]:
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

    def _same_behaviour(self, rnn: dict[str, Any], true: dict[str, Any]) -> bool:
        p = self.params
        if true["amplitude"] < p.still_threshold:
            return rnn["amplitude"] < p.still_threshold
        return (abs(rnn["frequency"] - true["frequency"]) <= 2 * p.targets_frequency_hz
                and (rnn["limb_amplitude"] > 0.05) == (true["limb_amplitude"] > 0.05)
                and (abs(true["offset"]) < 0.02 or np.sign(rnn["offset"]) == np.sign(true["offset"])))

    # ------------------------------------------------------------------ 3b. neuron forcing
    def steer_neurons(self, ctx: RunContext, model: SequenceModel, cpg: SalamanderCPG, warmup: int,
                      figures: dict[str, str]) -> dict[str, Any]:
        """Pick the units that steer speed and turning by a clamp sweep, clamp them together, measure the effect.

        Every hidden unit (each unit of each state part) is clamped alone, in one batched run, to its cycle
        mean observed at a target drive (default CPG: fast/slow 4.5/3.5; left/right (4.4, 3.6)/(3.6, 4.4),
        around the middle of the swimming range) while the inputs stay at the base drive (4.0). The units whose single clamp moves frequency (or the mean body angle) furthest
        the intended way are chosen; the chosen set is then clamped together on a fresh run.
        """
        p, dt, n = self.params, cpg.p.dt, cpg.p.segments
        parts = state_units(model)
        width = model.state_spec[parts[0]][0]
        names = [(part, u) for part in parts for u in range(width)]
        total = len(names)
        conditions = swim_conditions(cpg.p)
        mid, step = conditions["base"][0], conditions["fast"][0] - conditions["base"][0]
        keys = list(conditions)
        steps, tail = _steps(30.0, dt), _steps(15.0, dt)
        drives = torch.tensor([conditions[k] for k in keys]).unsqueeze(0).expand(steps, -1, -1).contiguous()
        truth = self.cpg_run(cpg, drives, ctx.config.seed + 3)
        out, states = self.run_model(model, drives, truth, warmup, return_states=True)
        feats = torch.cat([states[k][steps - tail:] for k in parts], -1)  # [T, C, units]
        target = dict(zip(keys, feats.mean(0)))  # cycle mean of every unit at each condition
        by_input = {k: gait_metrics(out[steps - tail:, i].numpy(), dt, n) for i, k in enumerate(keys)}

        def forcing(values: torch.Tensor) -> Forcing:
            """Per-sample clamps ``values [B, units]`` (NaN: leave the unit free) split into the state parts."""
            return Forcing([Clamp(part, values[:, j * width:(j + 1) * width], None, start=warmup)
                            for j, part in enumerate(parts)])

        def run_clamped(values: torch.Tensor, seconds: float, measure: float, seed: int
                        ) -> tuple[list[dict[str, Any]], torch.Tensor]:
            count, run_steps = values.shape[0], _steps(seconds, dt)
            base = torch.tensor(conditions["base"]).view(1, 1, 2).expand(run_steps, count, 2).contiguous()
            obs = self.cpg_run(cpg, base[:, :1], seed).expand(-1, count, -1)
            out, _ = self.run_model(model, base, obs, warmup, forcing=forcing(values))
            window = out[run_steps - _steps(measure, dt):]
            return [gait_metrics(window[:, b].numpy(), dt, n) for b in range(count)], out[:, :, 0]

        # 1. the sweep: sample 1 + j * units + u clamps unit u alone to its value at sweep condition j
        sweep = ["fast", "slow", "left", "right"]
        values = torch.full((1 + len(sweep) * total, total), float("nan"))
        for j, key in enumerate(sweep):
            rows = 1 + j * total + torch.arange(total)
            values[rows, torch.arange(total)] = target[key]
        metrics, _ = run_clamped(values, 20.0, 10.0, ctx.config.seed + 4)
        free = metrics[0]
        grid = {key: metrics[1 + j * total:1 + (j + 1) * total] for j, key in enumerate(sweep)}
        # a clamp that stops the rhythm steers nothing: keep units whose clamps leave most of the amplitude
        alive = np.array([min(grid[k][u]["amplitude"] for k in sweep) > 0.5 * free["amplitude"]
                          for u in range(total)])
        speed_effect = np.array([grid["fast"][u]["frequency"] - grid["slow"][u]["frequency"] for u in range(total)])
        turn_effect = np.array([grid["left"][u]["offset"] - grid["right"][u]["offset"] for u in range(total)])

        ranked = {what: [int(u) for u in np.argsort(-effect) if alive[u] and effect[u] > 0][:p.forced_units]
                  for what, effect in (("speed", speed_effect), ("turn", turn_effect))}
        # single-unit effects do not simply add up (many clamps at once can stop the rhythm): clamp the top k
        # together for every k, in one batched run, and keep the k that steers furthest both ways. The control
        # holds the same units at their own values at d = 4.0, so only the clamped value differs.
        sides = {"speed": ("fast", "base", "slow"), "turn": ("left", "base", "right")}
        plan = [(what, k, key) for what, keys in sides.items() for k in range(1, len(ranked[what]) + 1)
                for key in keys]
        values = torch.full((1 + len(plan), total), float("nan"))
        for b, (what, k, key) in enumerate(plan, start=1):
            units = ranked[what][:k]
            values[b, units] = target[key][units]
        metrics, _ = run_clamped(values, 20.0, 10.0, ctx.config.seed + 4)
        free = metrics[0]
        score: dict[str, dict[int, float]] = {"speed": {}, "turn": {}}
        for b in range(1, len(plan), 3):
            (what, k, _), up, held, down = plan[b - 1], metrics[b], metrics[b + 1], metrics[b + 2]
            if min(up["amplitude"], held["amplitude"], down["amplitude"]) > 0.5 * free["amplitude"]:
                key = "frequency" if what == "speed" else "offset"
                score[what][k] = min(up[key] - held[key], held[key] - down[key])  # the smaller of the two moves
        chosen = {what: ranked[what][:max(score[what], key=score[what].get)] if score[what] else ranked[what][:1]
                  for what in score}
        speed_units, turn_units = chosen["speed"], chosen["turn"]

        # 2. the chosen sets clamped together, on a fresh run from other initial phases
        plan = [("base", []), ("base", speed_units), ("fast", speed_units), ("slow", speed_units),
                ("base", turn_units), ("left", turn_units), ("right", turn_units)]
        values = torch.full((len(plan), total), float("nan"))
        for b, (key, units) in enumerate(plan):
            if units:
                values[b, units] = target[key][units]
        final, traces = run_clamped(values, 25.0, 15.0, ctx.config.seed + 5)
        base, held_speed, fast, slow, held_turn, left, right = final

        def unit_list(units: list[int], effect: np.ndarray, what: str, a: str, b: str) -> list[dict[str, Any]]:
            return [{"part": names[u][0], "unit": names[u][1], f"single_clamp_{what}": _f(float(effect[u])),
                     "value_difference": _f(float(target[a][u] - target[b][u]), 3)} for u in units]

        cpg_speed, cpg_turn = expected_effects(cpg, conditions)
        input_speed = by_input["fast"]["frequency"] - by_input["slow"]["frequency"]
        input_turn = by_input["left"]["offset"] - by_input["right"]["offset"]
        speed_hz, turn_rad = fast["frequency"] - slow["frequency"], left["offset"] - right["offset"]
        results: dict[str, Any] = {
            "state_parts": parts, "candidates": total, "rhythm_preserving_candidates": int(alive.sum()),
            "set_size_effects": {what: {str(k): _f(v) for k, v in sc.items()} for what, sc in score.items()},
            "method": "each unit clamped alone (batched run, NaN = free) to its cycle mean at the target drive; "
                      "units ranked by the single-clamp effect; the top k clamped together for k = 1.."
                      f"{p.forced_units}, keeping the k that moves the output furthest both ways from the same "
                      f"units held at their d = {mid:g} values (the control) and leaves the rhythm; that set measured "
                      "again on a fresh run from other initial phases; pass: up > held > down"}
        results["speed"] = {
            "units": unit_list(speed_units, speed_effect, "effect_hz", "fast", "slow"),
            "input_drive": list(conditions["base"]),
            "clamp_values_from": {"fast": list(conditions["fast"]), "slow": list(conditions["slow"])},
            "frequency_base": _f(base["frequency"]), "frequency_clamped_held": _f(held_speed["frequency"]),
            "frequency_clamped_slow": _f(slow["frequency"]), "frequency_clamped_fast": _f(fast["frequency"]),
            "effect_hz": {"fast_minus_held": _f(fast["frequency"] - held_speed["frequency"]),
                          "slow_minus_held": _f(slow["frequency"] - held_speed["frequency"]),
                          "fast_minus_slow": _f(speed_hz),
                          "fast_minus_unclamped": _f(fast["frequency"] - base["frequency"]),
                          "slow_minus_unclamped": _f(slow["frequency"] - base["frequency"])},
            "input_effect_hz": {"rnn_fast_minus_slow": _f(input_speed),
                                "cpg_fast_minus_slow": _f(cpg_speed)},
            "fraction_of_input_effect": _f(speed_hz / input_speed) if input_speed else None,
            "amplitude_base": _f(base["amplitude"]), "amplitude_clamped_fast": _f(fast["amplitude"]),
            "amplitude_clamped_slow": _f(slow["amplitude"]),
            "pass": bool(fast["frequency"] > held_speed["frequency"] > slow["frequency"] > 0),
            "pass_against_unclamped": bool(fast["frequency"] > base["frequency"] > slow["frequency"] > 0)}
        results["turning"] = {
            "units": unit_list(turn_units, turn_effect, "effect_rad", "left", "right"),
            "input_drive": list(conditions["base"]),
            "clamp_values_from": {"left": list(conditions["left"]), "right": list(conditions["right"])},
            "offset_base": _f(base["offset"]), "offset_clamped_held": _f(held_turn["offset"]),
            "offset_clamped_left": _f(left["offset"]), "offset_clamped_right": _f(right["offset"]),
            "effect_rad": _f(turn_rad),
            "input_effect_rad": {"rnn_left_minus_right": _f(input_turn), "cpg_expected": _f(cpg_turn)},
            "fraction_of_input_effect": _f(turn_rad / input_turn) if input_turn else None,
            "pass": bool(left["offset"] > held_turn["offset"] > right["offset"]),
            "pass_against_unclamped": bool(left["offset"] > base["offset"] > right["offset"])}
        if ctx.plots_enabled:
            import matplotlib.pyplot as plt

            run_steps = traces.shape[0]
            t = np.arange(run_steps) * dt
            fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.2), gridspec_kw={"width_ratios": [2, 1, 1.4]})
            sl = slice(run_steps - _steps(6.0, dt), run_steps)
            a.plot(t[sl], traces[sl, 0], "0.6", label=f"no clamp ({base['frequency']:.2f} Hz)")
            a.plot(t[sl], traces[sl, 1], "k",
                   label=f"speed units at d={mid:g} values ({held_speed['frequency']:.2f} Hz)")
            a.plot(t[sl], traces[sl, 3], "C0", label=f"speed units at d={mid - step:g} values ({slow['frequency']:.2f} Hz)")
            a.plot(t[sl], traces[sl, 2], "C3", label=f"speed units at d={mid + step:g} values ({fast['frequency']:.2f} Hz)")
            a.set(title=f"speed: clamping {len(speed_units)} units (input fixed at {mid:g})", xlabel="time (s)",
                  ylabel="body joint 1 (rad)")
            a.legend(fontsize=7)
            b.bar(["no clamp", "at right-turn\nvalues", f"at d={mid:g}\nvalues", "at left-turn\nvalues"],
                  [base["offset"], right["offset"], held_turn["offset"], left["offset"]], color=["0.8", "C0", "k", "C3"])
            b.tick_params(axis="x", labelsize=7)
            b.axhline(0, color="k", lw=0.8)
            b.set(title=f"turning: clamping {len(turn_units)} units", ylabel="mean body angle (rad)")
            order = np.argsort(-speed_effect)
            c.plot(speed_effect[order], ".-", color="C1", label="speed: f(fast value) - f(slow value), Hz")
            c.plot(np.sort(turn_effect)[::-1] * 10, ".-", color="C2",
                   label="turn: offset(left) - offset(right), x10 rad")
            c.axhline(0, color="k", lw=0.8)
            c.set(title="single-unit clamp sweep (sorted)", xlabel="rank of unit", ylabel="effect")
            c.legend(fontsize=7)
            figures["steering_neurons"] = self._save(ctx, fig, "steering_neurons")
        return results

    # ------------------------------------------------------------------ 4. analysis
    def pca_analysis(self, ctx: RunContext, ev: dict[str, Any], figures: dict[str, str],
                     parts: list[str] | None = None) -> dict[str, Any]:
        """Limit cycles in the hidden-state PCA: radius vs amplitude, rotation frequency, collapse outside [1, 5].

        ``parts``: the state parts analysed (default all); the scenario passes the units' activity (the part
        the cell outputs, an LSTM's h): an LSTM's c is an unbounded internal integrator on another scale.
        """
        p, dt = self.params, self.params.cpg.dt
        states, late, levels = ev["states"], ev["late"], ev["levels"]
        all_parts = sorted(k for k in states if states[k].dim() == 3)
        parts = sorted(parts or all_parts)
        feats = torch.cat([states[k][late, :levels] for k in parts], -1).double()  # [T, L, F]
        pooled = feats.reshape(-1, feats.shape[-1])
        center = pooled.mean(0)
        _, svals, vh = torch.linalg.svd(pooled - center, full_matrices=False)
        explained = (svals ** 2 / (svals ** 2).sum())[:5]
        rows = []
        t = np.arange(feats.shape[0]) * dt
        for b in range(levels):
            x = feats[:, b] - feats[:, b].mean(0)
            _, s, v = torch.linalg.svd(x, full_matrices=False)
            pcs = (x @ v[:2].T).numpy()
            radius = float(np.linalg.norm(pcs, axis=-1).mean())
            rms = float(x.pow(2).sum(-1).mean().sqrt())
            common = ((feats[:, b] - feats[:, b].mean(0)) @ vh[:2].T).numpy()
            common_radius = float(np.linalg.norm(common, axis=-1).mean())
            rot = rotation_frequency(pcs, dt) if radius > 1e-3 else 0.0
            xa = torch.cat([states[k][late, b] for k in all_parts], -1).double()
            xa = xa - xa.mean(0)
            va = torch.linalg.svd(xa, full_matrices=False)[2]
            by_part = {"all": _f(float((xa @ va[:2].T).norm(dim=-1).mean()))}
            for k in all_parts:  # the same radius in each state part alone
                xk = states[k][late, b].double() - states[k][late, b].double().mean(0)
                vk = torch.linalg.svd(xk, full_matrices=False)[2]
                by_part[k] = _f(float((xk @ vk[:2].T).norm(dim=-1).mean()))
            r = ev["rows"][b]
            rows.append({"drive": r["d_L"], "radius": _f(radius), "rms_radius": _f(rms),
                         "common_plane_radius": _f(common_radius), "part_radius": by_part, "rotation_hz": _f(rot),
                         "output_hz": _f(r["rnn"]["frequency"]), "output_amplitude": _f(r["rnn"]["amplitude"])})
        start, switch, stop = gait_borders(p.cpg)
        osc = [r for r in rows if start <= r["drive"] <= stop]
        stillr = [r for r in rows if not start <= r["drive"] <= stop]
        amps = [r["output_amplitude"] for r in osc]

        def correlation(radii: list[float], keep: Any = lambda r: True) -> float | None:
            pick = [i for i, r in enumerate(osc) if keep(r)]
            x, y = [radii[i] for i in pick], [amps[i] for i in pick]
            if len(pick) > 2 and np.std(x) > 0 and np.std(y) > 0:
                return float(np.corrcoef(x, y)[0, 1])
            return None

        corr = correlation([r["radius"] for r in osc])
        other_corr = {"rms_radius_all_dimensions": _f(correlation([r["rms_radius"] for r in osc])),
                      "radius_in_common_pca_plane": _f(correlation([r["common_plane_radius"] for r in osc])),
                      **{f"radius_of_part_{k}": _f(correlation([r["part_radius"][k] for r in osc]))
                         for k in ["all", *all_parts]},
                      "walking_only_1_3": _f(correlation([r["radius"] for r in osc], lambda r: r["drive"] <= switch)),
                      "swimming_only_3_5": _f(correlation([r["radius"] for r in osc], lambda r: r["drive"] > switch))}
        max_radius = max((r["radius"] for r in osc), default=0.0) or 1e-12
        rot_err = [abs(r["rotation_hz"] - r["output_hz"]) for r in osc if r["output_hz"]]
        crossings = {}
        by = {r["drive"]: r for r in rows}
        for border in (start, switch, stop):
            lo = max((d for d in by if d < border), default=None)
            hi = min((d for d in by if d > border), default=None)
            if lo is not None and hi is not None:
                crossings[str(float(border))] = {"below": by[lo], "above": by[hi]}
        result = {"state_parts": parts, "explained_variance_top5": [_f(float(e)) for e in explained], "per_drive": rows,
                  "radius_vs_amplitude_correlation": _f(corr),
                  "radius_vs_amplitude_correlation_other_measures": other_corr,
                  "fixed_point_outside_1_5": {"max_relative_radius": _f(max((r["radius"] for r in stillr),
                                                                            default=0.0) / max_radius),
                                              "pass": all(r["radius"] / max_radius < 0.05 for r in stillr)},
                  "rotation_vs_output_frequency_max_error_hz": _f(max(rot_err, default=None)),
                  "drive_crossings": crossings}
        if ctx.plots_enabled:
            import matplotlib.pyplot as plt

            fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5))
            cmap = plt.get_cmap("viridis")
            for i in range(levels):
                proj = (feats[:, i] - center) @ vh[:2].T
                drive = ev["rows"][i]["d_L"]
                a.plot(proj[:, 0], proj[:, 1], color=cmap(drive / 6), lw=1, label=f"d={drive:g}")
            a.set(title="hidden states, PCA of all drives (PC1 vs PC2)", xlabel="PC1", ylabel="PC2")
            a.legend(fontsize=6, ncol=2)
            d = [r["drive"] for r in rows]
            b.plot(d, [r["radius"] for r in rows], "o-", label="cycle radius (state PCA)")
            b.plot(d, [r["output_amplitude"] for r in rows], "s--", label="body amplitude (rad)")
            b2 = b.twinx()
            b2.plot(d, [r["rotation_hz"] for r in rows], "^:", color="C2", label="rotation frequency (Hz)")
            b2.set(ylabel="Hz")
            for border in (start, switch, stop):
                b.axvline(border, color="0.7", lw=0.8)
            b.set(title="limit cycle vs drive", xlabel="drive d")
            b.legend(fontsize=7, loc="upper left")
            b2.legend(fontsize=7, loc="upper right")
            figures["pca_limit_cycles"] = self._save(ctx, fig, "pca_limit_cycles")
        return result

    def ablation(self, ctx: RunContext, model: SequenceModel, cpg: SalamanderCPG, warmup: int,
                 figures: dict[str, str]) -> dict[str, Any]:
        """Silence each hidden unit (clamp it to 0 in every state part) and measure what is left of the rhythm."""
        p, dt, n = self.params, cpg.p.dt, cpg.p.segments
        parts = state_units(model)
        width = model.state_spec[parts[0]][0]
        steps = _steps(p.ablation_seconds, dt)
        pairs = [(d, d) for d in p.ablation_drives]
        drives = torch.tensor(pairs, dtype=torch.float32).unsqueeze(0).expand(steps, -1, -1).contiguous()
        truth = self.cpg_run(cpg, drives, ctx.config.seed + 5)
        tail = slice(steps - _steps(min(8.0, p.ablation_seconds / 2), dt), steps)

        # one batched run: sample i * (1 + width) is intact at drive i, the next ``width`` samples each silence
        # one unit (0 in every state part); NaN leaves a unit free
        block = 1 + width
        count = len(pairs) * block
        values = torch.full((count, width), float("nan"))
        for i in range(len(pairs)):
            values[i * block + 1 + torch.arange(width), torch.arange(width)] = 0.0
        index = torch.arange(len(pairs)).repeat_interleave(block)
        out, _ = self.run_model(model, drives[:, index], truth[:, index], warmup,
                                forcing=Forcing([Clamp(part, values, None, start=warmup) for part in parts]))
        metrics = [gait_metrics(out[tail, b].numpy(), dt, n) for b in range(count)]
        base_amp = [metrics[i * block]["amplitude"] for i in range(len(pairs))]
        base_freq = [metrics[i * block]["frequency"] for i in range(len(pairs))]
        ratio = np.array([[metrics[i * block + 1 + u]["amplitude"] / max(base_amp[i], 1e-9) for u in range(width)]
                          for i in range(len(pairs))])
        critical = {f"{d:g}": [int(u) for u in np.where(ratio[i] < 0.5)[0]] for i, d in enumerate(p.ablation_drives)}
        result = {"drives": p.ablation_drives, "baseline_amplitude": [_f(a) for a in base_amp],
                  "baseline_frequency": [_f(f) for f in base_freq],
                  "amplitude_ratio": [[_f(v, 3) for v in row] for row in ratio],
                  "critical_units": critical,
                  "note": "amplitude after silencing one unit / amplitude intact; < 0.5 marks a unit the rhythm needs"}
        if ctx.plots_enabled:
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(12, 2.2 + 0.4 * len(pairs)))
            im = ax.imshow(ratio, aspect="auto", cmap="magma", vmin=0, vmax=max(1.2, float(ratio.max())))
            ax.set(yticks=range(len(pairs)), yticklabels=[f"d={d:g}" for d in p.ablation_drives],
                   xlabel="hidden unit silenced", title="ablation map: body amplitude relative to the intact model")
            fig.colorbar(im, ax=ax)
            figures["ablation_map"] = self._save(ctx, fig, "ablation_map")
        return result

    # ------------------------------------------------------------------ plots and report
    def plot_evaluation(self, ctx: RunContext, ev: dict[str, Any], figures: dict[str, str]) -> None:
        """Frequency and amplitude vs drive, and the phase-lag profile."""
        if not ctx.plots_enabled:
            return
        import matplotlib.pyplot as plt

        n = self.params.cpg.segments
        rows = ev["rows"][:ev["levels"]]
        d = [r["d_L"] for r in rows]
        fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
        a.plot(d, [r["cpg"]["frequency"] for r in rows], "ks-", label="CPG")
        a.plot(d, [r["rnn"]["frequency"] for r in rows], "o--", color="C1", label="RNN (held-out drives)")
        a.set(title="frequency vs drive", xlabel="drive d", ylabel="Hz")
        a.legend()
        b.plot(d, [r["cpg"]["amplitude"] for r in rows], "ks-", label="CPG")
        b.plot(d, [r["rnn"]["amplitude"] for r in rows], "o--", color="C1", label="RNN")
        b.set(title="body amplitude vs drive", xlabel="drive d", ylabel="rad")
        b.legend()
        figures["frequency_vs_drive"] = self._save(ctx, fig, "frequency_vs_drive")

        fig, ax = plt.subplots(figsize=(8, 4.5))
        seg = np.arange(1, n)
        for i, r in enumerate(rows):
            if r["cpg"]["frequency"] > 0 and r["d_L"] in (2.25, 4.0, 4.5, 1.75, 3.5):
                line, = ax.plot(seg, r["cpg"]["lags"], "s-", color=f"C{i % 10}", label=f"CPG d={r['d_L']:g}")
                ax.plot(seg, r["rnn"]["lags"], "o--", color=line.get_color(), label=f"RNN d={r['d_L']:g}")
        ax.axhline(2 * math.pi / n, color="0.5", lw=0.8)
        ax.set(title="phase lag between segments k and k+1 (swimming: 2pi/8; walking: jump at 4-5)",
               xlabel="segment k", ylabel="lag (rad)")
        ax.legend(fontsize=7, ncol=2)
        figures["phase_lag_profile"] = self._save(ctx, fig, "phase_lag_profile")

    @staticmethod
    def _provenance_line(results: dict[str, Any]) -> str:
        prov, choice = results["provenance"], results["weights_choice"]
        spread = "; ".join(f"{k} {lo:g} to {hi:g}" for k, (lo, hi) in prov["shipped_recipe_spread"].items())
        kept = (f"Weights kept: `{choice['chosen']}` (of {len(choice['candidates'])} candidates, chosen on "
                f"validation drives: {choice['method']})." if "candidates" in choice else
                f"Weights kept: {choice['note']}.")
        return (f"Produced with torch {prov['torch']}, {prov['threads']} thread(s), seed {prov['seed']}; "
                f"{prov['note']}. {kept}" + (f" Spread of the shipped recipe over {prov['shipped_recipe_spread_from']}"
                                             f": {spread}." if spread else ""))

    @staticmethod
    def _save(ctx: RunContext, fig: Any, name: str) -> str:
        ctx.save_plot(fig, name)
        import matplotlib.pyplot as plt

        plt.close(fig)
        return f"plots/{name}.png"

    def write_report(self, ctx: RunContext, results: dict[str, Any], figures: dict[str, str]) -> None:
        """``report.md``: targets, steering, analysis and the figures."""
        from statesim.fileio import atomic_write_text

        ev = results["evaluation"]
        lines = ["# Salamander locomotion: a learned RNN model of the spinal CPG", "",
                 f"Model: `{ctx.config.model.cell.type}` cell; trained on {results['data']['train_windows']} windows "
                 f"of {results['data']['window_steps']} steps (50 Hz) with a {results['data']['warmup_steps']}-step "
                 f"observation warm-up; evaluated on held-out drives, running autonomously for "
                 f"{ev['eval_seconds']:.0f} s.", "", self._provenance_line(results), "",
                 "## Targets", "", "| target | value | goal | met |",
                 "|---|---|---|---|"]
        for name, m in ev["targets"].items():
            lines.append(f"| {name} | `{m['value']}` | {m['target']} | {'yes' if m['pass'] else 'NO'} |")
        lines += ["", "| d_L | d_R | f RNN | f CPG | amp RNN | amp CPG | offset RNN | offset CPG |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in ev["per_condition"]:
            lines.append(f"| {r['d_L']:g} | {r['d_R']:g} | {r['rnn_frequency']} | {r['cpg_frequency']} | "
                         f"{r['rnn_amplitude']} | {r['cpg_amplitude']} | {r['rnn_offset']} | {r['cpg_offset']} |")
        test = results["test_trajectories"]
        lines += ["", f"Held-out trajectories: RMSE {test['rmse']} rad against a signal std of {test['signal_std']}.",
                  ""]
        for key in ("learned_vs_true", "frequency_vs_drive", "phase_lag_profile"):
            if key in figures:
                lines += [f"![{key}]({figures[key]})", ""]
        steer = results["steering"]
        lines += ["## Steering by forcing", "", "Input clamps (from the scenario's `forcing:` section):", "",
                  "| window (s) | drives | intended (CPG) | RNN did | f RNN / CPG | met |", "|---|---|---|---|---|---|"]
        for c in steer["input"].get("commands", []):
            lines.append(f"| {c['start_s']:.0f}-{c['stop_s']:.0f} | {c['d_L']}, {c['d_R']} | "
                         f"{', '.join(c['intended']) or 'steady'} | {', '.join(c['rnn_effect']) or 'steady'} | "
                         f"{c['rnn']['frequency']} / {c['cpg']['frequency']} | {'yes' if c['pass'] else 'NO'} |")
        sp, tu = steer["neurons"]["speed"], steer["neurons"]["turning"]
        fast, slow = sp["clamp_values_from"]["fast"][0], sp["clamp_values_from"]["slow"][0]
        left, right = (tuple(tu["clamp_values_from"][k]) for k in ("left", "right"))
        sp_units = ", ".join(f"{u['part']}[{u['unit']}]" for u in sp["units"])
        tu_units = ", ".join(f"{u['part']}[{u['unit']}]" for u in tu["units"])
        lines += ["", f"Neuron clamps (inputs fixed at d = {sp['input_drive']}; units chosen by a clamp sweep: "
                      f"{steer['neurons']['method']}). Clamping {len(sp['units'])} units ({sp_units}) to their "
                      f"cycle means at d = {fast:g} / {slow:g} gives {sp['frequency_clamped_fast']} / "
                      f"{sp['frequency_clamped_slow']} Hz (unclamped {sp['frequency_base']} Hz; the RNN's own "
                      f"response to the input {fast:g} vs {slow:g} is {sp['input_effect_hz']['rnn_fast_minus_slow']} Hz, the "
                      f"neuron clamps reach {sp['fraction_of_input_effect']} of it; speed steering "
                      f"{'works' if sp['pass'] else 'does NOT work'}). Clamping {len(tu['units'])} units "
                      f"({tu_units}) to their cycle means at (d_L, d_R) = {left} / {right} gives mean body "
                      f"angles {tu['offset_clamped_left']} / {tu['offset_clamped_right']} rad (unclamped "
                      f"{tu['offset_base']}; {tu['fraction_of_input_effect']} of the input's effect; turning "
                      f"steering {'works' if tu['pass'] else 'does NOT work'}).", ""]
        for key in ("steering_inputs", "steering_neurons"):
            if key in figures:
                lines += [f"![{key}]({figures[key]})", ""]
        pca, abl = results["analysis"]["pca"], results["analysis"]["ablation"]
        lines += ["## Mechanism", "",
                  f"- The hidden state ({', '.join(pca['state_parts'])}) moves on a limit cycle while it moves; "
                  f"the correlation of its radius (PC1-PC2 plane of each drive) with the body amplitude across "
                  f"drives is {pca['radius_vs_amplitude_correlation']} (other measures: "
                  f"{pca['radius_vs_amplitude_correlation_other_measures']}).",
                  f"- The rotation frequency of the state in its PC1-PC2 plane (slope of the unwrapped angle) matches "
                  f"the output frequency to within "
                  f"{pca['rotation_vs_output_frequency_max_error_hz']} Hz.",
                  f"- Where the body is still the cycle collapses to a fixed point: largest radius there is "
                  f"{pca['fixed_point_outside_1_5']['max_relative_radius']} of the largest cycle.",
                  f"- Top-5 explained variance of the pooled PCA: {pca['explained_variance_top5']}."]
        for border, c in pca["drive_crossings"].items():
            lines.append(f"- Crossing d = {border}: radius {c['below']['radius']} -> {c['above']['radius']}, "
                         f"frequency {c['below']['output_hz']} -> {c['above']['output_hz']} Hz.")
        for d, units in abl["critical_units"].items():
            lines.append(f"- Ablation at d = {d}: silencing any of {len(units)} units {units} halves the rhythm or "
                         f"worse; the other units can be silenced with less effect.")
        lines.append("")
        for key in ("pca_limit_cycles", "ablation_map"):
            if key in figures:
                lines += [f"![{key}]({figures[key]})", ""]
        atomic_write_text(ctx.run_dir / "report.md", "\n".join(lines) + "\n")


@hookimpl
def statesim_scenarios() -> list[Registration]:
    """Register the scenario."""
    return [Registration("salamander", Salamander, SalamanderParams,
                         "learn an RNN model of salamander locomotion from a spinal CPG, steer it by forcing, "
                         "analyse its limit cycles")]
