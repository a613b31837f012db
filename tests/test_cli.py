"""The ``statesim`` command: help, validate, errors without tracebacks, and end-to-end runs with the
run-folder layout, checkpoints and --resume."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
import torch
from safetensors.torch import load_file

from statesim.cli import build_parser, main
from statesim.config import load_config
from statesim.plugin_manager import build_plugin_host
from statesim.runfolder import load_model
from statesim.yamlio import parse_yaml

ROOT = Path(__file__).resolve().parents[1]
MOVING_AVERAGE = ROOT / "scenarios" / "moving_average.yaml"
LINEAR_SYSTEM = ROOT / "scenarios" / "linear_system.yaml"
SMALL_LINEAR = ["training.steps=40", "training.checkpoint_every=20", "training.log_every=10", "scenario.steps=40",
                "scenario.train_sequences=32", "scenario.test_sequences=8"]
SMALL_MA = ["training.steps=30", "training.checkpoint_every=15", "training.log_every=10", "scenario.steps=30",
            "scenario.train_sequences=32", "scenario.test_sequences=8"]


def _statesim(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATESIM_")}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "statesim", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _subcommands() -> list[str]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return list(action.choices)


# --------------------------------------------------------------------------- help and start-up
def test_python_dash_m_help_lists_subcommands_examples_and_environment():
    done = _statesim("--help")
    assert done.returncode == 0 and done.stderr == ""
    for word in ("run", "validate", "plugins", "STATESIM_DISABLE_PLUGIN_AUTOLOAD", "STATESIM_BLOCK_PLUGINS",
                 "statesim run scenarios/moving_average.yaml"):
        assert word in done.stdout
    version = _statesim("--version")
    assert version.returncode == 0 and version.stdout.startswith("statesim ")


@pytest.mark.parametrize("command", _subcommands())
def test_each_subcommand_has_useful_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: statesim {command}")
    assert len(text.splitlines()) >= 5 and "options:" in text


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 0
    assert "usage: statesim" in capsys.readouterr().out


def test_help_of_every_command_does_not_import_torch():
    commands = [[]] + [[c] for c in _subcommands()]
    script = textwrap.dedent(f'''
        import sys
        from statesim.cli import main
        for args in {commands!r}:
            try:
                main(args + ["--help"])
            except SystemExit:
                pass
        print("heavy:", sorted(m for m in ("torch", "numpy", "matplotlib", "pydantic") if m in sys.modules))
    ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "heavy: []"


# --------------------------------------------------------------------------- validate
def test_validate_reports_valid(capsys):
    assert main(["validate", str(MOVING_AVERAGE)]) == 0
    assert capsys.readouterr().out == f"{MOVING_AVERAGE}: valid (scenario 'moving_average')\n"


def test_validate_print_shows_the_resolved_config_with_overrides(capsys):
    overrides = ["model.cell.hidden_size=32", "training.lr=0.01"]
    assert main(["validate", str(LINEAR_SYSTEM), "--print", *_sets(overrides)]) == 0
    printed, _ = parse_yaml(capsys.readouterr().out)
    expected = load_config(LINEAR_SYSTEM, build_plugin_host().registry, overrides).resolved()
    assert printed == expected
    assert printed["model"]["cell"]["hidden_size"] == 32 and printed["training"]["lr"] == 0.01
    assert printed["training"]["optimizer"] == "adam" and printed["model"]["topology"] == {"type": "unidirectional"}


@pytest.mark.parametrize("text, where", [
    ("scenario: {type: moving_average}\ntrainig: {steps: 3}\n",
     "line 2: `trainig`: unknown key 'trainig'. Did you mean"),
    ("scenario: {type: moving_average}\nmodel:\n  cell: {type: lstn, hidden_size: 2}\n",
     "line 3: `model.cell.type`: unknown cell 'lstn'. Did you mean 'lstm'?"),
    ("scenario: {type: moving_average}\ntraining: {lr: fast}\n", "line 2: `training.lr`: "),
    ("scenario: {type: moving_average\n", "line 2: "),
])
def test_validate_errors_exit_nonzero_with_one_paragraph_and_no_traceback(tmp_path, capsys, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: Problem in the scenario:\n")
    assert f"{path}, {where}" in captured.err


def test_bad_override_in_run_names_the_set(tmp_path, capsys):
    assert main(["run", str(LINEAR_SYSTEM), "--out", str(tmp_path / "r"), "--set", "training.lr=-1"]) == 2
    assert "--set training.lr=-1: `training.lr`: Input should be greater than 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_errors_in_a_real_process_have_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenario: {type: moving_average}\nseed: 1\nseed: 2\n", encoding="utf-8")
    for args, message in ((["validate", str(bad)], f"{bad}, line 3: `seed`: duplicate key 'seed'"),
                          (["run", str(MOVING_AVERAGE), "--set", "model.cell.hidden_size=32"],
                           "--set model.cell.hidden_size=32: `model.cell.type`: this key is required")):
        done = _statesim(*args)
        assert done.returncode == 2, done
        assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
        assert message in done.stderr


# --------------------------------------------------------------------------- end to end
def _check_run_folder(run: Path, overrides: list[str], scenario: Path, jobs: set[str], steps: int) -> dict:
    """The layout every run folder has, checked against an independent load of the same config."""
    saved, _ = parse_yaml((run / "config.yaml").read_text(encoding="utf-8"))
    config = load_config(scenario, build_plugin_host().registry, overrides)
    assert saved == config.resolved()

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["job"] for r in records} == jobs
    for job in jobs:
        mine = [r for r in records if r["job"] == job]
        assert [r["step"] for r in mine] == list(range(10, steps + 1, 10))
        schedule, training = config.training.schedule, config.training
        assert schedule.type == "cosine"
        for record in mine:
            assert {"step", "loss", "grad_norm", "lr"} <= set(record)
            # the logged lr is the one the step's update used: cosine annealing after step - 1 scheduler steps
            expected = schedule.min_lr + (training.lr - schedule.min_lr) * (
                1 + math.cos(math.pi * (record["step"] - 1) / steps)) / 2
            assert record["lr"] == pytest.approx(expected, rel=1e-9), record
            assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"]) and record["grad_norm"] > 0
        assert mine[-1]["loss"] < mine[0]["loss"], mine

    for job in jobs:
        sidecars = sorted((run / "checkpoints" / job).glob("*.json"))
        assert sidecars, job
        last = json.loads(sidecars[-1].read_text(encoding="utf-8"))
        assert last["step"] == steps and last["config_digest"] == config.digest()
        weights = sidecars[-1].with_name(last["weights"])
        assert weights.suffix == ".safetensors"
        assert hashlib.sha256(weights.read_bytes()).hexdigest() == last["sha256"]
        assert load_file(str(weights))  # tensors, readable by safetensors itself

    plots = sorted((run / "plots").glob("*.png"))
    assert plots and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    return json.loads((run / "results.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_run_moving_average_end_to_end(tmp_path):
    run = tmp_path / "ma"
    done = _statesim("run", str(MOVING_AVERAGE), "--out", str(run), *_sets(SMALL_MA))
    assert done.returncode == 0, done.stderr
    assert f"run folder: {run}" in done.stdout
    jobs = {f"{m}-on-{s}" for m in ("window", "linear") for s in ("moving_average", "ema")}
    results = _check_run_folder(run, SMALL_MA, MOVING_AVERAGE, jobs, 30)
    assert results["scenario"] == "moving_average" and set(results["pairings"]) == jobs
    # Independent truth: the test set rebuilt from the seed, its targets by NumPy (a convolution, the EMA's
    # recursion), and each job's saved model run on it give the MSE the run reported.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    x_test, truths = _moving_average_test_set(saved["scenario"], seed=saved["seed"])
    for job, pairing in results["pairings"].items():
        model, _ = load_model(run, job=job)
        with torch.no_grad():
            prediction = model(torch.from_numpy(x_test)).outputs.numpy()
        mse = float(((prediction - truths[pairing["system"]]) ** 2).mean())
        assert pairing["test_mse"] == pytest.approx(mse, rel=1e-5), job


def _moving_average_test_set(params: dict, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """moving_average's test inputs (the seed's second draw) and both systems' outputs, computed in NumPy."""
    gen = torch.Generator().manual_seed(seed)
    torch.randn(params["steps"], params["train_sequences"], 1, generator=gen)
    x = torch.randn(params["steps"], params["test_sequences"], 1, generator=gen).numpy()
    windowed = np.apply_along_axis(lambda s: np.convolve(s, params["coefficients"])[: len(s)], 0, x)
    ema, h = np.zeros_like(x), np.zeros_like(x[0])
    for t in range(len(x)):
        h = params["gamma"] * h + (1 - params["gamma"]) * x[t]
        ema[t] = h
    return x, {"moving_average": windowed, "ema": ema}


