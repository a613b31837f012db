"""Pieces the salamander scenario trains and analyses with: per-sample (NaN) clamps, edge-biased drive
schedules, the offset-weighted loss and the rotation frequency of a hidden-state cycle.

References: each sample run alone with an ordinary clamp, closed-form losses, and trajectories whose
frequency is known by construction.
"""
import math

import numpy as np
import pytest
import torch

from statesim.builtin.cells import GRUCell, LSTMCell
from statesim.builtin.salamander.behaviour import DriveRecipe, drive_schedule
from statesim.builtin.scenarios.salamander import offset_weighted_loss, rotation_frequency
from statesim.data import mse_loss
from statesim.engine import unroll
from statesim.forcing import Clamp, Forcing


@pytest.mark.parametrize("cell_cls, part", [(LSTMCell, "c"), (LSTMCell, "h"), (GRUCell, "h")])
def test_nan_clamp_values_force_each_sample_alone(cell_cls, part):
    """A batched run whose sample b clamps only unit b (NaN elsewhere) equals B separate single-unit clamps."""
    cell = cell_cls(3, 5).double()
    x = torch.randn(12, 5, 3, dtype=torch.float64)
    state = {k: torch.randn(5, *s, dtype=torch.float64) for k, s in cell.state_spec.items()}
    values = torch.full((5, 5), float("nan"), dtype=torch.float64)
    values[torch.arange(5), torch.arange(5)] = torch.linspace(-0.8, 0.8, 5, dtype=torch.float64)
    batched = unroll(cell, x, state, forcing=Forcing([Clamp(part, values, None, start=3, stop=9)])).outputs
    for b in range(5):
        alone = unroll(cell, x[:, b:b + 1], {k: v[b:b + 1] for k, v in state.items()},
                       forcing=Forcing([Clamp(part, float(values[b, b]), [b], start=3, stop=9)])).outputs
        torch.testing.assert_close(batched[:, b:b + 1], alone, rtol=1e-12, atol=1e-12)
    free = unroll(cell, x, state).outputs
    torch.testing.assert_close(batched[:3], free[:3], rtol=1e-12, atol=1e-12)  # nothing forced before the window
    assert not torch.allclose(batched[5:], free[5:])


def test_nan_input_clamp_leaves_those_samples_free():
    x = torch.randn(6, 3, 2)
    values = torch.tensor([[7.0, float("nan")], [float("nan"), float("nan")], [float("nan"), -7.0]])
    forced = Forcing([Clamp("input", values, [0, 1], start=2)]).apply_to_inputs(x)
    expected = x.clone()
    expected[2:, 0, 0], expected[2:, 2, 1] = 7.0, -7.0
    torch.testing.assert_close(forced, expected, rtol=0, atol=0)
    assert not Clamp("input", 1.0).partial and Clamp("input", [1.0, float("nan")]).partial


def test_edge_plateaus_cluster_near_the_edges_and_avoid_held_out_bands():
    gen = torch.Generator().manual_seed(1)
    held = (0.9, 1.1, 2.9, 3.1)
    recipe = DriveRecipe(held_out=held, held_out_width=0.05, ramp_probability=0.0, turn_probability=0.0,
                         segment_seconds=(1.0, 1.0), edges=(1.0, 3.0), edge_probability=1.0, edge_width=0.3)
    levels = torch.cat([drive_schedule(gen, 5000, 0.02, recipe)[::50, 0] for _ in range(4)])
    near = torch.minimum((levels - 1.0).abs(), (levels - 3.0).abs())
    assert near.max() <= 0.3 + 1e-6
    for h in held:
        assert not ((levels - h).abs() <= 0.05).any()
    assert ((levels - 1.0).abs() <= 0.3).float().mean() == pytest.approx(0.5, abs=0.1)
    # both sides of each edge are covered
    assert ((levels > 0.7) & (levels < 0.85)).any() and ((levels > 1.15) & (levels < 1.3)).any()
    plain = DriveRecipe(ramp_probability=0.0, turn_probability=0.0, segment_seconds=(1.0, 1.0), edges=(1.0,),
                        edge_probability=0.0)
    spread = drive_schedule(gen, 20000, 0.02, plain)[::50, 0]
    assert ((spread - 1.0).abs() > 1.0).float().mean() > 0.5  # no edge bias without edge_probability


