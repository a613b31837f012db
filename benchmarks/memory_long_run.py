"""Memory stays flat over a long run: peak RSS at ~10 000 vs 100 000 steps of a tiny model.

Runs the real ``statesim run`` path in-process (linear_system scenario, a 2-unit linear cell, 8-step
sequences), logging every 10 steps to metrics.jsonl and checkpointing every 1 000, and samples the
process's peak RSS (VmHWM) and current RSS when the trainer logs the sampled steps. Also reports the
checkpoint sidecar size at each sample (it must not grow with the step count) and metrics.jsonl's size
(a file on disk that grows by design, never buffered in memory).

    python benchmarks/memory_long_run.py                 # 10 500 vs 100 000 steps (off checkpoint steps,
                                                         # so a sidecar already exists at both)
    python benchmarks/memory_long_run.py --steps 2000 20000
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml


def rss_kib() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in KiB, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def scenario(steps: int, checkpoint_every: int = 1000) -> dict:
    """The tiny long run."""
    return {"name": "memory_long_run",
            "scenario": {"type": "linear_system", "state_size": 2, "input_size": 1, "output_size": 1, "steps": 8,
                         "train_sequences": 32, "test_sequences": 4, "impulse_steps": 4},
            "model": {"cell": {"type": "linear", "hidden_size": 2, "output_size": 1}, "head": "none"},
            "training": {"steps": steps, "batch_size": 8, "lr": 0.01, "log_every": 10,
                         "checkpoint_every": min(checkpoint_every, steps), "keep_checkpoints": 2, "eval_every": 1000},
            "output": {"plots": False, "progress": False}, "seed": 0}


def _live_trainer_losses() -> list:
    """The in-memory loss list of the live Trainer (found through the garbage collector)."""
    import gc
    import warnings

    from statesim.trainer import Trainer

    with warnings.catch_warnings():  # isinstance() on some torch objects warns about deprecated aliases
        warnings.simplefilter("ignore")
        trainers = [obj for obj in gc.get_objects() if isinstance(obj, Trainer)]
    return list(trainers[-1].losses) if trainers else []


def measure(sample_at: list[int], folder: Path, checkpoint_every: int = 1000) -> dict:
    """Run max(sample_at) steps; RSS, sidecar size and metrics.jsonl size when each sampled step is logged."""
    import torch

    from statesim.checkpoint import list_checkpoints
    from statesim.plugin_manager import build_plugin_host
    from statesim.run import execute
    from statesim.scenario import MetricsLog

    torch.set_num_threads(1)
    total = max(sample_at)
    config = folder / "scenario.yaml"
    config.write_text(yaml.safe_dump(scenario(total, checkpoint_every)))
    run_dir = folder / "run"
    samples: dict[int, dict] = {}
    original = MetricsLog.__call__

    def log(self, record):
        original(self, record)
        if record.get("step") in sample_at and "loss" in record and record["step"] not in samples:
            current, peak = rss_kib()
            sidecars = list_checkpoints(run_dir / "checkpoints" / "main")
            trainer_losses = len(_live_trainer_losses())
            samples[record["step"]] = {"trainer_losses_in_memory": trainer_losses, "rss_kib": current,
                                       "peak_rss_kib": peak,
                                       "sidecar_bytes": sidecars[-1].stat().st_size if sidecars else None,
                                       "metrics_bytes": (run_dir / "metrics.jsonl").stat().st_size,
                                       "seconds": round(time.perf_counter() - started, 1)}

    MetricsLog.__call__ = log
    started = time.perf_counter()
    try:
        execute(config, out=run_dir, host=build_plugin_host(autoload=False), echo=lambda message: None)
    finally:
        MetricsLog.__call__ = original
    return samples


def main(argv: list[str] | None = None) -> int:
    """Print the samples as JSON and the peak-RSS growth between the first and last sample."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[10_500, 100_000], help="steps to sample at")
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="checkpoint interval")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        samples = measure(sorted(args.steps), Path(tmp), args.checkpoint_every)
    first, last = samples[min(samples)], samples[max(samples)]
    print(json.dumps(samples, indent=2))
    print(f"peak RSS {first['peak_rss_kib'] / 1024:.1f} MiB at step {min(samples)} vs "
          f"{last['peak_rss_kib'] / 1024:.1f} MiB at step {max(samples)} "
          f"(growth {(last['peak_rss_kib'] - first['peak_rss_kib']) / 1024:.2f} MiB); checkpoint sidecar "
          f"{first['sidecar_bytes']} vs {last['sidecar_bytes']} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
