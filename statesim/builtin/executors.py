"""Built-in sweep executors ``local``, ``serial`` and ``ray``, registered exactly like a third-party plugin's."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from statesim.hookimpl import hookimpl

if TYPE_CHECKING:
    from statesim.sweep.executors import Executor


def _local(workers: int | None) -> "Executor":
    from statesim.sweep.executors import LocalExecutor

    return LocalExecutor(workers)


def _serial(workers: int | None) -> "Executor":
    from statesim.sweep.executors import SerialExecutor

    return SerialExecutor()


def _ray(workers: int | None) -> "Executor":
    # Imported when chosen: Ray is an optional extra (statesim[ray]); the address comes from RAY_ADDRESS.
    from statesim.sweep_ray import RayExecutor

    return RayExecutor(workers)


@hookimpl
def statesim_sweep_executors() -> dict[str, Callable[[int | None], "Executor"]]:
    """A process pool on this machine, this process, or a Ray cluster."""
    return {"local": _local, "serial": _serial, "ray": _ray}
