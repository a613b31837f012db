"""`statesim sweep`: grid parsing, every combination as a run folder, failures isolated, reruns skip finished runs."""
import csv
import json
from pathlib import Path

import pytest

from statesim.sweep import (LocalExecutor, SerialExecutor, SweepError, load_sweep, make_executor, parse_grid_arg,
                            run_name, run_sweep, validate_combinations)

SHIPPED = sorted((Path(__file__).resolve().parents[1] / "scenarios" / "sweeps").glob("*.yaml"))

TINY = """\
name: tiny
scenario: {type: adding, length: 5, train_sequences: 16, val_sequences: 8, test_sequences: 8, check_every: 2,
           stop_when_solved: false, diagnose: false}
model:
  cell: {type: vanilla, hidden_size: 3}
training: {steps: 2, batch_size: 8, log_every: 1}
output: {plots: false, progress: false}
seed: 7
"""


def _write(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY + extra)
    return path


def test_parse_grid_values_as_yaml():
    assert parse_grid_arg("training.clip.max_norm=null,1.0") == ("training.clip.max_norm", [None, 1.0])
    assert parse_grid_arg("model.cell.type=lstm, gru") == ("model.cell.type", ["lstm", "gru"])
    with pytest.raises(SweepError):
        parse_grid_arg("training.lr")


def test_yaml_section_and_command_line_merge(tmp_path):
    path = _write(tmp_path, "sweep:\n  grid:\n    model.cell.type: [vanilla, gru]\n  seeds: [1, 2]\n"
                            "  metrics: [test_mse]\n")
    spec = load_sweep(path, ["training.lr=0.1,0.01"], out=tmp_path / "out")
    assert spec.grid == {"model.cell.type": ["vanilla", "gru"], "training.lr": [0.1, 0.01]}
    assert spec.seeds == [1, 2] and "sweep" not in spec.base and spec.metrics == ["test_mse"]
    combos = spec.combinations()
    assert len(combos) == 8 and len({run_name(c) for c in combos}) == 8
    assert load_sweep(path, seeds=3, out=tmp_path / "o").seeds == [7, 8, 9]  # counted from the file's seed
    bad = _write(tmp_path, "sweep:\n  gird: {}\n")
    with pytest.raises(SweepError, match="gird"):
        load_sweep(bad)
    with pytest.raises(SweepError, match="unknown executor"):
        make_executor("nope")


def test_invalid_combinations_are_reported_before_anything_runs(tmp_path):
    spec = load_sweep(_write(tmp_path), ["model.cell.type=vanilla,nonexistent"], out=tmp_path / "out")
    with pytest.raises(SweepError, match="nonexistent"):
        run_sweep(spec, SerialExecutor(), echo=lambda m: None)
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.slow
def test_serial_sweep_isolates_a_failure_and_a_rerun_skips_finished_runs(tmp_path):
    spec = load_sweep(_write(tmp_path), ["model.cell.type=vanilla,gru"], seeds=2, out=tmp_path / "out")
    combos = spec.combinations()
    assert len(combos) == 4
    # Make one run fail at run time: its folder exists, is not empty, and is not a run folder.
    broken = tmp_path / "out" / "runs" / run_name(combos[1])
    broken.mkdir(parents=True)
    (broken / "stray.txt").write_text("x")
    messages = []
    import torch

    threads = torch.get_num_threads()
    result = run_sweep(spec, SerialExecutor(), echo=messages.append)
    assert torch.get_num_threads() == threads  # in-process runs leave the caller's thread count alone
    assert [o.status for o in result.outcomes] == ["done", "failed", "done", "done"]
    assert "already exists" in (tmp_path / "out" / "errors" / f"{run_name(combos[1])}.txt").read_text()
    for combo, outcome in zip(combos, result.outcomes):
        if outcome.status == "done":
            run = json.loads((Path(outcome.run_dir) / "results.json").read_text())
            config = (Path(outcome.run_dir) / "config.yaml").read_text()
            assert run["seed"] == combo["seed"] and f"type: {combo['model.cell.type']}" in config
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "failed", "ok", "ok"]
    assert all(r["test_mse"] for r in rows if r["status"] == "ok")
    table = (tmp_path / "out" / "summary.md").read_text()
    assert "Averaged over seeds" in table and "1/2 ok" in table and "2/2 ok" in table
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 1000
    # Fix the cause and run again: only the failed run executes.
    (broken / "stray.txt").unlink()
    again = run_sweep(spec, SerialExecutor(), echo=lambda m: None)
    assert [o.status for o in again.outcomes] == ["skipped", "done", "skipped", "skipped"]
    assert not (tmp_path / "out" / "errors" / f"{run_name(combos[1])}.txt").exists()


@pytest.mark.slow
def test_local_process_pool_runs_in_parallel_and_cli_reports(tmp_path):
    from statesim.cli import main

    path = _write(tmp_path, "sweep:\n  grid:\n    training.clip.max_norm: [null, 1.0]\n")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--workers", "2"]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    assert [r["max_norm" if "max_norm" in r else "training.clip.max_norm"] for r in rows] == ["", "1.0"]
    assert all(r["status"] == "ok" for r in rows)
    assert LocalExecutor(3).slots == 3
    # Failures make the command exit non-zero, after running the rest.
    spec_dir = tmp_path / "out2" / "runs"
    spec = load_sweep(path, out=tmp_path / "out2")
    stray = spec_dir / run_name(spec.combinations()[0])
    stray.mkdir(parents=True)
    (stray / "x").write_text("x")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out2"), "--executor", "serial"]) == 1


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_sweep_is_valid_in_every_combination(path, host):
    spec = load_sweep(path)
    assert spec.grid and path.read_text().startswith(f"# statesim sweep scenarios/sweeps/{path.name}")
    validate_combinations(spec, host)


def test_executors_come_from_the_hook_and_a_name_twice_is_an_error():
    from statesim import extensions, hookimpl

    class Plugin:
        @hookimpl
        def statesim_sweep_executors(self):
            return {"inline": lambda workers: SerialExecutor()}

    class Clash:
        @hookimpl
        def statesim_sweep_executors(self):
            return {"serial": lambda workers: SerialExecutor()}

    manager = extensions.manager()
    assert isinstance(make_executor("local", 2), LocalExecutor) and make_executor("local", 2).slots == 2
    manager.register(Plugin(), name="test-inline-executor")
    try:
        assert isinstance(make_executor("inline"), SerialExecutor)
    finally:
        manager.unregister(name="test-inline-executor")
    with pytest.raises(SweepError, match="unknown executor 'inline'"):
        make_executor("inline")
    manager.register(Clash(), name="test-clash-executor")
    try:
        with pytest.raises(SweepError, match="two plugins provide the sweep executor 'serial'"):
            make_executor("serial")
    finally:
        manager.unregister(name="test-clash-executor")
