"""Scenario ``salamander_swim``: the salamander's controllers in a closed loop with a MuJoCo swimmer.

1. The ground-truth CPG (``salamander_cpg``, stepped one tick per 20 ms control step through
   ``statesim.embed``) drives the swimmer's PD servos at several drives and seeds (random initial phases):
   speed must grow with drive, and d_L != d_R must turn the body toward the stronger side.
2. A trained ``salamander`` RNN run (``rnn_run``; trained here first when not given) is loaded with
   ``statesim.embed.load`` and stepped the same way, after the 1 s observation warm-up it was trained
   with; its forward distance must reach ``distance_ratio_target`` of the CPG's at the same drive and seed.
3. Steering mid-run by forcing at step time (``sim.force``): the RNN's drive inputs, then its hidden units
   most tied to drive level and to left-right asymmetry (picked by correlation, through ``get_state``),
   each command judged by the speed and heading change it causes.

MuJoCo is imported only inside ``run`` (and its helpers), so listing plugins stays cheap.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from statesim import RunContext, Scenario, ScenarioParams

from statesim_mujoco.swimmer import SwimmerParams

if TYPE_CHECKING:
    from statesim_mujoco.loop import Episode

Pair = tuple[float, float]

#: The registered cell whose parameters ``cpg`` holds: found through the registry, so this plugin needs no
#: import path of it (only that the cell is registered, as statesim's built-ins are).
CPG_CELL = "salamander_cpg"


def cpg_params(registry: Any, data: dict[str, Any]) -> Any:
    """``data`` validated by the params model the registered ``salamander_cpg`` cell declares."""
    return registry.get("cell", CPG_CELL).record.params.model_validate(data)


class Command(BaseModel):
    """One steering command: a clamp from ``start_s`` to ``stop_s`` and the effect it should have."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    start_s: float = Field(..., ge=0, description="when the clamp starts, s from the run's start")
    stop_s: float = Field(..., gt=0, description="when it ends, s")
    kind: Literal["input", "speed_units", "turn_units"] = Field(
        ..., description="'input': clamp the drive inputs (units 0 = d_L, 1 = d_R) to `drives`; 'speed_units' / "
                         "'turn_units': clamp the hidden units most tied to drive level / to d_L - d_R to the mean "
                         "values they take at `drives` (the inputs stay at the base drive)")
    drives: Pair = Field(..., description="(d_L, d_R): the forced drives, or the drives whose unit activity is imposed")
    expect: Literal["faster", "slower", "stop", "left", "right"] = Field(
        ..., description="the intended effect, judged against the unforced base window before the first command")

    @model_validator(mode="after")
    def _order(self) -> "Command":
        if self.stop_s <= self.start_s:
            raise ValueError("stop_s must be after start_s")
        return self


def _input_commands() -> list[Command]:
    return [Command(start_s=12, stop_s=22, kind="input", drives=(4.75, 4.75), expect="faster"),
            Command(start_s=22, stop_s=32, kind="input", drives=(4.25, 3.75), expect="left"),
            Command(start_s=32, stop_s=42, kind="input", drives=(3.75, 4.25), expect="right"),
            Command(start_s=42, stop_s=50, kind="input", drives=(0.5, 0.5), expect="stop")]


def _neuron_commands() -> list[Command]:
    return [Command(start_s=12, stop_s=22, kind="speed_units", drives=(4.75, 4.75), expect="faster"),
            Command(start_s=22, stop_s=32, kind="speed_units", drives=(3.25, 3.25), expect="slower"),
            Command(start_s=32, stop_s=42, kind="turn_units", drives=(4.4, 3.6), expect="left"),
            Command(start_s=42, stop_s=52, kind="turn_units", drives=(3.6, 4.4), expect="right")]


