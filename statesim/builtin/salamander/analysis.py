"""Mechanism of a learned locomotion model: limit cycles in the PCA of its hidden states, and a unit-ablation map."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from statesim.builtin.salamander.cpg import gait_borders
from statesim.builtin.salamander.evaluation import rounded
from statesim.builtin.salamander.params import SalamanderParams, steps
from statesim.builtin.salamander.report import plot_ablation_map, plot_limit_cycles
from statesim.builtin.salamander.rollout import Rig
from statesim.builtin.salamander.signals import gait_metrics
from statesim.forcing import Clamp, Forcing
from statesim.model import SequenceModel
from statesim.scenario import RunContext


def rotation_frequency(plane: np.ndarray, dt: float) -> float:
    """Turns per second of a trajectory ``[T, 2]`` around its centre: slope of the unwrapped angle (least squares)."""
    centred = plane - plane.mean(0)
    angle = np.unwrap(np.arctan2(centred[:, 1], centred[:, 0]))
    t = np.arange(len(angle)) * dt
    slope = np.polyfit(t, angle, 1)[0]
    return float(abs(slope) / (2 * math.pi))


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


def _plane_radius(x: torch.Tensor) -> float:
    """Mean distance from the centre of a centred trajectory ``[T, F]`` in its own PC1-PC2 plane."""
    v = torch.linalg.svd(x, full_matrices=False)[2]
    return float((x @ v[:2].T).norm(dim=-1).mean())


def _cycle_rows(p: SalamanderParams, ev: dict[str, Any], all_parts: list[str],
                feats: torch.Tensor, vh: torch.Tensor) -> list[dict[str, Any]]:
    """Per evaluated drive: the state cycle's radius (several measures) and rotation frequency next to the output."""
    dt, states, late = p.cpg.dt, ev["states"], ev["late"]
    rows = []
    for b in range(ev["levels"]):
        x = feats[:, b] - feats[:, b].mean(0)
        _, s, v = torch.linalg.svd(x, full_matrices=False)
        pcs = (x @ v[:2].T).numpy()
        radius = float(np.linalg.norm(pcs, axis=-1).mean())
        rms = float(x.pow(2).sum(-1).mean().sqrt())
        common = ((feats[:, b] - feats[:, b].mean(0)) @ vh[:2].T).numpy()
        common_radius = float(np.linalg.norm(common, axis=-1).mean())
        rot = rotation_frequency(pcs, dt) if radius > 1e-3 else 0.0
        xa = torch.cat([states[k][late, b] for k in all_parts], -1).double()
        by_part = {"all": rounded(_plane_radius(xa - xa.mean(0)))}
        for k in all_parts:  # the same radius in each state part alone
            xk = states[k][late, b].double() - states[k][late, b].double().mean(0)
            by_part[k] = rounded(_plane_radius(xk))
        r = ev["rows"][b]
        rows.append({"drive": r["d_L"], "radius": rounded(radius), "rms_radius": rounded(rms),
                     "common_plane_radius": rounded(common_radius), "part_radius": by_part, "rotation_hz": rounded(rot),
                     "output_hz": rounded(r["rnn"]["frequency"]), "output_amplitude": rounded(r["rnn"]["amplitude"])})
    return rows


def _correlations(osc: list[dict[str, Any]], all_parts: list[str], switch: float
                  ) -> tuple[float | None, dict[str, float | None]]:
    """Correlation of the cycle radius with the body amplitude across moving drives, by several radius measures."""
    amps = [r["output_amplitude"] for r in osc]

    def correlation(radii: list[float], keep: Callable[[dict[str, Any]], bool] = lambda r: True) -> float | None:
        pick = [i for i, r in enumerate(osc) if keep(r)]
        x, y = [radii[i] for i in pick], [amps[i] for i in pick]
        if len(pick) > 2 and np.std(x) > 0 and np.std(y) > 0:
            return float(np.corrcoef(x, y)[0, 1])
        return None

    corr = correlation([r["radius"] for r in osc])
    other = {"rms_radius_all_dimensions": rounded(correlation([r["rms_radius"] for r in osc])),
             "radius_in_common_pca_plane": rounded(correlation([r["common_plane_radius"] for r in osc])),
             **{f"radius_of_part_{k}": rounded(correlation([r["part_radius"][k] for r in osc]))
                for k in ["all", *all_parts]},
             "walking_only_1_3": rounded(correlation([r["radius"] for r in osc], lambda r: r["drive"] <= switch)),
             "swimming_only_3_5": rounded(correlation([r["radius"] for r in osc], lambda r: r["drive"] > switch))}
    return corr, other


