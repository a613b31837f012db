"""A model without trainable parameters (the salamander CPG: buffers only) builds, starts and embeds."""
from __future__ import annotations

import numpy as np
import torch

import statesim.embed
from statesim.config import validate_model
from statesim.engine import unroll
from statesim.model import build_model


def test_parameter_free_model_gives_its_initial_state_and_steps_embedded_like_the_engine(builtin_host):
    config = validate_model({"cell": {"type": "salamander_cpg"}, "head": "none"}, builtin_host.registry)
    model = build_model(builtin_host.registry, config, 2, None)
    assert next(model.parameters(), None) is None
    state = model.initial(3)  # zeros policy: dtype and device come from the cell's buffers
    assert all(v.dtype == model.step_cell().W.dtype and not v.any() for v in state.values())
    sim = statesim.embed.as_embedded(model, batch_size=3)
    theta = np.random.default_rng(0).uniform(0, 6.28, (3, 20))
    sim.reset(initial_state={"theta": theta, "r": np.full((3, 20), 0.3), "dr": np.zeros((3, 20))})
    start = {k: torch.as_tensor(v) for k, v in sim.get_state().items()}
    drives = torch.tensor([[4.0, 4.0], [2.0, 2.5], [0.5, 0.5]]).expand(30, 3, 2)
    stepped = np.stack([sim.step(d.numpy()) for d in drives])
    np.testing.assert_allclose(stepped, unroll(model.step_cell(), drives, start).outputs.numpy(), atol=1e-5)


def test_one_device_and_dtype_rule_covers_parameter_free_models(builtin_host):
    """Parameters first, then buffers, then the defaults: the model, its cell's zero state and the embedder agree."""
    from statesim.builtin.cells import LSTMCell
    from statesim.builtin.salamander.cpg import SalamanderCPG
    from statesim.cell import device_and_dtype

    cpg = SalamanderCPG(2).to(torch.float64)
    assert device_and_dtype(cpg) == (torch.device("cpu"), torch.float64)
    assert all(v.dtype == torch.float64 for v in cpg.zero_state(2).values())  # its buffers' dtype, not the default
    assert device_and_dtype(LSTMCell(2, 3).to(torch.float64))[1] == torch.float64
    assert device_and_dtype(torch.nn.Identity()) == (torch.device("cpu"), torch.get_default_dtype())
    config = validate_model({"cell": {"type": "salamander_cpg"}, "head": "none"}, builtin_host.registry)
    model = build_model(builtin_host.registry, config, 2, None).to(torch.float64)
    sim = statesim.embed.as_embedded(model, batch_size=2)
    assert (sim.device, sim.dtype) == device_and_dtype(model) == (torch.device("cpu"), torch.float64)
    assert all(v.dtype == np.float64 for v in sim.get_state().values())
