"""Loggers (``logging:``, ``--log``): TensorBoard event files and the MLflow store hold what metrics.jsonl holds.

The event files are read back with TensorBoard's own reader (EventAccumulator) and the MLflow store with
MLflow's client; metrics.jsonl, config.yaml and results.json are the independent truth they are compared with.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from _reliability import TINY_LINEAR, deep_update, metrics_lines, write_scenario
from statesim.config import load_config
from statesim.errors import ConfigError
from statesim.loggers import flatten, scalars
from statesim.plugin_manager import build_plugin_host
from statesim.run import execute
from statesim.scenario import MetricsLog

#: A linear cell, so linear_system also draws its identification plot.
LOGGED = deep_update(TINY_LINEAR, {"model": {"cell": {"type": "linear", "hidden_size": 2}, "head": "none"},
                                   "output": {"plots": True}})
#: A scenario that validates as it trains (its own val_mse records, through the trainer's log).
TINY_ADDING = {"name": "tiny_adding",
               "scenario": {"type": "adding", "length": 8, "train_sequences": 32, "val_sequences": 8,
                            "test_sequences": 8, "check_every": 5, "stop_when_solved": False, "diagnose": False},
               "model": {"cell": {"type": "lstm", "hidden_size": 4}},
               "training": {"steps": 12, "batch_size": 8, "lr": 0.01, "log_every": 1, "eval_every": 5},
               "output": {"plots": False, "progress": False}, "seed": 2}


@pytest.fixture(autouse=True)
def _local_mlflow(monkeypatch):
    """MLflow's own switches as the mlflow logger sets them, restored after each test."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in metrics_lines(run_dir)]


