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


TINY = ["training.steps=20", "scenario.train_trajectories=3", "scenario.val_trajectories=1",
        "scenario.test_trajectories=1", "scenario.trajectory_seconds=[6, 8]", "scenario.long_window_seconds=6",
        "scenario.eval_seconds=30",
        "scenario.measure_seconds=8", "scenario.ablation_seconds=3", "scenario.steer_seconds=12",
        "model.cell.hidden_size=4", "scenario.eval_levels=[0.5, 2.5, 2.9, 3.1, 4.0, 5.5]",
        "scenario.turn_conditions=[[4.5, 3.5]]", "scenario.ablation_drives=[4.0]",
        "scenario.validation_levels=[0.8, 2.0, 3.3, 5.8]", "scenario.validation_turns=[[4.3, 3.7]]",
        "forcing=[{target: input, units: [0, 1], start: 250, stop: 500, value: 4.0}]",
        "output.progress=false"]


@pytest.mark.slow
def test_tiny_salamander_run_end_to_end(tmp_path):
    """A few training steps on a tiny model: every artefact is written and results carry targets and flags."""
    from statesim.run import execute

    run_dir = execute("scenarios/salamander.yaml", TINY, out=tmp_path / "run", echo=lambda m: None)
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


@pytest.mark.slow
def test_same_seed_and_threads_give_identical_results_and_the_cli_ends_with_the_targets(tmp_path, capsys):
    """Two tiny runs through the CLI at one seed and thread count: byte-identical results.json; the last line
    of the terminal output counts the targets met, as results.json's targets_met has them."""
    from statesim.cli import main

    overrides = [f"--set={o}" for o in [*TINY, "output.plots=false", "training.steps=12"]]
    texts = []
    for name in ("a", "b"):
        assert main(["run", "scenarios/salamander.yaml", "--out", str(tmp_path / name), *overrides]) == 0
        texts.append((tmp_path / name / "results.json").read_text())
    assert texts[0] == texts[1]
    results = json.loads(texts[0])
    assert results["provenance"]["threads"] == torch.get_num_threads()
    assert results["provenance"]["torch"] == torch.__version__ and results["provenance"]["seed"] == 0
    met = results["targets_met"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"targets met: {sum(met.values())} of {len(met)}")
    for name, ok in met.items():
        assert (name in last.split("missed:")[-1]) == (not ok)


def _cpg(**params):
    from statesim.builtin.salamander.cpg import SalamanderCPG

    return SalamanderCPG(2, **params)


def test_steering_expectations_follow_the_cpg_parameters():
    """The fast/slow and left/right conditions and the CPG's expected responses come from its parameters; the
    expected responses match what the simulated CPG does."""
    from statesim.builtin.salamander.behaviour import simulate
    from statesim.builtin.scenarios.salamander import expected_effects, swim_conditions

    cpg = _cpg(body={"d_low": 1.0, "d_high": 5.5, "nu_gain": 0.3, "nu_offset": 0.2, "R_gain": 0.1, "R_offset": 0.2},
               limb={"d_low": 1.0, "d_high": 2.5, "nu_gain": 0.2, "nu_offset": 0.0, "R_gain": 0.131,
                     "R_offset": 0.131})
    conditions = swim_conditions(cpg.p)
    assert conditions["base"] == (4.0, 4.0) and conditions["fast"] == (4.75, 4.75)
    assert conditions["left"] == (4.6, 3.4) and conditions["right"] == (3.4, 4.6)
    speed, turn = expected_effects(cpg, conditions)
    assert speed == pytest.approx(0.3 * 1.5) and turn == pytest.approx(0.1 * 2 * 1.2)
    keys = ["fast", "slow", "left", "right"]
    drives = torch.tensor([conditions[k] for k in keys]).unsqueeze(0).expand(1500, -1, -1).contiguous()
    out = simulate(cpg, drives, phases="canonical").numpy()[1000:]
    freq = [signals.frequency(out[:, b, 0], 0.02) for b in range(4)]
    offset = [signals.mean_offset(out[:, b, :8]) for b in range(4)]
    assert freq[0] - freq[1] == pytest.approx(speed, abs=0.02)
    assert offset[2] - offset[3] == pytest.approx(turn, rel=0.1)
    default = swim_conditions(_cpg().p)
    assert default == {"base": (4.0, 4.0), "fast": (4.5, 4.5), "slow": (3.5, 3.5), "left": (4.4, 3.6),
                       "right": (3.6, 4.4)}
    assert expected_effects(_cpg(), default) == pytest.approx((0.2, 0.065 * 1.6))


