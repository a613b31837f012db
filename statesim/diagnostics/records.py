"""Training records: ``metrics.jsonl`` read back, and per-job clipping and non-finite statistics."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl`` (lines cut by a kill are skipped)."""
    records: list[dict[str, Any]] = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if _is_record(record):  # valid JSON that is not a training record (a list, a string step) is skipped
            records.append(record)
    return records


#: Keys of a metrics record that hold numbers; anything else there makes the line unusable. An update record
#: (one with grad_norm) has loss and grad_norm_clipped too.
_NUMERIC_KEYS = ("loss", "grad_norm", "grad_norm_clipped", "lr", "clipped_total", "nonfinite_total", "val_loss")


def _is_record(record: Any) -> bool:
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    return (isinstance(record, dict) and isinstance(record.get("job", "main"), str)
            and isinstance(record.get("step"), int) and not isinstance(record.get("step"), bool)
            and all(number(record[key]) for key in _NUMERIC_KEYS if key in record)
            and ("grad_norm" not in record or ("loss" in record and "grad_norm_clipped" in record)))


def training_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per job: updates, exact fraction of clipped updates, non-finite count, gradient-norm statistics."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if "grad_norm" in record:
            jobs.setdefault(record.get("job", "main"), []).append(record)
    summary = {}
    for job, rows in jobs.items():
        last = max(rows, key=lambda r: r["step"])
        finite = [r["grad_norm"] for r in rows if r["grad_norm"] is not None and math.isfinite(r["grad_norm"])]
        sampled_clipped = sum(bool(r.get("clipped")) for r in rows)
        exact = "clipped_total" in last
        clipped = last["clipped_total"] if exact else sampled_clipped
        updates = last["step"] if exact else len(rows)
        nonfinite = last.get("nonfinite_total", sum(bool(r.get("nonfinite")) for r in rows))
        ordered = sorted(finite)
        summary[job] = {
            "updates": int(last["step"]), "logged_records": len(rows), "clipped_updates": int(clipped),
            "fraction_clipped": clipped / max(updates, 1), "fraction_is_exact": exact,
            "nonfinite_updates": int(nonfinite),
            "grad_norm_median": ordered[len(ordered) // 2] if ordered else None,
            "grad_norm_max": ordered[-1] if ordered else None,
            "grad_norm_clipped_max": max((r["grad_norm_clipped"] for r in rows
                                          if r.get("grad_norm_clipped") is not None
                                          and math.isfinite(r["grad_norm_clipped"])), default=None)}
    return summary
