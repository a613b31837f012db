"""Scenarios ``adding`` and ``copy``: the long-lag memory benchmarks (Hochreiter & Schmidhuber 1997;
Bengio et al. 1994).

``adding``: each step reads ``(value in [0, 1], marker)``; exactly two steps are marked, one in each half
of the sequence, and the target at the last step is the sum of the two marked values. Predicting the
mean (1.0) gives MSE 1/6 ~ 0.167; the task counts as solved at validation MSE < 0.01 (the literature's
criterion). The loss is taken at the last step only, so every useful gradient has to travel back
``T/2`` steps or more: the lecture's ``P_{s,t}`` decides whether it arrives.

``copy``: ``symbols`` random symbols out of ``alphabet``, then ``delay`` blank steps, then a delimiter
and ``symbols`` more blanks, during which the model must output the symbols in order. Loss and
accuracy are taken on the recall steps only (chance accuracy ``1/alphabet``); solved at validation
accuracy >= ``solve_accuracy``.

Both report the test metric, the number of updates needed to solve (checked every ``check_every``
updates through the trainer's ``on_update`` callback) and, when plots are on, the gradient flow of the
final model (:mod:`statesim.diagnostics`).
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch
from pydantic import Field
from torch import Tensor

from statesim.config import RunConfig
from statesim.data import DataSplits, SequenceData, cross_entropy_loss, mse_loss
from statesim.hookimpl import hookimpl
from statesim.registry import Registration
from statesim.scenario import Probe, RunContext, Scenario, ScenarioParams


def last_step_mse(outputs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """MSE at the final step of each sequence only (the adding problem's loss)."""
    last = torch.zeros_like(mask)
    last[-1] = mask[-1]
    return mse_loss(outputs, targets, last)


def adding_data(length: int, count: int, generator: torch.Generator) -> SequenceData:
    """``count`` adding-problem sequences of ``length`` steps: inputs ``[T, N, 2]``, target at the last step."""
    values = torch.rand(length, count, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (count,), generator=generator)
    second = torch.randint(half, length, (count,), generator=generator)
    markers = torch.zeros(length, count)
    rows = torch.arange(count)
    markers[first, rows] = 1.0
    markers[second, rows] = 1.0
    targets = torch.zeros(length, count, 1)
    targets[-1, :, 0] = values[first, rows] + values[second, rows]
    return SequenceData(torch.stack([values, markers], dim=-1), targets)


def copy_data(delay: int, symbols: int, alphabet: int, count: int, generator: torch.Generator) -> SequenceData:
    """Copy-task sequences: inputs one-hot ``[T, N, alphabet + 2]`` (symbols, blank, delimiter), targets class ids."""
    length = symbols + delay + symbols
    seq = torch.randint(0, alphabet, (symbols, count), generator=generator)
    ids = torch.full((length, count), alphabet, dtype=torch.long)  # blank
    ids[:symbols] = seq
    ids[symbols + delay - 1] = alphabet + 1  # delimiter: "output now"
    inputs = torch.nn.functional.one_hot(ids, alphabet + 2).to(torch.get_default_dtype())
    targets = torch.zeros(length, count, dtype=torch.long)
    targets[-symbols:] = seq
    return SequenceData(inputs, targets)


class _RecallLoss:
    """Cross-entropy on the last ``symbols`` steps only (a class, so it pickles across processes)."""

    def __init__(self, symbols: int) -> None:
        self.symbols = symbols

    def __call__(self, outputs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        recall = torch.zeros_like(mask)
        recall[-self.symbols:] = mask[-self.symbols:]
        return cross_entropy_loss(outputs, targets, recall)


class SolveTracker:
    """``on_update`` callback: evaluate a validation metric every ``every`` updates; note when it is solved."""

    def __init__(self, evaluate: Callable[[Any], float], solved: Callable[[float], bool], every: int, name: str,
                 stop_when_solved: bool) -> None:
        self.evaluate, self.solved, self.every, self.name = evaluate, solved, every, name
        self.stop_when_solved = stop_when_solved
        self.history: list[tuple[int, float]] = []
        self.solved_at: int | None = None

    def __call__(self, trainer: Any, record: dict[str, Any]) -> None:
        step = record["step"]
        if step % self.every and step != trainer.config.steps:
            return
        trainer.model.eval()
        with torch.no_grad():
            value = float(self.evaluate(trainer.model))
        trainer.model.train()
        self.history.append((step, value))
        if trainer.log is not None:
            trainer.log({"job": trainer.job, "step": step, self.name: value})
        if self.solved_at is None and self.solved(value):
            self.solved_at = step
            if self.stop_when_solved:
                trainer.stop_requested = True

    def state_dict(self) -> dict[str, Any]:
        """History and solve step, checkpointed with the trainer (a resume continues them)."""
        return {"history": [[s, v] for s, v in self.history], "solved_at": self.solved_at}

    def load_state_dict(self, tree: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.history = [(int(s), float(v)) for s, v in tree["history"]]
        self.solved_at = tree["solved_at"]


class _MonitorState:
    """Checkpoints a :class:`statesim.diagnostics.GradientFlowMonitor`'s history (each measurement's fields)."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor

    def state_dict(self) -> dict[str, Any]:
        import dataclasses

        return {"history": [[step, {f.name: getattr(flow, f.name) for f in dataclasses.fields(flow)}]
                            for step, flow in self.monitor.history]}

    def load_state_dict(self, tree: dict[str, Any]) -> None:
        from statesim.diagnostics.flow import GradientFlow

        self.monitor.history = [(int(step), GradientFlow(**fields)) for step, fields in tree["history"]]


class LongLagParams(ScenarioParams):
    train_sequences: int = Field(4096, gt=0, description="training sequences (a fixed set)")
    val_sequences: int = Field(256, gt=0, description="validation sequences (used to decide 'solved')")
    test_sequences: int = Field(512, gt=0, description="held-out sequences for the final metric")
    check_every: int = Field(50, gt=0, description="updates between validation checks")
    stop_when_solved: bool = Field(True, description="end training at the first check that meets the criterion")
    data_seed: int = Field(1234, description="seed of the generated data (the run's seed drives training)")
    diagnose: bool = Field(True, description="write gradient-flow diagnostics of the final model (needs plots)")
    gradient_flow_every: int | None = Field(None, gt=0, description="also measure ||P_k|| during training "
                                                                    "every this many updates")


class AddingParams(LongLagParams):
    length: int = Field(50, ge=4, description="sequence length T (the lag is between T/2 and T)")
    solve_mse: float = Field(0.01, gt=0, description="validation MSE counted as solved")


class CopyParams(LongLagParams):
    delay: int = Field(20, ge=1, description="blank steps between the symbols and the delimiter")
    symbols: int = Field(5, gt=0, description="symbols to remember")
    alphabet: int = Field(8, ge=2, description="distinct symbols")
    solve_accuracy: float = Field(0.99, gt=0, le=1, description="validation recall accuracy counted as solved")


#: The parameters of one long-lag task (adding or copy).
LP = TypeVar("LP", bound=LongLagParams)


class _LongLag(Scenario[LP]):
    """Shared flow: data, train with a solve tracker, test metric, diagnostics."""

    metric_name = ""

    def make_data(self, count: int, generator: torch.Generator) -> SequenceData:
        raise NotImplementedError

    def loss(self) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        raise NotImplementedError

    def sizes(self) -> tuple[int, int]:
        raise NotImplementedError

    def metric(self, model: Any, data: SequenceData) -> float:
        raise NotImplementedError

    def solved(self, value: float) -> bool:
        raise NotImplementedError

    def splits(self) -> DataSplits:
        """Train, validation and test sets drawn from ``data_seed``."""
        p = self.params
        gen = torch.Generator().manual_seed(p.data_seed)
        return DataSplits(self.make_data(p.train_sequences, gen), self.make_data(p.val_sequences, gen),
                          self.make_data(p.test_sequences, gen))

    def diagnostic_batch(self, job: str, size: int, seed: int) -> tuple[SequenceData, Callable] | None:
        """Fresh sequences of this task and its loss (for `statesim diagnose`)."""
        return self.make_data(size, torch.Generator().manual_seed(seed + 99)), self.loss()

    def probes(self, config: RunConfig) -> list[Probe]:
        """The run's model on two of the task's own sequences (full length: the lag is the point)."""
        input_size, output_size = self.sizes()
        return [Probe("model", lambda ctx: ctx.build_model(None, input_size, output_size),
                      self.make_data(2, torch.Generator().manual_seed(0)))]

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from statesim import diagnostics

        p = self.params
        data = self.splits()
        assert data.val is not None and data.test is not None  # splits() makes all three
        input_size, output_size = self.sizes()
        model = ctx.build_model(None, input_size, output_size)
        val = data.val.to(ctx.device)
        tracker = SolveTracker(lambda m: self.metric(m, val), self.solved, p.check_every, f"val_{self.metric_name}",
                               p.stop_when_solved)
        monitor = None
        callbacks: list[Callable] = [tracker]
        state: dict[str, Any] = {"solve_tracker": tracker}
        if p.gradient_flow_every:
            monitor = diagnostics.GradientFlowMonitor(data.test.inputs[:, :4], every=p.gradient_flow_every)
            monitor.measure(model, 0)
            callbacks.append(monitor)
            state["gradient_flow_monitor"] = _MonitorState(monitor)

        def on_update(trainer: Any, record: dict[str, Any]) -> None:
            for callback in callbacks:
                callback(trainer, record)

        # Validation is the tracker's job (its metric is the task's own), so the trainer gets no val split.
        result = ctx.train(model, DataSplits(data.train), loss_fn=self.loss(), on_update=on_update, state=state)
        model.eval()
        with torch.no_grad():
            test_value = self.metric(model, data.test.to(ctx.device))
        results: dict[str, Any] = {
            f"test_{self.metric_name}": test_value, "solved": tracker.solved_at is not None,
            "steps_to_solve": tracker.solved_at, "updates": result.steps, "final_train_loss": result.final_loss,
            "nonfinite_updates": result.nonfinite_steps,
            f"val_{self.metric_name}_history": [[s, v] for s, v in tracker.history], **self.reference(data)}
        # The gradient-flow diagnosis steps the cell; a bidirectional model cannot be stepped, so it goes without.
        if ctx.plots_enabled and p.diagnose and model.topology.as_cell() is not None:
            batch = data.test.select(slice(0, 4))
            flow = diagnostics.gradient_flow(model.step_cell(), batch.inputs.to(ctx.device))
            grads = diagnostics.loss_gradients(model, batch.inputs.to(ctx.device), batch.targets.to(ctx.device),
                                               self.loss())
            results["gradient_flow"] = {"rate_per_step": flow.rate, "verdict": flow.verdict,
                                        "geometric_mean_sigma_max": flow.geometric_mean_sigma_max,
                                        "self_diagonal_mean": {k: float(v.mean()) for k, v in
                                                               flow.self_diagonal.items()}}
            ctx.save_plot(diagnostics.plot_gradient_flow(flow, f"trained {type(model.step_cell()).__name__}: "
                                                               f"{flow.verdict}"), "gradient_flow")
            ctx.save_plot(diagnostics.plot_loss_gradients(grads), "loss_gradients")
            if monitor is not None:
                ctx.save_plot(diagnostics.plot_monitor(monitor.history), "gradient_flow_training")
            ctx.save_plot(self._plot_history(tracker), "validation")
        if monitor is not None:
            results["gradient_flow_during_training"] = [[s, f.rate] for s, f in monitor.history]
        return results

    def reference(self, data: DataSplits) -> dict[str, Any]:
        return {}

    def _plot_history(self, tracker: SolveTracker) -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        if tracker.history:
            ax.plot(*zip(*tracker.history), marker=".")
        if tracker.solved_at:
            ax.axvline(tracker.solved_at, color="green", lw=1, label=f"solved at update {tracker.solved_at}")
            ax.legend()
        ax.set(xlabel="update", ylabel=f"validation {self.metric_name}")
        if self.metric_name == "mse":
            ax.set_yscale("log")
        fig.tight_layout()
        return fig


class Adding(_LongLag[AddingParams]):
    """The adding problem: output the sum of the two marked values at the end of the sequence."""

    Params = AddingParams
    metric_name = "mse"

    def make_data(self, count: int, generator: torch.Generator) -> SequenceData:
        return adding_data(self.params.length, count, generator)

    def loss(self) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        return last_step_mse

    def sizes(self) -> tuple[int, int]:
        return 2, 1

    def metric(self, model: Any, data: SequenceData) -> float:
        with torch.no_grad():
            out = model(data.inputs).outputs[-1]
        return float(((out - data.targets[-1]) ** 2).mean())

    def solved(self, value: float) -> bool:
        return value < self.params.solve_mse

    def reference(self, data: DataSplits) -> dict[str, Any]:
        assert data.test is not None  # splits() makes all three
        target = data.test.targets[-1]
        return {"baseline_mse_predict_mean": float(((target - 1.0) ** 2).mean()), "solve_mse": self.params.solve_mse}


class Copy(_LongLag[CopyParams]):
    """The copy (memory) task: reproduce a short symbol sequence after a delay."""

    Params = CopyParams
    metric_name = "accuracy"

    def make_data(self, count: int, generator: torch.Generator) -> SequenceData:
        p = self.params
        return copy_data(p.delay, p.symbols, p.alphabet, count, generator)

    def loss(self) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        return _RecallLoss(self.params.symbols)

    def sizes(self) -> tuple[int, int]:
        return self.params.alphabet + 2, self.params.alphabet

    def metric(self, model: Any, data: SequenceData) -> float:
        k = self.params.symbols
        with torch.no_grad():
            logits = model(data.inputs).outputs[-k:]
        return float((logits.argmax(-1) == data.targets[-k:]).to(torch.float64).mean())

    def solved(self, value: float) -> bool:
        return value >= self.params.solve_accuracy

    def reference(self, data: DataSplits) -> dict[str, Any]:
        return {"chance_accuracy": 1.0 / self.params.alphabet, "solve_accuracy": self.params.solve_accuracy}


@hookimpl
def statesim_scenarios() -> list[Registration]:
    """Register the two long-lag benchmarks."""
    return [Registration("adding", Adding, AddingParams,
                         "adding problem: sum of two marked values after a long lag (MSE < 0.01 solves)"),
            Registration("copy", Copy, CopyParams,
                         "copy/memory task: recall a symbol sequence after a delay (recall accuracy)")]
