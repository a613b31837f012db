"""What a salamander run shows its reader: the figures under ``plots/`` and ``report.md``."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from statesim.builtin.salamander.cpg import gait_borders
from statesim.builtin.salamander.params import SalamanderParams, steps
from statesim.builtin.salamander.rollout import Rig
from statesim.scenario import RunContext

#: Range of each target's measure (walk_to_swim_jump: |RNN jump - CPG jump|; turning_offset: its relative error)
#: over the runs of scenarios/salamander.yaml as shipped that docs/salamander.md tables on two 2-core machines
#: (seeds 0-4 at 1 and 2 threads and seed 5 at 1, on each); report.md and results.json quote it so that a user
#: knows how far another seed or machine may move the numbers. It includes the one miss (swim_phase_lag 0.1263).
SHIPPED_SPREAD: dict[str, tuple[float, float]] = {
    "frequency_vs_drive": (0.0069, 0.0392),
    "walk_to_swim_jump": (0.0001, 0.0406),
    "stillness_outside_1_5": (0.0, 0.0382),
    "swim_phase_lag": (0.041, 0.1263),
    "amplitude": (0.0314, 0.0898),
    "turning_offset": (0.049, 0.2776),
    "amplitude_drift": (0.0, 0.0454),
}


def save_figure(ctx: RunContext, fig: Any, name: str) -> str:
    """Write ``fig`` to ``plots/<name>.png``, close it, and return the path report.md links to."""
    ctx.save_plot(fig, name)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"plots/{name}.png"


# --------------------------------------------------------------------------- figures
def plot_learned_vs_true(ctx: RunContext, rig: Rig, drives: torch.Tensor, truth: torch.Tensor,
                         learned: torch.Tensor) -> str:
    """A held-out trajectory: drives, and three body joints and a limb, learned over true."""
    import matplotlib.pyplot as plt

    dt, n, warmup = rig.dt, rig.segments, rig.warmup
    t = np.arange(drives.shape[0]) * dt
    fig, axes = plt.subplots(5, 1, figsize=(11, 9), sharex=True)
    axes[0].plot(t, drives[:, 0, 0], label="d_L")
    axes[0].plot(t, drives[:, 0, 1], "--", label="d_R")
    axes[0].set(ylabel="drive")
    axes[0].legend(loc="upper right", fontsize=8)
    for ax, (k, name) in zip(axes[1:], [(0, "body 1"), (n // 2 - 1, f"body {n // 2}"),
                                        (n - 1, f"body {n}"), (n, "limb LF")]):
        ax.plot(t, truth[:, 0, k], color="k", lw=1.2, label="CPG (true)")
        ax.plot(t, learned[:, 0, k], color="C1", lw=1, label="RNN (learned)")
        ax.axvspan(0, warmup * dt, color="0.9")
        ax.set(ylabel=name)
    axes[1].legend(loc="upper right", fontsize=8)
    axes[-1].set(xlabel="time (s); grey: observation warm-up, then the RNN runs on the drives alone")
    fig.suptitle("held-out trajectory: learned vs true joint signals")
    return save_figure(ctx, fig, "learned_vs_true")


def plot_evaluation(ctx: RunContext, p: SalamanderParams, ev: dict[str, Any], figures: dict[str, str]) -> None:
    """Frequency and amplitude vs drive, and the phase-lag profile."""
    if not ctx.plots_enabled:
        return
    import matplotlib.pyplot as plt

    n = p.cpg.segments
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
    figures["frequency_vs_drive"] = save_figure(ctx, fig, "frequency_vs_drive")

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
    figures["phase_lag_profile"] = save_figure(ctx, fig, "phase_lag_profile")


def plot_input_steering(ctx: RunContext, rig: Rig, forced_drives: torch.Tensor, truth: torch.Tensor,
                        learned: torch.Tensor, commands: list[dict[str, Any]]) -> str:
    """The clamped drives, body joint 1 and a limb of the CPG and of the RNN, with the command windows."""
    import matplotlib.pyplot as plt

    dt, n = rig.dt, rig.segments
    t = np.arange(forced_drives.shape[0]) * dt
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
    return save_figure(ctx, fig, "steering_inputs")


def plot_neuron_steering(ctx: RunContext, rig: Rig, conditions: dict[str, tuple[float, float]],
                         final: dict[str, dict[str, Any]], traces: torch.Tensor, chosen: dict[str, list[int]],
                         speed_effect: np.ndarray, turn_effect: np.ndarray) -> str:
    """Body joint 1 under the speed clamps, the mean body angle under the turning clamps, and the sweep."""
    import matplotlib.pyplot as plt

    dt = rig.dt
    mid, step = conditions["base"][0], conditions["fast"][0] - conditions["base"][0]
    base, held_speed, fast, slow = final["base"], final["held_speed"], final["fast"], final["slow"]
    held_turn, left, right = final["held_turn"], final["left"], final["right"]
    run_steps = traces.shape[0]
    t = np.arange(run_steps) * dt
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.2), gridspec_kw={"width_ratios": [2, 1, 1.4]})
    sl = slice(run_steps - steps(6.0, dt), run_steps)
    a.plot(t[sl], traces[sl, 0], "0.6", label=f"no clamp ({base['frequency']:.2f} Hz)")
    a.plot(t[sl], traces[sl, 1], "k", label=f"speed units at d={mid:g} values ({held_speed['frequency']:.2f} Hz)")
    a.plot(t[sl], traces[sl, 3], "C0", label=f"speed units at d={mid - step:g} values ({slow['frequency']:.2f} Hz)")
    a.plot(t[sl], traces[sl, 2], "C3", label=f"speed units at d={mid + step:g} values ({fast['frequency']:.2f} Hz)")
    a.set(title=f"speed: clamping {len(chosen['speed'])} units (input fixed at {mid:g})", xlabel="time (s)",
          ylabel="body joint 1 (rad)")
    a.legend(fontsize=7)
    b.bar(["no clamp", "at right-turn\nvalues", f"at d={mid:g}\nvalues", "at left-turn\nvalues"],
          [base["offset"], right["offset"], held_turn["offset"], left["offset"]], color=["0.8", "C0", "k", "C3"])
    b.tick_params(axis="x", labelsize=7)
    b.axhline(0, color="k", lw=0.8)
    b.set(title=f"turning: clamping {len(chosen['turn'])} units", ylabel="mean body angle (rad)")
    order = np.argsort(-speed_effect)
    c.plot(speed_effect[order], ".-", color="C1", label="speed: f(fast value) - f(slow value), Hz")
    c.plot(np.sort(turn_effect)[::-1] * 10, ".-", color="C2", label="turn: offset(left) - offset(right), x10 rad")
    c.axhline(0, color="k", lw=0.8)
    c.set(title="single-unit clamp sweep (sorted)", xlabel="rank of unit", ylabel="effect")
    c.legend(fontsize=7)
    return save_figure(ctx, fig, "steering_neurons")


def plot_limit_cycles(ctx: RunContext, p: SalamanderParams, ev: dict[str, Any], rows: list[dict[str, Any]],
                      feats: torch.Tensor, center: torch.Tensor, vh: torch.Tensor) -> str:
    """Hidden-state trajectories in the pooled PCA plane, and cycle radius, amplitude and rotation vs drive."""
    import matplotlib.pyplot as plt

    start, switch, stop = gait_borders(p.cpg)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5))
    cmap = plt.get_cmap("viridis")
    for i in range(ev["levels"]):
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
    return save_figure(ctx, fig, "pca_limit_cycles")


def plot_ablation_map(ctx: RunContext, p: SalamanderParams, ratio: np.ndarray) -> str:
    """Body amplitude after silencing each unit, relative to the intact model, per ablation drive."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 2.2 + 0.4 * len(p.ablation_drives)))
    im = ax.imshow(ratio, aspect="auto", cmap="magma", vmin=0, vmax=max(1.2, float(ratio.max())))
    ax.set(yticks=range(len(p.ablation_drives)), yticklabels=[f"d={d:g}" for d in p.ablation_drives],
           xlabel="hidden unit silenced", title="ablation map: body amplitude relative to the intact model")
    fig.colorbar(im, ax=ax)
    return save_figure(ctx, fig, "ablation_map")


