"""The embedding API: stepping equals the engine's unroll for every built-in cell, state and forcing control,
loading a finished run without a trainer."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from _embed_models import CELLS, INPUT, make_model
from statesim.embed import EmbedError, EmbeddedModel, load
from statesim.errors import CheckpointError, ConfigError
from statesim.forcing import Clamp, Forcing
from statesim.model import build_model
from statesim.runfolder import load_model


def random_state(spec, batch, gen):
    return {k: torch.randn((batch, *s), generator=gen) for k, s in spec.items()}


@pytest.mark.parametrize("fast", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("head", ["none", "linear"])
@pytest.mark.parametrize("name", list(CELLS))
def test_step_equals_engine_unroll(builtin_host, name, head, fast):
    """Stepping tick by tick gives the outputs and final state of one engine unroll over the same inputs."""
    model = make_model(builtin_host.registry, CELLS[name], head=head, output_size=3)
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(25, 3, INPUT, generator=gen)
    state0 = random_state(model.state_spec, 3, gen)
    with torch.no_grad():
        truth = model(inputs, state0)
    sim = EmbeddedModel(model, batch_size=3, fast=fast)
    assert sim.fast == fast
    sim.set_state(state0)
    outputs = sim.rollout(inputs.numpy())
    assert isinstance(outputs, np.ndarray) and outputs.dtype == np.float32
    np.testing.assert_allclose(outputs, truth.outputs.numpy(), atol=1e-5, rtol=0)
    for part, value in sim.get_state().items():
        np.testing.assert_allclose(value, truth.final_state[part].numpy(), atol=1e-5, rtol=0)
    assert sim.t == 25


@pytest.mark.parametrize("name", list(CELLS))
def test_numpy_kernel_equals_forward(builtin_host, name):
    """The contract's NumPy step reproduces Cell.forward on one step, and leaves its arguments untouched."""
    cell = make_model(builtin_host.registry, CELLS[name], head="none").step_cell()
    gen = torch.Generator().manual_seed(2)
    x, state = torch.randn(5, INPUT, generator=gen), random_state(cell.state_spec, 5, gen)
    with torch.no_grad():
        y, new = cell(x, state)
    x_np, state_np = x.numpy().copy(), {k: v.numpy().copy() for k, v in state.items()}
    y_np, new_np = cell.numpy_step()(x_np, state_np)
    np.testing.assert_allclose(y_np, y.numpy(), atol=1e-6, rtol=0)
    for part in new:
        np.testing.assert_allclose(new_np[part], new[part].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(x_np, x.numpy())
    for part in state:
        np.testing.assert_array_equal(state_np[part], state[part].numpy())


@pytest.mark.parametrize("fast", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("name", ["lstm", "gru", "linear", "vanilla"])
def test_step_forcing_equals_engine_forcing(builtin_host, name, fast):
    """Clamps set at step time (one step, a few steps, until released) equal the engine's forcing windows."""
    model = make_model(builtin_host.registry, CELLS[name], head="linear", output_size=2)
    gen = torch.Generator().manual_seed(3)
    inputs = torch.randn(20, 2, INPUT, generator=gen)
    ramp = lambda t: 0.1 * t  # noqa: E731 - a schedule of the global step index
    engine_forcing = Forcing([Clamp("input", [2.0, -1.0], [0, 3], 4, 5),
                              Clamp("h", 0.5, [1], 6, 9),
                              Clamp("input", ramp, [1], 10, 16)])
    with torch.no_grad():
        truth = model(inputs, forcing=engine_forcing)
        free = model(inputs)
    assert not torch.allclose(truth.outputs[4:], free.outputs[4:], atol=1e-3)  # the clamps do act
    sim = EmbeddedModel(model, batch_size=2, fast=fast)
    outputs = []
    for t, x_t in enumerate(inputs.numpy()):
        if t == 4:
            sim.force("input", [2.0, -1.0], units=[0, 3])  # this step only (steps=1)
        if t == 6:
            sim.force("h", 0.5, units=[1], steps=3)
        if t == 10:
            handle = sim.force("input", ramp, units=[1], steps=None)
        if t == 16:
            sim.release(handle)
        outputs.append(sim.step(x_t))
    np.testing.assert_allclose(np.stack(outputs), truth.outputs.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(sim.get_state("h"), truth.final_state["h"].numpy(), atol=1e-5, rtol=0)


def test_state_save_restore_overwrite(builtin_host):
    """Snapshots restore exactly; overwriting one agent's part changes only that agent; reads are copies."""
    model = make_model(builtin_host.registry, CELLS["lstm"], head="none")
    sim = EmbeddedModel(model, batch_size=3)
    xs = np.random.default_rng(0).standard_normal((10, 3, INPUT)).astype(np.float32)
    sim.rollout(xs[:3])
    snap = sim.save_state()
    first = sim.rollout(xs[3:])
    sim.restore_state(snap)
    assert sim.t == 3
    np.testing.assert_array_equal(sim.rollout(xs[3:]), first)

    h = sim.get_state("h")
    h[:] = 123.0  # a copy: the model's state is unaffected
    assert not np.any(sim.get_state("h") == 123.0)
    y = sim.step(xs[0])
    y[:] = 7.0  # the returned output is the caller's to keep
    assert not np.any(sim.get_state("h") == 7.0)

    before = sim.get_state()
    sim.set_state("c", np.full(7, 2.0), agents=[1])
    after = sim.get_state()
    np.testing.assert_array_equal(after["c"][1], np.full(7, 2.0, np.float32))
    np.testing.assert_array_equal(after["c"][[0, 2]], before["c"][[0, 2]])
    np.testing.assert_array_equal(after["h"], before["h"])

    # Stepping from an overwritten state equals the engine from that state.
    state = {k: torch.from_numpy(v) for k, v in sim.get_state().items()}
    with torch.no_grad():
        truth = model(torch.from_numpy(xs[:4]), state)
    np.testing.assert_allclose(sim.rollout(xs[:4]), truth.outputs.numpy(), atol=1e-5, rtol=0)


def test_reset_policies_and_agents(builtin_host):
    """reset uses the model's policy, any registered policy by name or spec, explicit values, or chosen agents."""
    model = make_model(builtin_host.registry, CELLS["gru"], head="none", initial_state={"type": "learned"})
    learned = model.initial_state.values["h"]
    sim = EmbeddedModel(model, batch_size=2, registry=builtin_host.registry)
    np.testing.assert_array_equal(sim.get_state("h"), np.stack([learned.detach().numpy()] * 2))

    sim.reset(batch_size=4, initial_state={"type": "random", "scale": 2.0, "seed": 5})
    expected = torch.randn((4, 6), generator=torch.Generator().manual_seed(5)) * 2.0
    np.testing.assert_allclose(sim.get_state("h"), expected.numpy(), atol=1e-6)
    assert sim.batch_size == 4 and sim.t == 0

    sim.step(np.ones((4, INPUT)))
    before = sim.get_state("h")
    sim.reset(initial_state="zeros", agents=[2])
    after = sim.get_state("h")
    np.testing.assert_array_equal(after[2], np.zeros(6, np.float32))
    np.testing.assert_array_equal(after[[0, 1, 3]], before[[0, 1, 3]])
    assert sim.t == 1  # a partial reset keeps the clock

    sim.reset(batch_size=1, initial_state={"h": np.arange(6.0)})
    np.testing.assert_array_equal(sim.get_state("h"), np.arange(6.0, dtype=np.float32)[None])
    with pytest.raises(EmbedError, match="nope"):
        sim.reset(initial_state="nope")
    with pytest.raises(EmbedError, match="unknown state parts"):
        sim.reset(initial_state={"z": 1.0})


@pytest.mark.parametrize("fast", [True, False], ids=["numpy", "torch"])
def test_torch_and_single_agent_io(builtin_host, fast):
    """Tensors in give tensors out; one agent may pass a 1-D input; bad shapes name what was expected."""
    model = make_model(builtin_host.registry, CELLS["lstm"], head="linear", output_size=2)
    sim = EmbeddedModel(model, batch_size=1, fast=fast)
    x = torch.randn(INPUT, dtype=torch.float64)
    y = sim.step(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2,) and not y.requires_grad
    y_np = sim.step([0.0] * INPUT)
    assert isinstance(y_np, np.ndarray) and y_np.shape == (2,)
    with pytest.raises(EmbedError, match=r"\[1, 4\]"):
        sim.step(np.zeros((2, INPUT)))
    with pytest.raises(EmbedError, match="not a state part"):
        sim.force("q", 1.0)
    with pytest.raises(EmbedError, match="cannot force"):
        sim.force("input", 1.0, units=[9])


def test_thread_safe_per_instance(builtin_host):
    """Concurrent steps on one instance are serialised: the result is that of the same number of sequential steps."""
    model = make_model(builtin_host.registry, CELLS["lstm"], head="none")
    x = np.full((2, INPUT), 0.3, np.float32)
    sim = EmbeddedModel(model, batch_size=2)

    def work():
        for _ in range(200):
            sim.step(x)
            sim.get_state()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reference = EmbeddedModel(model, batch_size=2, fast=False)
    reference.rollout(np.broadcast_to(x, (800, 2, INPUT)))
    assert sim.t == 800
    np.testing.assert_allclose(sim.get_state("c"), reference.get_state("c"), atol=1e-5)


# --------------------------------------------------------------------------- loading finished runs
@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory) -> Path:
    """A finished (tiny) run of the linear_system scenario with an LSTM and a head."""
    from statesim.run import execute

    out = tmp_path_factory.mktemp("runs") / "lstm"
    execute("scenarios/linear_system.yaml",
            ["training.steps=4", "training.checkpoint_every=2", "scenario.steps=20", "scenario.train_sequences=8",
             "scenario.test_sequences=4", "scenario.impulse_steps=5", "output.plots=false",
             "model={cell: {type: lstm, hidden_size: 5}, head: linear}"], out=out, echo=lambda m: None)
    return out


def _checkpoint_model(builtin_host, sidecar: Path):
    """Independent rebuild: the model from the run's config, weights straight from the safetensors file."""
    from safetensors.torch import load_file

    from statesim.config import load_config

    config = load_config(sidecar.parents[2] / "config.yaml", builtin_host.registry)
    model = build_model(builtin_host.registry, config.model, 2, 2)
    tensors = load_file(sidecar.with_suffix(".safetensors"))
    model.load_state_dict({k.removeprefix("/model/"): v for k, v in tensors.items() if k.startswith("/model/")})
    return model.eval()


def test_load_run_folder_matches_checkpoint(lstm_run, builtin_host):
    """load(run) rebuilds the trained model from its newest checkpoint and steps like the engine."""
    sim = load(lstm_run, registry=builtin_host.registry)
    sidecar = sorted((lstm_run / "checkpoints" / "main").glob("step_*.json"))[-1]
    assert sim.source == sidecar and json.loads(sidecar.read_text())["step"] == 4
    truth_model = _checkpoint_model(builtin_host, sidecar)
    inputs = torch.randn(30, 1, 2)
    with torch.no_grad():
        truth = truth_model(inputs)
    np.testing.assert_allclose(sim.rollout(inputs.numpy()), truth.outputs.numpy(), atol=1e-5, rtol=0)
    # A checkpoint file works as well as the run folder, and an older step loads older weights.
    older = sorted((lstm_run / "checkpoints" / "main").glob("step_*.json"))[0]
    model, info = load_model(older.with_suffix(".safetensors"), registry=builtin_host.registry)
    assert info.step == 2
    assert not torch.equal(model.head.weight, truth_model.head.weight)


def test_load_errors(lstm_run, builtin_host, tmp_path):
    """Missing paths, unknown jobs, corrupt weights and unrecorded sizes give clear errors."""
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nothing", registry=builtin_host.registry)
    with pytest.raises(EmbedError, match="no checkpoints for job 'other'.*main"):
        load(lstm_run, job="other", registry=builtin_host.registry)
    sidecar = sorted((lstm_run / "checkpoints" / "main").glob("step_*.json"))[-1]
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(lstm_run, copy)
    bad = copy / "checkpoints" / "main" / sidecar.with_suffix(".safetensors").name
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(bad, registry=builtin_host.registry)
    # A sidecar without the recorded model (older checkpoints) needs the sizes from the caller.
    old = copy / "checkpoints" / "main" / sidecar.name
    data = json.loads(old.read_text())
    data["meta"].pop("model")
    from statesim.checkpoint import _content_digest

    data["sidecar_sha256"] = _content_digest(data)  # as such a checkpoint would have been written
    old.write_text(json.dumps(data))
    shutil.copy(sidecar.with_suffix(".safetensors"), bad)
    with pytest.raises(EmbedError, match="input_size"):
        load_model(old, registry=builtin_host.registry)
    model, _ = load_model(old, registry=builtin_host.registry, input_size=2, output_size=2)
    assert model.input_size == 2 and model.output_size == 2
    (copy / "config.yaml").write_text("scenario: {type: linear_system}\nmodel: {cell: {type: lstmm}}\n")
    with pytest.raises(ConfigError, match="lstmm"):
        load_model(old, registry=builtin_host.registry, input_size=2)


@pytest.mark.slow
def test_load_picks_job_of_multi_job_run(tmp_path, builtin_host):
    """A run that trained several models needs job=...; each job loads its own model."""
    from statesim.run import execute

    out = tmp_path / "ma"
    execute("scenarios/moving_average.yaml",
            ["training.steps=2", "scenario.steps=10", "scenario.train_sequences=4", "scenario.test_sequences=2",
             "output.plots=false"], out=out, echo=lambda m: None)
    with pytest.raises(EmbedError, match="several models.*window-on-ema"):
        load(out, registry=builtin_host.registry)
    window = load(out, job="window-on-ema", registry=builtin_host.registry)
    linear = load(out, job="linear-on-ema", registry=builtin_host.registry)
    assert window.state_parts == ["window"] and linear.state_parts == ["h"]
    assert window.fast and linear.fast


def test_large_batches_switch_to_torch_and_back(builtin_host):
    """Above numpy_max_batch agents the torch path is used; the state carries over and the numbers agree."""
    model = make_model(builtin_host.registry, CELLS["gru"], head="linear", output_size=2)
    sim = EmbeddedModel(model, batch_size=2)
    sim.numpy_max_batch = 2
    assert sim.fast
    inputs = torch.randn(6, 3, INPUT)
    sim.reset(batch_size=3)
    assert not sim.fast
    first = sim.rollout(inputs[:3].numpy())
    snap = sim.save_state()
    sim.reset(batch_size=2)
    assert sim.fast
    sim.restore_state(snap)  # back to 3 agents: torch path again, from the saved state
    assert not sim.fast and sim.t == 3
    second = sim.rollout(inputs[3:].numpy())
    with torch.no_grad():
        truth = model(inputs)
    np.testing.assert_allclose(np.concatenate([first, second]), truth.outputs.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("topology", [{"type": "stacked", "layers": 3, "residual": True},
                                      {"type": "stacked", "layers": 2}])
def test_stacked_topology_steps_on_the_numpy_path(builtin_host, topology):
    """A stack of built-in cells chains their NumPy kernels; stepping equals the stack's layer-by-layer unroll."""
    from statesim.config import validate_model

    config = validate_model({"cell": {"type": "lstm", "hidden_size": 5}, "topology": topology, "head": "linear"},
                            builtin_host.registry)
    model = build_model(builtin_host.registry, config, 5, 2).eval()
    inputs = torch.randn(12, 3, 5)
    with torch.no_grad():
        truth = model(inputs, forcing=Forcing([Clamp("layer1.h", 0.0, [0], 4, None)]))
    sim = EmbeddedModel(model, batch_size=3)
    assert sim.fast and "layer1.c" in sim.state_parts
    outputs = []
    for t, x_t in enumerate(inputs.numpy()):
        if t == 4:
            sim.force("layer1.h", 0.0, units=[0], steps=None)
        outputs.append(sim.step(x_t))
    np.testing.assert_allclose(np.stack(outputs), truth.outputs.numpy(), atol=1e-5, rtol=0)


def test_weights_auto_takes_the_best_model_of_an_early_stopped_run(builtin_host, tmp_path):
    """weights='auto' loads the best validated model when the run early-stopped, else the last; 'last'/'best' force."""
    from statesim.checkpoint import save_checkpoint

    last = make_model(builtin_host.registry, CELLS["gru"], head="none")
    best = make_model(builtin_host.registry, CELLS["gru"], head="none")
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "main" / "step_00000010", {"model": last.state_dict(),
                    "best_model": best.state_dict()}, step=10, config_digest="x",
                    meta={"job": "main", "model": last.build_spec})
    for early, expected in ((3, best), (None, last)):
        (run / "config.yaml").write_text(f"scenario: {{type: somebody_elses_scenario}}\n"
                                         f"training: {{early_stopping: {'null' if early is None else early}}}\n")
        model, _ = load_model(run, registry=builtin_host.registry)
        assert torch.equal(model.step_cell().weight_hh, expected.step_cell().weight_hh)
    model, _ = load_model(run, registry=builtin_host.registry, weights="best")
    assert torch.equal(model.step_cell().weight_hh, best.step_cell().weight_hh)
    model, _ = load_model(run, registry=builtin_host.registry, weights="last")
    assert torch.equal(model.step_cell().weight_hh, last.step_cell().weight_hh)