def test_targets_judge_moving_and_still_by_the_cpg_borders():
    """A perfect model (its metrics equal the CPG's) meets every target; which drives count as moving, still
    or swimming follows the CPG's saturation ranges, not fixed numbers."""
    from statesim.builtin.scenarios.salamander import SalamanderParams, judge_targets

    def row(d, f, amp, offset=0.0, lags=(math.pi / 4,) * 7):
        m = {"frequency": f, "amplitude": amp, "offset": offset, "lags": np.array(lags), "limb_amplitude": 0.0}
        return {"d_L": d[0], "d_R": d[1], "rnn": dict(m), "cpg": dict(m), "rnn_early_amplitude": amp}

    wide = _cpg(body={"d_low": 1.0, "d_high": 5.5, "nu_gain": 0.2, "nu_offset": 0.3, "R_gain": 0.065,
                      "R_offset": 0.196})
    levels = [row((0.5, 0.5), 0.0, 0.0), row((2.0, 2.0), 0.4, 0.6), row((3.5, 3.5), 1.0, 0.85),
              row((5.2, 5.2), 1.34, 1.0), row((5.8, 5.8), 0.0, 0.0)]
    turns = [row((4.5, 3.5), 1.1, 0.9, 0.065)]
    targets = judge_targets(SalamanderParams(), wide, levels + turns, len(levels))
    assert all(t["pass"] for t in targets.values()), targets
    assert "[1, 5.5]" in targets["frequency_vs_drive"]["target"]
    # the default CPG stops at 5: a model still oscillating at 5.2 fails stillness there
    assert not judge_targets(SalamanderParams(), _cpg(), levels + turns, len(levels))["stillness_outside_1_5"]["pass"]


def test_model_inputs_size_follows_the_cpg_outputs():
    from statesim.builtin.scenarios.salamander import model_inputs

    cpg = _cpg(segments=6)
    observed = torch.randn(30, 2, cpg.output_size)
    x = model_inputs(torch.ones(30, 2, 2), observed, 5)
    assert x.shape == (30, 2, 2 + 10 + 1)
    torch.testing.assert_close(x[:5, :, 2:12], observed[:5])
    assert (x[5:, :, 2:] == 0).all() and (x[:5, :, -1] == 1).all()


