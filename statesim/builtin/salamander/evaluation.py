"""Judging a learned locomotion model: long autonomous runs at held-out drives, the seven targets, the choice
of weights on validation drives, and the error on whole held-out trajectories."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from statesim.builtin.salamander.candidates import Candidates
from statesim.builtin.salamander.cpg import SalamanderCPG, gait_borders
from statesim.builtin.salamander.params import SalamanderParams, steps
from statesim.builtin.salamander.report import plot_learned_vs_true
from statesim.builtin.salamander.rollout import Rig
from statesim.builtin.salamander.signals import gait_metrics
from statesim.scenario import RunContext


def rounded(value: float | None, digits: int = 4) -> float | None:
    """``value`` rounded for results.json; None where it is missing or not finite."""
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)


def metric(value: Any, target: str, passed: bool) -> dict[str, Any]:
    """One target's entry in results.json: what was measured, the goal in words, whether it was met."""
    return {"value": value, "target": target, "pass": bool(passed)}


def condition_runs(rig: Rig, levels: list[float], turns: list[tuple[float, float]], seed_offset: int
                   ) -> tuple[list[tuple[float, float]], torch.Tensor, torch.Tensor]:
    """The conditions (constant levels, then turning pairs), their drives ``[T, C, 2]`` and the CPG's outputs."""
    pairs = [(d, d) for d in levels] + [(float(left), float(right)) for left, right in turns]
    length = steps(rig.params.eval_seconds, rig.dt)
    drives = torch.tensor(pairs, dtype=torch.float32).unsqueeze(0).expand(length, -1, -1).contiguous()
    return pairs, drives, rig.cpg_run(drives, seed_offset)


def condition_rows(rig: Rig, pairs: list[tuple[float, float]], drives: torch.Tensor, truth: torch.Tensor,
                   return_states: bool = False
                   ) -> tuple[list[dict[str, Any]], torch.Tensor, dict[str, torch.Tensor] | None, slice]:
    """Run the model autonomously under each condition; gait metrics of both over the last measure window."""
    p, dt, n, warmup = rig.params, rig.dt, rig.segments, rig.warmup
    length = drives.shape[0]
    learned, states = rig.run_model(drives, truth, return_states=return_states)
    measure = steps(p.measure_seconds, dt)
    early = slice(warmup + steps(5.0, dt), warmup + steps(5.0, dt) + measure)
    late = slice(length - measure, length)
    rows = []
    for b, (dl, dr) in enumerate(pairs):
        rnn, true = (gait_metrics(o[late, b].numpy(), dt, n) for o in (learned, truth))
        rnn_early = gait_metrics(learned[early, b].numpy(), dt, n)
        rows.append({"d_L": dl, "d_R": dr, "rnn": rnn, "cpg": true, "rnn_early_amplitude": rnn_early["amplitude"]})
    return rows, learned, states, late


def evaluate(rig: Rig) -> dict[str, Any]:
    """Long autonomous runs at held-out constant drives and turning pairs, measured like the CPG."""
    p = rig.params
    pairs, drives, truth = condition_runs(rig, p.eval_levels, p.turn_conditions, 1)
    rows, learned, states, late = condition_rows(rig, pairs, drives, truth, return_states=True)
    targets = judge_targets(p, rig.cpg, rows, len(p.eval_levels))
    table = [{"d_L": r["d_L"], "d_R": r["d_R"],
              **{f"{who}_{key}": rounded(r[who][key]) for who in ("rnn", "cpg")
                 for key in ("frequency", "amplitude", "offset", "limb_amplitude")},
              "rnn_lags": [rounded(v, 3) for v in r["rnn"]["lags"]],
              "cpg_lags": [rounded(v, 3) for v in r["cpg"]["lags"]],
              "rnn_amplitude_start": rounded(r["rnn_early_amplitude"])} for r in rows]
    return {"results": {"targets": targets, "per_condition": table, "eval_seconds": p.eval_seconds},
            "rows": rows, "pairs": pairs, "learned": learned, "truth": truth, "states": states,
            "late": late, "levels": len(p.eval_levels)}


def _walk_to_swim_jump(level_rows: list[dict[str, Any]], switch: float, stop: float
                       ) -> tuple[float | None, float | None, float | None, float | None]:
    """Frequency jump of the RNN and of the CPG between the levels just below and just above the gait switch."""
    by_level = {r["d_L"]: r for r in level_rows}
    below = max((d for d in by_level if d <= switch), default=None)
    above = min((d for d in by_level if switch < d <= stop), default=None)
    if below is None or above is None:
        return None, None, below, above
    jump_rnn = by_level[above]["rnn"]["frequency"] - by_level[below]["rnn"]["frequency"]
    jump_cpg = by_level[above]["cpg"]["frequency"] - by_level[below]["cpg"]["frequency"]
    return jump_rnn, jump_cpg, below, above