def test_offset_weighted_loss_closed_form():
    targets = torch.randn(40, 3, 2)
    mask = torch.ones(40, 3, dtype=torch.bool)
    mask[:10] = False
    shift = torch.tensor([0.2, -0.1])
    outputs = targets + shift
    # a constant error e per output: MSE = mean(e^2); the window-mean term adds weight * mean(e^2) again
    expected = float((shift ** 2).mean())
    assert float(offset_weighted_loss(0.0)(outputs, targets, mask)) == pytest.approx(expected, rel=1e-6)
    assert float(offset_weighted_loss(0.0)(outputs, targets, mask)) == pytest.approx(
        float(mse_loss(outputs, targets, mask)), rel=1e-6)
    assert float(offset_weighted_loss(9.0)(outputs, targets, mask)) == pytest.approx(10 * expected, rel=1e-6)
    # a zero-mean error over the scored steps adds nothing
    wiggle = torch.zeros(40, 3, 2)
    wiggle[10::2], wiggle[11::2] = 0.3, -0.3
    assert float(offset_weighted_loss(9.0)(targets + wiggle, targets, mask)) == pytest.approx(0.09, rel=1e-6)


def test_rotation_frequency_of_cycles_with_harmonics_and_offsets():
    dt, f = 0.02, 0.83
    t = np.arange(1500) * dt
    w = 2 * math.pi * f * t
    ellipse = np.stack([3 * np.cos(w) + 5, 0.5 * np.sin(w) - 2], -1)
    assert rotation_frequency(ellipse, dt) == pytest.approx(f, abs=1e-3)
    lumpy = np.stack([np.cos(w) + 0.3 * np.cos(2 * w), np.sin(w) + 0.3 * np.sin(3 * w)], -1)
    assert rotation_frequency(lumpy, dt) == pytest.approx(f, abs=1e-3)
    backwards = ellipse[:, ::-1]
    assert rotation_frequency(backwards, dt) == pytest.approx(f, abs=1e-3)


def test_mirror_image_of_a_cpg_run_is_the_cpg_run_from_the_mirrored_state():
    """The augmentation is exact: simulating the mirrored drives from the mirrored state gives mirror(outputs)."""
    from statesim.builtin.salamander.behaviour import mirror, simulate
    from statesim.builtin.salamander.cpg import SalamanderCPG

    cpg = SalamanderCPG(2)
    n = cpg.p.segments
    gen = torch.Generator().manual_seed(3)
    drives = torch.stack([torch.cat([torch.full((150,), 4.4), torch.full((150,), 2.3)]),
                          torch.cat([torch.full((150,), 3.7), torch.full((150,), 1.6)])], -1).unsqueeze(1)
    state = cpg.random_state(1, gen, amplitude=0.3)
    out = simulate(cpg, drives, state)
    perm = list(range(n, 2 * n)) + list(range(n)) + [2 * n + 1, 2 * n, 2 * n + 3, 2 * n + 2]
    mirrored_drives, expected = mirror(drives, out, n)
    again = simulate(cpg, mirrored_drives, {k: v[:, perm] for k, v in state.items()})
    torch.testing.assert_close(again, expected, rtol=1e-5, atol=1e-5)
    assert out[:, 0, :n].abs().max() > 0.3  # a real, moving, asymmetric run
    assert (out[-100:, 0, :n].mean() - 0.065 * 0.7).abs() < 0.02


