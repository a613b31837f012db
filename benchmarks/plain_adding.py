"""The adding task trained by a plain PyTorch script: the reference for `statesim run scenarios/adding.yaml`.

    python benchmarks/plain_adding.py STEPS     # prints {"train_seconds": ...} as JSON

Same data (the scenario's generator and data seed), model (``torch.nn.LSTM(2, 32)`` + a linear head,
forget-gate bias +1), optimizer (Adam, lr 0.003), batch 64 drawn by a seeded permutation, loss (MSE
at the last step) and clipping (global norm 1.0) as the scenario file. It logs the loss every 10 steps,
as the run does, and does nothing else: the time of its loop is what a hand-written script costs.
"""
from __future__ import annotations

import json
import sys
import time

import torch
from torch import nn


def adding_data(length: int, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``[T, N, 2]`` (value, marker) and the sum of the two marked values."""
    values = torch.rand(length, count, generator=generator)
    first = torch.randint(0, length // 2, (count,), generator=generator)
    second = torch.randint(length // 2, length, (count,), generator=generator)
    markers = torch.zeros(length, count)
    rows = torch.arange(count)
    markers[first, rows] = 1.0
    markers[second, rows] = 1.0
    return torch.stack([values, markers], dim=-1), (values[first, rows] + values[second, rows]).unsqueeze(-1)


def main(steps: int, length: int = 50, hidden: int = 32, batch: int = 64, seed: int = 0) -> float:
    """Train for ``steps`` updates; returns the loop's wall time in seconds."""
    torch.manual_seed(seed)
    inputs, targets = adding_data(length, 4096, torch.Generator().manual_seed(1234))
    lstm, head = nn.LSTM(2, hidden), nn.Linear(hidden, 1)
    with torch.no_grad():
        lstm.bias_ih_l0[hidden:2 * hidden] += 1.0
    params = [*lstm.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=0.003)
    order = torch.Generator().manual_seed(seed)
    perm, pos, log = torch.randperm(4096, generator=order), 0, []
    started = time.perf_counter()
    for step in range(steps):
        if pos + batch > len(perm):
            perm, pos = torch.randperm(4096, generator=order), 0
        index = perm[pos:pos + batch]
        pos += batch
        out, _ = lstm(inputs[:, index])
        loss = (head(out[-1]) - targets[index]).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if (step + 1) % 10 == 0:
            log.append(float(loss))
    return time.perf_counter() - started


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else torch.get_num_threads())
    print(json.dumps({"train_seconds": main(int(sys.argv[1]))}))
