"""Running a sweep: validate every combination, run the unfinished ones, write the summary."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from statesim.errors import StatesimError
from statesim.sweep.executors import Executor, LocalExecutor, RunOutcome, RunTask, available_cores
from statesim.sweep.spec import SweepError, SweepSpec, overrides_of, run_name
from statesim.sweep.summary import collect_rows, write_summary


@dataclass
class SweepResult:
    """Where the sweep wrote and what happened to each run."""

    out: Path
    outcomes: list[RunOutcome]
    rows: list[dict[str, Any]]
    seconds: float

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def validate_combinations(spec: SweepSpec, host: Any) -> None:
    """Check every combination before starting any: a typo in the grid should cost nothing."""
    from statesim.config import apply_override, validate_data

    problems: dict[str, list[str]] = {}
    combos = spec.combinations()
    for combo in combos:
        data = json.loads(json.dumps(spec.base))
        for assignment in overrides_of(combo):
            apply_override(data, assignment, {}, host.registry)
        try:
            validate_data(data, host.registry, str(spec.file))
        except StatesimError as exc:
            problems.setdefault(str(exc), []).append(" ".join(overrides_of(combo)))
    if problems:
        listed = [f"{message}\n  (in {len(where)} combination(s), e.g. {where[0]})"
                  for message, where in problems.items()]
        raise SweepError(f"{sum(map(len, problems.values()))} of {len(combos)} combinations of the sweep are "
                         f"invalid; nothing was run:\n" + "\n".join(listed[:5]))


def run_sweep(spec: SweepSpec, executor: Executor | None = None, *, host: Any = None,
              echo: Callable[[str], None] = print) -> SweepResult:
    """Validate every combination, run the unfinished ones, then write the summary table and plot."""
    from statesim.fileio import atomic_write_json, atomic_write_text
    from statesim.plugin_manager import build_plugin_host
    from statesim.yamlio import dump_yaml

    executor = executor or LocalExecutor()
    host = host or build_plugin_host()
    validate_combinations(spec, host)
    spec.out.mkdir(parents=True, exist_ok=True)
    base_file = spec.out / "base.yaml"
    atomic_write_text(base_file, f"# {spec.file} without its sweep section; each run applies its grid values\n"
                      + dump_yaml(spec.base))
    combos = spec.combinations()
    threads = max(1, available_cores() // max(1, min(executor.slots, len(combos))))
    tasks = [RunTask(run_name(c), str(base_file), overrides_of(c), str(spec.out / "runs" / run_name(c)), threads)
             for c in combos]
    atomic_write_json(spec.out / "sweep.json", {"file": str(spec.file), "grid": spec.grid, "seeds": spec.seeds,
                                                "executor": executor.name, "runs": [asdict(t) for t in tasks]})
    pending = [t for t in tasks if not (Path(t.run_dir) / "results.json").is_file()]
    echo(f"sweep {spec.name}: {len(tasks)} runs, {len(tasks) - len(pending)} already finished, "
         f"{len(pending)} to run on the '{executor.name}' executor ({executor.slots} at a time)")
    errors = spec.out / "errors"
    started = time.perf_counter()

    def done(outcome: RunOutcome) -> None:
        error_file = errors / f"{outcome.name}.txt"
        if outcome.status == "failed":
            atomic_write_text(error_file, (outcome.error or "") + "\n")
            first = (outcome.error or "").strip().splitlines()[-1:] or [""]
            echo(f"  failed  {outcome.name}: {first[0]}")
        else:
            error_file.unlink(missing_ok=True)
            echo(f"  {outcome.status:7s} {outcome.name} ({outcome.seconds:.1f} s)")

    outcomes = executor.run(pending, done)
    seconds = time.perf_counter() - started
    by_name = {o.name: o for o in outcomes}
    outcomes = [by_name.get(t.name) or RunOutcome(t.name, "skipped", t.run_dir) for t in tasks]
    rows = collect_rows(spec, combos, outcomes)
    write_summary(spec, rows)
    echo(f"summary: {spec.out / 'summary.md'} ({sum(o.status == 'failed' for o in outcomes)} failed, "
         f"{seconds:.1f} s)")
    return SweepResult(spec.out, outcomes, rows, seconds)