def _expected(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{"<job>/<key>": [(step, value), ...]}`` from metrics.jsonl."""
    found: dict[str, list[tuple[int, float]]] = {}
    for record in _records(run_dir):
        for key, value in scalars(record).items():
            found.setdefault(f"{record['job']}/{key}", []).append((record["step"], value))
    return found


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = _events(folder)
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _assert_same(logged: dict[str, list[tuple[int, float]]], expected: dict[str, list[tuple[int, float]]],
                 rel: float) -> None:
    assert set(logged) == set(expected)
    for tag, points in expected.items():
        assert [step for step, _ in logged[tag]] == [step for step, _ in points], tag
        assert [value for _, value in logged[tag]] == pytest.approx([value for _, value in points], rel=rel), tag


def _config_text(run_dir: Path) -> str:
    """config.yaml without its comment line: what the loggers are given as the resolved config."""
    return "".join(line + "\n" for line in (run_dir / "config.yaml").read_text().splitlines()
                   if not line.startswith("#"))


def test_tensorboard_holds_every_record_the_config_the_results_and_the_plots(tmp_path):
    config = write_scenario(tmp_path, deep_update(LOGGED, {"logging": ["jsonl", "tensorboard"]}))
    run_dir = execute(config, out=tmp_path / "run", echo=lambda message: None)

    expected = _expected(run_dir)
    assert {"main/loss", "main/grad_norm", "main/lr", "main/clipped"} <= set(expected)
    # float32 in the event files
    _assert_same(_tensorboard_scalars(run_dir / "tensorboard" / "main"), expected, rel=1e-6)

    run_events = _events(run_dir / "tensorboard")
    text = run_events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert _config_text(run_dir) in text and "type: tensorboard" in text
    results = json.loads((run_dir / "results.json").read_text())
    logged = {tag: events[0].value for tag, events in
              ((tag, run_events.Scalars(tag)) for tag in run_events.Tags()["scalars"])}
    numbers = {f"results/{key}": value for key, value in results.items()
               if isinstance(value, (int, float)) and value is not None}
    assert {"results/test_mse", "results/spectral_radius_learned", "results/seed"} <= set(numbers)
    assert {tag: value for tag, value in logged.items() if tag.startswith("results/")} == pytest.approx(numbers,
                                                                                                        rel=1e-6)
    assert "results/eigenvalues_true" not in logged  # lists are not scalars
    from PIL import Image

    with Image.open(run_dir / "plots" / "identification.png") as png:
        size = png.size
    image = run_events.Images("plots/identification")[0]
    assert (image.width, image.height) == size and image.encoded_image_string[:4] == b"\x89PNG"


def test_mlflow_holds_params_every_record_the_results_and_the_run_folder(tmp_path):
    from mlflow.tracking import MlflowClient

    config = write_scenario(tmp_path, deep_update(LOGGED, {"logging": [{"type": "mlflow", "experiment": "tiny"}]}))
    run_dir = execute(config, out=tmp_path / "run", echo=lambda message: None)

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "tiny"

    resolved = flatten(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert run.data.params == {key: value if isinstance(value, str) else json.dumps(value)
                               for key, value in resolved.items()}
    assert run.data.params["training.lr"] == "0.01" and run.data.params["model.cell.type"] == '"linear"'[1:-1]

    expected = _expected(run_dir)
    logged = {tag: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, tag), key=lambda m: m.step)]
              for tag in expected}
    _assert_same(logged, expected, rel=0)
    results = json.loads((run_dir / "results.json").read_text())
    assert run.data.metrics["results/test_mse"] == results["test_mse"]

    artifacts = {info.path for info in client.list_artifacts(run_id)}
    assert {"config.yaml", "metrics.jsonl", "results.json", "run.json", "checkpoints", "plots"} <= artifacts
    assert "mlruns" not in artifacts and ".statesim.lock" not in artifacts
    assert {info.path for info in client.list_artifacts(run_id, "plots")} == {"plots/identification.png"}
    saved = client.download_artifacts(run_id, "results.json", str(tmp_path / "down"))
    assert json.loads(Path(saved).read_text()) == results


def test_resume_purges_the_redone_steps_in_tensorboard_and_continues_the_mlflow_run(tmp_path, monkeypatch):
    """A crash at step 13 (checkpoint at 10), then --resume: TensorBoard shows every step once with the resumed
    values; the same MLflow run continues and its last value at every step is metrics.jsonl's."""
    from mlflow.tracking import MlflowClient

    data = deep_update(LOGGED, {"logging": ["tensorboard", "mlflow"], "output": {"plots": False}})
    config = write_scenario(tmp_path, data)
    original = MetricsLog.__call__

    def log_then_crash(self, record):
        original(self, record)
        if record.get("step") == 13 and "loss" in record:
            raise RuntimeError("power cut")

    monkeypatch.setattr(MetricsLog, "__call__", log_then_crash)
    with pytest.raises(RuntimeError, match="power cut"):
        execute(config, out=tmp_path / "run", echo=lambda message: None)
    monkeypatch.setattr(MetricsLog, "__call__", original)
    run_dir = tmp_path / "run"
    assert max(step for step, _ in _tensorboard_scalars(run_dir / "tensorboard" / "main")["main/loss"]) == 13
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "FAILED"

    execute(config, resume=run_dir, echo=lambda message: None)
    expected = _expected(run_dir)
    assert [step for step, _ in expected["main/loss"]] == list(range(1, 25))
    _assert_same(_tensorboard_scalars(run_dir / "tensorboard" / "main"), expected, rel=1e-6)
    # The run's own events (config text) were purged and written again: one config, not two.
    assert len(_events(run_dir / "tensorboard").Tensors("config/text_summary")) == 1

    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    for tag, points in expected.items():
        history = sorted(client.get_metric_history(run_id, tag), key=lambda m: (m.step, m.timestamp))
        last = {m.step: m.value for m in history}  # MLflow cannot delete points: steps 11-13 are there twice
        assert sorted(last.items()) == points, tag


FLAKY = """
    import statesim
    from statesim.loggers import Logger, LoggerParams


    class FlakyParams(LoggerParams):
        fail_at: int = 3


    class Flaky(Logger):
        Params = FlakyParams

        def log(self, record):
            if record["step"] >= self.params.fail_at:
                raise RuntimeError("disk on fire")


    class Broken(Logger):
        def start(self, run):
            raise OSError("no such server")


    @statesim.hookimpl
    def statesim_loggers():
        return [statesim.Registration("flaky", Flaky, FlakyParams, "fails at a step"),
                statesim.Registration("broken", Broken, LoggerParams, "fails at start")]
"""


def test_a_failing_logger_is_reported_once_and_disabled_and_the_run_goes_on_unchanged(tmp_path, monkeypatch):
    site = tmp_path / "site"
    info = site / "flaky_loggers-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flaky-loggers\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[statesim]\nflaky = flaky_loggers_mod\n")
    (site / "flaky_loggers_mod.py").write_text(textwrap.dedent(FLAKY))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("STATESIM_BLOCK_PLUGINS", "")
    monkeypatch.delenv("STATESIM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    plain = execute(write_scenario(tmp_path / "a", LOGGED), out=tmp_path / "plain", echo=lambda message: None)
    said: list[str] = []
    try:
        data = deep_update(LOGGED, {"logging": ["broken", {"type": "flaky", "fail_at": 3}, "tensorboard"]})
        flaky = execute(write_scenario(tmp_path / "b", data), out=tmp_path / "flaky", echo=said.append)
    finally:
        sys.modules.pop("flaky_loggers_mod", None)
    failures = [message for message in said if "logger '" in message]
    assert len(failures) == 2, said
    assert "logger 'broken' failed in start() (OSError: no such server) and is disabled" in failures[0]
    assert "logger 'flaky' failed in log() (RuntimeError: disk on fire) and is disabled" in failures[1]
    assert "the run goes on" in failures[1]
    assert json.loads((flaky / "results.json").read_text()) == json.loads((plain / "results.json").read_text())
    assert metrics_lines(flaky) == metrics_lines(plain)
    # the logger beside them got every record
    _assert_same(_tensorboard_scalars(flaky / "tensorboard" / "main"), _expected(flaky), rel=1e-6)


def test_loggers_change_no_result_and_log_the_scenarios_validation_too(tmp_path):
    from mlflow.tracking import MlflowClient

    plain = execute(write_scenario(tmp_path / "a", TINY_ADDING), out=tmp_path / "plain", echo=lambda message: None)
    data = deep_update(TINY_ADDING, {"logging": ["tensorboard", "mlflow"]})
    logged = execute(write_scenario(tmp_path / "b", data), out=tmp_path / "logged", echo=lambda message: None)
    assert json.loads((logged / "results.json").read_text()) == json.loads((plain / "results.json").read_text())
    assert metrics_lines(logged) == metrics_lines(plain)
    expected = _expected(logged)
    assert [step for step, _ in expected["main/val_mse"]] == [5, 10, 12]
    _assert_same(_tensorboard_scalars(logged / "tensorboard" / "main"), expected, rel=1e-6)
    client = MlflowClient(tracking_uri=(logged / "mlruns").as_uri())
    run_id = json.loads((logged / "mlflow_run.json").read_text())["run_id"]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "main/val_mse")] == expected["main/val_mse"]


