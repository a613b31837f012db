"""Models of every built-in cell for the embedding and export tests (random, non-trivial weights)."""
from __future__ import annotations

import torch

from statesim.config import validate_model
from statesim.model import build_model

#: Every built-in cell, with settings that exercise its less common branches.
CELLS = {
    "linear": {"type": "linear", "hidden_size": 5, "output_size": 3},
    "vanilla": {"type": "vanilla", "hidden_size": 6, "activation": "relu"},
    "vanilla_nobias": {"type": "vanilla", "hidden_size": 6, "bias": False},
    "lstm": {"type": "lstm", "hidden_size": 7, "forget_bias": 1.0},
    "lstm_nobias": {"type": "lstm", "hidden_size": 7, "bias": False},
    "gru": {"type": "gru", "hidden_size": 6},
    "gru_nobias": {"type": "gru", "hidden_size": 6, "bias": False},
    "window": {"type": "window", "window": 4, "output_size": 2},
    "window_mlp": {"type": "window", "window": 3, "output_size": 2, "hidden": [5, 4], "activation": "sigmoid",
                   "bias": True},
}
INPUT = 4


def make_model(registry, cell: dict, *, head: str = "auto", output_size: int | None = None,
               initial_state: dict | None = None, input_size: int = INPUT):
    """A model built through the registry like a scenario's, with every parameter perturbed."""
    data = {"cell": dict(cell), "head": head}
    if initial_state:
        data["initial_state"] = initial_state
    config = validate_model(data, registry)
    model = build_model(registry, config, input_size, output_size)
    with torch.no_grad():  # make biases and heads non-trivial
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()
