"""What the contract suites share: a registry, models built as a scenario builds them, and tolerant comparisons."""
from __future__ import annotations

import functools
from typing import Any, Mapping

import torch
from torch import Tensor

from statesim.cell import State
from statesim.config import ModelConfig, validate_model
from statesim.kernelcheck import tolerance
from statesim.model import SequenceModel, build_model
from statesim.registry import Registry

#: Small defaults that make each registered component buildable (a stack needs two layers to be a stack, a warm-up
#: a short prefix, an encoded state the size of the encoding the suites give it).
DEFAULT_PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "topology": {"stacked": {"layers": 2}},
    "initial_state": {"warmup": {"steps": 3, "prefix": "noise"}, "encoded": {"encoded_size": 3}},
}


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    """The registry of built-ins and installed plugins, as ``statesim run`` builds it (built once per process)."""
    from statesim.plugin_manager import build_plugin_host

    return build_plugin_host().registry


def spec_for(kind: str, name: str, given: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """``{type: name, ...}`` with the suite's small defaults for ``name``, overridden by ``given``."""
    return {"type": name, **DEFAULT_PARAMS.get(kind, {}).get(name, {}), **dict((given or {}).get(name, {}))}


def model_config(registry: Registry, cell: Mapping[str, Any], topology: Mapping[str, Any] | None = None,
                 initial_state: Mapping[str, Any] | None = None) -> ModelConfig:
    """A validated, resolved model config (``head: none``), as a scenario file's ``model:`` becomes one."""
    data: dict[str, Any] = {"cell": dict(cell), "head": "none"}
    if topology is not None:
        data["topology"] = dict(topology)
    if initial_state is not None:
        data["initial_state"] = dict(initial_state)
    return validate_model(data, registry, "contract test")


def needs_encoder(registry: Registry, config: ModelConfig) -> bool:
    """Whether the config's topology reads a source through a conditioning encoder (an encoder-decoder)."""
    entry = registry.get("topology", config.topology.type).record
    return entry.cls.encoder_spec(config.topology.params) is not None


def build(registry: Registry, config: ModelConfig, input_size: int, dtype: torch.dtype) -> SequenceModel:
    """The model of ``config`` in ``dtype`` and eval mode (a source encoder of ``input_size`` features if needed)."""
    encoder = {"type": "sequence", "size": input_size} if needs_encoder(registry, config) else None
    return build_model(registry, config, input_size, None, encoder=encoder).to(dtype).eval()


class Batch:
    """Inputs, lengths and (for a conditioned model) a source, which :meth:`run` feeds to a model."""

    def __init__(self, model: SequenceModel, steps: int, batch: int, dtype: torch.dtype, seed: int = 0,
                 lengths: list[int] | None = None) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(steps, batch, model.input_size, generator=gen, dtype=dtype)
        self.lengths = None if lengths is None else torch.tensor(lengths)
        self.condition = self.condition_lengths = None
        if model.encoder is not None:
            self.condition = torch.randn(3, batch, model.input_size, generator=gen, dtype=dtype)
            self.condition_lengths = torch.full((batch,), 3)

    def select(self, b: int) -> "Batch":
        """Sequence ``b`` alone, cut to its own length."""
        one = object.__new__(Batch)
        steps = self.inputs.shape[0] if self.lengths is None else int(self.lengths[b])
        one.inputs, one.lengths = self.inputs[:steps, b:b + 1], None
        one.condition = None if self.condition is None else self.condition[:, b:b + 1]
        one.condition_lengths = None if self.condition_lengths is None else self.condition_lengths[b:b + 1]
        return one

    def memory(self, model: SequenceModel) -> Any:
        """The conditioning encoder's memory of this batch's source (None without one)."""
        return None if self.condition is None else model.encode(self.condition, self.condition_lengths)

    def initial(self, model: SequenceModel, encoded: Tensor | None = None) -> State:
        """The model's initial-state policy for this batch."""
        return model.initial(self.inputs.shape[1], inputs=self.inputs, lengths=self.lengths,
                             memory=self.memory(model), encoded=encoded)

    def run(self, model: SequenceModel, state: State | None = None, *, encoded: Tensor | None = None,
            **kwargs: Any) -> Any:
        """``model`` over this batch from ``state`` (the model's initial-state policy when None)."""
        if state is None:
            state = self.initial(model, encoded)
        return model(self.inputs, state, lengths=self.lengths, memory=self.memory(model), **kwargs)


def random_state(spec: Mapping[str, tuple[int, ...]], batch: int, dtype: torch.dtype, seed: int = 1) -> State:
    """A random state of ``spec`` (scale 0.5), reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return {part: 0.5 * torch.randn(batch, *shape, generator=gen, dtype=dtype) for part, shape in spec.items()}


def assert_close(got: Any, want: Any, what: str, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> None:
    """``got`` equals ``want`` within ``dtype``'s rounding (times ``scale``), or an AssertionError naming ``what``."""
    rtol, atol = tolerance(dtype)
    got, want = torch.as_tensor(got).to(torch.float64), torch.as_tensor(want).to(torch.float64)
    torch.testing.assert_close(got, want, rtol=rtol * scale, atol=atol * scale, msg=lambda m: f"{what}: {m}")


def assert_states_close(got: Mapping[str, Tensor], want: Mapping[str, Tensor], what: str,
                        dtype: torch.dtype = torch.float64, scale: float = 1.0) -> None:
    """Every part of two states agrees (same parts, same values)."""
    assert set(got) == set(want), f"{what}: state parts {sorted(got)} instead of {sorted(want)}"
    for part in want:
        assert_close(got[part], want[part], f"{what}, state part '{part}'", dtype, scale)
