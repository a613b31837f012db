"""``statesim sweep``: run every combination of a grid of config values, each as an ordinary run folder.

A sweep is a scenario file plus a grid, given on the command line (``--grid training.lr=0.01,0.003``,
``--seeds 3``) or in a ``sweep:`` section of the file::

    sweep:
      grid:                                   # dotted config key -> values (YAML values)
        model.cell.type: [vanilla, lstm]
        training.clip.max_norm: [null, 1.0]
      seeds: 2                                # N seeds (base seed, +1, ...) or an explicit list
      metrics: [test_mse, steps_to_solve]     # results.json keys in the table (default: every scalar)
      plot: {x: model.cell.type, y: [test_mse], hue: training.clip.max_norm}
      out: runs/sweeps/my_sweep               # the sweep folder (default: runs/sweeps/<name>)

Each combination runs through :func:`statesim.run.execute` into ``<sweep>/runs/<combination>/``. A run
that fails is recorded (``<sweep>/errors/<combination>.txt``) and the others go on; running the sweep
again skips runs that have ``results.json`` and resumes unfinished ones from their checkpoints. The
sweep writes ``summary.csv``, ``summary.md`` (per run, and averaged over seeds) and ``comparison.png``.

Runs go to an :class:`Executor`: ``local`` (a process pool, parallel up to the cores) by default or
``serial`` (in this process), or ``ray`` (:mod:`statesim.sweep_ray`, a Ray cluster or local instance);
each implements the same two-method interface and is registered through the ``statesim_sweep_executors``
hook (the built-ins by :mod:`statesim.builtin.executors`, as a plugin's would be).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Callable, Iterable

from statesim.errors import StatesimError
from statesim.safepath import default_run_name, name_problem


class SweepError(StatesimError):
    """A sweep specification is invalid."""


# --------------------------------------------------------------------------- the specification
@dataclass
class SweepSpec:
    """A scenario file, the grid over its config keys, the seeds and where the sweep writes."""

    file: Path
    base: dict[str, Any]  # the scenario document without its sweep section
    grid: dict[str, list[Any]]
    seeds: list[int]
    out: Path
    name: str
    metrics: list[str] | None = None
    plot: dict[str, Any] = field(default_factory=dict)

    def combinations(self) -> list[dict[str, Any]]:
        """Every assignment of grid values, then seed, in grid order."""
        keys = list(self.grid)
        combos = []
        for values in product(*(self.grid[k] for k in keys)):
            for seed in self.seeds:
                combos.append({**dict(zip(keys, values)), "seed": seed})
        return combos


def parse_grid_arg(text: str) -> tuple[str, list[Any]]:
    """``key=v1,v2,...`` with each value read as YAML (``null``, numbers, names)."""
    from statesim.yamlio import parse_yaml

    if "=" not in text:
        raise SweepError(f"--grid '{text}' must look like key.path=value1,value2 (e.g. training.lr=0.01,0.003).")
    key, raw = text.split("=", 1)
    values = [parse_yaml(v.strip(), f"--grid {key}")[0] for v in raw.split(",") if v.strip()]
    if not key.strip() or not values:
        raise SweepError(f"--grid '{text}' names no key or no values.")
    return key.strip(), values


def load_sweep(file: str | Path, grid: Iterable[str] = (), seeds: int | None = None, out: str | Path | None = None,
               overrides: Iterable[str] = ()) -> SweepSpec:
    """Read a scenario file's ``sweep:`` section and merge the command line's grid, seeds and output folder."""
    from statesim.config import apply_override
    from statesim.yamlio import load_yaml

    file = Path(file)
    data, lines = load_yaml(file)
    if not isinstance(data, dict):
        raise SweepError(f"{file}: a sweep file is a scenario file (a mapping) with an optional `sweep:` section.")
    section = data.pop("sweep", None) or {}
    if not isinstance(section, dict):
        raise SweepError(f"{file}: `sweep:` must be a mapping with keys grid, seeds, metrics, plot, out.")
    unknown = set(section) - {"grid", "seeds", "metrics", "plot", "out"}
    if unknown:
        raise SweepError(f"{file}: unknown key(s) {sorted(unknown)} in `sweep:`; allowed: grid, seeds, metrics, "
                         f"plot, out.")
    for assignment in overrides:
        apply_override(data, assignment, lines)
    spec_grid = dict(section.get("grid") or {})
    for key, values in spec_grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{file}: sweep.grid.{key} must be a non-empty list of values.")
    for text in grid:
        key, values = parse_grid_arg(text)
        spec_grid[key] = values
    if "seed" in spec_grid:
        raise SweepError("sweep over seeds with --seeds N (or sweep.seeds), not a grid on `seed`.")
    base_seed = int(data.get("seed", 0) or 0)
    raw_seeds = seeds if seeds is not None else section.get("seeds", 1)
    if isinstance(raw_seeds, list):
        seed_list = [int(s) for s in raw_seeds]
    elif isinstance(raw_seeds, int) and raw_seeds > 0:
        seed_list = [base_seed + i for i in range(raw_seeds)]
    else:
        raise SweepError(f"seeds must be a positive count or a list of seeds, got {raw_seeds!r}.")
    name = str(data.get("name") or default_run_name(file))
    problem = name_problem(name)
    if problem is not None:  # it names the sweep's folder (runs/sweeps/<name>) and every run in it
        raise SweepError(f"{file}: `name: {name!r}` becomes a folder name, and {problem}; use letters, digits "
                         f"and '_-.' only, e.g. name: lstm_sweep.")
    data.setdefault("name", name)
    target = Path(out) if out is not None else Path(
        section.get("out") or Path(data.get("output", {}).get("dir", "runs")) / "sweeps" / name)
    metrics = section.get("metrics")
    return SweepSpec(file, data, spec_grid, seed_list, target, name, list(metrics) if metrics else None,
                     dict(section.get("plot") or {}))


def _short(key: str) -> str:
    return key.split(".")[-1]


def run_name(combo: dict[str, Any]) -> str:
    """A readable, stable folder name for one combination (with a hash, so different grids never collide)."""
    parts = [f"{_short(k)}={'none' if v is None else v}" for k, v in combo.items()]
    readable = re.sub(r"[^A-Za-z0-9._=-]+", "-", "_".join(parts))[:100]
    digest = hashlib.sha256(json.dumps(combo, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


def overrides_of(combo: dict[str, Any]) -> list[str]:
    """``--set`` assignments of one combination (values as JSON, which YAML reads back unchanged)."""
    return [f"{k}={json.dumps(v)}" for k, v in combo.items()]


# --------------------------------------------------------------------------- one run
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


# --------------------------------------------------------------------------- executors
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


# --------------------------------------------------------------------------- running a sweep
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


# --------------------------------------------------------------------------- the summary
def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def collect_rows(spec: SweepSpec, combos: list[dict[str, Any]], outcomes: list[RunOutcome]) -> list[dict[str, Any]]:
    """One row per run: its grid values, seed, status and the chosen results."""
    rows = []
    for combo, outcome in zip(combos, outcomes):
        row: dict[str, Any] = {"run": outcome.name, **combo}
        results_file = Path(outcome.run_dir) / "results.json"
        if results_file.is_file():
            results = json.loads(results_file.read_text(encoding="utf-8"))
            row["status"] = "ok"
            keys = spec.metrics or [k for k, v in results.items() if _scalar(v) and k not in ("scenario", "seed")]
            for key in keys:
                row[key] = results.get(key)
            row.update(_training_columns(Path(outcome.run_dir), results))
        else:
            row["status"] = "failed"
            row["error"] = (outcome.error or "no results.json").strip().splitlines()[-1][:200]
        rows.append(row)
    return rows


def _training_columns(run_dir: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Training time (results.json or run.json) and, from metrics.jsonl, clipping and gradient-norm statistics."""
    from statesim.diagnostics.records import read_metrics, training_summary

    seconds = results.get("train_seconds")
    if seconds is None and (run_dir / "run.json").is_file():
        seconds = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("train_seconds")
    columns: dict[str, Any] = {"train_seconds": round(sum((seconds or {}).values()), 2) if seconds else None}
    jobs = training_summary(read_metrics(run_dir / "metrics.jsonl"))
    if jobs:
        updates = sum(j["updates"] for j in jobs.values())
        columns["fraction_clipped"] = round(sum(j["clipped_updates"] for j in jobs.values()) / max(updates, 1), 4)
        norms = [j["grad_norm_max"] for j in jobs.values() if j["grad_norm_max"] is not None]
        columns["grad_norm_max"] = max(norms) if norms else None
    return columns


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


