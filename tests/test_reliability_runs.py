"""Runs survive faults: SIGKILL at random points, kills inside a write, corrupt checkpoints, Ctrl-C, resume.

Each test injects the fault into a real run (a ``statesim run`` subprocess, or :func:`statesim.run.execute`
in-process) and checks the outcome against an uninterrupted run with the same config.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from _reliability import (ROOT, TINY_LINEAR, TINY_MOVING_AVERAGE, assert_run_folder_sound, cli_env, deep_update,
                          final_checkpoints, metrics_lines, statesim_cmd, trees_equal, write_scenario)
from statesim.checkpoint import list_checkpoints, load_checkpoint
from statesim.errors import CheckpointError, StatesimError
from statesim.run import execute
from statesim.scenario import MetricsLog
from statesim.trainer import Interrupted


def _quiet(_message: str) -> None:
    pass


def _run(config: Path, out: Path | None = None, resume: Path | None = None, builtin_host=None, echo=_quiet) -> Path:
    from statesim.plugin_manager import build_plugin_host

    return execute(config, out=out, resume=resume, host=builtin_host or build_plugin_host(autoload=False), echo=echo)


# --------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("bptt", [{"mode": "full"}, {"mode": "truncated", "k1": 4, "k2": 6}],
                         ids=["full", "truncated"])
def test_resume_after_ctrl_c_equals_a_straight_run(tmp_path, monkeypatch, bptt):
    """N steps straight == N/2 steps, Ctrl-C, --resume: parameters, optimizer, scheduler, RNG, data order,
    module generators and the whole loss trace in metrics.jsonl are identical."""
    data = deep_update(TINY_LINEAR, {"training": {"bptt": bptt}})
    if bptt["mode"] == "truncated":  # a policy with its own generator must resume exactly too
        data["model"]["initial_state"]["seed"] = 11
    config = write_scenario(tmp_path, data)
    straight = _run(config, out=tmp_path / "straight")

    stop_at = data["training"]["steps"] // 2
    original = MetricsLog.__call__

    def log_then_interrupt(self, record):
        original(self, record)
        if record.get("step") == stop_at and "loss" in record:
            os.kill(os.getpid(), signal.SIGINT)  # the real Ctrl-C path: graceful_interrupt's handler

    monkeypatch.setattr(MetricsLog, "__call__", log_then_interrupt)
    with pytest.raises(Interrupted, match=r"--resume .*resumed"):
        _run(config, out=tmp_path / "resumed")
    monkeypatch.setattr(MetricsLog, "__call__", original)
    interrupted_at = final_checkpoints(tmp_path / "resumed")["main"][0]
    assert stop_at <= interrupted_at < data["training"]["steps"]

    _run(config, resume=tmp_path / "resumed")
    a, b = final_checkpoints(straight), final_checkpoints(tmp_path / "resumed")
    assert a["main"][0] == b["main"][0] == data["training"]["steps"]
    tree_a, tree_b = a["main"][1], b["main"][1]
    assert set(tree_a) >= {"model", "optimizer", "scheduler", "rng", "order", "epoch_perm", "generators"}
    assert trees_equal(tree_a, tree_b) == []
    if bptt["mode"] == "truncated":
        assert tree_a["generators"], "the seeded initial-state generator is checkpointed"
    assert metrics_lines(straight) == metrics_lines(tmp_path / "resumed")
    assert len(metrics_lines(straight)) == data["training"]["steps"]
    assert (straight / "results.json").read_bytes() == (tmp_path / "resumed" / "results.json").read_bytes()


def test_resume_refuses_a_changed_scenario_listing_the_keys(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STATESIM_DISABLE_PLUGIN_AUTOLOAD", "1")
    config = write_scenario(tmp_path, TINY_LINEAR)
    run_dir = _run(config, out=tmp_path / "run")
    changed = write_scenario(tmp_path, deep_update(TINY_LINEAR, {
        "training": {"lr": 0.02}, "model": {"cell": {"hidden_size": 4}}}), "changed.yaml")
    with pytest.raises(StatesimError) as info:
        _run(changed, resume=run_dir)
    message = str(info.value)
    assert "training.lr: 0.01 -> 0.02" in message and "model.cell.hidden_size: 3 -> 4" in message
    # Through the CLI: exit 2, one paragraph. Where it writes may change; what it computes may not.
    from statesim.cli import main

    code = main(["run", str(config), "--resume", str(run_dir), "--set", "output.plots=true",
                 "--set", "training.lr=0.5"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot resume") and "Traceback" not in err
    assert "training.lr: 0.01 -> 0.5" in err and "output.plots" not in err


def test_checkpoint_of_another_config_is_refused_by_the_trainer(tmp_path, builtin_host):
    from statesim.config import TrainingConfig
    from statesim.model import build_model
    from statesim.trainer import Trainer

    model = build_model(builtin_host.registry, _resolved_model(builtin_host), 1, 1)
    first = Trainer(model, TrainingConfig(steps=1), checkpoint_dir=tmp_path, config_digest="aaaa")
    first.save()
    other = Trainer(model, TrainingConfig(steps=1), checkpoint_dir=tmp_path, config_digest="bbbb")
    with pytest.raises(CheckpointError, match="different config"):
        other.restore(warn=_quiet)


def _resolved_model(host):
    from statesim.config import validate_model

    config = validate_model({"cell": {"type": "vanilla", "hidden_size": 2}}, host.registry)
    return config


# --------------------------------------------------------------------------- corrupt checkpoints
def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    config = write_scenario(tmp_path, TINY_LINEAR)
    straight = _run(config, out=tmp_path / "straight")
    run_dir = _run(config, out=tmp_path / "damaged")
    sidecars = list_checkpoints(run_dir / "checkpoints" / "main")
    newest, previous = sidecars[-1], sidecars[-2]
    weights = newest.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:-40])  # truncated
    messages: list[str] = []
    _run(config, resume=run_dir, echo=messages.append)
    warning = next(m for m in messages if "corrupt or truncated" in m)
    assert str(weights) in warning and "Falling back" in warning
    assert f"resumed job 'main' at step {load_checkpoint(previous)[1].step}" in messages
    assert (straight / "results.json").read_bytes() == (run_dir / "results.json").read_bytes()
    assert metrics_lines(straight) == metrics_lines(run_dir)


@pytest.mark.parametrize("damage", ["sidecar_escape", "sidecar_tree", "sidecar_list"])
def test_tampered_sidecar_is_detected_naming_the_file(tmp_path, damage):
    """(Damaged weights and truncated sidecars: tests/test_checkpoint.py.) An edited sidecar may not send the
    loader to another file, and a malformed tree is a CheckpointError, not a KeyError."""
    import torch

    from statesim.checkpoint import save_checkpoint

    sidecar = save_checkpoint(tmp_path / "step_00000001", {"w": torch.arange(64.0), "n": 3}, step=1,
                              config_digest="d")
    meta = json.loads(sidecar.read_text())
    if damage == "sidecar_escape":
        meta["weights"] = "../../etc/passwd"
        sidecar.write_text(json.dumps(meta))
    elif damage == "sidecar_tree":
        meta["tree"] = {"__dict__": [["w", {"__tensor__": "/missing"}]]}
        sidecar.write_text(json.dumps(meta))
    else:
        sidecar.write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(sidecar)
    assert str(sidecar) in str(info.value)


# --------------------------------------------------------------------------- same seed, same results
def test_same_seed_gives_byte_identical_results_and_run_json_records_the_environment(tmp_path):
    config = write_scenario(tmp_path, TINY_LINEAR)
    started = time.monotonic()
    a = _run(config, out=tmp_path / "a")
    wall = time.monotonic() - started
    b = _run(config, out=tmp_path / "b")
    assert (a / "results.json").read_bytes() == (b / "results.json").read_bytes()
    other = _run(write_scenario(tmp_path, deep_update(TINY_LINEAR, {"seed": 4}), "other.yaml"), out=tmp_path / "c")
    assert (a / "results.json").read_bytes() != (other / "results.json").read_bytes()
    results = json.loads((a / "results.json").read_text())
    assert "train_seconds" not in results
    env = json.loads((a / "run.json").read_text())
    import platform

    import torch

    import statesim

    assert env["python"] == platform.python_version() and env["torch"] == torch.__version__
    assert env["statesim"] == statesim.__version__ and env["seed"] == 3 and "git_commit" in env
    assert {p["name"] for p in env["plugins"]} >= {"statesim.builtin.cells"}
    assert set(env["train_seconds"]) == {"main"} and 0 < env["train_seconds"]["main"] < wall  # a part of the whole run
    assert json.loads(json.dumps(__import__("yaml").safe_load((a / "config.yaml").read_text())))["seed"] == 3


# --------------------------------------------------------------------------- kills inside a write
KILL_AT_FSYNC = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    os.environ["STATESIM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    from statesim.run import execute
    import torch._dynamo  # imported by the first optimizer; once here, not in every child

    config, base, kill_points = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    quiet = lambda message: None
    report = {}
    for n in kill_points:
        run_dir = base / f"kill{n}"
        pid = os.fork()
        if pid == 0:  # child: die (like SIGKILL, no cleanup) at the n-th fsync, i.e. inside the n-th write
            import signal
            signal.alarm(60)
            calls = [0]
            real_fsync = os.fsync
            def fsync(fd):
                calls[0] += 1
                if calls[0] == n:
                    os._exit(137)
                real_fsync(fd)
            os.fsync = fsync
            code = 0
            try:
                execute(config, out=run_dir, echo=quiet)
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 4
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        report[n] = os.waitstatus_to_exitcode(status)
    print(json.dumps(report))
""")


