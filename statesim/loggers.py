"""Loggers: where a run's records go besides ``metrics.jsonl``, and the fan-out that keeps them from breaking it.

A logger is a plugin kind (hook ``statesim_loggers``, kind ``logger``) chosen in a scenario file's ``logging:``
list (``logging: [jsonl, tensorboard]``, an entry may be ``{type: mlflow, experiment: x}``) or with
``statesim run --log NAME``. ``metrics.jsonl`` is always written (resume and ``statesim diagnose`` read it); the
``jsonl`` entry names it and is the default. The run calls every logger on the writer rank only (rank 0 of a
distributed run), in this order: :meth:`Logger.start` with the run's folder and resolved config,
:meth:`Logger.job_started` when a training job begins (with the step it continues from on ``--resume``),
:meth:`Logger.log` for every record the trainer writes to ``metrics.jsonl``, :meth:`Logger.finish` with the
results once ``results.json`` and the plots are written, and :meth:`Logger.close` in every case. A logger that
raises is reported once (naming it and the exception) and not called again: the run goes on and its results
do not depend on any logger.
"""
from __future__ import annotations

import importlib.util
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict


class LoggerParams(BaseModel):
    """Base of logger parameter models (the YAML keys next to ``type``): unknown keys are errors.

    >>> from pydantic import Field
    >>> class PrintParams(LoggerParams):
    ...     prefix: str = Field("", description="printed before each record")
    >>> PrintParams(prefix="> ").prefix
    '> '
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class RunInfo:
    """What a logger is told when the run starts."""

    run_dir: Path
    #: The run's name (``name:`` or the scenario file's stem).
    name: str
    #: The resolved config as plain data, and as the YAML text of ``config.yaml``.
    config: dict[str, Any]
    config_text: str
    #: ``statesim run --resume``: the run folder holds an earlier attempt's output.
    resumed: bool


class Logger:
    """Base class of loggers; override the methods you need (each default does nothing).

    ``requires``: ``(import name, statesim extra)`` of a package the logger needs; validation refuses the logger
    with ``pip install 'statesim[EXTRA]'`` when it is missing, before a run folder exists.

    >>> class Collect(Logger):
    ...     def start(self, run):
    ...         self.seen = []
    ...     def log(self, record):
    ...         self.seen.append(scalars(record))
    >>> logger = Collect(LoggerParams())
    >>> logger.start(None)
    >>> logger.log({"job": "main", "step": 1, "loss": 0.5, "clipped": False})
    >>> logger.seen
    [{'loss': 0.5, 'clipped': 0.0}]
    """

    Params: ClassVar[type[BaseModel]] = LoggerParams
    requires: ClassVar[tuple[str, str] | None] = None

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def start(self, run: RunInfo) -> None:
        """The run begins (its folder exists, config.yaml is written)."""

    def job_started(self, job: str, step: int) -> None:
        """Training job ``job`` begins at ``step`` (0, or the checkpoint's step on ``--resume``: later records
        of the earlier attempt were dropped from metrics.jsonl and are logged again)."""

    def log(self, record: dict[str, Any]) -> None:
        """One record as written to metrics.jsonl: ``job``, ``step`` and values (loss, grad_norm, lr, val_loss...)."""

    def finish(self, results: dict[str, Any]) -> None:
        """The run finished: ``results`` is what results.json holds; plots/ and run.json are written."""

    def close(self, status: str) -> None:
        """Release files and connections; ``status`` is ``finished``, ``interrupted`` or ``failed``."""

    def outputs(self) -> tuple[str, ...]:
        """Names of the entries this logger makes at the top of the run folder: a new run that fails before it
        saved anything removes them with its bookkeeping, so the same ``--out`` can be used again."""
        return ()


def missing_package(cls: type[Logger]) -> tuple[str, str] | None:
    """``(package, extra)`` when the package ``cls.requires`` cannot be imported here, else None."""
    if cls.requires is None:
        return None
    module, extra = cls.requires
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else (module, extra)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric values of a record (booleans as 0/1), without ``job`` and ``step``."""
    found = {}
    for key, value in record.items():
        if key in ("job", "step") or isinstance(value, str) or value is None:
            continue
        if isinstance(value, (bool, int, float)):
            found[key] = float(value)
    return found


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dotted keys; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def scalar_results(results: dict[str, Any]) -> dict[str, float]:
    """The finite numbers (booleans as 0/1) of results.json, flattened to dotted keys; lists are left out."""
    found = {}
    for key, value in flatten(results).items():
        if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            found[key] = float(value)
    return found


