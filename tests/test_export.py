"""Exports (TorchScript, ONNX) of every built-in cell reproduce the engine for 100 steps; the CLI writes and
checks them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx  # the statesim[export] extra; the dev extra includes it, so CI runs these tests
import pytest
import torch

from _embed_models import CELLS, INPUT, make_model
from statesim.cli import main
from statesim.export import TOLERANCE, ExportedStep, export_model, verify_export

#: ONNX export is slow (seconds per model), so it covers each built-in cell once; TorchScript covers every variant.
ONNX_CASES = [("linear", "none"), ("vanilla", "linear"), ("lstm", "none"), ("gru", "linear"), ("window_mlp", "linear")]
TS_CASES = [(name, head) for name in CELLS for head in ("none", "linear")]


def _check_sidecar(sidecar: Path, model, fmt: str) -> dict:
    meta = json.loads(sidecar.read_text())
    spec = model.step_cell().state_spec
    assert meta["runtime"] == fmt and (sidecar.parent / meta["file"]).is_file()
    assert [i["name"] for i in meta["inputs"]] == ["x", *[f"state.{p}" for p in spec]]
    assert [o["name"] for o in meta["outputs"]] == ["y", *[f"next_state.{p}" for p in spec]]
    assert meta["inputs"][0]["shape"] == ["batch", INPUT]
    assert meta["outputs"][0]["shape"] == ["batch", model.output_size]
    assert meta["state_parts"] == {p: list(s) for p, s in spec.items()}
    return meta


def _engine_error(sidecar: Path, model, batch: int) -> float:
    """Independent of verify_export: step the export from zeros for 100 steps against one engine unroll."""
    runner = ExportedStep(sidecar)
    inputs = torch.randn(100, batch, INPUT)
    with torch.no_grad():
        truth = model(inputs, model.step_cell().zero_state(batch))
    state = runner.initial_state(batch)
    outputs = []
    for x_t in inputs.numpy():
        y, state = runner(x_t, state)
        outputs.append(y)
    final = max(float(np.abs(state[p] - truth.final_state[p].numpy()).max()) for p in state)
    return max(float(np.abs(np.stack(outputs) - truth.outputs.numpy()).max()), final)


@pytest.mark.parametrize("name,head", TS_CASES)
def test_torchscript_export_equals_engine(builtin_host, tmp_path, name, head):
    """torch.jit.load of the export steps like the engine for 100 steps, at a batch size other than the traced one."""
    model = make_model(builtin_host.registry, CELLS[name], head=head, output_size=3)
    sidecar = export_model(model, tmp_path / "step.pt", "torchscript")
    _check_sidecar(sidecar, model, "torchscript")
    assert verify_export(sidecar, model, steps=100, batch_size=3) <= TOLERANCE
    assert _engine_error(sidecar, model, batch=5) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("name,head", ONNX_CASES)
def test_onnx_export_equals_engine(builtin_host, tmp_path, name, head):
    """onnxruntime runs the export like the engine for 100 steps with a dynamic batch dimension."""
    model = make_model(builtin_host.registry, CELLS[name], head=head, output_size=3)
    sidecar = export_model(model, tmp_path / "step.onnx", "onnx")
    meta = _check_sidecar(sidecar, model, "onnx")
    graph = onnx.load(str(tmp_path / "step.onnx"))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == [i["name"] for i in meta["inputs"]]
    assert [o.name for o in graph.graph.output] == [o["name"] for o in meta["outputs"]]
    assert verify_export(sidecar, model, steps=100, batch_size=3) <= TOLERANCE
    assert _engine_error(sidecar, model, batch=1) <= TOLERANCE


def test_sidecar_initial_state(builtin_host, tmp_path):
    """A fixed initial-state policy (learned) is written out; a random one is flagged instead."""
    model = make_model(builtin_host.registry, CELLS["gru"], initial_state={"type": "learned"})
    meta = json.loads(export_model(model, tmp_path / "a.pt", "torchscript").read_text())
    np.testing.assert_allclose(meta["initial_state"]["values"]["h"],
                               model.initial_state.values["h"].detach().numpy(), atol=1e-7)
    model = make_model(builtin_host.registry, CELLS["gru"], initial_state={"type": "random"})
    meta = json.loads(export_model(model, tmp_path / "b.pt", "torchscript").read_text())
    assert meta["initial_state"]["values"] is None and "random" in meta["initial_state"]["note"]


@pytest.fixture(scope="module")
def gru_run(tmp_path_factory) -> Path:
    from statesim.run import execute

    out = tmp_path_factory.mktemp("runs") / "gru"
    execute("scenarios/linear_system.yaml",
            ["training.steps=2", "scenario.steps=20", "scenario.train_sequences=8", "scenario.test_sequences=4",
             "scenario.impulse_steps=5", "output.plots=false", "model={cell: {type: gru, hidden_size: 4}}"],
            out=out, echo=lambda m: None)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_cli_export_writes_and_verifies(gru_run, fmt, capsys):
    """`statesim export RUN --format F` writes the module and sidecar under RUN/export and reports the check."""
    assert main(["export", str(gru_run), "--format", fmt]) == 0
    out = capsys.readouterr().out
    suffix = ".pt" if fmt == "torchscript" else ".onnx"
    target = gru_run / "export" / f"main.step{suffix}"
    assert target.is_file() and Path(str(target) + ".json").is_file()
    assert "verified: max abs error" in out
    meta = json.loads(Path(str(target) + ".json").read_text())
    assert meta["source"]["job"] == "main" and meta["source"]["step"] == 2
    assert meta["model"]["model"]["cell"]["type"] == "gru"


def test_cli_export_errors(gru_run, capsys, tmp_path):
    """Unknown jobs and missing folders fail with one paragraph and a non-zero exit, no traceback."""
    assert main(["export", str(gru_run), "--format", "torchscript", "--job", "nope"]) != 0
    assert "no checkpoints for job 'nope'" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--format", "onnx"]) != 0
    assert "does not exist" in capsys.readouterr().err


def test_sidecar_initial_state_follows_the_declaration_without_probing(builtin_host, tmp_path):
    """The export reads InitialState.deterministic; it never calls a policy twice to find out."""
    from statesim.builtin.initial_states import Zeros
    from statesim.builtin.state_policies import Warmup

    calls = []

    class Counted(Zeros):
        def forward(self, batch_size, **kwargs):
            calls.append(batch_size)
            return super().forward(batch_size, **kwargs)

    class Drawn(Counted):
        deterministic = False

    model = make_model(builtin_host.registry, CELLS["gru"])
    model.initial_state = Counted(model.state_spec)
    meta = json.loads(export_model(model, tmp_path / "a.pt", "torchscript").read_text())
    assert calls == [1] and meta["initial_state"]["values"]["h"] == [0.0] * CELLS["gru"]["hidden_size"]
    model.initial_state = Drawn(model.state_spec)
    meta = json.loads(export_model(model, tmp_path / "b.pt", "torchscript").read_text())
    assert calls == [1] and meta["initial_state"]["values"] is None and "random" in meta["initial_state"]["note"]
    spec = model.state_spec
    assert Warmup(spec, start="zeros", prefix="zeros").deterministic
    assert not Warmup(spec, start="random").deterministic and not Warmup(spec, prefix="noise").deterministic