# --------------------------------------------------------------------------- configuration
def _registry():
    return build_plugin_host(autoload=False).registry


def test_logging_accepts_names_and_mappings_and_defaults_to_jsonl(tmp_path):
    registry = _registry()
    default = load_config(write_scenario(tmp_path, TINY_LINEAR), registry)
    assert [spec.type for spec in default.logging] == ["jsonl"]
    data = deep_update(TINY_LINEAR, {"logging": ["jsonl", {"type": "tensorboard", "dir": "tb"}]})
    config = load_config(write_scenario(tmp_path, data), registry, loggers=["mlflow", "tensorboard"])
    assert [spec.type for spec in config.logging] == ["jsonl", "tensorboard", "mlflow"]  # listed once
    assert config.logging[1].params.dir == "tb"
    assert config.resolved()["logging"][2] == {"type": "mlflow", "tracking_uri": None, "experiment": None,
                                               "artifacts": True}
    assert config.digest() == default.digest()  # where a run logs is not what it computes: resume allows it


def test_unknown_logger_and_bad_params_name_file_line_and_key(tmp_path):
    data = deep_update(TINY_LINEAR, {"logging": ["jsonl", "tensorbord", {"type": "tensorboard", "images": "often"}]})
    file = write_scenario(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_config(file, _registry())
    message = str(caught.value)
    assert "`logging.1.type`: unknown logger 'tensorbord'. Did you mean 'tensorboard'?" in message
    assert f"{file}, line" in message and "`logging.2.images`" in message
    with pytest.raises(ConfigError, match=r"--log mlfow: `logging.1.type`: unknown logger 'mlfow'. Did you mean "
                                          r"'mlflow'\?"):
        load_config(write_scenario(tmp_path, TINY_LINEAR), _registry(), loggers=["mlfow"])
    with pytest.raises(ConfigError, match="listed more than once"):
        load_config(write_scenario(tmp_path, deep_update(TINY_LINEAR, {"logging": ["mlflow", "mlflow"]})),
                    _registry())


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_a_missing_package_is_refused_before_the_run_with_the_install_hint(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # what find_spec reports for a package that is not installed
    file = write_scenario(tmp_path, deep_update(TINY_LINEAR, {"logging": ["jsonl", name]}))
    with pytest.raises(ConfigError) as caught:
        execute(file, out=tmp_path / "run", echo=lambda message: None)
    message = str(caught.value)
    assert f"{file}, line" in message and "`logging.1`" in message
    assert f"logger '{name}' needs the Python package '{name}'" in message
    assert f"pip install 'statesim[{name}]', or remove '{name}' from `logging`." in message and "(got" not in message
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=rf"--log {name}: `logging.1`: .*pip install 'statesim\[{name}\]'"):
        load_config(write_scenario(tmp_path, TINY_LINEAR), _registry(), loggers=[name])


def test_cli_log_flag_adds_a_logger_and_resume_may_add_another(tmp_path, capsys):
    from statesim.cli import main

    file = write_scenario(tmp_path, deep_update(TINY_LINEAR, {"training": {"steps": 6}}))
    assert main(["run", str(file), "--out", str(tmp_path / "run"), "--log", "tensorboard"]) == 0
    run_dir = tmp_path / "run"
    assert [entry["type"] for entry in yaml.safe_load((run_dir / "config.yaml").read_text())["logging"]] == \
        ["jsonl", "tensorboard"]
    assert _tensorboard_scalars(run_dir / "tensorboard" / "main")["main/loss"][-1][0] == 6
    assert main(["run", str(file), "--resume", str(run_dir), "--log", "mlflow"]) == 0
    assert (run_dir / "mlflow_run.json").is_file()
    capsys.readouterr()


def test_the_writing_plugins_logger_snippet_installs_and_logs_what_metrics_jsonl_holds(tmp_path, monkeypatch):
    import csv
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md").read_text(encoding="utf-8")
    block = next(m.group(1) for m in re.finditer(r"```python\n(.*?)```", text, re.S)
                 if m.group(1).startswith("# mylogger.py"))
    site = tmp_path / "site"
    info = site / "docs_logger-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: docs-logger\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[statesim]\nsnippet_logger = mylogger\n")
    (site / "mylogger.py").write_text(block)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("STATESIM_BLOCK_PLUGINS", "")
    monkeypatch.delenv("STATESIM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    try:
        run_dir = execute(write_scenario(tmp_path, deep_update(TINY_LINEAR, {"logging": ["csv"]})),
                          out=tmp_path / "run", echo=lambda message: None)
    finally:
        sys.modules.pop("mylogger", None)
    with (run_dir / "metrics.csv").open(newline="") as handle:
        rows = [(job, int(step), key, float(value)) for job, step, key, value in csv.reader(handle)]
    expected = [(record["job"], record["step"], key, float(value)) for record in _records(run_dir)
                for key, value in record.items() if key not in ("job", "step")]
    assert rows == expected and len(rows) > 24


@pytest.mark.slow
def test_two_ranks_log_once_from_rank_0(tmp_path):
    """--nproc 2 with both loggers: one event file per job folder and one MLflow run, holding metrics.jsonl."""
    import subprocess

    from _reliability import cli_env
    from mlflow.tracking import MlflowClient

    data = deep_update(TINY_LINEAR, {"training": {"steps": 6, "batch_size": 7}})
    file = write_scenario(tmp_path, data)
    env = {k: v for k, v in cli_env().items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"}}
    done = subprocess.run([sys.executable, "-m", "statesim", "run", str(file), "--out", str(tmp_path / "run"),
                           "--nproc", "2", "--log", "tensorboard", "--log", "mlflow"], capture_output=True, text=True,
                          timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "run.json").read_text())["world_size"] == 2
    assert len(list((run_dir / "tensorboard" / "main").glob("events.out.tfevents.*"))) == 1
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    _assert_same(_tensorboard_scalars(run_dir / "tensorboard" / "main"), _expected(run_dir), rel=1e-6)
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert len(experiments) == 1 and len(client.search_runs([experiments[0].experiment_id])) == 1


def test_a_run_failing_before_it_saved_anything_removes_what_its_loggers_made(tmp_path, monkeypatch):
    """As without loggers (tests/test_failed_start.py): the event files and the local MLflow store of a run that
    failed at its first forward go with the folder, so the same --out gives the same error again."""
    import statesim.probing
    from statesim.errors import StatesimError

    monkeypatch.setattr(statesim.probing, "check_first_forward", lambda config, host, file: None)
    scenario = Path(__file__).resolve().parents[1] / "scenarios" / "linear_system.yaml"
    bad = ["forcing=[{target: zz, units: [0], start: 0, stop: 5, value: 1.0}]", "output.progress=false"]
    out, notes = tmp_path / "run", []
    for _ in range(2):
        with pytest.raises(StatesimError, match="'zz' is not 'input' or a state part of the model"):
            execute(scenario, bad, out=out, echo=notes.append, loggers=["tensorboard", "mlflow"])
        assert not out.exists()
    assert [note for note in notes if note.startswith("note: removed")] == [
        f"note: removed {out}: the run failed before it saved anything, so the same --out can be used again"] * 2


def test_a_run_logged_to_tensorboard_is_diagnosed_where_tensorboard_is_missing(tmp_path, monkeypatch):
    from statesim.diagnostics.report import diagnose_run

    data = deep_update(TINY_LINEAR, {"training": {"steps": 4}, "logging": ["tensorboard"]})
    run_dir = execute(write_scenario(tmp_path, data), out=tmp_path / "run", echo=lambda message: None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    diagnose_run(run_dir, host=build_plugin_host(autoload=False), batch=2, steps=6, max_lag=3)
    assert json.loads((run_dir / "diagnostics" / "report.json").read_text())["jobs"]


def test_ctrl_c_marks_the_mlflow_run_killed_and_resume_finishes_it(tmp_path, monkeypatch):
    import signal

    from mlflow.tracking import MlflowClient
    from statesim.trainer import Interrupted

    config = write_scenario(tmp_path, deep_update(TINY_LINEAR, {"logging": ["mlflow", "tensorboard"]}))
    original = MetricsLog.__call__

    def log_then_interrupt(self, record):
        original(self, record)
        if record.get("step") == 7 and "loss" in record:
            os.kill(os.getpid(), signal.SIGINT)  # the real Ctrl-C path: graceful_interrupt's handler

    monkeypatch.setattr(MetricsLog, "__call__", log_then_interrupt)
    with pytest.raises(Interrupted):
        execute(config, out=tmp_path / "run", echo=lambda message: None)
    monkeypatch.setattr(MetricsLog, "__call__", original)
    run_dir = tmp_path / "run"
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    execute(config, resume=run_dir, echo=lambda message: None)
    assert client.get_run(run_id).info.status == "FINISHED"
    expected = _expected(run_dir)
    assert [m.step for m in sorted(client.get_metric_history(run_id, "main/loss"), key=lambda m: m.step)] == \
        list(range(1, 25)) == [step for step, _ in expected["main/loss"]]  # stopped at a checkpoint: none redone
    _assert_same(_tensorboard_scalars(run_dir / "tensorboard" / "main"), expected, rel=1e-6)
