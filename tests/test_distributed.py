"""Data-parallel training: 2 CPU ranks (gloo) match one process on the same global batch; a dead or stuck rank stops
the run with an error instead of hanging; the --nproc launcher stops the other ranks when one fails."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from statesim.distributed import DistributedError, free_port, launch
from statesim.run import execute

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = str(ROOT / "scenarios" / "moving_average.yaml")
# batch_size 7 over 2 ranks: shards of 4 and 3, so the shard weighting (n_r / N) matters; a tiny max_norm clips
# every update, so clipping must see the global gradient for the parameters to agree.
TINY = ["training.steps=12", "training.batch_size=7", "scenario.steps=20", "scenario.train_sequences=32",
        "scenario.test_sequences=8", "output.plots=false", "output.progress=false", "training.clip.max_norm=0.05",
        "training.checkpoint_every=6", "training.log_every=1"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"}}
    return {**env, "OMP_NUM_THREADS": "1", "STATESIM_DISABLE_PLUGIN_AUTOLOAD": "1", **extra}


def _statesim(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "statesim", *args], capture_output=True, text=True, timeout=120,
                          env=_env(**env), cwd=ROOT)


def _models(run_dir: Path, step: int) -> dict[str, dict]:
    out = {}
    for path in sorted((run_dir / "checkpoints").glob(f"*/step_{step:08d}.safetensors")):
        out[path.parent.name] = {k: v for k, v in load_file(path).items() if k.startswith("/model/")}
    return out


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_same_global_batch_and_resume(tmp_path):
    single = execute(SCENARIO, TINY, out=tmp_path / "one", echo=lambda m: None)
    sets = [f"--set={o}" for o in TINY]
    done = _statesim("run", SCENARIO, *sets, "--out", str(tmp_path / "two"), "--nproc", "2")
    assert done.returncode == 0, done.stderr
    two = tmp_path / "two"
    reference, parallel = _models(single, 12), _models(two, 12)
    assert len(reference) == 4 and reference.keys() == parallel.keys()
    for job, tensors in reference.items():
        for name, value in tensors.items():
            assert (value - parallel[job][name]).abs().max() <= 1e-5, (job, name)
    # Rank 0 alone logs: one record per update and job, the global batch's loss, clipped as in one process.
    one_log, two_log = _records(single), _records(two)
    assert len(two_log) == len(one_log)
    for a, b in zip(one_log, two_log):
        assert a["job"] == b["job"] and a["step"] == b["step"]
        if "loss" in a:
            assert b["clipped"] and abs(a["loss"] - b["loss"]) <= 1e-5 * max(1.0, abs(a["loss"]))
            assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * max(1.0, a["grad_norm"])
    assert json.loads((two / "run.json").read_text())["world_size"] == 2
    # Resume: drop the last checkpoints and the results, continue on 2 ranks from step 6, land on the same weights.
    for path in (two / "checkpoints").glob("*/step_00000012.*"):
        path.unlink()
    (two / "results.json").unlink()
    resumed = _statesim("run", SCENARIO, *sets, "--resume", str(two), "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed job" in resumed.stderr and (two / "results.json").is_file()
    for job, tensors in reference.items():
        for name, value in tensors.items():
            assert (value - _models(two, 12)[job][name]).abs().max() <= 1e-5, (job, name)


def _start_ranks(tmp_path: Path, timeout_s: str) -> list[subprocess.Popen]:
    """Two ranks started the way torchrun starts them (environment variables), training for a long time."""
    port = str(free_port())
    sets = [f"--set={o}" for o in TINY if not o.startswith("training.steps")] + ["--set=training.steps=100000"]
    procs = []
    for rank in range(2):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   STATESIM_DIST_TIMEOUT=timeout_s)
        procs.append(subprocess.Popen([sys.executable, "-m", "statesim", "run", SCENARIO, *sets, "--out",
                                       str(tmp_path / "run")], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 3):  # both ranks are in training
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.stderr.read() for p in procs if p.poll() is not None]
        time.sleep(0.05)
    return procs


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stuck"])
def test_a_dead_or_stuck_rank_stops_the_run_with_an_error(tmp_path, how):
    procs = _start_ranks(tmp_path, "4")
    os.kill(procs[1].pid, how)
    started = time.monotonic()
    try:
        _, stderr = procs[0].communicate(timeout=60)
        elapsed = time.monotonic() - started
        assert procs[0].returncode not in (0, None)
        assert "error: rank 0 of 2: the collective" in stderr and "--resume" in stderr and "Traceback" not in stderr
        assert elapsed < 30
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.communicate()


def test_the_launcher_stops_every_rank_when_one_fails(tmp_path):
    marker = tmp_path / "survivor"
    script = ("import os, sys, time\n"
              "if os.environ['RANK'] == '1':\n    time.sleep(0.3); sys.exit(3)\n"
              f"time.sleep(60); open({str(marker)!r}, 'w').close()\n")
    started = time.monotonic()
    with pytest.raises(DistributedError, match=r"rank 1 of 2 failed \(exit code 3\)"):
        launch([sys.executable, "-c", script], 2, env=_env(), grace=2)
    assert time.monotonic() - started < 15 and not marker.exists()
