"""Export one step of a trained model for hosts outside Python: TorchScript or ONNX, plus a JSON sidecar.

The exported function has explicit state: ``(x, state_1, ..., state_k) -> (y, next_state_1, ...,
next_state_k)``, every tensor ``[batch, ...]`` (the batch dimension is dynamic). The host keeps the
state between calls, exactly as :class:`statesim.embed.EmbeddedModel` does inside Python. The sidecar
(``<file>.json``) names the inputs and outputs in order, their shapes and dtypes, the state parts, and
the initial state when the model's policy gives a fixed one. Forcing is the host's business: overwrite
the input or state units before the call (the same rule as :mod:`statesim.forcing`).

``onnx`` needs ``pip install 'statesim[export]'`` (onnx, onnxscript, onnxruntime).
"""
from __future__ import annotations

import io
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from statesim.cell import device_and_dtype
from statesim.checkpoint import CheckpointInfo
from statesim.engine import Stepper
from statesim.errors import StatesimError
from statesim.fileio import atomic_write_bytes, atomic_write_json
from statesim.model import SequenceModel

FORMAT = "statesim-step/1"
FORMATS = ("torchscript", "onnx")
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}
#: Max abs error an export may differ from the engine by over the verification run.
TOLERANCE = 1e-5


class ExportError(StatesimError):
    """The model could not be exported, or the export does not reproduce the engine."""


class SingleStep(nn.Module):
    """One tick of a model with explicit state: ``(x, *state) -> (y, *next_state)`` in ``state_spec`` order.

    The tick is the engine's (:meth:`statesim.engine.Stepper.tick`) and the head the model's own
    (:meth:`~statesim.model.SequenceModel.read_out`), so the export computes what the engine does.
    """

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.cell = model.step_cell()
        self.head = model.head  # registered here so tracing sees its parameters; applied through read_out
        self.embed = model.embed  # token-id inputs x [batch] are embedded inside the step (read_in)
        self.scaling = model.scaling  # fixed z-scores, registered for tracing; read_in/read_out apply them
        self._read_in, self._read_out = model.read_in, model.read_out
        self._stepper = Stepper(self.cell)
        self.parts = list(self.cell.state_spec)

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        y, new_state = self._stepper.tick(self._read_in(x), dict(zip(self.parts, state)))
        return (self._read_out(y), *[new_state[part] for part in self.parts])


def _names(parts: list[str]) -> tuple[list[str], list[str]]:
    return ["x", *[f"state.{p}" for p in parts]], ["y", *[f"next_state.{p}" for p in parts]]


