"""Scenarios: a task (data, training recipe, evaluation, plots) run by ``statesim run``.

A scenario is a plugin class with a ``Params`` model and a ``run(ctx)`` method that returns the
results dict written to ``results.json``. It uses the :class:`RunContext` for everything shared:
building models from config, the one trainer, plots, logging and the run folder.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Sequence, TypeVar

import torch
from pydantic import BaseModel, ConfigDict

from statesim.config import ModelConfig, RunConfig, TrainingConfig
from statesim.data import DataSplits, SequenceData, mse_loss
from statesim.errors import ConfigError, StatesimError
from statesim.fileio import atomic_write_text, save_figure
from statesim.loggers import LoggerSet
from statesim.model import SequenceModel, build_model
from statesim.safepath import guard, name_problem
from statesim.plugin_manager import PluginHost
from statesim.trainer import LossFn, Sampling, Trainer, TrainResult


class ScenarioParams(BaseModel):
    """Base of scenario parameter models: unknown keys are errors.

    >>> from statesim import ScenarioParams
    >>> class DelayParams(ScenarioParams):
    ...     delay: int = 3
    >>> DelayParams(delay=5).delay
    5
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # as the core keys (config.Strict)


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step, appended and flushed as it happens, then handed to the
    run's loggers (``also``, a :class:`statesim.loggers.LoggerSet`), which cannot make the write fail."""

    def __init__(self, path: Path, also: LoggerSet | None = None) -> None:
        self.path = path
        self.also = also

    def __call__(self, record: dict[str, Any]) -> None:
        with guard(self.path).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        if self.also is not None:
            self.also.log(record)

    def truncate(self, job: str, step: int) -> None:
        """Drop records of ``job`` after ``step`` (written after the checkpoint a resume starts from)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if record.get("job") == job and record.get("step", 0) > step:
                continue
            kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))


@dataclass
class RunContext:
    """What a scenario gets from the runner: config, plugins, run folder, device, the trainer.

    The runner makes it; a scenario's ``run(ctx)`` builds models (``ctx.build_model``), trains them
    (``ctx.train``) and writes inside the run folder (``ctx.path``).

    >>> import tempfile, torch, statesim
    >>> from pathlib import Path
    >>> host = statesim.build_plugin_host(autoload=False)
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "ls.yaml").write_text("scenario: {type: linear_system}\\n"
    ...                                     "model: {cell: {type: lstm, hidden_size: 3}}\\n")
    >>> config = statesim.load_config(folder / "ls.yaml", host.registry)
    >>> ctx = statesim.RunContext(config, host, folder, torch.device("cpu"))
    >>> ctx.build_model(None, input_size=2, output_size=1).state_spec
    {'h': (3,), 'c': (3,)}
    >>> ctx.path("plots/loss.png") == folder.resolve() / "plots" / "loss.png"
    True
    """

    config: RunConfig
    host: PluginHost
    run_dir: Path
    device: torch.device
    resume: bool = False
    progress: Any = None
    should_stop: Callable[[], bool] = lambda: False
    echo: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)
    #: Wall times of evaluation steps (beam search decoding): run.json, never results.json.
    decode_seconds: dict[str, float] = field(default_factory=dict)
    #: Per job: the engine path each cell takes in training, and why (statesim.fastpath.plan; results.json),
    #: and what ran, how often, with compile times (run.json).
    engine_paths: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    engine_calls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: The run's loggers (``logging:``): the runner makes them on the writer rank alone (None on the others, and
    #: outside ``statesim run``), so every rank may pass them on.
    loggers: LoggerSet | None = None

    @property
    def metrics(self) -> MetricsLog:
        return MetricsLog(self.run_dir / "metrics.jsonl", self.loggers)

    def path(self, relative: str) -> Path:
        """A path inside the run folder; refuses one that would escape it."""
        target = (self.run_dir / relative).resolve()
        if not target.is_relative_to(self.run_dir.resolve()):
            raise StatesimError(f"the path '{relative}' in the scenario would write outside the run folder "
                                f"{self.run_dir}; use a relative path without '..' (or pass it on the command line).")
        return target

    def build_model(self, config: ModelConfig | None, input_size: int, output_size: int | None, *,
                    input_vocab: int | None = None, encoder: dict[str, Any] | None = None,
                    scaling: dict[str, Any] | None = None) -> SequenceModel:
        """Build a model from config (the run's ``model:`` when ``config`` is None).

        ``input_vocab``: the inputs are token ids; ``encoder``: the model's conditioning encoder,
        ``{type: NAME, ...params}``; ``scaling``: fixed input/output z-scores inside the model (see
        :func:`statesim.model.build_model`).
        """
        config = config or self.config.model
        if config is None:
            from statesim.config import ConfigIssue

            raise ConfigError([ConfigIssue(self.config.name or "scenario", None, "model",
                                           "this scenario trains a model; add a `model:` section, e.g. "
                                           "model: {cell: {type: lstm, hidden_size: 64}}.")])
        # build_model records the config and sizes (model.build_spec); every checkpoint stores them, so
        # `statesim diagnose` and `statesim.embed` rebuild any job of a finished run from its checkpoint alone.
        model = build_model(self.host.registry, config, input_size, output_size, input_vocab=input_vocab,
                            encoder=encoder, scaling=scaling).to(self.device)
        if config is self.config.model:
            self.check_forcing(model)
        return model

    def check_forcing(self, model: SequenceModel) -> None:
        """The file's ``forcing:`` clamps must fit the model it builds: checked now, not after training."""
        from statesim.config import ConfigIssue

        issues = [ConfigIssue(self.config.name or "scenario", None, f"forcing.{index}.{key}", message)
                  for index, clamp in enumerate(self.config.forcing)
                  for key, message in clamp.problems(model.input_size, model.state_spec)]
        if issues:
            raise ConfigError(issues)

    def train(self, model: SequenceModel, data: DataSplits, *, job: str = "main", loss_fn: LossFn = mse_loss,
              training: TrainingConfig | None = None,
              on_update: Callable[[Trainer, dict[str, Any]], None] | None = None,
              sampling: Sampling | None = None, state: dict[str, Any] | None = None) -> TrainResult:
        """Train ``model`` with the shared trainer; checkpoints under ``checkpoints/<job>/``.

        ``sampling(step)``: the scheduled-sampling ratio at each update (token-input models).
        ``state`` names scenario objects (``state_dict()``/``load_state_dict()``) checkpointed with the job.
        """
        from statesim.distributed import active, is_writer

        problem = name_problem(job)
        if problem is not None:  # a plugin's own job label; YAML-given labels were checked at config time
            raise StatesimError(f"the job name {job!r} becomes the folder checkpoints/{job} of the run, and "
                                f"{problem}. The scenario plugin must pass a plain name (letters, digits, '_-.').")
        training = training or self.config.training
        trainer = Trainer(model, training, loss_fn=loss_fn, job=job, checkpoint_dir=self.run_dir / "checkpoints" / job,
                          config_digest=self.config.digest(), device=self.device, seed=self.config.seed,
                          log=self.metrics if is_writer() else None, should_stop=self.should_stop,
                          on_update=on_update, sampling=sampling, dist=active(), scenario_state=state)
        trainer.warn = self.echo
        if self.resume:
            restored = trainer.restore(warn=self.echo)
            # Records logged after the checkpoint (or before any, when none survived) are redone: drop them.
            if is_writer():
                self.metrics.truncate(job, trainer.step)
            if restored:
                self.echo(f"resumed job '{job}' at step {trainer.step}")
        if self.loggers is not None:  # the runner gives loggers to the writer rank alone
            self.loggers.job_started(job, trainer.step)
        started = time.perf_counter()
        update = self.progress.start(job, training.steps, trainer.step) if self.progress else None
        try:
            result = trainer.fit(data, progress=update)
        finally:
            if self.progress:
                self.progress.stop(job)
        self.timings[job] = time.perf_counter() - started
        self.report_engine(model, job, training)
        return result

    def report_engine(self, model: SequenceModel, job: str, training: TrainingConfig) -> None:
        """Log which engine path each cell of ``model`` took, and why; kept for results.json and run.json."""
        from statesim.fastpath.policies import summarize
        from statesim.fastpath.resolution import plan

        bptt = training.bptt
        per_step = bptt.mode == "truncated" and (bptt.k2 or 0) > (bptt.k1 or 0)  # k2 > k1 keeps every state
        self.engine_paths[job] = plan(model, return_states=per_step)
        self.engine_calls[job] = summarize(getattr(model, "engine_decisions", {}))
        for row in self.engine_calls[job]:
            extra = f", compiled in {row['compile_seconds']} s" if "compile_seconds" in row else ""
            self.echo(f"engine: job '{job}': {row['cell']} ran {row['calls']}x on the {row['path']} path "
                      f"({row['reason']}{extra})")

    def sub_run(self, config_file: str | Path, folder: str, overrides: Sequence[str] = ()) -> Path:
        """Run another scenario file into ``folder`` of this run folder (as ``statesim run``); returns its folder.

        The sub-run seeds the global RNGs from its own ``seed:`` and this run's states are restored afterwards,
        so what this scenario draws next is unchanged; it stops when this run is asked to (one Ctrl-C handler);
        it uses this run's plugins and ``echo``. On ``--resume`` a finished sub-run is reused as it is and an
        interrupted one is resumed.
        """
        from statesim.run import execute

        target = self.path(folder)
        if self.resume and (target / "results.json").is_file():
            return target
        again = self.resume and (target / "config.yaml").is_file()
        return execute(config_file, list(overrides), out=None if again else target, resume=target if again else None,
                       host=self.host, echo=self.echo, parent_stop=self.should_stop)

    @property
    def plots_enabled(self) -> bool:
        from statesim.distributed import is_writer

        return self.config.output.plots and is_writer()  # in a distributed run rank 0 alone writes

    def save_plot(self, fig: Any, name: str) -> Path | None:
        """Save a matplotlib figure as ``plots/<name>.png`` (atomically)."""
        if not self.plots_enabled:
            import matplotlib.pyplot as plt

            plt.close(fig)
            return None
        return save_figure(fig, self.run_dir / "plots" / f"{name}.png")


#: A scenario's parameter model: ``class MyScenario(Scenario[MyParams])`` types ``self.params`` as ``MyParams``.
P = TypeVar("P", bound=BaseModel)


class Scenario(Generic[P]):
    """Base class of scenarios: ``run(ctx)`` trains and evaluates, returning the results dict.

    Subclass it as ``Scenario[MyParams]`` and set ``Params = MyParams`` (a ClassVar cannot name the type
    variable, so the two are spelled separately; the first lets a type checker check ``self.params.foo``).
    Register it in a plugin's ``statesim_scenarios`` hook; the YAML's ``scenario:`` keys are its parameters.

    >>> from statesim import Scenario, ScenarioParams
    >>> class CountParams(ScenarioParams):
    ...     n: int = 3
    >>> class Count(Scenario[CountParams]):
    ...     Params = CountParams
    ...     def run(self, ctx):
    ...         return {"n": self.params.n}
    >>> Count(CountParams(n=4)).run(ctx=None)
    {'n': 4}
    """

    Params: ClassVar[type[BaseModel]] = ScenarioParams
    #: What the scenario gives the models it builds, e.g. ``{"encoding"}`` when it builds them with a
    #: conditioning encoder (captioning's CNN); matched against :attr:`InitialState.needs` at validation.
    supplies: ClassVar[frozenset[str]] = frozenset()
    #: What the scenario needs from its models' topology, e.g. ``{"encoder"}`` (a topology that runs a sequence
    #: encoder over the source, :meth:`Topology.offers`); checked at validation.
    needs: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def requires(cls, params: BaseModel) -> frozenset[str]:
        """What the scenario needs from its topology with these parameters (``needs`` unless one changes it)."""
        return cls.needs

    def __init__(self, params: P) -> None:
        self.params: P = params

    def run(self, ctx: RunContext) -> dict[str, Any]:
        """Do the scenario's work and return its final metrics."""
        raise NotImplementedError

    def diagnostic_batch(self, job: str, size: int, seed: int) -> "tuple[SequenceData, LossFn] | None":
        """A batch of this scenario's data for ``job`` and its loss, for `statesim diagnose` (None: not offered)."""
        return None

    def probes(self, config: RunConfig) -> "list[Probe] | None":
        """The models this scenario trains, each with a tiny batch shaped like its data, so that validation builds
        them and runs one forward (`statesim validate`: what validates, runs). None: not offered (validation then
        checks the keys only)."""
        return None


@dataclass(frozen=True)
class Probe:
    """One model a scenario trains, as validation checks it: how it is built, and two short sequences shaped
    like the scenario's data (zeros will do; only the shapes and what travels with them matter).

    ``key`` is where the model's settings live in the YAML (``model``, ``scenario.models.window``), for the
    error. ``build`` makes the model exactly as ``run`` does (``ctx.build_model(...)``), so the forcing
    clamps, the sizes and the encoder are the real ones.
    """

    key: str
    build: Callable[[RunContext], SequenceModel]
    batch: SequenceData


def sized_probe(config: ModelConfig | None, input_size: int, output_size: int | None, *, key: str = "model",
                steps: int = 3) -> Probe:
    """A probe of a plain model: ``[steps, 2, input_size]`` zeros in, ``output_size`` outputs."""
    inputs = torch.zeros(steps, 2, input_size)
    targets = torch.zeros(steps, 2, output_size or 1)
    return Probe(key, lambda ctx: ctx.build_model(config, input_size, output_size), SequenceData(inputs, targets))