def test_amplitude_term_of_the_loss_closed_form():
    """The standard-deviation term is blind to phase and offset and equals the squared std error."""
    t = torch.arange(200, dtype=torch.float64) * 0.02
    targets = torch.stack([0.7 * torch.sin(2 * math.pi * 1.1 * t + 0.3 * k) + 0.1 * k for k in range(3)], -1)
    targets = targets.unsqueeze(1)  # [T, 1, 3]
    mask = torch.ones(200, 1, dtype=torch.bool)
    mask[:50] = False
    scored = targets[50:, 0]
    std_t = scored.std(0, unbiased=False)
    # out of phase by half a period, same size and mean: the std term adds nothing
    shifted = torch.cat([targets[23:], targets[:23]])  # 23 steps ~ half of a 1.1 Hz period at 50 Hz
    plain = offset_weighted_loss(0.0, 0.0)(shifted, targets, mask)
    with_std = offset_weighted_loss(0.0, 5.0)(shifted, targets, mask)
    std_s = shifted[50:, 0].std(0, unbiased=False)
    assert float(with_std - plain) == pytest.approx(5.0 * float(((std_s - std_t) ** 2).mean()), rel=1e-4)
    assert float(with_std - plain) < 1e-3 * float(plain)
    # a silent output (its window mean is the target's) costs the target's std squared on top of the MSE
    silent = scored.mean(0).expand(200, 1, 3).clone()
    loss_with, loss_without = offset_weighted_loss(0.0, 5.0), offset_weighted_loss(0.0, 0.0)
    extra = loss_with(silent, targets, mask) - loss_without(silent, targets, mask)
    # (the std has a 1e-8 floor under its square root, so a silent output's std is 1e-4, not 0)
    assert float(extra) == pytest.approx(5.0 * float(((std_t - 1e-4) ** 2).mean()), rel=1e-6)


def test_frequency_from_one_whole_period_when_asked():
    from statesim.builtin.salamander import signals

    dt, f = 0.02, 0.3
    t = np.arange(int(5.5 / dt)) * dt  # 1.65 periods: two upward crossings at most
    s = np.sin(2 * math.pi * f * t - 2.0)
    assert signals.frequency(s, dt) == 0.0  # the default asks for three crossings
    assert signals.frequency(s, dt, min_crossings=2) == pytest.approx(f, abs=2e-3)


def test_long_windows_are_the_same_trajectories_as_the_short_ones_with_one_warm_up():
    """long_window_seconds cuts 20 s windows from the very trajectories the 5 s windows come from: each long window
    starts like the short window at the same offset (same drives, observations, warm-up), only its first 50 steps
    carry observations, and the short ones are zero-padded with lengths so a batch of them runs 250 steps."""
    from statesim.builtin.salamander.cpg import SalamanderCPG
    from statesim.builtin.salamander.data import make_data
    from statesim.builtin.salamander.params import SalamanderParams

    p = SalamanderParams(train_trajectories=3, val_trajectories=1, test_trajectories=1, trajectory_seconds=(20, 26),
                         long_window_seconds=20.0, mirror=False)
    cpg = SalamanderCPG(2, **p.cpg.model_dump())
    splits, extra = make_data(p, cpg, seed=0)
    train, info = splits.train, extra["info"]
    assert info["long_windows"] == 3 and info["long_window_steps"] == 1000 and info["window_steps"] == 250
    assert train.trim and len(train) == info["train_windows"] + 3
    assert train.lengths.tolist() == [250] * info["train_windows"] + [1000] * 3
    assert torch.equal(train.inputs[250:, :info["train_windows"]], torch.zeros_like(train.inputs[250:, :-3]))
    for b in range(3):
        long_x, long_y = train.inputs[:, -3 + b], train.targets[:, -3 + b]
        starts = [i for i in range(info["train_windows"]) if torch.equal(train.targets[:250, i], long_y[:250])]
        assert len(starts) == 1, b  # exactly one short window is the long window's first 5 s
        assert torch.equal(train.inputs[:250, starts[0]], long_x[:250])
        assert bool(long_x[50:, 2:].eq(0).all()) and bool(long_x[:50, -1].eq(1).all())  # one warm-up only
    with pytest.raises(ValueError, match="long_window_seconds must be longer than window_seconds"):
        SalamanderParams(long_window_seconds=5.0)
