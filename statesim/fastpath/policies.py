"""Which path the engine takes: the registered paths, the :class:`Policy` in force, and the decisions it records.

The policy and the decision recorders are context variables held here and nowhere else.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from statesim.fastpath.forms import FastPath, FastPathError

if TYPE_CHECKING:
    from statesim.cell import Cell


#: Steps per compiled call. One call runs this many steps, so guard checks and Python overhead are
#: paid once per chunk and the pointwise work of consecutive steps fuses; compile time grows with it.
COMPILE_CHUNK = 16


# --------------------------------------------------------------------------- registry and policy
def paths() -> list[FastPath]:
    """Every registered fast path, in the order ``auto`` tries them (the ``statesim_fast_paths`` hook's results)."""
    from statesim import extensions

    found: list[FastPath] = []
    for provided in extensions.manager().hook.statesim_fast_paths():
        found.extend(provided or [])
    names = [p.name for p in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice or {"auto", "generic"} & set(names):
        raise FastPathError(f"fast path name(s) {', '.join(twice or sorted({'auto', 'generic'} & set(names)))} are "
                            f"registered twice or reserved (auto, generic); rename one in its plugin's "
                            f"statesim_fast_paths hook.")
    return found


def known_modes() -> list[str]:
    """Valid values of ``model.fast_path``."""
    return ["auto", "generic", *[p.name for p in paths()]]


@dataclass(frozen=True)
class Policy:
    """How the engine picks its path: ``mode`` (auto, generic or a path name) and ``compile``."""

    mode: str = "auto"
    compile: bool = False


_POLICY: ContextVar[Policy] = ContextVar("statesim_fast_path_policy", default=Policy())
_RECORDERS: ContextVar[tuple[dict, ...]] = ContextVar("statesim_fast_path_recorders", default=())


def current_policy() -> Policy:
    """The policy in force here."""
    return _POLICY.get()


@contextmanager
def policy(mode: str | None = "auto", compile: bool | None = None) -> Iterator[Policy]:
    """Use ``mode``/``compile`` for unrolls inside the block (None keeps the surrounding setting)."""
    outer = _POLICY.get()
    mode = outer.mode if mode is None else mode
    if mode not in known_modes():
        raise FastPathError(f"unknown fast path '{mode}'; choose one of {', '.join(known_modes())}.")
    token = _POLICY.set(Policy(mode, outer.compile if compile is None else bool(compile)))
    try:
        yield _POLICY.get()
    finally:
        _POLICY.reset(token)


class scope:  # noqa: N801 - used like the context managers above
    """Policy and decision recorder of one model's forward in one cheap context (see SequenceModel.forward).

    ``mode``/``compile`` None keep the surrounding policy; ``sink`` receives the decisions.
    """

    __slots__ = ("policy", "sink", "tokens")

    def __init__(self, mode: str | None, compile: bool | None, sink: dict) -> None:
        self.policy, self.sink = (mode, compile), sink
        self.tokens: tuple[Any, ...] = ()

    def __enter__(self) -> "scope":
        mode, compile = self.policy
        outer = _POLICY.get()
        token = None
        if (mode is not None and mode != outer.mode) or (compile is not None and compile != outer.compile):
            if mode is not None and mode not in known_modes():
                raise FastPathError(f"unknown fast path '{mode}'; choose one of {', '.join(known_modes())}.")
            token = _POLICY.set(Policy(outer.mode if mode is None else mode,
                                       outer.compile if compile is None else bool(compile)))
        self.tokens = (token, _RECORDERS.set(_RECORDERS.get() + (self.sink,)))
        return self

    def __exit__(self, *exc: Any) -> None:
        policy_token, recorder_token = self.tokens
        _RECORDERS.reset(recorder_token)
        if policy_token is not None:
            _POLICY.reset(policy_token)


@contextmanager
def record_decisions(into: dict | None = None) -> Iterator[dict]:
    """Collect every path decision made inside the block: ``{(cell, path, reason): info}``."""
    sink = {} if into is None else into
    token = _RECORDERS.set(_RECORDERS.get() + (sink,))
    try:
        yield sink
    finally:
        _RECORDERS.reset(token)


def record(cell: "Cell", path: str, reason: str) -> list[dict]:
    """Count one decision in every active recorder; returns their entries (to attach details later)."""
    key = (type(cell).__name__, path, reason)
    infos = []
    for sink in _RECORDERS.get():
        info = sink.setdefault(key, {"calls": 0})
        info["calls"] += 1
        infos.append(info)
    return infos


def summarize(decisions: dict) -> list[dict[str, Any]]:
    """Recorded decisions as JSON-ready rows ``{cell, path, reason, calls[, compile_seconds]}``."""
    return [{"cell": cell, "path": path, "reason": reason, **info}
            for (cell, path, reason), info in decisions.items()]
