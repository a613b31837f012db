"""statesim's performance targets (issue 7), measured side by side in one run.

    python benchmarks/run.py                      # every case; summary table; JSON in benchmarks/results/
    python benchmarks/run.py --quick              # smaller shapes, fewer repeats (a smoke run, ~2 min)
    python benchmarks/run.py --only lstm_train,linear_scan --out /tmp/bench.json
    python benchmarks/run.py --list               # the cases

Every comparison runs its contenders interleaved (A, B, A, B, ...) after warm-up and reports the
median of the repeats, so a ratio is measured under the same conditions for both sides; absolute
medians are in the JSON. Peers (JAX ``lax.scan``, Flax ``nn.RNN``, ReservoirPy) run when the ``bench``
extra is installed (``pip install -e '.[bench]'``) and are skipped with a note otherwise. Each peer is
given the same weights and its outputs are checked against statesim's before it is timed.

Ratios are "higher is better" speed-ups unless the goal says otherwise (``<=`` for overheads and
memory). Numbers taken while other processes load the machine are noisy: the JSON records the load
average before and after, and the summary says so.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402

from statesim import fastpath  # noqa: E402
from statesim.builtin.cells import LinearCell, LSTMCell, VanillaCell  # noqa: E402
from statesim.builtin.initial_states import Zeros  # noqa: E402
from statesim.builtin.topologies import Unidirectional  # noqa: E402
from statesim.cell import Cell  # noqa: E402
from statesim.engine import unroll  # noqa: E402
from statesim.model import SequenceModel  # noqa: E402


# --------------------------------------------------------------------------- results
@dataclass
class Row:
    """One target: a measured ratio against its goal, with the medians it came from."""

    case: str
    target: str
    goal: str  # ">= 0.95", "<= 1.10", "< 0.5 s"
    value: float | None
    unit: str = "x"
    times_ms: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        op, threshold = self.goal.split()[:2]
        threshold = float(threshold)
        return {">=": self.value >= threshold, "<=": self.value <= threshold,
                "<": self.value < threshold, ">": self.value > threshold}[op]


@dataclass
class Settings:
    quick: bool
    repeats: int
    warmup: int


def race(fns: dict[str, Callable[[], Any]], settings: Settings, min_sample_s: float = 0.02,
         stat: Callable[[list[float]], float] = statistics.median,
         clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median (or ``stat``) seconds per call of each function, timed interleaved after warm-up.

    ``clock=time.thread_time`` times CPU time instead of wall time: for single-threaded work on a loaded
    machine, where other processes' time slices would land in the wall-clock samples.
    """
    for _ in range(settings.warmup):
        for fn in fns.values():
            fn()
    numbers = {}
    for name, fn in fns.items():  # calls per sample, so one sample lasts at least min_sample_s
        start = clock()
        fn()
        numbers[name] = max(1, int(min_sample_s / max(clock() - start, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(settings.repeats):
        for name, fn in fns.items():
            start = clock()
            for _ in range(numbers[name]):
                fn()
            samples[name].append((clock() - start) / numbers[name])
    return {name: stat(values) for name, values in samples.items()}


def ms(times: dict[str, float]) -> dict[str, float]:
    return {name: round(seconds * 1e3, 3) for name, seconds in times.items()}


# --------------------------------------------------------------------------- models
def lstm_model(input_size: int, hidden: int, fast_path: str = "auto") -> SequenceModel:
    """statesim's unidirectional LSTM without a head, as `build_model` makes it."""
    topology = Unidirectional(input_size, lambda size: LSTMCell(size, hidden_size=hidden))
    model = SequenceModel(topology, Zeros(topology.state_spec))
    model.fast_path = fast_path
    return model


def copy_lstm(cell: LSTMCell) -> nn.LSTM:
    """``torch.nn.LSTM`` holding a copy of the cell's weights."""
    lstm = nn.LSTM(cell.input_size, cell.hidden_size)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(lstm, f"{name}_l0").copy_(getattr(cell, name))
    return lstm


def forward_backward(run: Callable[[], torch.Tensor], params: list[nn.Parameter]) -> Callable[[], None]:
    """One training step's worth of work: forward, mean-square loss, backward."""
    def step() -> None:
        for p in params:
            p.grad = None
        run().square().mean().backward()
    return step


class PlainLSTM(Cell):
    """The LSTM equations as a plain ``forward`` cell, as a plugin author writes them (no hoisting)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size)
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, 4 * hidden_size)
        self.hh = nn.Linear(hidden_size, 4 * hidden_size)

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return {"h": (self.hidden_size,), "c": (self.hidden_size,)}

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def forward(self, x: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        h, c = lstm_math(self.ih, self.hh, x, state["h"], state["c"])
        return h, {"h": h, "c": c}


def lstm_math(ih: nn.Linear, hh: nn.Linear, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step, shared by the plugin cell and the hand-written loop so both do the same math."""
    i, f, g, o = (ih(x) + hh(h)).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def hand_loop(cell: PlainLSTM, x: torch.Tensor) -> torch.Tensor:
    """The same cell's math in a hand-written PyTorch loop."""
    h = c = x.new_zeros(x.shape[1], cell.hidden_size)
    outputs = []
    for x_t in x:
        h, c = lstm_math(cell.ih, cell.hh, x_t, h, c)
        outputs.append(h)
    return torch.stack(outputs)


# --------------------------------------------------------------------------- cases
def lstm_train(s: Settings) -> list[Row]:
    """statesim's LSTM training step (and forward) vs torch.nn.LSTM; vs JAX lax.scan and Flax nn.RNN at batch >= 32."""
    shapes = [(1, 64, 1000), (1, 512, 200), (32, 64, 200), (32, 256, 200), (256, 64, 50), (256, 512, 50)]
    if s.quick:
        shapes = [(1, 64, 200), (32, 256, 50), (256, 512, 10)]
    rows = []
    jax_note, flax_note = peers.available("jax"), peers.available("flax")
    for batch, hidden, steps in shapes:
        torch.manual_seed(0)
        features = 64
        model = lstm_model(features, hidden)
        reference = copy_lstm(model.topology.cell)
        x = torch.randn(steps, batch, features)
        assert torch.allclose(model(x).outputs, reference(x)[0], atol=1e-5)
        shape = f"B={batch} H={hidden} T={steps} F={features}"
        fns = {"statesim": forward_backward(lambda: model(x).outputs, list(model.parameters())),
               "torch.nn.LSTM": forward_backward(lambda: reference(x)[0], list(reference.parameters()))}
        with torch.no_grad():
            fwd = race({"statesim": lambda: model(x), "torch.nn.LSTM": lambda: reference(x)}, s)
        peer_fwd: dict[str, float] = {}
        if batch >= 32:
            cell = model.topology.cell
            weights = [t.detach().numpy() for t in (cell.weight_ih, cell.weight_hh, cell.bias_ih + cell.bias_hh)]
            for label, note, build in (("jax lax.scan", jax_note, peers.jax_lstm), ("flax nn.RNN", flax_note,
                                                                                  peers.flax_lstm)):
                if note is None:
                    f, fb, out = build(*weights, x.numpy())
                    err = float(np.abs(out - reference(x)[0].detach().numpy()).max())
                    assert err < 1e-4, f"{label} disagrees with torch by {err}"
                    fns[label] = fb
                    peer_fwd[label] = race({label: f}, s)[label]
        train = race(fns, s)
        rows.append(Row("lstm_train", f"training step, torch.nn.LSTM time / statesim time, {shape}", ">= 0.95",
                        train["torch.nn.LSTM"] / train["statesim"], times_ms=ms(train)))
        rows.append(Row("lstm_forward", f"forward, torch.nn.LSTM time / statesim time, {shape}", ">= 0.95",
                        fwd["torch.nn.LSTM"] / fwd["statesim"], times_ms=ms({**fwd, **peer_fwd})))
        for label, note in (("jax lax.scan", jax_note), ("flax nn.RNN", flax_note)):
            if batch < 32:
                continue
            if label in train:
                rows.append(Row("lstm_vs_jax", f"training step, {label} time / statesim time, {shape}", ">= 1.5",
                                train[label] / train["statesim"], times_ms=ms(train)))
            else:
                rows.append(Row("lstm_vs_jax", f"training step vs {label}, {shape}", ">= 1.5", None, note=note))
    return rows


def matmul_peak(s: Settings) -> float:
    """Single-precision matrix-product peak (FLOP/s) of this machine: the best of the repeats."""
    n = 1024 if s.quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / race({"mm": lambda: a @ b}, s, stat=min)["mm"]


def lstm_peak(s: Settings) -> list[Row]:
    """LSTM forward at a large shape, as a fraction of the measured matrix-product peak."""
    batch, hidden, steps, features = (128, 512, 10, 512) if s.quick else (256, 1024, 20, 1024)
    torch.manual_seed(0)
    model = lstm_model(features, hidden)
    x = torch.randn(steps, batch, features)
    peak = matmul_peak(s)
    with torch.no_grad():
        seconds = race({"statesim": lambda: model(x)}, s)["statesim"]
    flops = 2 * steps * batch * 4 * hidden * (features + hidden)
    rate = flops / seconds
    return [Row("lstm_peak", f"LSTM forward FLOP rate / matmul peak, B={batch} H={hidden} T={steps} F={features}",
                ">= 0.70", rate / peak, times_ms={"statesim": round(seconds * 1e3, 3)},
                note=f"LSTM {rate / 1e9:.1f} GFLOP/s, matmul peak {peak / 1e9:.1f} GFLOP/s")]


def plugin_cell(s: Settings) -> list[Row]:
    """A plain plugin cell through the engine vs a hand-written loop of its math; torch.compile'd vs eager."""
    batch, hidden, steps, features = (1, 64, 200, 64) if s.quick else (1, 64, 1000, 64)
    torch.manual_seed(0)
    cell = PlainLSTM(features, hidden)
    topology = Unidirectional(features, lambda size: cell)
    model = SequenceModel(topology, Zeros(topology.state_spec))
    x = torch.randn(steps, batch, features)
    assert torch.allclose(model(x).outputs, hand_loop(cell, x), atol=1e-6)
    params = list(cell.parameters())
    fwd_bwd = race({"statesim": forward_backward(lambda: model(x).outputs, params),
                    "hand loop": forward_backward(lambda: hand_loop(cell, x), params)}, s)
    with torch.no_grad():
        fwd = race({"statesim": lambda: model(x), "hand loop": lambda: hand_loop(cell, x)}, s)
    shape = f"B={batch} H={hidden} T={steps}"
    rows = [Row("engine_overhead", f"training step, statesim time / hand-written loop time, {shape}", "<= 1.10",
                fwd_bwd["statesim"] / fwd_bwd["hand loop"], times_ms=ms(fwd_bwd)),
            Row("engine_overhead", f"forward, statesim time / hand-written loop time, {shape}", "<= 1.10",
                fwd["statesim"] / fwd["hand loop"], times_ms=ms(fwd))]
    compiled = SequenceModel(topology, Zeros(topology.state_spec))
    compiled.compile_steps = True
    with fastpath.record_decisions() as decisions:
        started = time.perf_counter()
        forward_backward(lambda: compiled(x).outputs, params)()
        first = time.perf_counter() - started
        with torch.no_grad():
            compiled(x)
    compile_s = [r.get("compile_seconds") for r in fastpath.summarize(decisions) if r["path"] == "compiled"]
    assert torch.allclose(compiled(x).outputs, hand_loop(cell, x), atol=1e-5)
    note = f"compile: first step's call {compile_s[0]} s, first training step {first:.1f} s"
    train_c = race({"statesim compile": forward_backward(lambda: compiled(x).outputs, params),
                    "hand loop": forward_backward(lambda: hand_loop(cell, x), params)}, s)
    with torch.no_grad():
        fwd_c = race({"statesim compile": lambda: compiled(x), "hand loop": lambda: hand_loop(cell, x)}, s)
    rows += [Row("compile", f"training step, eager hand loop time / statesim compile:true time, {shape}", ">= 1.5",
                 train_c["hand loop"] / train_c["statesim compile"], times_ms=ms(train_c), note=note),
             Row("compile", f"forward, eager hand loop time / statesim compile:true time, {shape}", ">= 1.5",
                 fwd_c["hand loop"] / fwd_c["statesim compile"], times_ms=ms(fwd_c))]
    return rows


def reservoir(s: Settings) -> list[Row]:
    """Simulation without gradients: a 500-unit tanh reservoir, batch 1, vs ReservoirPy and jitted lax.scan."""
    hidden, steps = 500, (2000 if s.quick else 10000)
    torch.manual_seed(0)
    cell = VanillaCell(1, hidden_size=hidden)
    with torch.no_grad():  # an echo-state reservoir: spectral radius 0.9
        cell.weight_hh.mul_(0.9 / torch.linalg.eigvals(cell.weight_hh).abs().max())
    topology = Unidirectional(1, lambda size: cell)
    model = SequenceModel(topology, Zeros(topology.state_spec))
    generic = SequenceModel(topology, Zeros(topology.state_spec))
    generic.fast_path = "generic"
    x = torch.randn(steps, 1, 1)
    with torch.no_grad():
        ours = model(x).outputs[:, 0].numpy()
    weights = [t.detach().numpy() for t in (cell.weight_ih, cell.weight_hh, cell.bias_ih + cell.bias_hh)]
    fns: dict[str, Callable[[], Any]] = {"statesim": lambda: model(x), "statesim generic loop": lambda: generic(x)}
    notes = {}
    for label, module, build in (("reservoirpy", "reservoirpy", peers.reservoirpy_reservoir),
                                 ("jax lax.scan", "jax", peers.jax_reservoir)):
        notes[label] = peers.available(module)
        if notes[label] is None:
            run, states = build(*weights, x[:, 0].numpy())
            err = float(np.abs(states - ours).max())
            assert err < 1e-4, f"{label} disagrees with statesim by {err}"
            fns[label] = run
    with torch.no_grad():
        times = race(fns, s)
    shape = f"H={hidden} B=1 T={steps}"
    rows = []
    if "reservoirpy" in times:
        rows.append(Row("reservoir", f"no-grad simulation, ReservoirPy time / statesim time, {shape}", ">= 1.6",
                        times["reservoirpy"] / times["statesim"], times_ms=ms(times)))
    else:
        rows.append(Row("reservoir", f"no-grad simulation vs ReservoirPy, {shape}", ">= 1.6", None,
                        note=notes["reservoirpy"]))
    if "jax lax.scan" in times:
        rows.append(Row("reservoir", f"no-grad simulation, statesim time / jitted lax.scan time, {shape}", "<= 1.2",
                        times["statesim"] / times["jax lax.scan"], times_ms=ms(times)))
    else:
        rows.append(Row("reservoir", f"no-grad simulation vs jitted lax.scan, {shape}", "<= 1.2", None,
                        note=notes["jax lax.scan"]))
    return rows


def linear_scan(s: Settings) -> list[Row]:
    """Linear cell (state 16, batch 64, T = 4096), forward + backward: the scan vs the sequential loop."""
    steps = 1024 if s.quick else 4096
    torch.manual_seed(0)
    cell = LinearCell(16, hidden_size=16, output_size=16, spectral_radius=0.9)
    x = torch.randn(steps, 64, 16)
    params = list(cell.parameters())
    cotangent = torch.randn(steps, 64, 16)  # a fixed dL/dy: the cell's own forward + backward, no loss arithmetic

    def with_path(mode: str) -> Callable[[], None]:
        def run() -> None:
            for p in params:
                p.grad = None
            with fastpath.policy(mode):
                unroll(cell, x).outputs.backward(cotangent)
        return run

    times = race({"scan": with_path("scan"), "loop": with_path("generic")}, s)
    return [Row("linear_scan", f"forward+backward (fixed cotangent), loop time / scan time, state 16, B=64, "
                               f"T={steps}", ">= 10", times["loop"] / times["scan"], times_ms=ms(times))]


def tbptt_memory(s: Settings) -> list[Row]:
    """Truncated BPTT (k = 100): peak memory added by training, T = 10 000 vs T = 1 000 (fresh processes)."""
    long = 3000 if s.quick else 10000
    results = {}
    for steps in (1000, long):
        done = subprocess.run([sys.executable, str(HERE / "tbptt_memory.py"), str(steps), "100"], capture_output=True,
                              text=True, timeout=1800, cwd=ROOT)
        if done.returncode:
            return [Row("tbptt_memory", "truncated BPTT peak memory", "<= 1.2", None, note=done.stderr[-300:])]
        results[steps] = json.loads(done.stdout.strip().splitlines()[-1])
    short, far = results[1000], results[long]
    note = (f"added by training: {short['added'] / 2**20:.1f} MiB (T=1000) vs {far['added'] / 2**20:.1f} MiB "
            f"(T={long}); whole-process peak {short['rss_peak'] / 2**20:.0f} vs {far['rss_peak'] / 2**20:.0f} MiB; "
            f"LSTM 256 units, batch 32")
    return [Row("tbptt_memory", f"truncated BPTT k=100, peak memory added, T={long} / T=1000", "<= 1.2",
                far["added"] / short["added"], note=note)]


def startup(s: Settings) -> list[Row]:
    """Wall time of `statesim --help` and `statesim validate` in fresh processes (median of repeats)."""
    rows = []
    commands = {"statesim --help": ["--help"],
                "statesim validate": ["validate", str(ROOT / "scenarios" / "moving_average.yaml")]}
    for label, args in commands.items():
        times = []
        for _ in range(3 if s.quick else 7):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "statesim", *args], capture_output=True, check=True, cwd=ROOT)
            times.append(time.perf_counter() - start)
        rows.append(Row("startup", f"{label} wall time", "< 0.5 s", statistics.median(times), unit="s",
                        times_ms={label: round(statistics.median(times) * 1e3, 1)}))
    return rows


def adding_run(s: Settings) -> list[Row]:
    """Training throughput of a whole `statesim run` of the adding task vs a plain PyTorch script."""
    import tempfile

    steps = 100 if s.quick else 400
    threads = str(torch.get_num_threads())
    plain = subprocess.run([sys.executable, str(HERE / "plain_adding.py"), str(steps), threads], capture_output=True,
                           text=True, check=True, cwd=ROOT)
    plain_s = json.loads(plain.stdout.strip().splitlines()[-1])["train_seconds"]
    with tempfile.TemporaryDirectory() as tmp:
        sets = [f"training.steps={steps}", "scenario.stop_when_solved=false", f"scenario.check_every={10 * steps}",
                "scenario.diagnose=false", "output.plots=false", f"training.checkpoint_every={steps}"]
        args = [sys.executable, "-m", "statesim", "run", str(ROOT / "scenarios" / "adding.yaml"), "--out",
                str(Path(tmp) / "run")] + [a for kv in sets for a in ("--set", kv)]
        subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": threads})
        run_s = json.loads((Path(tmp) / "run" / "run.json").read_text())["train_seconds"]["main"]
    return [Row("adding_run", f"training throughput, statesim run / plain PyTorch script, adding T=50, {steps} steps",
                ">= 0.95", plain_s / run_s, times_ms={"statesim run": round(run_s * 1e3, 1),
                                                      "plain script": round(plain_s * 1e3, 1)},
                note="statesim's time includes its trainer, metrics log and one checkpoint")]


def layered(s: Settings) -> list[Row]:
    """Informational: a 2-layer LSTM, statesim's per-layer fused dispatch vs torch.nn.LSTM(num_layers=2)."""
    batch, hidden, steps = (32, 128, 50) if s.quick else (32, 256, 200)
    torch.manual_seed(0)
    layers = [lstm_model(64, hidden), lstm_model(hidden, hidden)]
    reference = nn.LSTM(64, hidden, num_layers=2)
    x = torch.randn(steps, batch, 64)
    params = [p for m in layers for p in m.parameters()]
    times = race({"statesim 2 layers": forward_backward(lambda: layers[1](layers[0](x).outputs).outputs, params),
                  "torch.nn.LSTM(num_layers=2)": forward_backward(lambda: reference(x)[0],
                                                                 list(reference.parameters()))}, s)
    return [Row("layered", f"2-layer training step, torch time / statesim time, B={batch} H={hidden} T={steps}",
                ">= 0.95", times["torch.nn.LSTM(num_layers=2)"] / times["statesim 2 layers"], times_ms=ms(times),
                note="each layer takes the fused kernel; torch runs both layers in one call")]


def tick_cost(s: Settings) -> list[Row]:
    """One tick at batch 1, every built-in cell: the prepared stepper and EmbeddedModel.step vs calling the cell.

    Each contender advances its own state, as a host loop does. Timed in CPU time (one thread): a tick is
    tens of microseconds, far below a loaded machine's scheduling noise. engine.step, the one-shot wrapper,
    checks input and state and prepares a stepper on every call; it is reported for comparison.
    """
    from statesim.builtin.cells import GRUCell, WindowCell
    from statesim.builtin.salamander.cpg import SalamanderCPG
    from statesim.embed import EmbeddedModel
    from statesim.engine import Stepper, step

    cells = {"linear": lambda: LinearCell(4, 16), "vanilla": lambda: VanillaCell(4, 16),
             "lstm": lambda: LSTMCell(4, 16), "gru": lambda: GRUCell(4, 16),
             "window": lambda: WindowCell(4, window=4, output_size=16, hidden=[16]),
             "salamander_cpg": lambda: SalamanderCPG(2)}
    rows = []
    for name, make in cells.items():
        torch.manual_seed(0)
        cell = make().eval().requires_grad_(False)
        x, state = torch.randn(1, cell.input_size), cell.zero_state(1)
        stepper = Stepper(cell)
        topology = Unidirectional(cell.input_size, lambda size: cell)
        embedded = EmbeddedModel(SequenceModel(topology, Zeros(topology.state_spec)), fast=False)
        held = {"cell": state, "Stepper.step": state, "engine.step": state}  # each contender advances its own

        def ticker(who: str, fn: Callable) -> Callable[[], None]:
            def tick() -> None:
                held[who] = fn(x, held[who])[1]
            return tick

        with torch.no_grad():
            y, _ = stepper.step(x, state)
            assert torch.equal(y, cell(x, state)[0]) and torch.equal(embedded.step(x), y)
            times = race({"cell": ticker("cell", cell), "Stepper.step": ticker("Stepper.step", stepper.step),
                          "EmbeddedModel.step": lambda: embedded.step(x),
                          "engine.step": ticker("engine.step", lambda x, h: step(cell, x, h))}, s,
                         min_sample_s=0.05, clock=time.thread_time)
        base = times["cell"]
        rows += [Row("tick_cost", f"{name}: {who} time / cell call time, B=1", goal, times[who] / base,
                     times_ms=ms({"cell": base, who: times[who]}))
                 for who, goal in (("Stepper.step", "<= 1.20"), ("EmbeddedModel.step", "<= 1.20"),
                                   ("engine.step", "<= 2.00"))]
    return rows


CASES: dict[str, Callable[[Settings], list[Row]]] = {
    "lstm_train": lstm_train, "lstm_peak": lstm_peak, "plugin_cell": plugin_cell, "reservoir": reservoir,
    "linear_scan": linear_scan, "tbptt_memory": tbptt_memory, "startup": startup, "adding_run": adding_run,
    "layered": layered, "tick_cost": tick_cost,
}


def set_threads(threads: int) -> None:
    """Use ``threads`` threads in torch, in JAX (XLA's CPU client) and in the subprocesses this suite starts."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if threads == 1:  # XLA reads this when JAX creates its CPU client, i.e. at its first use
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1").strip()


# --------------------------------------------------------------------------- machine and report
def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": _dt.datetime.now().isoformat(timespec="seconds"), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "python": platform.python_version(),
            "platform": platform.platform(), "torch": torch.__version__, "peers": peers.jax_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_before": list(os.getloadavg())}


def table(rows: list[Row]) -> str:
    """The summary table: one line per target."""
    lines = [f"{'case':<16} {'value':>9} {'goal':>9}  {'met':<4} target / note", "-" * 100]
    for row in rows:
        value = "skipped" if row.value is None else (f"{row.value:.3f} s" if row.unit == "s" else f"{row.value:.2f}x")
        met = {True: "yes", False: "NO", None: "-"}[row.met]
        lines.append(f"{row.case:<16} {value:>9} {row.goal:>9}  {met:<4} {row.target}")
        detail = ", ".join(f"{k} {v:g} ms" for k, v in row.times_ms.items())
        for extra in (detail, row.note):
            if extra:
                lines.append(f"{'':<42}{extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats")
    parser.add_argument("--only", default="", help="comma-separated cases to run (see --list)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per contender (default 7, quick 3)")
    parser.add_argument("--out", default=str(HERE / "results" / "latest.json"), help="JSON output path")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch, JAX and subprocesses (default: torch's default); use 1 on a busy "
                             "machine, where spinning worker threads make multi-threaded timings erratic")
    args = parser.parse_args(argv)
    if args.threads:
        set_threads(args.threads)
    if args.list:
        for name, case in CASES.items():
            print(f"{name:<14} {case.__doc__.strip().splitlines()[0]}")
        return 0
    chosen = [c for c in args.only.split(",") if c] or list(CASES)
    unknown = [c for c in chosen if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    settings = Settings(args.quick, args.repeats or (3 if args.quick else 7), 1 if args.quick else 2)
    info = machine()
    rows: list[Row] = []
    started = time.perf_counter()
    for name in chosen:
        print(f"[{time.perf_counter() - started:6.0f} s] {name} ...", file=sys.stderr, flush=True)
        try:
            rows += CASES[name](settings)
        except Exception as exc:  # noqa: BLE001 - one broken case must not hide the others
            rows.append(Row(name, f"{name} failed", "-", None, note=f"{type(exc).__name__}: {exc}"))
    info["load_average_after"] = list(os.getloadavg())
    info["seconds"] = round(time.perf_counter() - started, 1)
    report = {"machine": info, "settings": asdict(settings),
              "rows": [{**asdict(r), "met": r.met} for r in rows]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    loaded = max(info['load_average_before'][0], info['load_average_after'][0]) > 0.5 * (os.cpu_count() or 1)
    print(f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
          f"{info['date']}; load average {info['load_average_before'][0]:.1f} -> {info['load_average_after'][0]:.1f}"
          f"{'  (LOADED MACHINE: timings are noisy)' if loaded else ''}")
    print(table(rows))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
