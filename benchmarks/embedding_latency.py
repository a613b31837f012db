"""Embedding latency and throughput, reported as ratios measured in one run (issue: embedding API).

    python benchmarks/embedding_latency.py [--out benchmarks/results/embedding_latency.json] [--quick]

Single-step latency, batch 1, LSTM with 64 units and 8 inputs, NumPy in and out, state kept between
calls, for the Python stepping API (statesim.embed), TorchScript and ONNX Runtime, against three
references: a bare ``torch.nn.LSTMCell`` call with the NumPy conversions, a plain NumPy step (one product
of ``[x, h]`` with the 72x256 gate matrix, then the gates), and a jitted JAX step (only if JAX is
installed). Also the API's latency for every built-in cell against the bare LSTMCell, and many-agent
throughput (4096 agents stepped together) against ``torch.nn.LSTM`` on the same shapes.

Timings are the minimum over many short repeats of the mean time per call (the minimum is the least
disturbed by other processes); the median is kept in the JSON. Everything runs single-threaded. Numbers taken while
other processes use the CPU are noisy; the JSON records the load average before and after.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before NumPy/torch load their thread pools
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

INPUT, HIDDEN, AGENTS = 8, 64, 4096


# --------------------------------------------------------------------------- timing
def per_call(fn: Callable[[], Any], calls: int, repeats: int, budget_s: float = 0.03) -> dict[str, float]:
    """Mean seconds per call over up to ``calls`` calls (about ``budget_s`` per repeat), ``repeats`` times:
    min and median, in microseconds."""
    start = time.perf_counter()
    warm = 0
    while warm < min(calls, 200) and (warm < 3 or time.perf_counter() - start < budget_s):
        fn()  # warm caches, allocators, lazy initialisation
        warm += 1
    estimate = (time.perf_counter() - start) / warm
    calls = max(3, min(calls, int(budget_s / estimate)))
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        means.append((time.perf_counter() - start) / calls)
    return {"min_us": min(means) * 1e6, "median_us": statistics.median(means) * 1e6}


# --------------------------------------------------------------------------- models
def build(cell: dict, output_size: int | None = None) -> Any:
    """A statesim model from the built-in registry, weights perturbed so biases are non-trivial."""
    from statesim.config import validate_model
    from statesim.model import build_model
    from statesim.plugin_manager import build_plugin_host

    registry = build_plugin_host(autoload=False).registry
    config = validate_model({"cell": cell, "head": "none"}, registry, "benchmark")
    torch.manual_seed(0)
    model = build_model(registry, config, INPUT, output_size)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


class NumpyLSTM:
    """The plain NumPy reference: ``z = [x, h] @ W + b`` with W 72x256, then the four gates."""

    def __init__(self, cell: torch.nn.Module, batch: int) -> None:
        self.w = np.ascontiguousarray(torch.cat([cell.weight_ih, cell.weight_hh], 1).detach().numpy().T)
        self.b = (cell.bias_ih + cell.bias_hh).detach().numpy()
        self.h = np.zeros((batch, HIDDEN), np.float32)
        self.c = np.zeros((batch, HIDDEN), np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = np.concatenate([x, self.h], axis=1) @ self.w + self.b
        i = 1.0 / (1.0 + np.exp(-z[:, :HIDDEN]))
        f = 1.0 / (1.0 + np.exp(-z[:, HIDDEN:2 * HIDDEN]))
        g = np.tanh(z[:, 2 * HIDDEN:3 * HIDDEN])
        o = 1.0 / (1.0 + np.exp(-z[:, 3 * HIDDEN:]))
        self.c = f * self.c + i * g
        self.h = o * np.tanh(self.c)
        return self.h


class TorchLSTMCell:
    """The bare ``torch.nn.LSTMCell`` reference, with the NumPy conversions a host needs."""

    def __init__(self, cell: torch.nn.Module, batch: int) -> None:
        self.cell = torch.nn.LSTMCell(INPUT, HIDDEN)
        self.cell.load_state_dict(cell.state_dict())
        self.state = (torch.zeros(batch, HIDDEN), torch.zeros(batch, HIDDEN))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            self.state = self.cell(torch.from_numpy(x), self.state)
        return self.state[0].numpy()


def jax_step(cell: torch.nn.Module, batch: int) -> tuple[Callable[[np.ndarray], np.ndarray] | None, str]:
    """A jitted JAX step with NumPy in and out, or None and the reason."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None, "JAX is not installed; the JAX reference is skipped (pip install jax to include it)"
    w = jnp.asarray(torch.cat([cell.weight_ih, cell.weight_hh], 1).detach().numpy().T)
    b = jnp.asarray((cell.bias_ih + cell.bias_hh).detach().numpy())

    @jax.jit
    def step(x, h, c):
        z = jnp.concatenate([x, h], axis=1) @ w + b
        i, f, g, o = jnp.split(z, 4, axis=1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h, c

    state = [jnp.zeros((batch, HIDDEN)), jnp.zeros((batch, HIDDEN))]

    def call(x: np.ndarray) -> np.ndarray:
        state[0], state[1] = step(x, state[0], state[1])
        return np.asarray(state[0])

    return call, f"jax {jax.__version__}"


class TorchScriptStep:
    """An exported TorchScript step, state kept as tensors between calls."""

    def __init__(self, path: Path, parts: list[str], batch: int, spec: dict) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.load(str(path)).eval()
        self.state = [torch.zeros(batch, *spec[p]) for p in parts]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y, *self.state = self.module(torch.from_numpy(x), *self.state)
        return y.numpy()


class OnnxStep:
    """An exported ONNX step run by ONNX Runtime (one thread), state kept as NumPy arrays."""

    def __init__(self, path: Path, meta: dict, batch: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in meta["inputs"]]
        self.outputs = [o["name"] for o in meta["outputs"]]
        self.state = [np.zeros((batch, *meta["state_parts"][i["state_part"]]), np.float32) for i in meta["inputs"][1:]]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y, *self.state = self.session.run(self.outputs, dict(zip(self.inputs, [x, *self.state])))
        return y


# --------------------------------------------------------------------------- checks
def same_numbers(subjects: dict[str, Callable], steps: int, batch: int) -> dict[str, float]:
    """Max abs difference of each subject's outputs from the bare LSTMCell's over ``steps`` random steps."""
    xs = np.random.default_rng(0).standard_normal((steps, batch, INPUT)).astype(np.float32)
    outputs = {name: np.stack([np.array(fn(x)) for x in xs]) for name, fn in subjects.items()}
    ref = outputs["torch.nn.LSTMCell"]
    return {name: float(np.abs(out - ref).max()) for name, out in outputs.items()}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print ratios, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/embedding_latency.json", help="JSON results file")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run, numbers rougher)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # Many short repeats: on a shared CPU the minimum over them finds the undisturbed time slices.
    repeats, calls = (10, 300) if args.quick else (300, 3000)
    load_before = os.getloadavg()

    from statesim.embed import EmbeddedModel
    from statesim.export import export_model

    model = build({"type": "lstm", "hidden_size": HIDDEN})
    cell = model.step_cell()
    x1 = np.random.default_rng(1).standard_normal((1, INPUT)).astype(np.float32)
    tmp = Path(tempfile.mkdtemp(prefix="statesim-bench-"))
    export_model(model, tmp / "lstm.pt", "torchscript")
    onnx_sidecar = export_model(model, tmp / "lstm.onnx", "onnx")
    onnx_meta = json.loads(onnx_sidecar.read_text())
    parts, spec = list(cell.state_spec), cell.state_spec

    def subjects(batch: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        api = EmbeddedModel(model, batch_size=batch)
        api_torch = EmbeddedModel(model, batch_size=batch, fast=False)
        found = {"torch.nn.LSTMCell": TorchLSTMCell(cell, batch), "numpy": NumpyLSTM(cell, batch),
                 "statesim.embed": api.step, "statesim.embed (torch path)": api_torch.step,
                 "torchscript": TorchScriptStep(tmp / "lstm.pt", parts, batch, spec),
                 "onnxruntime": OnnxStep(tmp / "lstm.onnx", onnx_meta, batch)}
        jax_fn, _ = jax_step(cell, batch)
        if jax_fn is not None:
            found["jax"] = jax_fn
        return found

    _, jax_note = jax_step(cell, 1)
    results: dict[str, Any] = {
        "setup": {"cell": "lstm", "hidden": HIDDEN, "inputs": INPUT, "batch": 1, "io": "numpy float32",
                  "threads": 1, "repeats": repeats, "calls_per_repeat": calls, "jax": jax_note},
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "numpy": np.__version__},
    }
    try:
        import onnxruntime

        results["machine"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass

    # ---- batch 1 latency
    single = subjects(1)
    results["max_abs_diff_vs_lstmcell"] = same_numbers(subjects(1), 50, 1)
    latency = {name: per_call(lambda fn=fn: fn(x1), calls, repeats, budget_s=0.002) for name, fn in single.items()}
    results["latency_us"] = latency
    references = [r for r in ("torch.nn.LSTMCell", "numpy", "jax") if r in latency]
    ratios = {}
    for subject in ("statesim.embed", "statesim.embed (torch path)", "torchscript", "onnxruntime"):
        ratios[subject] = {f"vs {ref}": latency[subject]["min_us"] / latency[ref]["min_us"] for ref in references}
    results["latency_ratios"] = ratios
    api_us = latency["statesim.embed"]["min_us"]
    results["targets"] = {
        "api_us_target": 12.0, "api_us": api_us, "api_meets_12us": api_us <= 12.0,
        "api_vs_numpy_ratio": ratios["statesim.embed"]["vs numpy"],
        "note": "12 us is the issue's absolute target for a machine where the plain NumPy step took about 11 us; "
                "compare the ratio against the NumPy reference measured here"}

    # ---- every built-in cell through the API vs the bare LSTMCell (batch 1)
    cells = {"linear": {"type": "linear", "hidden_size": HIDDEN}, "vanilla": {"type": "vanilla", "hidden_size": HIDDEN},
             "lstm": {"type": "lstm", "hidden_size": HIDDEN}, "gru": {"type": "gru", "hidden_size": HIDDEN},
             "window": {"type": "window", "window": 8, "output_size": HIDDEN}}
    per_cell = {}
    bare = latency["torch.nn.LSTMCell"]["min_us"]
    for name, cell_spec in cells.items():
        sim = EmbeddedModel(build(cell_spec), batch_size=1)
        timing = per_call(lambda sim=sim: sim.step(x1), calls, repeats, budget_s=0.002)
        per_cell[name] = {**timing, "fast_path": sim.fast, "ratio_vs_lstmcell": timing["min_us"] / bare,
                          "not_slower_than_lstmcell": timing["min_us"] <= bare}
    results["api_latency_per_cell"] = per_cell

    # ---- many agents
    xb = np.random.default_rng(2).standard_normal((AGENTS, INPUT)).astype(np.float32)
    many = subjects(AGENTS)
    big_calls, big_repeats = (5, 3) if args.quick else (10, 30)
    throughput = {}
    for name, fn in many.items():
        timing = per_call(lambda fn=fn: fn(xb), big_calls, big_repeats)
        throughput[name] = {**timing, "agent_steps_per_s": AGENTS / (timing["min_us"] * 1e-6)}
    lstm = torch.nn.LSTM(INPUT, HIDDEN)
    with torch.no_grad():
        for ours, theirs in (("weight_ih", "weight_ih_l0"), ("weight_hh", "weight_hh_l0"),
                             ("bias_ih", "bias_ih_l0"), ("bias_hh", "bias_hh_l0")):
            getattr(lstm, theirs).copy_(getattr(cell, ours))
    seq_len = 32
    seq = torch.from_numpy(np.random.default_rng(3).standard_normal((seq_len, AGENTS, INPUT)).astype(np.float32))
    state = (torch.zeros(1, AGENTS, HIDDEN), torch.zeros(1, AGENTS, HIDDEN))

    def lstm_sequence() -> None:
        with torch.no_grad():
            lstm(seq, state)

    def lstm_tick(box=[state]) -> np.ndarray:  # noqa: B006 - the box carries the state between calls
        with torch.no_grad():
            y, box[0] = lstm(torch.from_numpy(xb)[None], box[0])
        return y[0].numpy()

    timing = per_call(lstm_sequence, max(big_calls // 8, 2), big_repeats)
    throughput[f"torch.nn.LSTM (whole sequence, T={seq_len})"] = {
        **timing, "agent_steps_per_s": seq_len * AGENTS / (timing["min_us"] * 1e-6)}
    timing = per_call(lstm_tick, big_calls, big_repeats)
    throughput["torch.nn.LSTM (one step per call)"] = {**timing,
                                                        "agent_steps_per_s": AGENTS / (timing["min_us"] * 1e-6)}
    seq_ref = throughput[f"torch.nn.LSTM (whole sequence, T={seq_len})"]["agent_steps_per_s"]
    tick_ref = throughput["torch.nn.LSTM (one step per call)"]["agent_steps_per_s"]
    for name, row in throughput.items():
        row["ratio_vs_nn_lstm_sequence"] = row["agent_steps_per_s"] / seq_ref
        row["ratio_vs_nn_lstm_per_step"] = row["agent_steps_per_s"] / tick_ref
    results["many_agents"] = {"agents": AGENTS, "throughput": throughput}
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}

    # ---- report
    print(f"LSTM {HIDDEN} units, {INPUT} inputs, batch 1, NumPy in/out, 1 thread "
          f"(load average before {load_before[0]:.2f}, after {results['load_average']['after'][0]:.2f})")
    print(f"  {jax_note}")
    print(f"{'latency (min of means)':32s} {'us':>8s}  " + "  ".join(f"{'vs ' + r:>22s}" for r in references))
    for name, timing in latency.items():
        cols = "  ".join(f"{timing['min_us'] / latency[r]['min_us']:22.2f}" for r in references)
        print(f"  {name:30s} {timing['min_us']:8.2f}  {cols}")
    print(f"API target <= 12 us: {api_us:.2f} us ({'met' if api_us <= 12 else 'NOT met'} on this machine)")
    print("API latency per built-in cell (batch 1) vs bare nn.LSTMCell:")
    for name, row in per_cell.items():
        print(f"  {name:10s} {row['min_us']:8.2f} us  ratio {row['ratio_vs_lstmcell']:.2f}  "
              f"fast path {row['fast_path']}")
    print(f"{AGENTS} agents, agent-steps per second:")
    for name, row in throughput.items():
        print(f"  {name:44s} {row['agent_steps_per_s']:14.3e}  vs nn.LSTM sequence "
              f"{row['ratio_vs_nn_lstm_sequence']:.2f}  vs nn.LSTM per step {row['ratio_vs_nn_lstm_per_step']:.2f}")
    print("max abs difference vs nn.LSTMCell over 50 steps: "
          + ", ".join(f"{k} {v:.1e}" for k, v in results["max_abs_diff_vs_lstmcell"].items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