def _inputs(model: SequenceModel, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Random inputs of ``shape + [input_size]``, or token ids of ``shape`` for a model that embeds them."""
    if model.embed is not None:
        return torch.randint(0, model.embed.num_embeddings, shape, generator=gen)
    return torch.randn(*shape, model.input_size, generator=gen, dtype=dtype)


def _examples(model: SequenceModel, batch: int) -> tuple[Tensor, ...]:
    dtype = device_and_dtype(model)[1]
    gen = torch.Generator().manual_seed(0)
    spec = model.step_cell().state_spec
    return (_inputs(model, (batch,), gen, dtype),
            *[torch.randn(batch, *shape, generator=gen, dtype=dtype) for shape in spec.values()])


def _export_torchscript(module: SingleStep, examples: tuple[Tensor, ...]) -> bytes:
    # TorchScript is deprecated upstream (torch >= 2.10) but still what many C++/LibTorch hosts load; ONNX is
    # the format to prefer. The deprecation notices are for us, not for the user of `statesim export`.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        traced = torch.jit.trace(module, examples, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _export_onnx(module: SingleStep, examples: tuple[Tensor, ...], inputs: list[str], outputs: list[str],
                 opset: int | None) -> bytes:
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError:
        raise ExportError("ONNX export needs the export extra: pip install 'statesim[export]' "
                          "(onnx, onnxscript, onnxruntime).") from None
    batch = torch.export.Dim("batch", min=1)
    dynamic = ({0: batch}, tuple({0: batch} for _ in examples[1:]))
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The exporter narrates its internals (optional torchvision ops, axis renames); none of it concerns us.
        warnings.simplefilter("ignore")
        quiet.setLevel(logging.ERROR)
        target = Path(tmp) / "step.onnx"
        try:
            program = torch.onnx.export(module, examples, dynamo=True, input_names=inputs, output_names=outputs,
                                        dynamic_shapes=dynamic, opset_version=opset, optimize=True,
                                        verbose=False, report=False)
            assert program is not None  # only the legacy exporter (dynamo=False) returns None
            program.save(str(target), external_data=False)
        except ImportError as exc:
            raise ExportError(f"ONNX export needs the export extra: pip install 'statesim[export]' ({exc}).") from None
        finally:
            quiet.setLevel(level)
        return target.read_bytes()


def _initial_state(model: SequenceModel) -> dict[str, Any]:
    """The policy's state for one agent when it is fixed (zeros, learned), else a note to draw it yourself."""
    policy = type(model.initial_state).__name__
    if not model.initial_state.deterministic:
        return {"policy": policy, "values": None,
                "note": "the initial-state policy is random; draw a state per episode (or use zeros)"}
    try:
        with torch.no_grad():
            state = model.initial(1)
    except StatesimError as exc:  # it needs what a host gives per episode (an encoding, the sequence)
        return {"policy": policy, "values": None,
                "note": f"the initial state depends on each episode's context; compute it per episode ({exc})"}
    return {"policy": policy, "values": {k: v[0].tolist() for k, v in state.items()}}


def export_model(model: SequenceModel, path: str | Path, fmt: Literal["torchscript", "onnx"], *,
                 source: CheckpointInfo | None = None, opset: int | None = None) -> Path:
    """Write the single-step module to ``path`` and its sidecar to ``path + '.json'``; returns the sidecar path."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    path = Path(path)
    model = model.eval()
    try:
        module = SingleStep(model).eval()
    except TypeError as exc:
        raise ExportError(f"cannot export: {exc}") from None
    examples = _examples(model, batch=2)
    inputs, outputs = _names(module.parts)
    with torch.no_grad():
        if fmt == "torchscript":
            blob = _export_torchscript(module, examples)
        else:
            blob = _export_onnx(module, examples, inputs, outputs, opset)
        y = module(*examples)[0]
    atomic_write_bytes(path, blob)
    dtype = str(device_and_dtype(model)[1]).removeprefix("torch.")
    x_input = ({"name": "x", "shape": ["batch"], "dtype": "int64", "token_ids": model.embed.num_embeddings}
               if model.embed is not None else {"name": "x", "shape": ["batch", model.input_size], "dtype": dtype})
    spec = module.cell.state_spec
    sidecar = {
        "format": FORMAT, "runtime": fmt, "file": path.name,
        "signature": "(x, " + ", ".join(inputs[1:]) + ") -> (y, " + ", ".join(outputs[1:]) + ")",
        "inputs": [x_input]
                  + [{"name": n, "state_part": p, "shape": ["batch", *spec[p]], "dtype": dtype}
                     for n, p in zip(inputs[1:], module.parts)],
        "outputs": [{"name": "y", "shape": ["batch", int(y.shape[-1])], "dtype": dtype}]
                   + [{"name": n, "state_part": p, "shape": ["batch", *spec[p]], "dtype": dtype}
                      for n, p in zip(outputs[1:], module.parts)],
        "state_parts": {p: list(s) for p, s in spec.items()},
        "initial_state": _initial_state(model),
        "model": getattr(model, "build_spec", None),
        "source": None if source is None else {"checkpoint": str(source.path), "step": source.step,
                                               "job": source.meta.get("job")},
        "torch": torch.__version__,
    }
    return atomic_write_json(path.with_name(path.name + ".json"), sidecar)


# --------------------------------------------------------------------------- running an export
class ExportedStep:
    """Run an exported step (TorchScript via ``torch.jit.load``, ONNX via ``onnxruntime``) from NumPy arrays."""

    def __init__(self, sidecar: str | Path) -> None:
        sidecar = Path(sidecar)
        if sidecar.suffix != ".json":
            sidecar = sidecar.with_name(sidecar.name + ".json")
        try:
            self.meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot read the export sidecar {sidecar} ({exc}).") from None
        if self.meta.get("format") != FORMAT:
            raise ExportError(f"{sidecar} is not a statesim step export (format {self.meta.get('format')!r}).")
        self.file = sidecar.with_name(self.meta["file"])
        self.runtime = self.meta["runtime"]
        self.input_names = [i["name"] for i in self.meta["inputs"]]
        self.output_names = [o["name"] for o in self.meta["outputs"]]
        self.parts = list(self.meta["state_parts"])
        if self.runtime == "torchscript":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
                self._module = torch.jit.load(str(self.file), map_location="cpu").eval()
        else:
            try:
                import onnxruntime
            except ImportError:
                raise ExportError("running an ONNX export needs onnxruntime: pip install 'statesim[export]'.") from None
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            self._session = onnxruntime.InferenceSession(str(self.file), options, providers=["CPUExecutionProvider"])

    def initial_state(self, batch_size: int) -> dict[str, np.ndarray]:
        """The exported initial state for ``batch_size`` agents (zeros when the policy is random)."""
        values = self.meta["initial_state"].get("values")
        return {p: np.broadcast_to(np.asarray(values[p] if values else np.zeros(s), np.float32),
                                   (batch_size, *s)).copy() for p, s in self.meta["state_parts"].items()}

    def __call__(self, x: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One step: ``(x, state) -> (y, next_state)``."""
        args = [x, *[state[p] for p in self.parts]]
        if self.runtime == "torchscript":
            with torch.no_grad():
                out = self._module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in args])
            out = [o.numpy() for o in out]
        else:
            out = self._session.run(self.output_names, dict(zip(self.input_names, args)))
        return out[0], dict(zip(self.parts, out[1:]))


