"""Where sweep runs execute: one run as plain data (:class:`RunTask`), and the executors that run many.

An :class:`Executor` is the interface a plugin implements for ``statesim_sweep_executors``; ``serial`` and
``local`` are here, ``ray`` in :mod:`statesim.sweep_ray`.
"""
from __future__ import annotations

import io
import os
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from statesim.errors import StatesimError
from statesim.sweep.spec import SweepError


@dataclass
class RunTask:
    """One combination to run: everything a worker needs, as plain data (it crosses process boundaries)."""

    name: str
    base_file: str
    overrides: list[str]
    run_dir: str
    threads: int = 1


@dataclass
class RunOutcome:
    """What became of one task."""

    name: str
    status: str  # "done", "skipped" (finished earlier) or "failed"
    run_dir: str
    seconds: float = 0.0
    error: str | None = None


def run_task(task: RunTask) -> RunOutcome:
    """Run (or resume) one combination; never raises, so one failure cannot stop the sweep."""
    run_dir = Path(task.run_dir)
    if (run_dir / "results.json").is_file():
        return RunOutcome(task.name, "skipped", task.run_dir)
    started = time.perf_counter()
    import torch

    previous_threads = torch.get_num_threads()  # the serial executor runs in the caller's process: restore it
    try:
        torch.set_num_threads(max(1, task.threads))
        from statesim.run import execute

        log = io.StringIO()
        resume = run_dir if (run_dir / "config.yaml").is_file() else None
        execute(task.base_file, task.overrides, out=None if resume else run_dir, resume=resume,
                echo=lambda message: log.write(message + "\n"))
        return RunOutcome(task.name, "done", task.run_dir, time.perf_counter() - started)
    except BaseException as exc:  # noqa: BLE001 - a failed run is reported, never allowed to stop the others
        if isinstance(exc, KeyboardInterrupt):
            raise
        detail = f"{type(exc).__name__}: {exc}" if isinstance(exc, StatesimError) else traceback.format_exc()
        return RunOutcome(task.name, "failed", task.run_dir, time.perf_counter() - started, detail.strip())
    finally:
        torch.set_num_threads(previous_threads)


class Executor(ABC):
    """Where sweep runs execute. ``run`` calls ``on_done`` as each task finishes and returns every outcome."""

    name = ""

    @abstractmethod
    def run(self, tasks: list[RunTask], on_done: Callable[[RunOutcome], None]) -> list[RunOutcome]:
        """Execute ``tasks`` (in any order); a task's failure is an outcome, not an exception."""

    @property
    @abstractmethod
    def slots(self) -> int:
        """How many runs go at once (the sweep shares the cores among them)."""


class SerialExecutor(Executor):
    """One run after another in this process (debugging, tests, tiny sweeps)."""

    name = "serial"

    @property
    def slots(self) -> int:
        return 1

    def run(self, tasks: list[RunTask], on_done: Callable[[RunOutcome], None]) -> list[RunOutcome]:
        outcomes = []
        for task in tasks:
            outcome = run_task(task)
            on_done(outcome)
            outcomes.append(outcome)
        return outcomes


def available_cores() -> int:
    """Cores this process may use (its CPU affinity where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class LocalExecutor(Executor):
    """A pool of fresh processes on this machine, ``workers`` at a time (default: the available cores)."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or available_cores())

    @property
    def slots(self) -> int:
        return self.workers

    def run(self, tasks: list[RunTask], on_done: Callable[[RunOutcome], None]) -> list[RunOutcome]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        if not tasks:
            return []
        outcomes = []
        # spawn: a clean interpreter per worker (fork after torch has started threads is unsafe).
        with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_task, task): task for task in tasks}
            for future in as_completed(futures):
                task = futures[future]
                try:
                    outcome = future.result()
                except BaseException as exc:  # the worker process itself died (killed, out of memory)
                    outcome = RunOutcome(task.name, "failed", task.run_dir,
                                         error=f"the worker process running it died: {type(exc).__name__}: {exc}")
                on_done(outcome)
                outcomes.append(outcome)
        return outcomes


def executors() -> dict[str, Callable[[int | None], Executor]]:
    """Executor factories by name (``--executor NAME``): every plugin's ``statesim_sweep_executors`` hook."""
    from statesim import extensions

    found: dict[str, Callable[[int | None], Executor]] = {}
    for provided in extensions.manager().hook.statesim_sweep_executors():
        for name, factory in (provided or {}).items():
            if name in found:
                raise SweepError(f"two plugins provide the sweep executor '{name}' (statesim_sweep_executors); "
                                 f"uninstall one, or block it with STATESIM_BLOCK_PLUGINS.")
            found[name] = factory
    return found


def make_executor(name: str, workers: int | None = None) -> Executor:
    """The executor registered as ``name``."""
    factories = executors()
    if name not in factories:
        raise SweepError(f"unknown executor '{name}'; available: {', '.join(sorted(factories))}.")
    return factories[name](workers)
