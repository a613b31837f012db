"""Fixed-point search speed (issue 14): a 64-unit GRU from 1 024 starts in one batched optimisation.

    python benchmarks/fixed_points.py                       # 64-unit GRU, 1 024 starts
    python benchmarks/fixed_points.py --hidden 128 --starts 2048 --out /tmp/fp.json

The goal is under 60 s on 2 cores for the default. Reported next to it, as a ratio in the same run, is
the baseline a user without batching has: the same search run one start at a time (timed on a sample of
starts and scaled). Wall and CPU seconds, the thread count and the machine go into the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from statesim.analysis import find_fixed_points, sample_starts
from statesim.builtin.cells import GRUCell


def timed(fn):
    """``(result, wall seconds, CPU seconds)`` of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--starts", type=int, default=1024)
    parser.add_argument("--sample", type=int, default=8, help="starts timed one at a time for the baseline")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fixed_points.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    cell = GRUCell(3, args.hidden)
    with torch.no_grad():  # a trained-looking recurrent matrix: gain 1.5 makes several attractors
        cell.weight_hh.mul_(1.5 * args.hidden ** 0.5 / cell.weight_hh.norm(dim=1, keepdim=True).mean() / 3)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(100, 32, 3, generator=generator)
    starts = sample_starts(cell, inputs, None, args.starts, generator=generator)
    find_fixed_points(cell, torch.zeros(3), starts[:4])  # warm-up: lazy imports, allocator
    points, wall, cpu = timed(lambda: find_fixed_points(cell, torch.zeros(3), starts))
    one_wall = 0.0
    for k in range(args.sample):
        _, w, _ = timed(lambda k=k: find_fixed_points(cell, torch.zeros(3), starts[k:k + 1]))
        one_wall += w
    baseline = one_wall / args.sample * args.starts
    record = {"case": f"GRU-{args.hidden}, {args.starts} starts", "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
              # On a shared machine the wall time counts other processes' slices; one thread's CPU time is what
              # the search costs on a quiet core.
              "goal_s": 60, "met_by_wall": wall < 60, "met_by_cpu": cpu < 60,
              "one_at_a_time_wall_s (scaled)": round(baseline, 1),
              "speedup_vs_one_at_a_time": round(baseline / wall, 1), "counts": points.counts,
              "stable": points.stability.count("stable"), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count()}
    print(json.dumps(record, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