def verify_export(sidecar: str | Path, model: SequenceModel, *, steps: int = 100, batch_size: int = 3,
                  seed: int = 0) -> float:
    """Max abs difference between the export and the engine's unroll over ``steps`` random steps
    (outputs and states)."""
    runner = ExportedStep(sidecar)
    gen = torch.Generator().manual_seed(seed)
    dtype = device_and_dtype(model)[1]
    inputs = _inputs(model, (steps, batch_size), gen, dtype)
    spec = model.step_cell().state_spec
    state0 = {p: 0.5 * torch.randn(batch_size, *s, generator=gen, dtype=dtype) for p, s in spec.items()}
    with torch.no_grad():
        truth = model(inputs, state0, return_states=True)
    state = {p: v.numpy() for p, v in state0.items()}
    error = 0.0
    for t in range(steps):
        y, state = runner(inputs[t].numpy(), state)
        error = max(error, float(np.abs(y - truth.outputs[t].numpy()).max()))
        for part in spec:
            error = max(error, float(np.abs(state[part] - truth.states[part][t].numpy()).max()))
    return error


def export_job_name(sidecar: Path, meta: dict[str, Any]) -> str:
    """The job a checkpoint belongs to, as a plain file name: its folder's name, else a safe ``meta.job``."""
    from statesim.safepath import name_problem

    # checkpoints/<job>/step_*.json: the folder name is one path component by construction; the sidecar's
    # meta.job is data from the file and may hold anything ('../../x', '/tmp/y').
    for candidate in (sidecar.parent.name if sidecar.parent.parent.name == "checkpoints" else None,
                      meta.get("job"), "main"):
        if isinstance(candidate, str) and name_problem(candidate) is None:
            return candidate
    return "main"


def default_path(run_dir: Path, job: str, fmt: str) -> Path:
    """Where ``statesim export`` writes by default: ``RUN_DIR/export/<job>.step<suffix>``."""
    return Path(run_dir) / "export" / f"{job}.step{SUFFIX[fmt]}"


__all__ = ["ExportError", "ExportedStep", "SingleStep", "export_model", "verify_export", "default_path",
           "export_job_name"]
