"""Signal measures against closed forms, the drive schedules, and a tiny end-to-end salamander run."""
import json
import math

import numpy as np
import pytest
import torch

from statesim.builtin.salamander import signals
from statesim.builtin.salamander.behaviour import DriveRecipe, drive_schedule


def test_frequency_amplitude_and_lags_of_known_sinusoids():
    dt, f = 0.02, 0.73
    t = np.arange(3000) * dt
    lags = np.array([0.3, -0.5, 1.2])
    phases = np.concatenate([[0.0], -np.cumsum(lags)])
    body = 0.8 * np.cos(2 * math.pi * f * t[:, None] + phases[None, :]) + 0.1
    assert signals.frequency(body[:, 0], dt) == pytest.approx(f, abs=1e-3)
    assert signals.amplitude(body) == pytest.approx(0.8, rel=1e-3)
    np.testing.assert_allclose(signals.phase_lags(body, dt, f), lags, atol=1e-2)
    assert signals.mean_offset(body[:int(round(10 / f / dt))]) == pytest.approx(0.1, abs=2e-3)
    assert signals.frequency(np.full(500, 0.3), dt) == 0.0


def test_drive_schedules_stay_in_range_and_avoid_held_out_levels():
    gen = torch.Generator().manual_seed(0)
    held = (1.5, 3.5)
    recipe = DriveRecipe(held_out=held, held_out_width=0.1, ramp_probability=0.0, turn_probability=0.0)
    d = torch.cat([drive_schedule(gen, 2000, 0.02, recipe) for _ in range(10)])
    assert d.min() >= 0 and d.max() <= 6
    assert torch.equal(d[:, 0], d[:, 1])
    for h in held:
        assert not ((d - h).abs() <= 0.1).any()
    turning = DriveRecipe(turn_probability=1.0, max_turn=1.0, ramp_probability=0.0)
    d = drive_schedule(gen, 3000, 0.02, turning)
    diff = (d[:, 0] - d[:, 1]).abs()
    assert diff.max() <= 1.0 + 1e-6 and (diff > 0).float().mean() > 0.5
    only = DriveRecipe(levels=(2.0, 4.0), ramp_probability=0.0, turn_probability=0.0)
    assert set(drive_schedule(gen, 3000, 0.02, only)[:, 0].tolist()) <= {2.0, 4.0}


def test_params_reject_a_warmup_longer_than_the_window():
    from statesim.builtin.scenarios.salamander import SalamanderParams

    with pytest.raises(ValueError, match="warmup_seconds"):
        SalamanderParams(warmup_seconds=6.0, window_seconds=5.0)


@pytest.mark.slow
def test_tiny_salamander_run_end_to_end(tmp_path):
    """A few training steps on a tiny model: every artefact is written and results carry targets and flags."""
    from statesim.run import execute

    overrides = ["training.steps=20", "scenario.train_trajectories=3", "scenario.val_trajectories=1",
                 "scenario.test_trajectories=1", "scenario.trajectory_seconds=[6, 8]", "scenario.eval_seconds=30",
                 "scenario.measure_seconds=8", "scenario.ablation_seconds=3", "scenario.steer_seconds=12",
                 "model.cell.hidden_size=4", "scenario.eval_levels=[0.5, 2.5, 2.9, 3.1, 4.0, 5.5]",
                 "scenario.turn_conditions=[[4.5, 3.5]]", "scenario.ablation_drives=[4.0]",
                 "forcing=[{target: input, units: [0, 1], start: 250, stop: 500, value: 4.0}]",
                 "output.progress=false"]
    run_dir = execute("scenarios/salamander.yaml", overrides, out=tmp_path / "run", echo=lambda m: None)
    results = json.loads((run_dir / "results.json").read_text())
    targets = results["evaluation"]["targets"]
    assert set(targets) == {"frequency_vs_drive", "walk_to_swim_jump", "stillness_outside_1_5", "swim_phase_lag",
                            "amplitude", "turning_offset", "amplitude_drift"}
    assert all({"value", "target", "pass"} <= set(m) for m in targets.values())
    rows = {(r["d_L"], r["d_R"]): r for r in results["evaluation"]["per_condition"]}
    # the CPG side of the table is the model's own exact behaviour
    assert rows[(4.0, 4.0)]["cpg_frequency"] == pytest.approx(1.1, abs=0.01)
    assert rows[(2.5, 2.5)]["cpg_frequency"] == pytest.approx(0.5, abs=0.01)
    assert rows[(0.5, 0.5)]["cpg_amplitude"] < 1e-3
    commands = results["steering"]["input"]["commands"]
    assert commands[1]["d_L"] == 4.0 and "switch to swimming" in commands[1]["intended"]
    assert len(results["analysis"]["ablation"]["amplitude_ratio"][0]) == 4
    for name in ("learned_vs_true", "frequency_vs_drive", "phase_lag_profile", "steering_inputs",
                 "steering_neurons", "pca_limit_cycles", "ablation_map"):
        assert (run_dir / "plots" / f"{name}.png").is_file()
    # the input layout a host embedding the trained model relies on, checked against the saved weights
    layout = results["model_inputs"]
    assert layout["drives"] == {"d_L": 0, "d_R": 1} and layout["observations_during_warmup"] == [2, 13]
    assert layout["warmup_flag"] == 14 and layout["size"] == 15
    from statesim.checkpoint import latest_good_checkpoint

    tree, _ = latest_good_checkpoint(run_dir / "checkpoints" / "main")
    assert tree["model"]["topology.cell.weight_ih"].shape[1] == layout["size"]
    speed = results["steering"]["neurons"]["speed"]
    assert {"frequency_clamped_held", "pass", "pass_against_unclamped"} <= set(speed)
    assert len(speed["units"]) <= 12
    assert results["analysis"]["pca"]["state_parts"] == ["h"]  # an LSTM cell outputs its h
    report = (run_dir / "report.md").read_text()
    assert "## Targets" in report and "plots/pca_limit_cycles.png" in report