class LoggerSet:
    """The run's active loggers: each call goes to every logger still enabled; one that raises is reported once
    (``echo``) and disabled, so a logger never breaks the run."""

    def __init__(self, loggers: list[tuple[str, Logger]], echo: Callable[[str], None]) -> None:
        self.active = list(loggers)
        self.built = list(loggers)  # disabled ones too: what they wrote before failing is theirs
        self.echo = echo
        #: Names of the loggers disabled after a failure, with the exception that disabled them.
        self.failed: dict[str, str] = {}

    def _call(self, method: str, *args: Any) -> None:
        for name, logger in list(self.active):
            try:
                getattr(logger, method)(*args)
            except Exception as exc:  # a logger's bug or a lost server must not stop training
                self.active.remove((name, logger))
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                self.echo(f"warning: logger '{name}' failed in {method}() ({type(exc).__name__}: {exc}) and is "
                          f"disabled for the rest of the run; the run goes on, and metrics.jsonl holds every "
                          f"record.")
                if method != "close":
                    try:  # let it release what it holds; a second failure is not reported again
                        logger.close("failed")
                    except Exception:
                        pass

    def start(self, run: RunInfo) -> None:
        """Tell every logger the run begins."""
        self._call("start", run)

    def job_started(self, job: str, step: int) -> None:
        """Tell every logger a training job begins at ``step``."""
        self._call("job_started", job, step)

    def log(self, record: dict[str, Any]) -> None:
        """Give one metrics.jsonl record to every logger."""
        self._call("log", record)

    def finish(self, results: dict[str, Any]) -> None:
        """Give the final results to every logger."""
        self._call("finish", results)

    def close(self, status: str) -> None:
        """Close every logger."""
        self._call("close", status)

    def outputs(self) -> set[str]:
        """What every logger (disabled ones included) makes at the top of the run folder."""
        found: set[str] = set()
        for name, logger in self.built:
            try:
                found.update(logger.outputs())
            except Exception:  # a broken logger's files then count as saved: the folder is kept
                continue
        return found


def open_loggers(config: Any, registry: Any, run_dir: Path, resumed: bool,
                 echo: Callable[[str], None]) -> LoggerSet:
    """Build and start the loggers a validated config lists (``config.logging``)."""
    from statesim.config import dump_config

    built: list[tuple[str, Logger]] = []
    for spec in config.logging:
        try:
            built.append((spec.type, registry.get("logger", spec.type).record.cls(spec.params)))
        except Exception as exc:
            echo(f"warning: logger '{spec.type}' could not be created ({type(exc).__name__}: {exc}) and is "
                 f"disabled; the run goes on, and metrics.jsonl holds every record.")
    loggers = LoggerSet(built, echo)
    loggers.start(RunInfo(Path(run_dir), config.name or "run", config.resolved(), dump_config(config), resumed))
    return loggers


@contextmanager
def logging_session(loggers: LoggerSet | None) -> Iterator[None]:
    """Close ``loggers`` when the block ends, with ``finished``, ``interrupted`` (Ctrl-C) or ``failed``."""
    from statesim.trainer import Interrupted

    if loggers is None:
        yield
        return
    try:
        yield
    except (Interrupted, KeyboardInterrupt):
        loggers.close("interrupted")
        raise
    except BaseException:
        loggers.close("failed")
        raise
    loggers.close("finished")


__all__ = ["Logger", "LoggerParams", "LoggerSet", "RunInfo", "flatten", "logging_session", "missing_package",
           "open_loggers", "scalar_results", "scalars"]