def judge_targets(p: SalamanderParams, cpg: SalamanderCPG, rows: list[dict[str, Any]], levels: int
                  ) -> dict[str, dict[str, Any]]:
    """The seven targets from condition rows: the first ``levels`` rows are constant drives, the rest turns."""
    n = cpg.p.segments
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
    lag_err = [float(np.max(np.abs(r["rnn"]["lags"] - two_pi_n))) for r in moving if r["d_L"] > switch]
    jump_rnn, jump_cpg, below, above = _walk_to_swim_jump(level_rows, switch, stop)
    turn_rows = rows[levels:]
    turn_err = [abs(r["rnn"]["offset"] - r["cpg"]["offset"]) / max(abs(r["cpg"]["offset"]), 1e-6)
                for r in turn_rows]
    turn_sign = [np.sign(r["rnn"]["offset"]) == np.sign(r["d_L"] - r["d_R"]) for r in turn_rows]
    return {
        "frequency_vs_drive": metric(rounded(max(freq_err, default=None)), f"max |f_rnn - f_cpg| <= "
                                     f"{p.targets_frequency_hz} Hz over drives in {span}",
                                     bool(freq_err) and max(freq_err) <= p.targets_frequency_hz),
        "walk_to_swim_jump": metric({"rnn": rounded(jump_rnn), "cpg": rounded(jump_cpg), "between": [below, above]},
                                    f"jump within {2 * p.targets_frequency_hz} Hz of the CPG's",
                                    jump_rnn is not None and jump_cpg is not None
                                    and abs(jump_rnn - jump_cpg) <= 2 * p.targets_frequency_hz),
        "stillness_outside_1_5": metric(rounded(max(still_amp, default=None)),
                                        f"body amplitude < {p.still_threshold} rad for drives outside {span}",
                                        bool(still_amp) and max(still_amp) < p.still_threshold),
        "swim_phase_lag": metric(rounded(max(lag_err, default=None)), f"every segment lag within "
                                 f"{p.targets_phase_lag} rad of 2pi/{n} = {two_pi_n:.4f}",
                                 bool(lag_err) and max(lag_err) <= p.targets_phase_lag),
        "amplitude": metric(rounded(max(amp_err, default=None)), f"relative amplitude error <= {p.targets_amplitude}",
                            bool(amp_err) and max(amp_err) <= p.targets_amplitude),
        "turning_offset": metric({"max_relative_error": rounded(max(turn_err, default=None)),
                                  "signs_correct": bool(all(turn_sign))},
                                 f"sign right and size within {p.targets_turn:.0%} of the CPG's "
                                 f"(~{cpg.p.body.R_gain:g} (d_L - d_R))",
                                 bool(turn_rows) and all(turn_sign) and max(turn_err) <= p.targets_turn),
        "amplitude_drift": metric(rounded(max(drift, default=None)), f"|A(end) / A(start) - 1| <= {p.targets_drift} "
                                  f"over {p.eval_seconds:.0f} s ({p.eval_seconds / p.window_seconds:.0f}x the "
                                  f"training window, {p.eval_seconds / p.trajectory_seconds[1]:.1f}x the longest "
                                  f"trajectory)", bool(drift) and max(drift) <= p.targets_drift),
    }


def relative_errors(p: SalamanderParams, targets: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each target's error divided by its tolerance (1 = on the goal; inf where nothing could be measured)."""
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


Runs = tuple[list[tuple[float, float]], torch.Tensor, torch.Tensor]  # what condition_runs returns


def validation_runs(rig: Rig) -> Runs:
    """The validation conditions, their drives and the CPG's outputs: simulated once, for the choice and calibration."""
    return condition_runs(rig, rig.params.validation_levels, rig.params.validation_turns, 6)


def choose_weights(ctx: RunContext, rig: Rig, candidates: Candidates, validation: Runs) -> dict[str, Any]:
    """Keep the candidate weights that meet the most targets on the validation drives (never the eval levels).

    Ties go to the smaller sum of squared errors relative to their tolerances (each capped at 10). The chosen
    weights are loaded into the model; the scenario writes them as the job's final checkpoint, so every later
    reader of the run sees them.
    """
    p, model = rig.params, rig.model
    pairs, drives, truth = validation
    scores: dict[str, dict[str, Any]] = {}
    for name, weights in candidates.weights.items():
        model.load_state_dict(weights)
        rows = condition_rows(rig, pairs, drives, truth)[0]
        targets = judge_targets(p, rig.cpg, rows, len(p.validation_levels))
        errors = relative_errors(p, targets)
        squared = sum(min(e, 10.0) ** 2 for e in errors.values())
        scores[name] = {"met": sum(t["pass"] for t in targets.values()), "squared_error_sum": rounded(squared),
                        "relative_errors": {k: rounded(v, 3) for k, v in errors.items()}}
    chosen = min(scores, key=lambda k: (-scores[k]["met"], scores[k]["squared_error_sum"]))
    model.load_state_dict(candidates.weights[chosen])
    ctx.echo(f"salamander: kept weights {chosen} ({scores[chosen]['met']}/{len(errors)} targets met on the "
             f"validation drives; {len(scores)} candidates)")
    return {"chosen": chosen, "validation_levels": p.validation_levels,
            "validation_turns": [list(t) for t in p.validation_turns], "candidates": scores,
            "method": f"raw and averaged (EMA, decay {p.average_decay}) weights every {p.choose_every} updates "
                      f"from {p.choose_from:.0%} of training on; each run autonomously at the validation "
                      f"drives for {p.eval_seconds:g} s and judged by the seven targets; most met wins, ties "
                      f"to the smallest sum of squared errors relative to their tolerances"}


def test_error(ctx: RunContext, rig: Rig, test: tuple[torch.Tensor, torch.Tensor], figures: dict[str, str]
               ) -> dict[str, Any]:
    """Error on whole held-out trajectories (plateaus only at held-out levels) after the warm-up."""
    drives, truth = test
    warmup = rig.warmup
    learned, _ = rig.run_model(drives, truth)
    err = (learned[warmup:] - truth[warmup:]) ** 2
    results = {"rmse": rounded(float(err.mean().sqrt())), "signal_std": rounded(float(truth[warmup:].std())),
               "seconds": drives.shape[0] * rig.dt}
    if ctx.plots_enabled:
        figures["learned_vs_true"] = plot_learned_vs_true(ctx, rig, drives, truth, learned)
    return results