# --------------------------------------------------------------------------- report.md
def provenance_line(results: dict[str, Any]) -> str:
    """One paragraph: torch version, threads, seed, the weights kept, and the spread of the shipped recipe."""
    prov, choice = results["provenance"], results["weights_choice"]
    spread = "; ".join(f"{k} {lo:g} to {hi:g}" for k, (lo, hi) in prov["shipped_recipe_spread"].items())
    kept = (f"Weights kept: `{choice['chosen']}` (of {len(choice['candidates'])} candidates, chosen on "
            f"validation drives: {choice['method']})." if "candidates" in choice else
            f"Weights kept: {choice['note']}.")
    calibration = results.get("amplitude_calibration") or {}
    if calibration.get("applied") is True:
        kept += (f" Amplitude calibration on the validation drives: readout gain {calibration['body_gain']:g} "
                 f"(body), {calibration['limb_gain']:g} (limbs); the dynamics are unchanged.")
    return (f"Produced with torch {prov['torch']}, {prov['threads']} thread(s), seed {prov['seed']}; "
            f"{prov['note']}. {kept}" + (f" Spread of the shipped recipe over {prov['shipped_recipe_spread_from']}"
                                         f": {spread}." if spread else ""))


def _figure_lines(figures: dict[str, str], keys: tuple[str, ...]) -> list[str]:
    return [line for key in keys if key in figures for line in (f"![{key}]({figures[key]})", "")]


