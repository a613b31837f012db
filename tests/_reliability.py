"""Helpers of the reliability tests: tiny scenario files, CLI subprocesses, run-folder invariants."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

#: One job (linear_system), a random initial state drawn from torch's global RNG and a cosine schedule, so
#: exact resume has parameters, Adam moments, scheduler, RNG and data order to get right.
TINY_LINEAR = {
    "name": "tiny_linear",
    "scenario": {"type": "linear_system", "state_size": 2, "input_size": 1, "output_size": 1, "steps": 12,
                 "train_sequences": 16, "test_sequences": 4, "impulse_steps": 6},
    "model": {"cell": {"type": "vanilla", "hidden_size": 3}, "initial_state": {"type": "random", "scale": 0.3},
              "head": "linear"},
    "training": {"steps": 24, "batch_size": 4, "lr": 0.01, "schedule": {"type": "cosine", "min_lr": 0.001},
                 "log_every": 1, "checkpoint_every": 5, "keep_checkpoints": 3, "eval_every": 1000},
    "output": {"plots": False, "progress": False},
    "seed": 3,
}

#: Four jobs in one run (moving_average), for kills that land between and inside jobs.
TINY_MOVING_AVERAGE = {
    "name": "tiny_ma",
    "scenario": {"type": "moving_average", "steps": 16, "train_sequences": 16, "test_sequences": 4},
    "training": {"steps": 40, "batch_size": 4, "lr": 0.02, "log_every": 1, "checkpoint_every": 4,
                 "keep_checkpoints": 2},
    "output": {"plots": False, "progress": False},
    "seed": 1,
}


def deep_update(base: dict, changes: dict) -> dict:
    """A copy of ``base`` with ``changes`` merged in recursively."""
    out = json.loads(json.dumps(base))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def write_scenario(folder: Path, data: dict, name: str = "scenario.yaml") -> Path:
    """Write a scenario document as YAML and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def cli_env(**extra: str) -> dict[str, str]:
    """Environment of a CLI subprocess: one thread, built-in plugins only, no progress bar."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "STATESIM_DISABLE_PLUGIN_AUTOLOAD": "1",
                "CI": "1", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"})
    env.update(extra)
    return env


def statesim_cmd(*args: str) -> list[str]:
    """The command line of ``statesim ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "statesim", *map(str, args)]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Run ``statesim ARGS`` to completion."""
    return subprocess.run(statesim_cmd(*args), cwd=cwd or ROOT, env=cli_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def metrics_lines(run_dir: Path) -> list[str]:
    """Raw lines of metrics.jsonl (empty when absent)."""
    path = run_dir / "metrics.jsonl"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def trees_equal(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths at which two checkpoint trees differ (tensors compared exactly, dtype included)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return [where]
        return [] if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where} keys {sorted(map(str, a))} != {sorted(map(str, b))}"]
        return [d for k in a for d in trees_equal(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in trees_equal(x, y, f"{where}/{i}")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def final_checkpoints(run_dir: Path) -> dict[str, Any]:
    """The newest checkpoint tree of every job in a run folder."""
    from statesim.checkpoint import list_checkpoints, load_checkpoint

    trees = {}
    for job in sorted(p for p in (run_dir / "checkpoints").iterdir() if p.is_dir()):
        tree, info = load_checkpoint(list_checkpoints(job)[-1])
        trees[job.name] = (info.step, tree)
    return trees


def assert_run_folder_sound(run_dir: Path) -> None:
    """Everything under a real name is complete: JSON parses, checkpoints verify, PNGs end, YAML loads."""
    from statesim.checkpoint import list_checkpoints, load_checkpoint

    if not run_dir.exists():
        return
    for path in run_dir.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".png":
            assert path.read_bytes().endswith(b"IEND\xaeB`\x82"), f"{path} is a partial PNG"
        elif path.suffix == ".yaml":
            assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict), path
        elif path.suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").split("\n")
            for line in lines[:-1]:  # only the line being appended when the kill came may be cut
                if line:
                    json.loads(line)
    checkpoints = run_dir / "checkpoints"
    if checkpoints.exists():
        for job in checkpoints.iterdir():
            for sidecar in list_checkpoints(job):
                load_checkpoint(sidecar)  # raises on a truncated or corrupt file