@pytest.mark.slow
def test_run_linear_system_end_to_end_then_resume_continues_exactly(tmp_path):
    run = tmp_path / "ls"
    done = _statesim("run", str(LINEAR_SYSTEM), "--out", str(run), *_sets(SMALL_LINEAR))
    assert done.returncode == 0, done.stderr
    results = _check_run_folder(run, SMALL_LINEAR, LINEAR_SYSTEM, {"main"}, 40)
    assert len(results["eigenvalues_true"]) == len(results["eigenvalues_learned"]) == 4
    # Independent truth: the impulse responses simulated (a unit pulse into each input of the true system
    # and of the saved model, stepped by the engine) instead of the Markov parameters B D^k C the run used.
    from statesim.builtin.scenarios.linear_system import LinearSystemParams, random_stable_system
    from statesim.engine import unroll

    saved = yaml.safe_load((run / "config.yaml").read_text())["scenario"]
    params = LinearSystemParams(**{k: v for k, v in saved.items() if k != "type"})
    model, _ = load_model(run)
    pulses = torch.zeros(params.impulse_steps, params.input_size, params.input_size)
    pulses[0] = torch.eye(params.input_size)
    with torch.no_grad():
        true_ir = unroll(random_stable_system(params), pulses).outputs
        learned_ir = model(pulses).outputs
    error = float((learned_ir - true_ir).norm() / true_ir.norm())
    assert results["impulse_response_relative_error"] == pytest.approx(error, rel=1e-4)

    # Cut a copy back to its step-20 checkpoint, as if the run had been killed after saving it.
    interrupted = tmp_path / "cut"
    shutil.copytree(run, interrupted)
    for path in (interrupted / "checkpoints" / "main").glob("step_00000040.*"):
        path.unlink()
    (interrupted / "results.json").unlink()
    metrics = interrupted / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()
                               if json.loads(line)["step"] <= 20))
    resumed = _statesim("run", str(LINEAR_SYSTEM), "--resume", str(interrupted), *_sets(SMALL_LINEAR))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed job 'main' at step 20" in resumed.stderr
    again = json.loads((interrupted / "results.json").read_text())
    for key in ("test_mse", "impulse_response_relative_error", "eigenvalues_learned"):
        assert again[key] == results[key], key
    assert [json.loads(x)["loss"] for x in metrics.read_text().splitlines()] == \
        [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]



