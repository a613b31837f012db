"""Training data of the salamander scenario: CPG trajectories cut into observation warm-up windows, and the loss."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from statesim.builtin.salamander.behaviour import DriveRecipe, drive_schedule, mirror, simulate
from statesim.builtin.salamander.cpg import SalamanderCPG, gait_borders
from statesim.builtin.salamander.params import N_DRIVES, SalamanderParams, steps
from statesim.data import DataSplits, SequenceData

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def model_inputs(drives: torch.Tensor, observed: torch.Tensor, warmup: int) -> torch.Tensor:
    """RNN inputs ``[T, B, 2 + O + 1]``: drives, then the observations and a flag during the warm-up only."""
    length, batch, _ = drives.shape
    outputs = observed.shape[-1]
    x = torch.zeros(length, batch, N_DRIVES + outputs + 1, dtype=drives.dtype)
    x[:, :, :N_DRIVES] = drives
    if warmup > 0:
        x[:warmup, :, N_DRIVES:N_DRIVES + outputs] = observed[:warmup]
        x[:warmup, :, -1] = 1.0
    return x


def offset_weighted_loss(weight: float, std_weight: float = 0.0) -> LossFn:
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


def _recipes(p: SalamanderParams, cpg: SalamanderCPG) -> tuple[DriveRecipe, DriveRecipe]:
    """Drive recipes of training (held-out levels avoided, plateaus near the gait edges) and of the test runs."""
    train = DriveRecipe(seconds=p.trajectory_seconds, segment_seconds=p.segment_seconds,
                        ramp_probability=p.ramp_probability, turn_probability=p.turn_probability,
                        max_turn=p.max_turn, held_out=tuple(p.eval_levels), held_out_width=p.held_out_width,
                        edges=tuple(gait_borders(cpg.p) if p.edge_levels is None else p.edge_levels),
                        edge_probability=p.edge_probability, edge_width=p.edge_width)
    test = DriveRecipe(seconds=p.trajectory_seconds, segment_seconds=p.segment_seconds,
                       ramp_probability=p.ramp_probability, turn_probability=p.turn_probability,
                       max_turn=p.max_turn, levels=tuple(p.eval_levels))
    return train, test


def make_data(p: SalamanderParams, cpg: SalamanderCPG, seed: int) -> tuple[DataSplits, dict[str, Any]]:
    """Simulate observed trajectories and cut them into warm-up windows (train/val) and whole test runs."""
    dt = cpg.p.dt
    gen = torch.Generator().manual_seed(seed)
    recipe, test_recipe = _recipes(p, cpg)
    longest = steps(p.trajectory_seconds[1], dt)
    warmup, window, stride = steps(p.warmup_seconds, dt), steps(p.window_seconds, dt), \
        steps(p.window_stride_seconds, dt)

    def trajectories(count: int, rec: DriveRecipe) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        lengths = [steps(float(torch.empty(()).uniform_(*p.trajectory_seconds, generator=gen)), dt)
                   for _ in range(count)]
        drives = torch.stack([drive_schedule(gen, longest, dt, rec) for _ in range(count)], 1)
        state = cpg.random_state(count, gen)
        _, R = cpg.targets(drives[0])
        state["r"] = R.clone()  # start on the cycle: random phases at the first plateau's amplitude
        return drives, simulate(cpg, drives, state), lengths

    def windows(drives: torch.Tensor, observed: torch.Tensor, lengths: list[int], size: int = window,
                step: int = stride) -> SequenceData:
        xs, ys = [], []
        for b, length in enumerate(lengths):
            for start in range(0, length - size + 1, step):
                d, y = drives[start:start + size, b:b + 1], observed[start:start + size, b:b + 1]
                xs.append(model_inputs(d, y, warmup))
                ys.append(y)
        if not xs:  # every trajectory is shorter than the window (only long windows can be)
            outputs = observed.shape[-1]
            return SequenceData(torch.zeros(size, 0, N_DRIVES + outputs + 1), torch.zeros(size, 0, outputs))
        return SequenceData(torch.cat(xs, 1), torch.cat(ys, 1))

    drives, observed, lengths = trajectories(p.train_trajectories, recipe)
    if p.mirror:
        flipped = mirror(drives, observed, cpg.p.segments)
        drives, observed, lengths = torch.cat([drives, flipped[0]], 1), torch.cat([observed, flipped[1]], 1), \
            lengths * 2
    train = windows(drives, observed, lengths)
    long_count, size = 0, 0
    if p.long_window_seconds is not None:
        size = steps(p.long_window_seconds, dt)
        long = windows(drives, observed, lengths, size, steps(p.long_window_stride_seconds or
                                                               p.long_window_seconds, dt))
        long_count = len(long)
        if long_count:
            train = pad_together(train, long)
    val = windows(*trajectories(p.val_trajectories, recipe)) if p.val_trajectories else None
    test_drives, test_observed, _ = trajectories(p.test_trajectories, test_recipe)
    info = {"train_windows": len(train) - long_count, "long_windows": long_count, "long_window_steps": size,
            "val_windows": len(val) if val is not None else 0,
            "window_steps": window, "warmup_steps": warmup}
    return DataSplits(train, val), {"info": info, "test": (test_drives, test_observed)}


def pad_together(short: SequenceData, long: SequenceData) -> SequenceData:
    """Short and long windows in one set, the short ones zero-padded, with lengths (and ``trim``) so a batch of
    short windows runs only their steps."""
    steps_short, steps_long = short.steps, long.steps

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros(steps_long - steps_short, *t.shape[1:])], 0)

    lengths = torch.tensor([steps_short] * len(short) + [steps_long] * len(long))
    return SequenceData(torch.cat([pad(short.inputs), long.inputs], 1),
                        torch.cat([pad(short.targets), long.targets], 1),
                        lengths=lengths, trim=True)
