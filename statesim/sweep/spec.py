"""A sweep's specification: a scenario file, the grid over its config keys, the seeds, and each run's name."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Iterable

from statesim.errors import StatesimError
from statesim.safepath import default_run_name, name_problem


class SweepError(StatesimError):
    """A sweep specification is invalid."""


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
