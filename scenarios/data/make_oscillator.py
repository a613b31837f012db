"""Write ``oscillator.csv``: a damped oscillator driven by a random force, 6 recordings of 200 steps each.

x'' + 2 zeta omega x' + omega^2 x = force(t), integrated exactly per step (zero-order hold on the force)
with the matrix exponential, plus a little measurement noise on the position. Run from the repository root:
``python scenarios/data/make_oscillator.py`` (it overwrites the file with the same bytes).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

OMEGA, ZETA, DT, STEPS, RECORDINGS, NOISE = 1.5, 0.15, 0.1, 200, 6, 0.01


def discretised() -> tuple[np.ndarray, np.ndarray]:
    """The exact one-step map (state [x, v]) of the oscillator under a force held over the step."""
    a = np.array([[0.0, 1.0], [-OMEGA ** 2, -2 * ZETA * OMEGA]])
    b = np.array([[0.0], [1.0]])
    block = torch.linalg.matrix_exp(torch.from_numpy(np.block([[a, b], [np.zeros((1, 3))]]) * DT)).numpy()
    return block[:2, :2], block[:2, 2:]


def main() -> None:
    """Simulate and write the CSV next to this script."""
    rng = np.random.default_rng(7)
    step, push = discretised()
    rows = []
    for n in range(RECORDINGS):
        force = np.repeat(rng.normal(0.0, 1.0, STEPS // 10), 10)  # held for 1 s at a time
        state = np.zeros(2)
        for t in range(STEPS):
            state = step @ state + push[:, 0] * force[t]
            rows.append([f"run{n}", f"{t * DT:.1f}", f"{force[t]:.5f}", f"{state[0] + NOISE * rng.normal():.5f}"])
    with (Path(__file__).parent / "oscillator.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["sequence", "time", "force", "position"])
        writer.writerows(rows)


if __name__ == "__main__":
    main()
