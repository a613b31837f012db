"""The Ray executor of ``statesim sweep`` (``--executor ray``; ``pip install 'statesim[ray]'``).

Each run is one Ray task. The cluster comes from ``ray.init(address)``: ``--ray-address`` (or ``RAY_ADDRESS``)
names a running cluster (``ray://head:10001`` or ``auto``); without one, Ray starts a local instance.
Tasks cross as JSON text (the :class:`~statesim.sweep.RunTask` fields), so no statesim object is pickled;
workers write the run folders themselves, so on a multi-machine cluster the sweep folder must be on a
filesystem every node mounts at the same path, with statesim installed on every node (docs/scaling.md).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any, Callable

from statesim.sweep.executors import Executor, RunOutcome, RunTask, run_task
from statesim.sweep.spec import SweepError


def _run_json(task_json: str) -> str:
    """Worker side: run one task given as JSON; the outcome comes back as JSON."""
    return json.dumps(asdict(run_task(RunTask(**json.loads(task_json)))))


class RayExecutor(Executor):
    """Runs each sweep run as a Ray task on the cluster ``ray.init(address)`` connects to (local by default)."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        self.workers = workers
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.init_kwargs = dict(init_kwargs or {})
        self._ray: Any = None

    def _connect(self) -> Any:
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError:
            raise SweepError("the ray executor needs Ray: pip install 'statesim[ray]' (or pip install ray).") from None
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False, **self.init_kwargs)
            except Exception as exc:  # ConnectionError, a timeout, a version mismatch
                raise SweepError(f"cannot start or reach the Ray cluster "
                                 f"({self.address or 'a new local instance'}): {type(exc).__name__}: {exc}") from None
        self._ray = ray
        return ray

    @property
    def slots(self) -> int:
        if self.workers:
            return self.workers
        return max(1, int(self._connect().cluster_resources().get("CPU", 1)))

    def run(self, tasks: list[RunTask], on_done: Callable[[RunOutcome], None]) -> list[RunOutcome]:
        if not tasks:
            return []
        ray = self._connect()
        pending: dict[Any, RunTask] = {}
        remote = ray.remote(_run_json)
        queue = list(tasks)
        outcomes = []
        limit = self.slots  # at most this many in flight, so --workers bounds a sweep on a shared cluster
        while queue or pending:
            while queue and len(pending) < limit:
                task = queue.pop(0)
                # Absolute paths: Ray workers do not start in the driver's working directory.
                sent = {**asdict(task), "base_file": os.path.abspath(task.base_file),
                        "run_dir": os.path.abspath(task.run_dir)}
                pending[remote.options(num_cpus=max(1, task.threads)).remote(json.dumps(sent))] = task
            ready, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ready[0])
            try:
                outcome = RunOutcome(**json.loads(ray.get(ready[0])))
            except Exception as exc:  # the worker died (node lost, out of memory): report, go on
                outcome = RunOutcome(task.name, "failed", task.run_dir,
                                     error=f"the Ray task running it failed: {type(exc).__name__}: {exc}")
            on_done(outcome)
            outcomes.append(outcome)
        return outcomes