SHORT = ["training.steps=1000", "scenario.train_trajectories=32", "scenario.val_trajectories=2",
         "scenario.test_trajectories=1", "scenario.eval_seconds=20", "scenario.measure_seconds=10",
         "scenario.ablation_seconds=5", "scenario.choose_from=1.0", "scenario.validation_levels=[0.8, 2.0, 3.75, 5.8]",
         "scenario.validation_turns=[[4.3, 3.7]]", "training.eval_every=250", "training.checkpoint_every=1000",
         "output.plots=false", "output.progress=false"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_shortened_recipe_learns_chooses_its_weights_and_reports_every_target(tmp_path, seed):
    """The shipped recipe cut to 1000 updates (a tenth of its budget, a quarter of its data, 20 s evaluation runs)
    runs end to end: validation loss falls, both weight candidates are judged, the last checkpoint is the last
    update, and every target is reported. It meets no gait target reliably at this budget (seeds 0 and 1 at
    1000 and at 2000 updates fail the walk-to-swim jump and the frequency curve: a 2000-update model's
    oscillation dies out within 60 s), so none is asserted here; the targets are judged on the full recipe
    (docs/salamander.md, docs/robustness.md)."""
    from statesim.checkpoint import latest_good_checkpoint
    from statesim.run import execute

    run_dir = execute("scenarios/salamander.yaml", [*SHORT, f"seed={seed}"], out=tmp_path / "run",
                      echo=lambda m: None)
    results = json.loads((run_dir / "results.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [row["val_loss"] for row in rows if "val_loss" in row]
    # One thread (conftest): validation at 250 .. 1000 updates 0.43 0.49 0.42 0.40 (seed 0), 0.45 0.42 0.36 0.29
    # (seed 1) on one machine, 0.40 0.41 0.32 0.36 (seed 1) on another (AMD EPYC: other SIMD sums); the long
    # windows' later chunks make the validation loss noisy, so which check is lowest is not asserted.
    assert len(val) == 4 and val[-1] < 0.95 * val[0] and min(val) < 0.9 * val[0], val
    train = [row["loss"] for row in rows if "loss" in row and "val_loss" not in row]
    # training loss, first vs last 5 logged updates (every 20th): 0.70 -> 0.36 and 0.71 -> 0.28
    assert sum(train[-5:]) < 0.6 * sum(train[:5]), train
    targets = results["evaluation"]["targets"]
    assert set(targets) == set(results["targets_met"]) and len(targets) == 7
    assert all(isinstance(t["pass"], bool) and "value" in t and t["target"] for t in targets.values())
    assert "frequency_vs_drive" in (run_dir / "report.md").read_text()
    choice = results["weights_choice"]
    assert set(choice["candidates"]) == {"raw@1000", "average@1000"} and choice["chosen"] in choice["candidates"]
    tree, info = latest_good_checkpoint(run_dir / "checkpoints" / "main")
    assert info.step == 1000
    # the final checkpoint holds the chosen candidate with its readout scaled by the calibration's gains
    calibration = results["amplitude_calibration"]
    assert calibration["applied"] is True and 0.5 < calibration["body_gain"] < 2 and 0.5 < calibration["limb_gain"] < 2
    gain = torch.tensor([calibration["body_gain"]] * 8 + [calibration["limb_gain"]] * 4)
    kept = tree["scenario"]["candidates"]["weights"][choice["chosen"]]
    torch.testing.assert_close(tree["model"]["head.weight"], gain[:, None] * kept["head.weight"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tree["model"]["topology.cell.weight_hh"], kept["topology.cell.weight_hh"])


def test_candidates_keep_an_exponential_average_and_snapshot_at_the_given_steps():
    """The averaged weights follow avg_1 = w_1, avg_k = d avg_(k-1) + (1 - d) w_k; snapshots are copies."""
    from types import SimpleNamespace

    from statesim.builtin.salamander.candidates import Candidates

    model = torch.nn.Linear(2, 1)
    candidates = Candidates(model, 0.9, {2, 3})
    trainer = SimpleNamespace(model=model, step=0)
    history = []
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.add_(float(step))
        history.append(model.weight.detach().clone())
        trainer.step = step
        candidates(trainer, {})
    expected = history[0]
    for w in history[1:]:
        expected = 0.9 * expected + 0.1 * w
    torch.testing.assert_close(candidates.weights["average@3"]["weight"], expected)
    torch.testing.assert_close(candidates.weights["raw@2"]["weight"], history[1])
    assert set(candidates.weights) == {"raw@2", "average@2", "raw@3", "average@3"}
    assert candidates.trainer is trainer
    assert set(Candidates(model, None, {3}).weights) == set()  # no average: raw snapshots only


def test_amplitude_calibration_scales_the_readout_about_its_resting_output(monkeypatch):
    """Body and limb gains are the minimax ones of the measured ratios (2 / (min + max), moving drives only),
    and afterwards the model outputs g (y - centre) + centre, centre the resting output of the constant drives."""
    import statesim
    from statesim.builtin.salamander import calibration
    from statesim.builtin.salamander.cpg import SalamanderCPG
    from statesim.builtin.salamander.params import SalamanderParams
    from statesim.builtin.salamander.rollout import Rig
    from statesim.config import validate_model

    registry = statesim.build_plugin_host(autoload=False).registry
    cpg = SalamanderCPG(2)
    model = statesim.build_model(registry, validate_model({"cell": {"type": "lstm", "hidden_size": 5}}, registry),
                                 input_size=15, output_size=cpg.output_size)
    rig = Rig(SalamanderParams(validation_levels=[0.8, 2.0, 4.25], validation_turns=[(4.3, 3.7)]), cpg, model, 50, 0)

    def gait(amplitude: float, limbs: float) -> dict:
        return {"amplitude": amplitude, "limb_amplitude": limbs}

    # 0.8 is still (excluded), 2.0 walks (body 0.9x, limbs 1.2x), 4.25 swims (body 0.8x, limbs still: excluded);
    # the turning row must not count
    rows = [{"d_L": 0.8, "rnn": gait(0.0, 0.0), "cpg": gait(0.0, 0.0)},
            {"d_L": 2.0, "rnn": gait(0.45, 0.3), "cpg": gait(0.5, 0.25)},
            {"d_L": 4.25, "rnn": gait(0.4, 0.0), "cpg": gait(0.5, 0.0)},
            {"d_L": 4.3, "rnn": gait(0.1, 0.0), "cpg": gait(0.5, 0.0)}]
    learned = torch.randn(10, 4, cpg.output_size)
    monkeypatch.setattr(calibration, "condition_rows", lambda *args: (rows, learned, None, slice(5, 10)))
    x = torch.randn(30, 3, 15)
    with torch.no_grad():
        before = model(x, return_states=True)
    found = calibration.calibrate_amplitude(rig, ([], torch.empty(0), torch.empty(0)))
    assert found["applied"] and found["body_gain"] == pytest.approx(2 / 1.7, abs=1e-5)
    assert found["limb_gain"] == pytest.approx(1 / 1.2, abs=1e-5)
    assert set(found["validation_amplitude_ratios"]["body"]) == {"2.0", "4.25"}
    gain = torch.tensor([2 / 1.7] * 8 + [1 / 1.2] * 4)
    centre = learned[5:10, :3].mean(dim=(0, 1))
    with torch.no_grad():
        after = model(x, return_states=True)
    torch.testing.assert_close(after.outputs, gain * (before.outputs - centre) + centre, atol=1e-5, rtol=1e-5)
    for part, states in before.states.items():  # the readout is not fed back: the dynamics are unchanged
        torch.testing.assert_close(after.states[part], states, atol=0, rtol=0)