class SalamanderSwimParams(ScenarioParams):
    swimmer: SwimmerParams = Field(default_factory=SwimmerParams, description="MJCF geometry, medium and PD servo")
    cpg: dict[str, Any] = Field(default_factory=dict, validate_default=True,
                                description=f"parameters of the ground-truth CPG (cell {CPG_CELL}); its dt is the "
                                            f"control period")
    rnn_run: str | None = Field(None, description="a finished `statesim run scenarios/salamander.yaml` folder; "
                                                  "null: train one first (train_scenario) inside this run's folder")
    train_scenario: str = Field("scenarios/salamander.yaml", description="scenario file trained when rnn_run is null")
    train_overrides: list[str] = Field(default_factory=list, description="--set overrides for that training run")
    drives: list[float] = Field([0.5, 2.0, 3.25, 3.75, 4.25, 4.75],
                                description="constant drives (d_L = d_R) of the CPG speed test, increasing")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="seeds of the random initial CPG phases")
    turn_pairs: list[Pair] = Field([(4.5, 3.5), (3.5, 4.5), (2.3, 1.7), (1.7, 2.3)],
                                   description="(d_L, d_R) pairs of the turning test")
    swim_seconds: float = Field(15.0, gt=0, description="length of each CPG run, s")
    settle_seconds: float = Field(3.0, ge=0, description="start-up transient skipped before measuring, s")
    min_turn_rate: float = Field(1.0, gt=0, description="|turn rate| (deg/s) that counts as a turn")
    compare_drives: list[float] = Field([3.5, 4.0, 4.5], min_length=1,
                                        description="drives at which the RNN's distance is compared to the CPG's")
    compare_seconds: float = Field(20.0, gt=0, description="length of the RNN-vs-CPG runs, s")
    warmup_seconds: float = Field(1.0, ge=0, description="observation warm-up of the RNN (as in its training), s")
    distance_ratio_target: float = Field(0.8, gt=0, description="target: RNN distance / CPG distance")
    input_base: Pair = Field((3.5, 3.5), description="drives of the input-steering run outside its commands")
    input_commands: list[Command] = Field(default_factory=_input_commands, description="drive-input clamps")
    neuron_base: Pair = Field((4.0, 4.0), description="drives of the neuron-steering run (inputs never clamped)")
    neuron_commands: list[Command] = Field(default_factory=_neuron_commands, description="hidden-unit clamps")
    neuron_counts: list[int] = Field([4, 8, 12, 16, 24], min_length=1,
                                     description="how many of the top-ranked neurons to clamp: each count is tried on "
                                                 "the RNN alone (no body), and per purpose the one with the largest "
                                                 "right-signed effect on its output (frequency, mean body angle) that "
                                                 "keeps the rhythm is used in the loop")
    unit_parts: list[str] | None = Field(None, description="state parts clamped for each chosen neuron; null: every "
                                                           "vector part of the hidden width (an LSTM's h and c)")
    unit_grid: list[float] = Field([3.25, 3.75, 4.25, 4.75], min_length=2,
                                   description="drive levels of the unit-correlation analysis")
    unit_seconds: float = Field(20.0, gt=0, description="length of the open-loop runs of that analysis (the last "
                                                        "60% are averaged), s")
    unit_asymmetry: float = Field(0.8, gt=0, description="d_L - d_R of the asymmetric conditions of that analysis")
    speed_margin: float = Field(0.01, ge=0, description="relative speed change that counts as faster/slower")
    render: bool = Field(True, description="try an offscreen frame strip (EGL / OSMesa); reported when unavailable")
    render_frames: int = Field(6, ge=1, le=20, description="frames in the strip (one cycle at the compare drive)")

    @field_validator("cpg")
    @classmethod
    def _cpg(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        registry = (info.context or {}).get("registry")
        if registry is None:  # built without a config: validated where it runs, against ctx.host.registry
            return value
        try:
            return dict(cpg_params(registry, value).model_dump())  # with its defaults, as the resolved config shows
        except KeyError as exc:  # the cell is not registered (its plugin blocked): the registry's own message
            raise ValueError(str(exc)) from None
        except ValidationError as exc:
            raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None

    @model_validator(mode="after")
    def _checks(self) -> "SalamanderSwimParams":
        if any(b <= a for a, b in zip(self.drives, self.drives[1:])):
            raise ValueError("drives must be strictly increasing (speed is checked to grow along them)")
        if self.settle_seconds >= self.swim_seconds:
            raise ValueError("settle_seconds must be shorter than swim_seconds")
        if self.warmup_seconds + self.settle_seconds >= self.compare_seconds:
            raise ValueError("compare_seconds must exceed warmup_seconds + settle_seconds")
        for name in ("input_commands", "neuron_commands"):
            commands = getattr(self, name)
            if commands and commands[0].start_s <= self.warmup_seconds + 2:
                raise ValueError(f"{name}: the first command must start at least 2 s after the warm-up "
                                 f"(the unforced base window is measured before it)")
        if any(c.kind != "input" for c in self.input_commands):
            raise ValueError("input_commands must all be kind: input")
        if any(c.kind == "input" for c in self.neuron_commands):
            raise ValueError("neuron_commands must be kind speed_units or turn_units")
        return self


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


class SalamanderSwim(Scenario[SalamanderSwimParams]):
    """The CPG and a learned RNN swim a MuJoCo body through PD servos; speed, heading, steering by forcing."""

    Params = SalamanderSwimParams

    def run(self, ctx: RunContext) -> dict[str, Any]:
        import torch

        from statesim_mujoco.controllers import CPGController, RNNController
        from statesim_mujoco.swimmer import describe

        torch.set_num_threads(1)  # one tick is tiny: threads only add overhead on a shared CPU
        p = self.params
        registry = ctx.host.registry
        self.cpg = cpg_params(registry, p.cpg)  # typed by the cell's own model (the registry's): self.cpg.dt
        cpg_dump = self.cpg.model_dump()
        n, dt = self.cpg.segments, self.cpg.dt
        if n != p.swimmer.joints:
            from statesim.errors import StatesimError

            raise StatesimError(f"salamander_swim: the CPG has {n} body segments but the swimmer has "
                                f"{p.swimmer.joints} joints; set swimmer.joints = cpg.segments.")
        results: dict[str, Any] = {"swimmer": describe(p.swimmer), "control_dt_s": dt}
        figures: dict[str, Any] = {}

        self.host_registry = registry
        run_dir, trained_here = self.rnn_run(ctx)  # first: a bad path fails before any simulation
        rnn = RNNController(run_dir, n, registry=registry)
        cpg_part, episodes = self.cpg_tests(ctx, registry, cpg_dump, figures)
        results["cpg"] = cpg_part
        results["rnn"] = {"run": str(run_dir), "trained_here": trained_here}
        cpg = CPGController(registry, cpg_dump)
        results["rnn"].update(self.compare(ctx, rnn, cpg, figures, episodes))
        results["steering"] = {"input": self.steer(ctx, rnn, cpg, "input", figures),
                               "neurons": self.steer(ctx, rnn, cpg, "neurons", figures)}
        self.plot_paths(ctx, episodes, figures)
        results["rendering"] = self.render(ctx, episodes) if p.render else {"available": False,
                                                                           "reason": "render: false"}
        results["targets_met"] = {
            "cpg_speed_grows_with_drive": cpg_part["speed_grows_with_drive"]["pass"],
            "cpg_turns_the_right_way": cpg_part["turning"]["pass"],
            "pd_tracking": cpg_part["pd_tracking"]["pass"],
            "rnn_distance_ratio": results["rnn"]["distance_ratio"]["pass"],
            "steer_inputs": results["steering"]["input"]["all_pass"],
            "steer_neurons": results["steering"]["neurons"]["all_pass"]}
        return results

    # ------------------------------------------------------------------ 1. the CPG drives the swimmer
    def cpg_tests(self, ctx: RunContext, registry: Any, cpg_dump: dict[str, Any], figures: dict[str, Any]
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Speed vs drive and turning, every seed; PD tracking error."""
        from statesim_mujoco.controllers import CPGController
        from statesim_mujoco.loop import constant, run_cpg
        from statesim_mujoco.metrics import locomotion, rounded
        from statesim_mujoco.swimmer import Swimmer

        p, dt = self.params, self.cpg.dt
        pairs = [(d, d) for d in p.drives] + [tuple(t) for t in p.turn_pairs]
        steps = int(round(p.swim_seconds / dt))
        cpg = CPGController(registry, cpg_dump, len(pairs))
        swimmer = Swimmer(p.swimmer, dt, len(pairs))
        speed_rows: list[dict[str, Any]] = [{"drive": d, "per_seed": []} for d in p.drives]
        turn_rows: list[dict[str, Any]] = [{"d_L": a, "d_R": b, "per_seed": []} for a, b in p.turn_pairs]
        errors, amplitudes = [], []
        episodes: dict[str, Episode] = {}
        for seed in p.seeds:
            ctx.echo(f"salamander_swim: CPG drives the swimmer ({len(pairs)} conditions, seed {seed})")
            ep = run_cpg(cpg, swimmer, constant(pairs, steps), seed)
            episodes.setdefault("cpg", ep)
            tail = slice(int(round(p.settle_seconds / dt)), steps)
            moving = [b for b, (a, _) in enumerate(pairs) if 1 <= a <= 5]
            errors.append(np.sqrt(np.mean((ep.joints[tail][:, moving] - ep.targets[tail][:, moving]) ** 2)))
            amplitudes.append(np.sqrt(np.mean(ep.targets[tail][:, moving] ** 2)))
            for b in range(len(pairs)):
                m = rounded(locomotion(*ep.agent(b), dt, p.settle_seconds))
                if b < len(p.drives):
                    speed_rows[b]["per_seed"].append({"seed": seed, **m})
                else:
                    turn_rows[b - len(p.drives)]["per_seed"].append({"seed": seed, **m})
        for row in speed_rows:
            row["mean_speed_mps"] = _r(float(np.mean([s["speed_mps"] for s in row["per_seed"]])))
        grows = {}
        for i, seed in enumerate(p.seeds):
            speeds = [row["per_seed"][i]["speed_mps"] for row in speed_rows]
            grows[str(seed)] = bool(all(b > a for a, b in zip(speeds, speeds[1:])))
        turn_ok = []
        for row in turn_rows:
            sign = np.sign(row["d_L"] - row["d_R"])
            for s in row["per_seed"]:
                rate = s["turn_rate_deg_s"] or 0.0
                s["turned"] = "left" if rate >= p.min_turn_rate else "right" if rate <= -p.min_turn_rate else "straight"
                s["pass"] = bool(sign != 0 and np.sign(rate) == sign and abs(rate) >= p.min_turn_rate)
                turn_ok.append(s["pass"])
        straight_rates = [abs(s["turn_rate_deg_s"]) for row in speed_rows for s in row["per_seed"]
                          if s["turn_rate_deg_s"] is not None]
        rms, amp = float(np.mean(errors)), float(np.mean(amplitudes))
        part = {
            "speed_vs_drive": speed_rows,
            "speed_grows_with_drive": {"value": {"mean_speed_mps": [r["mean_speed_mps"] for r in speed_rows],
                                                 "per_seed_increasing": grows},
                                       "target": f"speed strictly increasing over drives {p.drives} for every seed",
                                       "pass": all(grows.values())},
            "turning": {"rows": turn_rows,
                        "value": {"turn_rates_deg_s": [[s["turn_rate_deg_s"] for s in r["per_seed"]]
                                                       for r in turn_rows],
                                  "straight_max_abs_turn_rate_deg_s": _r(max(straight_rates, default=0.0))},
                        "target": f"d_L > d_R turns left (heading rate >= +{p.min_turn_rate} deg/s), d_L < d_R right, "
                                  f"for every seed",
                        "pass": bool(turn_ok) and all(turn_ok)},
            "pd_tracking": {"value": {"rms_error_rad": _r(rms), "rms_target_rad": _r(amp),
                                      "relative": _r(rms / max(amp, 1e-9))},
                            "target": "RMS joint error <= 15% of the RMS joint target (drives in [1, 5])",
                            "pass": rms <= 0.15 * amp}}
        return part, episodes

    # ------------------------------------------------------------------ 2. the learned RNN
    def rnn_run(self, ctx: RunContext) -> tuple[Path, bool]:
        """The trained run to load: ``rnn_run``, or a salamander run trained now into ``<run>/rnn``."""
        from statesim.errors import StatesimError

        p = self.params
        if p.rnn_run is not None:
            path = Path(p.rnn_run).expanduser()
            if not path.exists():
                raise StatesimError(f"salamander_swim: rnn_run '{p.rnn_run}' does not exist. Train one with "
                                    f"`statesim run scenarios/salamander.yaml --out runs/salamander` and pass "
                                    f"--set scenario.rnn_run=runs/salamander (or leave rnn_run: null to train here).")
            return path, False
        finished = ctx.resume and (ctx.run_dir / "rnn" / "results.json").is_file()  # reused, file or not
        if not finished and not Path(p.train_scenario).is_file():
            raise StatesimError(f"salamander_swim: rnn_run is null, so the RNN is trained first from "
                                f"train_scenario '{p.train_scenario}', which does not exist (paths are relative to "
                                f"where statesim runs: run from the repository root, or pass scenario.rnn_run).")
        if not finished:
            ctx.echo(f"salamander_swim: no rnn_run given; training one: statesim run {p.train_scenario} "
                     f"--out {ctx.run_dir / 'rnn'}")
        # A sub-run: on --resume a finished one is reused and an interrupted one resumed, not trained again.
        return ctx.sub_run(p.train_scenario, "rnn", p.train_overrides), True

    def compare(self, ctx: RunContext, rnn: Any, cpg: Any, figures: dict[str, Any], episodes: dict[str, Any]
                ) -> dict[str, Any]:
        """RNN vs CPG distance at the same drives and seeds (same warm-up: the CPG's first second)."""
        from statesim_mujoco.controllers import CPGController
        from statesim_mujoco.loop import constant, run_cpg, run_rnn
        from statesim_mujoco.metrics import locomotion, rounded
        from statesim_mujoco.swimmer import Swimmer

        p, dt = self.params, self.cpg.dt
        pairs = [(d, d) for d in p.compare_drives] + [tuple(t) for t in p.turn_pairs]
        steps, warmup = int(round(p.compare_seconds / dt)), int(round(p.warmup_seconds / dt))
        start = p.warmup_seconds + p.settle_seconds
        swimmer = Swimmer(p.swimmer, dt, len(pairs))
        rnn.reset(len(pairs))
        cpg_many = CPGController(ctx.host.registry, self.cpg.model_dump(), len(pairs))
        rows, ratios, turns = [], [], []
        for seed in p.seeds:
            ctx.echo(f"salamander_swim: RNN vs CPG in the loop (seed {seed})")
            drives = constant(pairs, steps)
            ep_cpg = run_cpg(cpg_many, swimmer, drives, seed)
            ep_rnn = run_rnn(rnn, cpg_many, swimmer, drives, seed, warmup)
            if seed == p.seeds[0]:
                episodes["compare_cpg"], episodes["compare_rnn"] = ep_cpg, ep_rnn
            for b, (d_l, d_r) in enumerate(pairs):
                mc = locomotion(*ep_cpg.agent(b), dt, start)
                mr = locomotion(*ep_rnn.agent(b), dt, start)
                if b >= len(p.compare_drives):
                    rate = mr["turn_rate_deg_s"] or 0.0
                    turns.append({"d_L": d_l, "d_R": d_r, "seed": seed,
                                  "cpg_turn_rate_deg_s": _r(mc["turn_rate_deg_s"]),
                                  "rnn_turn_rate_deg_s": _r(rate), "rnn_speed_mps": _r(mr["speed_mps"]),
                                  "same_direction": bool(np.sign(rate) == np.sign(d_l - d_r)
                                                         and abs(rate) >= p.min_turn_rate)})
                    continue
                ratio = mr["distance_m"] / max(mc["distance_m"], 1e-9)
                ratios.append(ratio)
                rows.append({"drive": d_l, "seed": seed, "distance_ratio": _r(ratio),
                             "speed_ratio": _r(mr["speed_mps"] / max(mc["speed_mps"], 1e-9)),
                             "cpg": rounded(mc), "rnn": rounded(mr)})
        return {"per_drive": rows, "measured_from_s": start,
                "turning": {"rows": turns, "all_same_direction": all(t["same_direction"] for t in turns),
                            "note": "informational: the learned RNN's own turning at the turn_pairs, in the loop "
                                    "(the salamander run's turning_offset target judges it open loop)"},
                "distance_ratio": {"value": {"min": _r(min(ratios)), "mean": _r(float(np.mean(ratios)))},
                                   "target": f"RNN distance >= {p.distance_ratio_target:.0%} of the CPG's at every "
                                             f"drive {p.compare_drives} and seed",
                                   "pass": min(ratios) >= p.distance_ratio_target}}

    # ------------------------------------------------------------------ 3. steering by forcing
    def pick_units(self, ctx: RunContext, rnn: Any, cpg: Any) -> dict[str, Any]:
        """Neurons most tied to drive level and to d_L - d_R, by correlation of their mean activity (via get_state).

        A neuron is one unit index across the clamped state parts (an LSTM's ``h_i`` and ``c_i``): it is
        scored by its best part and clamped in all of them to the means they take in the chosen condition.
        """
        from statesim_mujoco.controllers import CPGController
        from statesim_mujoco.loop import Force, constant, rnn_open_loop

        p, dt = self.params, self.cpg.dt
        a = p.unit_asymmetry
        pairs = [(m + s * a / 2, m - s * a / 2) for m in p.unit_grid for s in (-1, 0, 1)]
        steps, warmup = int(round(p.unit_seconds / dt)), int(round(p.warmup_seconds / dt))
        cpg_many = CPGController(ctx.host.registry, self.cpg.model_dump(), len(pairs))
        _, states = rnn_open_loop(rnn, cpg_many, constant(pairs, steps), p.seeds[0], warmup,
                                  int(round(p.unit_seconds * 0.4 / dt)), states=True)
        widths = {part: v.shape[-1] for part, v in states.items() if v.ndim == 3}
        width = max(widths.values())
        parts = list(p.unit_parts) if p.unit_parts else [part for part, w in widths.items() if w == width]
        bad = [part for part in parts if widths.get(part) != width]
        if bad:
            from statesim.errors import StatesimError

            raise StatesimError(f"salamander_swim: unit_parts {bad} are not state parts of the RNN's hidden width "
                                f"{width}; its vector parts are {widths} (or set unit_parts: null for all of them).")
        means = {part: states[part].astype(np.float64).mean(0) for part in parts}  # [B, U]
        osc = {part: states[part].astype(np.float64).std(0).mean(0) for part in parts}  # [U]
        level = np.array([(left + right) / 2 for left, right in pairs])
        asym = np.array([left - right for left, right in pairs])

        def score(part: str, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            x, y = means[part] - means[part].mean(0), target - target.mean()
            corr = (x * y[:, None]).sum(0) / (np.linalg.norm(x, axis=0) * np.linalg.norm(y) + 1e-12)
            tonic = x.std(0) / (x.std(0) + osc[part] + 1e-12)  # its level, not its rhythm, carries the drive
            return np.abs(corr) * tonic, corr

        ranked = {}
        for purpose, target in (("speed_units", level), ("turn_units", asym)):
            scored = {part: score(part, target) for part in parts}
            best = np.max([scored[part][0] for part in parts], axis=0)
            ranked[purpose] = (np.argsort(-best), best, scored)

        def value_at(drives: Pair, units: list[int]) -> dict[str, tuple[list[int], np.ndarray]]:
            # every part of the neurons at its mean in the analysed condition nearest to `drives`
            b = int(np.argmin([abs(left - drives[0]) + abs(right - drives[1]) for left, right in pairs]))
            return {part: (list(units), means[part][b, units].astype(np.float32)) for part in parts}

        chosen = {}
        mean = float(np.mean(p.neuron_base))
        probes = {"speed_units": ((p.unit_grid[-1], p.unit_grid[-1]), (p.unit_grid[0], p.unit_grid[0])),
                  "turn_units": ((mean + a / 2, mean - a / 2), (mean - a / 2, mean + a / 2))}
        base = self._open_loop(rnn, cpg, [])[0]
        for purpose, (order, best, scored) in ranked.items():
            trials: list[dict[str, Any]] = []
            for count in p.neuron_counts:
                units = [int(u) for u in order[:count]]
                plus, minus = probes[purpose]
                forces = [Force(warmup, steps, part, units, np.stack([value_at(plus, units)[part][1],
                                                                     value_at(minus, units)[part][1]]))
                          for part in parts]
                got = self._open_loop(rnn, cpg, forces)
                key = "frequency_hz" if purpose == "speed_units" else "offset_rad"
                effect = got[0][key] - got[1][key]
                ordered = got[0][key] > base[key] > got[1][key]
                rhythm = min(got[0]["amplitude_rad"], got[1]["amplitude_rad"]) >= 0.5 * base["amplitude_rad"]
                trials.append({"neurons": count, f"{key}_plus": _r(got[0][key]), f"{key}_minus": _r(got[1][key]),
                               f"{key}_base": _r(base[key]), "effect": _r(effect), "ordered": bool(ordered),
                               "rhythm_kept": bool(rhythm), "units": units})
            good = [t for t in trials if t["ordered"] and t["rhythm_kept"]] or trials
            pick = max(good, key=lambda t: t["effect"])
            units = pick["units"]
            chosen[purpose] = {
                "units": units, "calibration": [{k: v for k, v in t.items() if k != "units"} for t in trials],
                "chosen_count": pick["neurons"],
                "list": [{"unit": u, "score": _r(float(best[u]), 3),
                          "correlation": {part: _r(float(scored[part][1][u]), 3) for part in parts}} for u in units]}
        return {"chosen": chosen, "value_at": value_at, "pairs": pairs, "parts": parts}

    def _open_loop(self, rnn: Any, cpg: Any, forces: list[Any]) -> list[dict[str, float]]:
        """Frequency, mean body angle and amplitude of the RNN's own output (no body) at the neuron base drive."""
        from statesim_mujoco.controllers import CPGController
        from statesim_mujoco.loop import constant, rnn_open_loop
        from statesim_mujoco.metrics import cycle_times

        p, dt, n = self.params, self.cpg.dt, self.cpg.segments
        batch = 2 if forces else 1
        steps, warmup = int(round(p.unit_seconds / dt)), int(round(p.warmup_seconds / dt))
        keep = int(round(p.unit_seconds * 0.4 / dt))
        cpg_many = CPGController(self.host_registry, self.cpg.model_dump(), batch)
        out, _ = rnn_open_loop(rnn, cpg_many, constant([p.neuron_base] * batch, steps), p.seeds[0], warmup, keep,
                               forces)
        rows = []
        for b in range(batch):
            body = out[:, b, :n].astype(np.float64)
            times = cycle_times(body[:, 0] - body[:, n // 2], dt)
            freq = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else 0.0
            rows.append({"frequency_hz": float(freq), "offset_rad": float(body.mean()),
                         "amplitude_rad": float(body.std(0).mean())})
        return rows

    def steer(self, ctx: RunContext, rnn: Any, cpg: Any, which: str, figures: dict[str, Any]) -> dict[str, Any]:
        """Run the RNN in the loop with the commands of ``which`` ('input' or 'neurons') applied mid-run."""
        from statesim_mujoco.controllers import CPGController
        from statesim_mujoco.loop import Force, constant, run_cpg, run_rnn
        from statesim_mujoco.metrics import locomotion, rounded
        from statesim_mujoco.swimmer import Swimmer

        p, dt = self.params, self.cpg.dt
        commands = p.input_commands if which == "input" else p.neuron_commands
        if not commands:
            return {"commands": [], "all_pass": True, "note": "no commands"}
        base = p.input_base if which == "input" else p.neuron_base
        seconds = max(c.stop_s for c in commands) + 2.0
        steps, warmup = int(round(seconds / dt)), int(round(p.warmup_seconds / dt))
        tick = lambda s: int(round(s / dt))  # noqa: E731
        forces = []
        picked: dict[str, Any] | None = None
        if which == "neurons":
            picked = self.pick_units(ctx, rnn, cpg)
        for c in commands:
            if c.kind == "input":
                forces.append(Force(tick(c.start_s), tick(c.stop_s), "input", [0, 1], list(c.drives)))
            else:
                assert picked is not None  # Params: only neuron_commands (which == "neurons") are not kind: input
                units = picked["chosen"][c.kind]["units"]
                for part, (idx, vals) in picked["value_at"](c.drives, units).items():
                    forces.append(Force(tick(c.start_s), tick(c.stop_s), part, idx, vals))
        ctx.echo(f"salamander_swim: steering the RNN in the loop by forcing its {which}")
        swimmer = Swimmer(p.swimmer, dt, 1)
        rnn.reset(1)
        cpg_one = CPGController(ctx.host.registry, self.cpg.model_dump(), 1)
        drives = constant([base], steps)
        ep = run_rnn(rnn, cpg_one, swimmer, drives, p.seeds[0], warmup, forces)
        reference = run_cpg(cpg_one, swimmer, drives, p.seeds[0], forces) if which == "input" else None
        com, joints = ep.agent(0)
        base_window = (p.warmup_seconds + 2.0, commands[0].start_s)
        base_m = locomotion(com, joints, dt, *base_window)
        rows = []
        for c in commands:
            settle = min(3.0, (c.stop_s - c.start_s) / 3)
            m = locomotion(com, joints, dt, c.start_s + settle, c.stop_s)
            ok = self._judge(c.expect, m, base_m)
            row = {"start_s": c.start_s, "stop_s": c.stop_s, "kind": c.kind, "drives": list(c.drives),
                   "expect": c.expect, "rnn": rounded(m), "pass": ok}
            if reference is not None:
                row["cpg_same_clamps"] = rounded(locomotion(*reference.agent(0), dt, c.start_s + settle, c.stop_s))
            rows.append(row)
        out: dict[str, Any] = {"base_drives": list(base), "base_window_s": list(base_window),
                               "base": rounded(base_m), "commands": rows, "all_pass": all(r["pass"] for r in rows)}
        if picked is not None:
            out["neurons"] = {"parts": picked["parts"],
                              **{k: {key: v[key] for key in ("chosen_count", "list", "calibration")}
                                 for k, v in picked["chosen"].items()}}
        self.plot_steering(ctx, which, ep, commands, rows, figures)
        return out

    def _judge(self, expect: str, m: dict[str, Any], base: dict[str, Any]) -> bool:
        p = self.params
        speed, base_speed = m["speed_mps"], base["speed_mps"]
        rate = m["turn_rate_deg_s"]
        if expect == "faster":
            return speed > base_speed * (1 + p.speed_margin)
        if expect == "slower":
            return speed < base_speed * (1 - p.speed_margin)
        if expect == "stop":
            return speed < 0.1 * base_speed
        base_rate = base["turn_rate_deg_s"] or 0.0
        if rate is None:
            return False
        if expect == "left":
            return rate >= p.min_turn_rate and rate > base_rate + p.min_turn_rate
        return rate <= -p.min_turn_rate and rate < base_rate - p.min_turn_rate

    # ------------------------------------------------------------------ plots and frames
    def plot_paths(self, ctx: RunContext, episodes: dict[str, Any], figures: dict[str, Any]) -> None:
        """Top view of the COM paths: CPG speed and turning runs, RNN vs CPG at the compare drives."""
        if not ctx.plots_enabled:
            return
        import matplotlib.pyplot as plt

        p = self.params
        fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5.5))
        ep = episodes["cpg"]
        labels = [f"d={d:g}" for d in p.drives] + [f"d_L={left:g}, d_R={right:g}" for left, right in p.turn_pairs]
        for k, label in enumerate(labels):
            a.plot(ep.com[:, k, 0], ep.com[:, k, 1], lw=1.2, ls="-" if k < len(p.drives) else "--", label=label)
        a.plot(0, 0, "ko")
        a.set(title=f"CPG in the loop: COM paths, {p.swim_seconds:g} s (seed {p.seeds[0]})", xlabel="x (m)",
              ylabel="y (m)", aspect="equal")
        a.legend(fontsize=7)
        cpg_ep, rnn_ep = episodes["compare_cpg"], episodes["compare_rnn"]
        for k, d in enumerate(p.compare_drives):
            line, = b.plot(cpg_ep.com[:, k, 0], cpg_ep.com[:, k, 1], lw=1.5, label=f"CPG d={d:g}")
            b.plot(rnn_ep.com[:, k, 0], rnn_ep.com[:, k, 1], "--", color=line.get_color(), lw=1.5,
                   label=f"RNN d={d:g}")
        b.plot(0, 0, "ko")
        b.set(title=f"learned RNN vs CPG in the loop, {p.compare_seconds:g} s", xlabel="x (m)", ylabel="y (m)",
              aspect="equal")
        b.legend(fontsize=7)
        fig.tight_layout()
        ctx.save_plot(fig, "trajectories")
        plt.close(fig)
        figures["trajectories"] = "plots/trajectories.png"

    def plot_steering(self, ctx: RunContext, which: str, ep: Any, commands: list[Command], rows: list[dict[str, Any]],
                      figures: dict[str, Any]) -> None:
        """COM path coloured by command window, and speed / heading per cycle over time."""
        if not ctx.plots_enabled:
            return
        import matplotlib.pyplot as plt

        from statesim_mujoco.metrics import cycle_times, strobe

        dt = self.cpg.dt
        com, joints = ep.agent(0)
        n = joints.shape[1]
        times = cycle_times(joints[:, 0] - joints[:, n // 2], dt)
        times = times[times >= self.params.warmup_seconds + 1.0]  # cycles after the warm-up's start-up transient
        points = strobe(com, times, dt)
        t_grid = np.arange(len(com)) * dt
        fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
        bounds = [0.0] + [c.start_s for c in commands] + [commands[-1].stop_s, t_grid[-1] + dt]
        names = ["base"] + [f"{c.kind} {c.drives[0]:g},{c.drives[1]:g} ({c.expect})" for c in commands] + ["release"]
        for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            sel = (t_grid >= lo) & (t_grid < hi)
            a.plot(com[sel, 0], com[sel, 1], lw=1.5, label=names[k])
        a.set(title=f"steering by forcing the RNN's {which} mid-run: COM path", xlabel="x (m)", ylabel="y (m)",
              aspect="equal")
        a.legend(fontsize=7)
        if len(points) > 2:
            steps = np.diff(points, axis=0)
            mid = (times[1:] + times[:-1]) / 2
            b.plot(mid, np.linalg.norm(steps, axis=1) / np.diff(times), "C0.-", label="speed (m/s)")
            b2 = b.twinx()
            b2.plot(mid, np.degrees(np.unwrap(np.arctan2(steps[:, 1], steps[:, 0]))), "C3.-", label="heading (deg)")
            b2.set(ylabel="heading (deg, left +)")
            b2.legend(loc="upper right", fontsize=7)
            b.legend(loc="upper left", fontsize=7)
        for k, c in enumerate(commands):
            b.axvspan(c.start_s, c.stop_s, color="0.88" if k % 2 else "0.95")
            b.text((c.start_s + c.stop_s) / 2, 1.0, c.expect, transform=b.get_xaxis_transform(), ha="center",
                   va="bottom", fontsize=7)
        b.set(title="per-cycle speed and heading (shaded: command windows)", xlabel="time (s)", ylabel="speed (m/s)")
        fig.tight_layout()
        name = f"steering_{which}"
        ctx.save_plot(fig, name)
        plt.close(fig)
        figures[name] = f"plots/{name}.png"

    def render(self, ctx: RunContext, episodes: dict[str, Any]) -> dict[str, Any]:
        """A frame strip of one swimming cycle of the RNN-driven swimmer (first compare drive), when GL works."""
        from statesim_mujoco.render import frame_strip
        from statesim_mujoco.swimmer import mjcf

        p, dt = self.params, self.cpg.dt
        ep = episodes["compare_rnn"]
        period = 1.0 / (self.cpg.body.nu_gain * p.compare_drives[0] + self.cpg.body.nu_offset)
        start = p.compare_seconds - 2 * period
        ticks = [min(len(ep.qpos) - 1, int(round((start + k * period / p.render_frames) / dt)))
                 for k in range(p.render_frames)]
        out = ctx.run_dir / "plots" / "frames.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        info = frame_strip(ep.qpos[ticks, 0], [t * dt for t in ticks], mjcf(p.swimmer), out)
        if info["available"]:
            info["file"] = "plots/frames.png"
        ctx.echo("salamander_swim: frame strip " + ("saved: plots/frames.png" if info["available"]
                                                    else "not rendered: " + info["reason"]))
        return info
