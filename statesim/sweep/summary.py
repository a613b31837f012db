"""A sweep's summary: one row per run, rows averaged over seeds, the tables and the comparison plot."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from statesim.sweep.executors import RunOutcome
from statesim.sweep.spec import SweepSpec, _short


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
