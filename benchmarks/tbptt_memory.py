"""Peak memory of truncated BPTT through statesim's trainer, in a fresh process per measurement.

    python benchmarks/tbptt_memory.py STEPS K [PATH]   # prints {"rss_before": ..., "rss_peak": ..., ...}

An LSTM (2 inputs, 256 units, batch 32) is trained over one batch of ``STEPS``-step sequences in chunks
of ``K`` steps (k1 = k2 = K, one update per chunk). The data is made before the baseline is read, so
``rss_peak - rss_before`` is what training adds: the graph of one chunk (and the batch's copy), which
should not grow with the sequence length. PATH is the engine path (auto or generic).
"""
from __future__ import annotations

import json
import sys


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Make the kernel's peak-RSS counter (VmHWM) restart from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def main(steps: int, k: int, path: str = "auto") -> dict[str, float]:
    import torch

    from statesim.config import BPTTConfig, TrainingConfig
    from statesim.data import DataSplits, SequenceData
    from statesim.model import SequenceModel
    from statesim.builtin.cells import LSTMCell
    from statesim.builtin.initial_states import Zeros
    from statesim.builtin.topologies import Unidirectional
    from statesim.trainer import Trainer

    torch.manual_seed(0)
    batch, hidden = 32, 256
    topology = Unidirectional(2, lambda size: LSTMCell(size, hidden_size=hidden))
    model = SequenceModel(topology, Zeros(topology.state_spec), torch.nn.Linear(hidden, 1))
    model.fast_path = path
    data = SequenceData(torch.randn(steps, batch, 2), torch.randn(steps, batch, 1))
    config = TrainingConfig(steps=steps // k, batch_size=batch, bptt=BPTTConfig(mode="truncated", k1=k, k2=k),
                            log_every=10**9, eval_every=10**9, checkpoint_every=10**9)
    warm = Trainer(model, config.model_copy(update={"steps": 1}))  # load kernels, allocator pools
    warm.fit(DataSplits(SequenceData(data.inputs[:k], data.targets[:k])))
    reset_peak()
    before = _status_kb("VmRSS")
    Trainer(model, config).fit(DataSplits(data))
    peak = _status_kb("VmHWM")
    return {"steps": steps, "k": k, "path": path, "rss_before": before, "rss_peak": peak,
            "added": peak - before, "data_bytes": data.inputs.nbytes + data.targets.nbytes}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "auto")))