def pca_analysis(ctx: RunContext, p: SalamanderParams, ev: dict[str, Any], figures: dict[str, str],
                 parts: list[str] | None = None) -> dict[str, Any]:
    """Limit cycles in the hidden-state PCA: radius vs amplitude, rotation frequency, collapse outside [1, 5].

    ``parts``: the state parts analysed (default all); the scenario passes the units' activity (the part
    the cell outputs, an LSTM's h): an LSTM's c is an unbounded internal integrator on another scale.
    """
    states, late, levels = ev["states"], ev["late"], ev["levels"]
    all_parts = sorted(k for k in states if states[k].dim() == 3)
    parts = sorted(parts or all_parts)
    feats = torch.cat([states[k][late, :levels] for k in parts], -1).double()  # [T, L, F]
    pooled = feats.reshape(-1, feats.shape[-1])
    center = pooled.mean(0)
    _, svals, vh = torch.linalg.svd(pooled - center, full_matrices=False)
    explained = (svals ** 2 / (svals ** 2).sum())[:5]
    rows = _cycle_rows(p, ev, all_parts, feats, vh)
    start, switch, stop = gait_borders(p.cpg)
    osc = [r for r in rows if start <= r["drive"] <= stop]
    stillr = [r for r in rows if not start <= r["drive"] <= stop]
    corr, other_corr = _correlations(osc, all_parts, switch)
    max_radius = max((r["radius"] for r in osc), default=0.0) or 1e-12
    rot_err = [abs(r["rotation_hz"] - r["output_hz"]) for r in osc if r["output_hz"]]
    crossings = {}
    by = {r["drive"]: r for r in rows}
    for border in (start, switch, stop):
        lo = max((d for d in by if d < border), default=None)
        hi = min((d for d in by if d > border), default=None)
        if lo is not None and hi is not None:
            crossings[str(float(border))] = {"below": by[lo], "above": by[hi]}
    result = {"state_parts": parts, "explained_variance_top5": [rounded(float(e)) for e in explained],
              "per_drive": rows, "radius_vs_amplitude_correlation": rounded(corr),
              "radius_vs_amplitude_correlation_other_measures": other_corr,
              "fixed_point_outside_1_5": {"max_relative_radius": rounded(max((r["radius"] for r in stillr),
                                                                             default=0.0) / max_radius),
                                          "pass": all(r["radius"] / max_radius < 0.05 for r in stillr)},
              "rotation_vs_output_frequency_max_error_hz": rounded(max(rot_err, default=None)),
              "drive_crossings": crossings}
    if ctx.plots_enabled:
        figures["pca_limit_cycles"] = plot_limit_cycles(ctx, p, ev, rows, feats, center, vh)
    return result


def ablation(ctx: RunContext, rig: Rig, figures: dict[str, str]) -> dict[str, Any]:
    """Silence each hidden unit (clamp it to 0 in every state part) and measure what is left of the rhythm."""
    p, dt, n = rig.params, rig.dt, rig.segments
    parts = state_units(rig.model)
    width = rig.model.state_spec[parts[0]][0]
    length = steps(p.ablation_seconds, dt)
    pairs = [(d, d) for d in p.ablation_drives]
    drives = torch.tensor(pairs, dtype=torch.float32).unsqueeze(0).expand(length, -1, -1).contiguous()
    truth = rig.cpg_run(drives, 5)
    tail = slice(length - steps(min(8.0, p.ablation_seconds / 2), dt), length)

    # one batched run: sample i * (1 + width) is intact at drive i, the next ``width`` samples each silence
    # one unit (0 in every state part); NaN leaves a unit free
    block = 1 + width
    count = len(pairs) * block
    values = torch.full((count, width), float("nan"))
    for i in range(len(pairs)):
        values[i * block + 1 + torch.arange(width), torch.arange(width)] = 0.0
    index = torch.arange(len(pairs)).repeat_interleave(block)
    out, _ = rig.run_model(drives[:, index], truth[:, index],
                           forcing=Forcing([Clamp(part, values, None, start=rig.warmup) for part in parts]))
    metrics = [gait_metrics(out[tail, b].numpy(), dt, n) for b in range(count)]
    base_amp = [metrics[i * block]["amplitude"] for i in range(len(pairs))]
    base_freq = [metrics[i * block]["frequency"] for i in range(len(pairs))]
    ratio = np.array([[metrics[i * block + 1 + u]["amplitude"] / max(base_amp[i], 1e-9) for u in range(width)]
                      for i in range(len(pairs))])
    critical = {f"{d:g}": [int(u) for u in np.where(ratio[i] < 0.5)[0]] for i, d in enumerate(p.ablation_drives)}
    result = {"drives": p.ablation_drives, "baseline_amplitude": [rounded(a) for a in base_amp],
              "baseline_frequency": [rounded(f) for f in base_freq],
              "amplitude_ratio": [[rounded(v, 3) for v in row] for row in ratio],
              "critical_units": critical,
              "note": "amplitude after silencing one unit / amplitude intact; < 0.5 marks a unit the rhythm needs"}
    if ctx.plots_enabled:
        figures["ablation_map"] = plot_ablation_map(ctx, p, ratio)
    return result
