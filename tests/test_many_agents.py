"""Many agents in one call (issue 9): a batch of independent agents equals each agent simulated alone."""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from many_agents import cpg_model  # noqa: E402  (the benchmark's own model builder, so both test one thing)

from statesim.embed import as_embedded  # noqa: E402
from statesim.engine import unroll  # noqa: E402


def test_a_batch_of_cpgs_with_different_drives_equals_each_cpg_alone():
    model = cpg_model().double().eval()
    cell = model.step_cell()
    agents, steps = 48, 60
    drives = torch.rand(agents, 2, dtype=torch.float64) * 6
    inputs = drives.unsqueeze(0).expand(steps, -1, -1).contiguous()
    state = {k: v.double() for k, v in cell.random_state(agents, torch.Generator().manual_seed(3)).items()}
    with torch.no_grad():
        batch = unroll(cell, inputs, state).outputs
        for i in (0, 7, 23, 47):
            alone = unroll(cell, inputs[:, i:i + 1], {k: v[i:i + 1] for k, v in state.items()}).outputs
            torch.testing.assert_close(batch[:, i:i + 1], alone, rtol=1e-12, atol=1e-12)
    # The host-side API steps the same batch one tick per call and gives the engine's trajectory (it computes
    # in float32, so both sides run in float32 here).
    model = model.float()
    state32 = {k: v.float() for k, v in state.items()}
    with torch.no_grad():
        reference = unroll(model.step_cell(), inputs.float(), state32).outputs.numpy()
    embedded = as_embedded(model, batch_size=agents)
    embedded.reset(batch_size=agents, initial_state={k: v.numpy() for k, v in state32.items()})
    stepped = np.stack([embedded.step(drives.float().numpy()) for _ in range(steps)])
    np.testing.assert_allclose(stepped, reference, rtol=1e-5, atol=1e-5)