def test_resume_refuses_a_changed_scenario_and_run_refuses_a_used_folder(tmp_path, capsys):
    run = tmp_path / "ls"
    run.mkdir()
    (run / "config.yaml").write_text(_resolved_yaml(SMALL_LINEAR), encoding="utf-8")
    assert main(["run", str(LINEAR_SYSTEM), "--resume", str(run), *_sets(SMALL_LINEAR),
                 "--set", "training.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume") and "training.lr: " in err and " -> 0.5" in err
    assert main(["run", str(LINEAR_SYSTEM), "--out", str(run), *_sets(SMALL_LINEAR)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert main(["run", str(LINEAR_SYSTEM), "--resume", str(tmp_path / "nothing")]) == 2
    assert "cannot resume" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("x")
    assert main(["run", str(LINEAR_SYSTEM), "--out", str(tmp_path / "a_file")]) == 2
    assert "is an existing file, not a folder" in capsys.readouterr().err
    assert main(["run", str(LINEAR_SYSTEM), "--out", str(tmp_path / "a_file" / "run")]) == 2
    assert "cannot create the run folder" in capsys.readouterr().err


def _resolved_yaml(overrides: list[str]) -> str:
    from statesim.config import dump_config

    return dump_config(load_config(LINEAR_SYSTEM, build_plugin_host().registry, overrides))


def test_run_summary_counts_targets_met_and_names_the_missed(tmp_path):
    from statesim.cli import _targets_summary

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"targets_met": {"a": True, "b": False, "c": True}}))
    assert _targets_summary(results) == "targets met: 2 of 3; missed: b"
    (tmp_path / "report.md").write_text("# r\n")
    assert _targets_summary(results) == f"targets met: 2 of 3; missed: b; details in {tmp_path / 'report.md'}"
    results.write_text(json.dumps({"targets_met": {"a": True}}))
    assert _targets_summary(results).startswith("targets met: 1 of 1 (all)")
    results.write_text(json.dumps({"test_mse": 0.1}))  # a scenario without targets: no summary line
    assert _targets_summary(results) is None
