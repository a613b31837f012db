"""Distance, speed and heading of an undulating swimmer, read once per locomotor cycle.

The centre of mass wobbles within each cycle, so it is sampled stroboscopically: at every upward zero
crossing of ``q_1 - q_{n/2+1}`` (joint 1 minus the joint half a body wave behind it; a common offset of all
joints, as in a turn, cancels). Between consecutive samples the swimmer has done one whole cycle, so their
difference is one cycle's net travel: its length / duration is the speed and its direction is the heading.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def cycle_times(signal: np.ndarray, dt: float, hysteresis: float = 0.05) -> np.ndarray:
    """Times (s, from tick 0 at ``dt``) of upward zero crossings of ``signal`` after it was below ``-hysteresis``."""
    times, armed = [], False
    for k in range(1, len(signal)):
        if signal[k] < -hysteresis:
            armed = True
        elif armed and signal[k - 1] < 0 <= signal[k]:
            frac = -signal[k - 1] / (signal[k] - signal[k - 1])
            times.append((k - 1 + frac) * dt)
            armed = False
    return np.asarray(times)


def strobe(com: np.ndarray, times: np.ndarray, dt: float) -> np.ndarray:
    """Centre of mass ``[T, 2]`` (tick k at time k dt) linearly interpolated at ``times`` -> ``[len(times), 2]``."""
    grid = np.arange(len(com)) * dt
    return np.stack([np.interp(times, grid, com[:, 0]), np.interp(times, grid, com[:, 1])], -1) \
        if len(times) else np.zeros((0, 2))


def locomotion(com: np.ndarray, joints: np.ndarray, dt: float, start_s: float = 0.0,
               stop_s: float | None = None) -> dict[str, Any]:
    """Distance, speed and heading between ``start_s`` and ``stop_s`` from a COM track ``[T, 2]`` and joints ``[T, n]``.

    ``distance_m``: net displacement between the first and last cycle sample in the window; ``path_m``:
    summed per-cycle travel; ``speed_mps``: path / time; ``heading_deg``: direction of the last cycle's
    travel (0 = +x, counter-clockwise positive = left); ``heading_change_deg``: unwrapped turn from the first
    to the last cycle; ``turn_rate_deg_s``: least-squares slope of the per-cycle heading against time.
    Fewer than two cycles (a body at rest): the plain COM displacement and no heading.
    """
    n = joints.shape[1]
    stop_s = len(com) * dt if stop_s is None else stop_s
    times = cycle_times(joints[:, 0] - joints[:, n // 2], dt)
    times = times[(times >= start_s) & (times <= stop_s)]
    a, b = int(round(start_s / dt)), min(len(com), int(round(stop_s / dt)))
    if len(times) < 2:
        moved = float(np.linalg.norm(com[b - 1] - com[a]))
        return {"distance_m": moved, "path_m": moved, "speed_mps": moved / max((b - 1 - a) * dt, dt),
                "heading_deg": None, "heading_change_deg": None, "turn_rate_deg_s": None, "cycles": 0,
                "frequency_hz": 0.0}
    points = strobe(com, times, dt)
    steps = np.diff(points, axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    headings = np.unwrap(np.arctan2(steps[:, 1], steps[:, 0]))
    mid = (times[1:] + times[:-1]) / 2
    rate = float(np.polyfit(mid, headings, 1)[0]) if len(headings) >= 2 else 0.0
    span = times[-1] - times[0]
    return {"distance_m": float(np.linalg.norm(points[-1] - points[0])), "path_m": float(lengths.sum()),
            "speed_mps": float(lengths.sum() / span),
            "heading_deg": math.degrees(math.atan2(steps[-1, 1], steps[-1, 0])),
            "heading_change_deg": math.degrees(headings[-1] - headings[0]), "turn_rate_deg_s": math.degrees(rate),
            "cycles": int(len(times) - 1), "frequency_hz": float((len(times) - 1) / span)}


def rounded(metrics: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    """The same dict with floats rounded for results.json."""
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in metrics.items()}
