"""Load: a long run keeps memory and checkpoint size flat (reduced version of benchmarks/memory_long_run.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from statesim.trainer import LOSS_WINDOW

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_memory_and_checkpoints_stay_flat_over_a_long_run(tmp_path):
    """500 vs 2 000 steps of the real run path: the in-memory loss trace stays at its window, the checkpoint
    sidecar does not grow, peak RSS grows by less than 4 MiB, while metrics.jsonl (on disk) grows linearly."""
    from _reliability import cli_env

    # A fresh process, so that what earlier tests left in this one cannot move its RSS.
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_long_run.py"), "--steps", "500", "2000",
                           "--checkpoint-every", "200"], env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    samples = {int(k): v for k, v in json.loads(done.stdout).items()}
    early, late = samples[500], samples[2000]
    assert early["trainer_losses_in_memory"] == late["trainer_losses_in_memory"] == LOSS_WINDOW
    assert abs(late["sidecar_bytes"] - early["sidecar_bytes"]) <= 0.01 * early["sidecar_bytes"]
    assert late["peak_rss_kib"] - early["peak_rss_kib"] < 4 * 1024, samples
    assert late["metrics_bytes"] > 3 * early["metrics_bytes"]