def test_kill_inside_any_write_leaves_previous_versions_loadable(tmp_path):
    """Die at the n-th fsync (after a temporary file is written, before it is published) for many n."""
    config = write_scenario(tmp_path, deep_update(TINY_LINEAR, {"training": {"steps": 8, "checkpoint_every": 2,
                                                                             "keep_checkpoints": 2}}))
    straight = _run(config, out=tmp_path / "straight")
    kill_points = list(range(1, 23, 4))
    script = tmp_path / "kill_at_fsync.py"
    script.write_text(KILL_AT_FSYNC)
    done = subprocess.run([sys.executable, str(script), str(config), str(tmp_path), json.dumps(kill_points)],
                          env=cli_env(), capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    killed = [n for n in kill_points if codes[str(n)] == 137]
    assert set(codes.values()) <= {0, 137}, codes
    assert len(killed) >= 5, codes  # the points fall inside the run's ~12 writes (2 fsyncs each)
    for n in killed:
        run_dir = tmp_path / f"kill{n}"
        assert_run_folder_sound(run_dir)
        if not (run_dir / "config.yaml").exists():
            continue  # killed while publishing the very first file: nothing to resume
        _run(config, resume=run_dir)
        assert (run_dir / "results.json").read_bytes() == (straight / "results.json").read_bytes(), n
        assert metrics_lines(run_dir) == metrics_lines(straight), n
        assert not list(run_dir.rglob("*.tmp")), "resume removes temporary files of interrupted writes"


# --------------------------------------------------------------------------- real processes, real signals
def _wait_for_lines(run_dir: Path, count: int, process: subprocess.Popen, timeout: float = 300) -> bool:
    """Poll metrics.jsonl until it has ``count`` lines; False when the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if len(metrics_lines(run_dir)) >= count:
            return True
        time.sleep(0.003)
    raise AssertionError(f"no progress in {run_dir}")


@pytest.fixture(scope="module")
def moving_average_reference(tmp_path_factory):
    """A straight run of the four-job tiny moving_average scenario (in-process: same numbers as the CLI's,
    single-threaded, which the killed subprocess runs are compared with)."""
    folder = tmp_path_factory.mktemp("reference")
    config = write_scenario(folder, TINY_MOVING_AVERAGE)
    return config, _run(config, out=folder / "run")


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tmp_path, moving_average_reference):
    """Three SIGKILLs at random points of a real run; after each everything published is whole; then
    --resume finishes with the same results.json and loss trace as the straight run."""
    config, reference = moving_average_reference
    run_dir = tmp_path / "run"
    rng = random.Random(int(os.environ.get("STATESIM_KILL_SEED", "20240611")))
    total = len(metrics_lines(reference))
    kills = 0
    for attempt in range(3):  # real processes, real SIGKILL
        args = ["run", config, "--out", run_dir] if attempt == 0 else ["run", config, "--resume", run_dir]
        start_lines = len(metrics_lines(run_dir))
        process = subprocess.Popen(statesim_cmd(*args), env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        target = min(total, start_lines + rng.randint(5, total // 5))
        if _wait_for_lines(run_dir, target, process):
            time.sleep(rng.uniform(0, 0.05))
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.communicate(timeout=60)
        assert_run_folder_sound(run_dir)
    assert kills >= 2
    _run(config, resume=run_dir)
    assert (run_dir / "results.json").read_bytes() == (reference / "results.json").read_bytes()
    assert metrics_lines(run_dir) == metrics_lines(reference)
    assert not list(run_dir.rglob("*.tmp"))
    assert trees_equal({k: v for k, v in final_checkpoints(run_dir).items()},
                       {k: v for k, v in final_checkpoints(reference).items()}) == []


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path, moving_average_reference):
    """One Ctrl-C: final checkpoint, exit 130, a message naming --resume; resume gives the straight results.
    Two Ctrl-C in a row: exit 130 at once, no traceback, everything published is whole."""
    config, reference = moving_average_reference
    messages = {}
    for presses in (1, 2):
        run_dir = tmp_path / f"run{presses}"
        process = subprocess.Popen(statesim_cmd("run", config, "--out", run_dir), env=cli_env(), cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert _wait_for_lines(run_dir, 30, process), "the run finished before it could be interrupted"
        process.send_signal(signal.SIGINT)
        if presses == 2:
            time.sleep(0.002)
            process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        assert "Traceback" not in stderr and "--resume" in stderr
        assert_run_folder_sound(run_dir)
        messages[presses] = stderr
    run_dir = tmp_path / "run1"
    assert f"statesim run {config} --resume {run_dir}" in messages[1]
    logged = [json.loads(line) for line in metrics_lines(run_dir)]
    job, step = logged[-1]["job"], logged[-1]["step"]
    assert load_checkpoint(list_checkpoints(run_dir / "checkpoints" / job)[-1])[1].step == step, \
        "the final checkpoint is at the last logged step"
    _run(config, resume=run_dir)
    assert (run_dir / "results.json").read_bytes() == (reference / "results.json").read_bytes()
    assert metrics_lines(run_dir) == metrics_lines(reference)