def _target_lines(ctx: RunContext, results: dict[str, Any]) -> list[str]:
    ev = results["evaluation"]
    data = results["data"]
    assert ctx.config.model is not None, "the salamander scenario trains the run's model"
    longer = f" and {data['long_windows']} of {data['long_window_steps']}" if data.get("long_windows") else ""
    lines = ["# Salamander locomotion: a learned RNN model of the spinal CPG", "",
             f"Model: `{ctx.config.model.cell.type}` cell; trained on {data['train_windows']} windows of "
             f"{data['window_steps']} steps (50 Hz){longer}, each with a {data['warmup_steps']}-step "
             f"observation warm-up; evaluated on held-out drives, running autonomously for "
             f"{ev['eval_seconds']:.0f} s.", "", provenance_line(results), "",
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
    return lines


def _steering_lines(results: dict[str, Any]) -> list[str]:
    steer = results["steering"]
    lines = ["## Steering by forcing", "", "Input clamps (from the scenario's `forcing:` section):", "",
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
                  f"response to the input {fast:g} vs {slow:g} is {sp['input_effect_hz']['rnn_fast_minus_slow']} Hz, "
                  f"the neuron clamps reach {sp['fraction_of_input_effect']} of it; speed steering "
                  f"{'works' if sp['pass'] else 'does NOT work'}). Clamping {len(tu['units'])} units "
                  f"({tu_units}) to their cycle means at (d_L, d_R) = {left} / {right} gives mean body "
                  f"angles {tu['offset_clamped_left']} / {tu['offset_clamped_right']} rad (unclamped "
                  f"{tu['offset_base']}; {tu['fraction_of_input_effect']} of the input's effect; turning "
                  f"steering {'works' if tu['pass'] else 'does NOT work'}).", ""]
    return lines


def _mechanism_lines(results: dict[str, Any]) -> list[str]:
    pca, abl = results["analysis"]["pca"], results["analysis"]["ablation"]
    lines = ["## Mechanism", "",
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
    return lines


def write_report(ctx: RunContext, results: dict[str, Any], figures: dict[str, str]) -> None:
    """``report.md``: targets, steering, analysis and the figures."""
    from statesim.fileio import atomic_write_text

    lines = [*_target_lines(ctx, results),
             *_figure_lines(figures, ("learned_vs_true", "frequency_vs_drive", "phase_lag_profile")),
             *_steering_lines(results), *_figure_lines(figures, ("steering_inputs", "steering_neurons")),
             *_mechanism_lines(results), *_figure_lines(figures, ("pca_limit_cycles", "ablation_map"))]
    atomic_write_text(ctx.run_dir / "report.md", "\n".join(lines) + "\n")
