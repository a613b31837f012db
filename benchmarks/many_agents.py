"""Many independent agents in one call (issue 9): agents x steps per second.

    python benchmarks/many_agents.py                 # 4096 salamander CPGs, each with its own drives
    python benchmarks/many_agents.py --agents 1024 --steps 100 --out /tmp/agents.json

Measures, with torch's default threads, the engine's ``unroll`` over a batch of agents (one call for the
whole horizon) and the embedding API stepping the same batch one tick per call (what a host simulation
does), against the same agents simulated one after another in a loop (the baseline a user without
batching has). Each agent gets its own drives d_L, d_R in [0, 6].
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from statesim.config import validate_model
from statesim.embed import as_embedded
from statesim.engine import unroll
from statesim.model import build_model
from statesim.plugin_manager import build_plugin_host


def cpg_model():
    """A SequenceModel holding one salamander CPG cell, built through the registry like any scenario's."""
    host = build_plugin_host(autoload=False)
    config = validate_model({"cell": {"type": "salamander_cpg"}, "head": "none"}, host.registry, "<benchmark>")
    return build_model(host.registry, config, input_size=2, output_size=None)


def timed(fn, repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print a table (JSON with --out)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=200, help="ticks of 20 ms (50 Hz)")
    parser.add_argument("--serial-agents", type=int, default=16, help="agents timed one by one for the baseline")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = cpg_model().eval()
    cell = model.step_cell()
    drives = torch.rand(args.agents, 2) * 6
    inputs = drives.unsqueeze(0).expand(args.steps, -1, -1).contiguous()
    state = cell.random_state(args.agents, torch.Generator().manual_seed(1))

    with torch.no_grad():
        engine_s = timed(lambda: unroll(cell, inputs, state))
        serial = args.serial_agents
        serial_s = timed(lambda: [unroll(cell, inputs[:, i:i + 1], {k: v[i:i + 1] for k, v in state.items()})
                                  for i in range(serial)], repeats=1) * args.agents / serial
    embedded = as_embedded(model, batch_size=args.agents)

    def host_loop() -> None:
        embedded.reset(batch_size=args.agents, initial_state={k: v.numpy() for k, v in state.items()})
        x = drives.numpy()
        for _ in range(args.steps):
            embedded.step(x)

    embed_s = timed(host_loop, repeats=2)
    work = args.agents * args.steps
    rows = {
        "engine unroll, one call": engine_s,
        "embedding API, one tick per call": embed_s,
        "one agent at a time (baseline)": serial_s,
    }
    result = {"agents": args.agents, "steps": args.steps, "threads": torch.get_num_threads(),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "load_average": os.getloadavg(),
              "cases": {name: {"seconds": s, "agent_steps_per_s": work / s, "speedup_vs_serial": serial_s / s}
                        for name, s in rows.items()}}
    print(f"{args.agents} salamander CPGs x {args.steps} ticks (RK4), {result['threads']} threads, "
          f"load {result['load_average'][0]:.1f}")
    print(f"{'case':36s} {'seconds':>9s} {'agent-steps/s':>14s} {'vs serial':>10s}")
    for name, case in result["cases"].items():
        print(f"{name:36s} {case['seconds']:9.3f} {case['agent_steps_per_s']:14.3e} {case['speedup_vs_serial']:9.1f}x")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