def aggregate(spec: SweepSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows averaged over seeds: numeric metrics as mean (± std), booleans as the fraction true."""
    keys = list(spec.grid)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(json.dumps(row.get(k)) for k in keys), []).append(row)
    metric_cols = [c for c in _columns(rows) if c not in {"run", "seed", "status", "error", *keys}]
    out = []
    for members in groups.values():
        agg: dict[str, Any] = {k: members[0].get(k) for k in keys}
        agg["runs"] = f"{sum(m['status'] == 'ok' for m in members)}/{len(members)} ok"
        for col in metric_cols:
            values = [m.get(col) for m in members if m.get("status") == "ok"]
            if values and all(isinstance(v, bool) for v in values):
                agg[col] = f"{sum(bool(v) for v in values)}/{len(values)}"
            elif values and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                for v in values if v is not None):
                present = [float(v) for v in values if v is not None and math.isfinite(float(v))]
                if not present:
                    agg[col] = None
                elif len(present) == 1 and len(values) == 1:
                    agg[col] = present[0]
                else:
                    mean = sum(present) / len(present)
                    std = (sum((v - mean) ** 2 for v in present) / max(len(present) - 1, 1)) ** 0.5
                    missing = len(values) - len(present)
                    agg[col] = f"{mean:.4g} ± {std:.2g}" + (f" ({missing} none)" if missing else "")
            elif values:
                agg[col] = values[0] if len(set(map(str, values))) == 1 else "/".join(map(_fmt, values))
        out.append(agg)
    return out


def write_summary(spec: SweepSpec, rows: list[dict[str, Any]]) -> None:
    """``summary.csv`` (every run), ``summary.md`` (per run and per combination) and ``comparison.png``."""
    from statesim.fileio import atomic_write_text, save_figure

    columns = _columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    atomic_write_text(spec.out / "summary.csv", buffer.getvalue())
    text = [f"# Sweep `{spec.name}`", "", f"Scenario file: `{spec.file}`; grid: "
            + "; ".join(f"`{k}` ∈ {v}" for k, v in spec.grid.items()) + f"; seeds: {spec.seeds}.", ""]
    if len(spec.seeds) > 1:
        agg = aggregate(spec, rows)
        text += ["## Averaged over seeds", "", markdown_table(agg, _columns(agg)), ""]
    text += ["## Every run", "", markdown_table(rows, [c for c in columns if c != "run"] + ["run"]), ""]
    atomic_write_text(spec.out / "summary.md", "\n".join(text))
    if any(r["status"] == "ok" for r in rows):
        save_figure(plot_comparison(spec, rows), spec.out / "comparison.png")


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_comparison(spec: SweepSpec, rows: list[dict[str, Any]]) -> Any:
    """Each metric against the ``x`` grid key, one line per ``hue`` value, one column per ``facet`` value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(spec.grid)
    x_key = spec.plot.get("x") or (keys[0] if keys else "seed")
    hue_key = spec.plot.get("hue") or next((k for k in keys if k != x_key), None)
    facet_key = spec.plot.get("facet") or next((k for k in keys if k not in (x_key, hue_key)), None)
    ok = [r for r in rows if r["status"] == "ok"]
    metrics = spec.plot.get("y") or spec.metrics or [
        c for c in _columns(ok) if c not in {"run", "seed", "status", *keys, "train_seconds", "fraction_clipped",
                                             "grad_norm_max"}
        and _numeric([r.get(c) for r in ok if r.get(c) is not None]) and any(r.get(c) is not None for r in ok)][:3]
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    facets = list(dict.fromkeys(json.dumps(r.get(facet_key)) for r in rows)) if facet_key else ["null"]
    hues = list(dict.fromkeys(json.dumps(r.get(hue_key)) for r in rows)) if hue_key else ["null"]
    xs = list(dict.fromkeys(json.dumps(r.get(x_key)) for r in rows))
    x_values = [json.loads(x) for x in xs]
    numeric_x = _numeric(x_values)
    fig, axes = plt.subplots(len(metrics), len(facets), figsize=(4.2 * len(facets), 3.2 * len(metrics)),
                             squeeze=False)
    for i, metric in enumerate(metrics):
        for j, facet in enumerate(facets):
            ax = axes[i][j]
            for h, hue in enumerate(hues):
                points = []
                for x_index, x in enumerate(xs):
                    vals = [r.get(metric) for r in ok if json.dumps(r.get(x_key)) == x
                            and (not hue_key or json.dumps(r.get(hue_key)) == hue)
                            and (not facet_key or json.dumps(r.get(facet_key)) == facet)]
                    nums = [float(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)
                            and math.isfinite(float(v))]
                    if nums:
                        pos = x_values[x_index] if numeric_x else x_index
                        points.append((pos, sum(nums) / len(nums), min(nums), max(nums)))
                if points:
                    px, py, lo, hi = zip(*points)
                    ax.errorbar(px, py, yerr=[[a - b for a, b in zip(py, lo)], [b - a for a, b in zip(py, hi)]],
                                marker="o", capsize=3, color=f"C{h}",
                                label=f"{_short(hue_key)}={json.loads(hue)}" if hue_key else None)
            if not numeric_x:
                ax.set_xticks(range(len(xs)), [str(v) for v in x_values])
            positive = [v for v in (r.get(metric) for r in ok) if isinstance(v, (int, float)) and v]
            if positive and min(positive) > 0 and max(positive) / min(positive) > 50:
                ax.set_yscale("log")
            ax.set(xlabel=x_key, ylabel=metric,
                   title=f"{facet_key}={json.loads(facet)}" if facet_key else "")
            if hue_key and i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"sweep {spec.name} (mean over seeds, bars: min-max; missing points: none/failed)", fontsize=9)
    fig.tight_layout()
    return fig
