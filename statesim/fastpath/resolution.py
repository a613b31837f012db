"""Resolving a stepper's path under the policy in force, once, and explaining the choice without running it."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from statesim.fastpath.forms import Decline, FastPath, FastPathError, Prepared, Request, Result, State
from statesim.fastpath.policies import _POLICY, known_modes, paths, policy, record

if TYPE_CHECKING:
    from statesim.cell import Cell
    from statesim.engine import Stepper


def _prepare(path: FastPath, stepper: "Stepper", request: Request) -> "Prepared | str":
    if request.forces_state:
        return "a clamp on a state part needs every step"
    if request.observed:
        return "every step is observed (on_step)"
    return path.prepare(stepper, request)


class Resolved:
    """The paths a :class:`statesim.engine.Stepper` may take, prepared once; :meth:`run` tries them in order."""

    __slots__ = ("cell", "mode", "prepared", "reasons")

    def __init__(self, cell: "Cell", mode: str, prepared: list[tuple[FastPath, Prepared]], reasons: list[str]) -> None:
        self.cell, self.mode, self.prepared, self.reasons = cell, mode, prepared, reasons

    def run(self, inputs: Tensor, state: State, lengths: Tensor | None) -> tuple[Result | None, str]:
        """``(result, path name)`` from the first path that runs, or ``(None, why the generic loop runs)``."""
        if self.mode == "generic":
            return None, "fast_path: generic"
        reasons = list(self.reasons)
        for path, (run, chosen) in self.prepared:
            if inputs.shape[0] == 0:
                why = "the sequence is empty"
            else:
                try:
                    result = run(inputs, state, lengths)
                except Decline as exc:
                    why = str(exc)
                else:
                    infos = record(self.cell, path.name, chosen)
                    if infos and hasattr(path, "details"):
                        details = path.details(self.cell)
                        for info in infos:
                            info.update(details)
                    return result, path.name
            reasons.append(f"{path.name}: {why}")
            self._demanded(why)
        return None, "; ".join(reasons) or "no fast path is registered"

    def _demanded(self, why: str) -> None:
        if self.mode != "auto":
            raise FastPathError(f"model.fast_path is '{self.mode}' but {type(self.cell).__name__} cannot take it "
                                f"here: {why}. Use fast_path: auto to fall back to the generic loop.")


def resolve(stepper: "Stepper") -> Resolved:
    """Prepare the paths ``stepper`` may take under its pinned path or the policy in force (once per stepper)."""
    # No path depends on whether lengths are given: every one takes them when it runs.
    mode = stepper.path or _POLICY.get().mode
    if mode not in ("auto", "generic") and mode not in known_modes():
        raise FastPathError(f"unknown fast path '{mode}'; choose one of {', '.join(known_modes())}.")
    resolved = Resolved(stepper.cell, mode, [], [])
    if mode == "generic":
        return resolved
    request = Request(stepper.forcing.forces_state, stepper.return_states, stepper.on_step is not None)
    for path in paths():
        if mode != "auto" and path.name != mode:
            continue
        prepared = _prepare(path, stepper, request)
        if isinstance(prepared, str):
            resolved.reasons.append(f"{path.name}: {prepared}")
            resolved._demanded(prepared)
        else:
            resolved.prepared.append((path, prepared))
    return resolved


def explain(cell: "Cell", *, forces_state: bool = False, return_states: bool = False) -> tuple[str, str]:
    """``(path, reason)`` the engine would take for ``cell`` under the current policy, without running it.

    Data-dependent declines (a sequence of length 0, fewer steps than one compiled chunk) cannot be foreseen;
    the stepper records those when it runs.
    """
    from statesim.engine import Stepper

    pol = _POLICY.get()
    if pol.mode == "generic":
        return "generic", "fast_path: generic"
    stepper = Stepper(cell, return_states=return_states)
    request = Request(forces_state, return_states, False)
    reasons = []
    for path in paths():
        if pol.mode != "auto" and path.name != pol.mode:
            continue
        prepared = _prepare(path, stepper, request)
        if not isinstance(prepared, str):
            return path.name, prepared[1]
        reasons.append(f"{path.name}: {prepared}")
    return "generic", "; ".join(reasons) or "no fast path is registered"


def plan(model: Any, **request: bool) -> list[dict[str, str]]:
    """What :func:`explain` says for every outermost cell of ``model`` under the model's own policy."""
    from statesim.cell import Cell

    cells: list[Cell] = []
    inner: set[int] = set()
    for module in model.modules():
        if isinstance(module, Cell) and id(module) not in inner:
            cells.append(module)
            inner.update(id(m) for m in module.modules() if m is not module)
    rows, seen = [], set()
    with policy(getattr(model, "fast_path", None), getattr(model, "compile_steps", None)):
        for cell in cells:
            path, reason = explain(cell, **request)
            key = (type(cell).__name__, path, reason)
            if key not in seen:
                seen.add(key)
                rows.append({"cell": key[0], "path": path, "reason": reason})
    return rows
