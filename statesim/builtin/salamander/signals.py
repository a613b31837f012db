"""Signal measures for locomotion: frequency, amplitude, offset and phase lag of sampled joint angles.

All functions take numpy arrays sampled every ``dt`` seconds with time on axis 0 and are used alike on
the CPG's and on a learned model's outputs, so both are judged by the same yardstick.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def frequency(signal: np.ndarray, dt: float, *, min_amplitude: float = 1e-3, min_crossings: int = 3) -> float:
    """Oscillation frequency (Hz) from upward mean crossings (at least ``min_crossings``); 0.0 when still."""
    s = np.asarray(signal, dtype=np.float64)
    s = s - s.mean()
    if 0.5 * (s.max() - s.min()) < min_amplitude:
        return 0.0
    # hysteresis of a tenth of the amplitude keeps noise from adding crossings
    band = 0.1 * 0.5 * (s.max() - s.min())
    times: list[float] = []
    armed = False
    for t in range(1, len(s)):
        if s[t] < -band:
            armed = True
        if armed and s[t - 1] < 0 <= s[t]:
            times.append((t - 1 + (-s[t - 1]) / (s[t] - s[t - 1])) * dt)
            armed = False
    if len(times) < max(2, min_crossings):
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def amplitude(signal: np.ndarray) -> float:
    """Half the peak-to-peak excursion (axis 0); for ``A cos(wt) + m`` this is ``A``."""
    s = np.asarray(signal, dtype=np.float64)
    return float(0.5 * (s.max(axis=0) - s.min(axis=0)).mean())


def fourier_phase(signal: np.ndarray, freq: float, dt: float) -> np.ndarray:
    """Phase (rad) of the component at ``freq`` Hz of each column of ``signal [T, K]``."""
    s = np.asarray(signal, dtype=np.float64)
    s = s - s.mean(axis=0)
    t = np.arange(s.shape[0]) * dt
    coeff = (s * np.exp(-2j * math.pi * freq * t)[:, None]).sum(axis=0)
    return np.angle(coeff)


def phase_lags(body: np.ndarray, dt: float, freq: float | None = None) -> np.ndarray:
    """Phase lead of segment k over segment k+1 (rad, in (-pi, pi]) for body angles ``[T, n]``."""
    if freq is None:
        freq = frequency(body[:, 0], dt)
    if freq <= 0:
        return np.full(body.shape[1] - 1, float("nan"))
    phase = fourier_phase(body, freq, dt)
    lag = phase[:-1] - phase[1:]
    return (lag + math.pi) % (2 * math.pi) - math.pi


def mean_offset(body: np.ndarray) -> float:
    """Mean body angle over time and segments (rad): positive bends to the left."""
    return float(np.asarray(body, dtype=np.float64).mean())


def gait_metrics(out: np.ndarray, dt: float, n: int, min_crossings: int = 3) -> dict[str, Any]:
    """Frequency, body amplitude, mean offset, per-segment lags and limb amplitude of outputs ``[T, O]``."""
    body, limbs = out[:, :n], out[:, n:]
    amp = amplitude(body)
    f = frequency(body[:, 0], dt, min_crossings=min_crossings) if amp > 1e-3 else 0.0
    lags = phase_lags(body, dt, f) if f > 0 else np.full(n - 1, np.nan)
    if f > 0:  # average over whole periods so the offset is not biased by a partial cycle
        whole = int(math.floor(len(body) * dt * f) / f / dt)
        offset = mean_offset(body[-whole:]) if whole > 0 else mean_offset(body)
    else:
        offset = mean_offset(body)
    return {"frequency": f, "amplitude": amp, "offset": offset, "lags": lags, "limb_amplitude": amplitude(limbs)}
