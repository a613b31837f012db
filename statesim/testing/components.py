"""``TopologyContractTests`` and ``PolicyContractTests``: the checks every topology and initial-state policy must
pass, as pytest base classes. Truths: each sequence of a ragged batch run alone, the topology's own step cell in a
plain loop, a state that full forcing makes irrelevant, a second build loaded with ``state_dict``."""
from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from statesim.errors import ShapeError, StatesimError
from statesim.forcing import Clamp, Forcing
from statesim.model import InitialContext, SequenceModel
from statesim.registry import Registry
from statesim.testing import _common
from statesim.testing._common import Batch, assert_close, assert_states_close, random_state
from statesim.testing.cells import hand_loop


class _ModelSuite:
    """What both suites share: a small model of a cell, a topology and a policy, built through the registry."""

    cell_spec: ClassVar[dict[str, Any]] = {"type": "lstm", "hidden_size": 4}
    input_size: ClassVar[int] = 3
    dtype: ClassVar[torch.dtype] = torch.float64
    batch: ClassVar[int] = 3
    steps: ClassVar[int] = 6

    @pytest.fixture
    def registry(self) -> Registry:
        """The registry of built-ins and installed plugins."""
        return _common.registry()

    def specs(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """``(topology, initial_state)`` specs of the model under test (None: the default)."""
        raise NotImplementedError

    def build(self, registry: Registry, seed: int = 0, cell: dict[str, Any] | None = None,
              topology: dict[str, Any] | None = None, policy: dict[str, Any] | None = None) -> SequenceModel:
        """The model under test (or with ``cell``/``topology``/``policy`` swapped in), parameters perturbed."""
        default_topology, default_policy = self.specs()
        config = _common.model_config(registry, cell or self.cell_spec, topology or default_topology,
                                      policy or default_policy)
        torch.manual_seed(seed)
        try:
            model = _common.build(registry, config, self.input_size, self.dtype)
        except ShapeError as exc:  # a cell with a fixed input size cannot read another layer's outputs
            assert "input" in str(exc), f"building the model failed with an unclear ShapeError: {exc}"
            pytest.skip(f"the cell cannot be built into this model: {exc}")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        return model

    def ragged(self, model: SequenceModel, seed: int = 0) -> Batch:
        """A ragged batch for ``model`` (lengths T, 2, 4)."""
        return Batch(model, self.steps, self.batch, self.dtype, seed, lengths=[self.steps, 2, 4][:self.batch])

    def check_ragged(self, model: SequenceModel, what: str) -> Any:
        """Each sequence of a ragged batch gives what it gives alone; returns the batch's trajectory."""
        batch = self.ragged(model)
        # one draw of the policy for the whole batch (a random policy draws anew per call), then sliced
        state0 = batch.initial(model, self.encoding(model))
        traj = batch.run(model, state0)
        assert traj.outputs.shape == (self.steps, self.batch, model.output_size), f"{what}: output shape"
        assert set(traj.final_state) == set(model.state_spec), f"{what}: final state parts"
        assert batch.lengths is not None
        for b in range(self.batch):
            n = int(batch.lengths[b])
            with torch.no_grad():
                alone = batch.select(b).run(model, {k: v[b:b + 1] for k, v in state0.items()})
            assert_close(traj.outputs[:n, b:b + 1], alone.outputs, f"{what}: sequence {b} alone vs in the batch",
                         scale=100)
            assert_states_close({k: v[b:b + 1] for k, v in traj.final_state.items()}, alone.final_state,
                                f"{what}: final state of sequence {b}", scale=100)
        return traj

    def encoding(self, model: SequenceModel) -> torch.Tensor | None:
        """An encoding for a policy that needs one where no conditioning encoder gives it (else None)."""
        if "encoding" not in type(model.initial_state).needs or model.encoder is not None:
            return None
        size = getattr(model.initial_state, "input_size", 3)
        return torch.randn(self.batch, size, generator=torch.Generator().manual_seed(7), dtype=self.dtype)

    def check_state_dict(self, registry: Registry) -> None:
        """A model built with another seed, loaded with the first one's ``state_dict``, gives its numbers."""
        model, other = self.build(registry, 0), self.build(registry, 1)
        other.load_state_dict(model.state_dict())
        batch = self.ragged(model)
        with torch.no_grad():
            torch.manual_seed(3)
            want = batch.run(model, encoded=self.encoding(model))
            torch.manual_seed(3)  # a random policy draws the same state for both
            got = batch.run(other, encoded=self.encoding(other))
        assert_close(got.outputs, want.outputs, "outputs after load_state_dict")
        assert_states_close(got.final_state, want.final_state, "final state after load_state_dict")


class TopologyContractTests(_ModelSuite):
    """Subclass, set :attr:`topology_spec` (what ``model.topology`` holds in YAML), and pytest checks the topology
    with :attr:`cell_spec`'s cell and with every registered cell."""

    topology_spec: ClassVar[dict[str, Any]] = {}
    #: The model's initial-state policy (None: zeros); an encoder-decoder without attention needs ``encoded``.
    initial_state_spec: ClassVar[dict[str, Any] | None] = None

    def specs(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        return self.topology_spec, self.initial_state_spec

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """One test per registered cell."""
        if "cell_name" in metafunc.fixturenames:
            metafunc.parametrize("cell_name", _common.registry().names("cell"))

    def test_outputs_and_states_have_the_declared_sizes(self, registry: Registry) -> None:
        """Outputs ``[T, B, output_size]``; final and returned states have exactly the declared parts and shapes."""
        model = self.build(registry)
        batch = Batch(model, self.steps, self.batch, self.dtype)
        traj = batch.run(model, return_states=True)
        assert traj.outputs.shape == (self.steps, self.batch, model.output_size)
        assert set(traj.final_state) == set(model.state_spec)
        for part, shape in model.state_spec.items():
            assert traj.final_state[part].shape == (self.batch, *shape), f"final '{part}'"
            if traj.states is not None:
                assert traj.states[part].shape == (self.steps, self.batch, *shape), f"returned states '{part}'"

    def test_each_sequence_of_a_ragged_batch_gives_what_it_gives_alone(self, registry: Registry) -> None:
        """Padding never leaks into another sequence or into a sequence's own final state."""
        self.check_ragged(self.build(registry), str(self.topology_spec))

    def test_forcing_every_state_unit_makes_the_initial_state_irrelevant(self, registry: Registry) -> None:
        """Clamping every unit of every part at every step: two initial states give the same run (and the clamp
        changes the run), so forcing reaches each part the topology declares."""
        model = self.build(registry)
        batch = Batch(model, self.steps, self.batch, self.dtype)
        forcing = Forcing([Clamp(part, 0.25) for part in model.state_spec])
        with torch.no_grad():
            runs = [batch.run(model, random_state(model.state_spec, self.batch, self.dtype, seed), forcing=forcing)
                    for seed in (1, 2)]
            free = batch.run(model, random_state(model.state_spec, self.batch, self.dtype, 1))
        assert_close(runs[1].outputs, runs[0].outputs, "forced runs from two initial states")
        assert not torch.allclose(runs[0].outputs, free.outputs), "the clamps changed nothing"

    def test_gradients_reach_every_parameter(self, registry: Registry) -> None:
        """A loss on the outputs and final state gives every trainable parameter a gradient."""
        model = self.build(registry)
        traj = self.ragged(model).run(model)
        loss = traj.outputs.square().sum() + sum(v.square().sum() for v in traj.final_state.values())
        if not any(p.requires_grad for p in model.parameters()):
            pytest.skip("the model has no trainable parameter")
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"no gradient reaches {missing}"

    def test_its_step_cell_steps_like_it_runs(self, registry: Registry) -> None:
        """A topology that offers ``as_cell`` gives, stepped one tick at a time, its own run (forced too)."""
        model = self.build(registry)
        try:
            cell = model.step_cell()
        except StatesimError:
            pytest.skip("the topology needs the whole sequence (as_cell is None)")
        batch = Batch(model, self.steps, self.batch, self.dtype)
        state0 = random_state(model.state_spec, self.batch, self.dtype)
        part = next(iter(model.state_spec))
        forcing = Forcing([Clamp(part, 0.5, units=[0], start=1, stop=3)])
        with torch.no_grad():
            want = model(batch.inputs, state0, forcing=forcing)

            def read(state: dict, t: int) -> dict:
                return forcing.apply_to_state(state, t)

            got_y, got_state = hand_loop(cell, batch.inputs, state0, read)
        assert_close(got_y, want.outputs, "the step cell in a loop vs the run", scale=100)
        assert_states_close(got_state, want.final_state, "the step cell in a loop vs the run", scale=100)

    def test_state_dict_round_trip_gives_the_same_numbers(self, registry: Registry) -> None:
        """``load_state_dict`` into a second build reproduces the first."""
        self.check_state_dict(registry)

    def test_works_with_every_registered_cell(self, registry: Registry, cell_name: str) -> None:
        """Every registered cell (required integer sizes set to 4) runs in this topology, ragged batches included."""
        entry = registry.get("cell", cell_name).record
        spec: dict[str, Any] = {"type": cell_name}
        for field, info in entry.params.model_fields.items():
            if info.is_required():
                if info.annotation is not int:
                    pytest.skip(f"cell '{cell_name}' requires '{field}', which this suite cannot guess")
                spec[field] = 4
        size = self.input_size
        try:
            entry.cls.from_params(size, entry.params.model_validate({k: v for k, v in spec.items() if k != "type"}))
        except ShapeError:
            size = 2  # a cell of a fixed input size (the salamander CPG's two drives)
        suite = type(self)()
        suite.input_size = size  # type: ignore[misc]
        self.check_ragged(suite.build(registry, cell=spec), f"{self.topology_spec} with cell '{cell_name}'")


class PolicyContractTests(_ModelSuite):
    """Subclass, set :attr:`policy_spec` (what ``model.initial_state`` holds in YAML), and pytest checks the policy
    in a unidirectional model and under every registered topology."""

    policy_spec: ClassVar[dict[str, Any]] = {}
    topology_spec: ClassVar[dict[str, Any] | None] = None

    def specs(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        return self.topology_spec, self.policy_spec

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """One test per registered topology."""
        if "topology_name" in metafunc.fixturenames:
            metafunc.parametrize("topology_name", _common.registry().names("topology"))

    def context(self, model: SequenceModel, inputs: torch.Tensor) -> InitialContext:
        """What the model gives its policy for ``inputs`` (an encoding when the policy needs one)."""
        return InitialContext(inputs=inputs, encoded=self.encoding(model), topology=model.topology)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_state_has_every_part_in_the_asked_dtype(self, registry: Registry, dtype: torch.dtype) -> None:
        """Every declared part ``[B, *shape]``, finite, in the dtype and on the device asked for."""
        model = self.build(registry).to(dtype)
        inputs = torch.randn(self.steps, self.batch, model.input_size, dtype=dtype)
        context = self.context(model, inputs)
        if context.encoded is not None:
            context.encoded = context.encoded.to(dtype)
        state = model.initial_state(self.batch, device="cpu", dtype=dtype, context=context)
        assert set(state) == set(model.state_spec)
        for part, shape in model.state_spec.items():
            value = state[part]
            assert value.shape == (self.batch, *shape) and value.dtype == dtype and value.device.type == "cpu", \
                f"'{part}' is {tuple(value.shape)} {value.dtype} on {value.device}"
            assert bool(torch.isfinite(value).all()), f"'{part}' is not finite"

    def test_a_deterministic_policy_repeats_itself_and_the_model_starts_there(self, registry: Registry) -> None:
        """A policy declared deterministic gives the same state twice, and ``model(x)`` runs from that state."""
        model = self.build(registry)
        if not model.initial_state.deterministic:
            pytest.skip("the policy is not declared deterministic")
        inputs = torch.randn(self.steps, self.batch, model.input_size, dtype=self.dtype)
        with torch.no_grad():
            first, second = (model.initial_state(self.batch, device="cpu", dtype=self.dtype,
                                                 context=self.context(model, inputs)) for _ in range(2))
            assert_states_close(second, first, "a second call of a deterministic policy")
            ran = model(inputs, encoded=self.encoding(model))
            want = model.topology(inputs, first)
        assert_close(ran.outputs, want.outputs, "model(x) vs the topology run from the policy's state")

    def test_gradients_reach_its_parameters(self, registry: Registry) -> None:
        """A trainable policy's parameters get a gradient from a loss on the model's outputs."""
        model = self.build(registry)
        params = [(n, p) for n, p in model.initial_state.named_parameters() if p.requires_grad]
        if not params:
            pytest.skip("the policy has no trainable parameter")
        self.ragged(model).run(model, encoded=self.encoding(model)).outputs.square().sum().backward()
        missing = [n for n, p in params if p.grad is None or not bool(p.grad.abs().sum() > 0)]
        assert not missing, f"no gradient reaches the policy's {missing}"

    def test_a_missing_need_is_a_clear_error(self, registry: Registry) -> None:
        """A policy that needs context (an encoding) refuses to start without it with a StatesimError."""
        model = self.build(registry)
        if not type(model.initial_state).needs:
            pytest.skip("the policy needs nothing from its context")
        with pytest.raises(StatesimError):
            model.initial_state(self.batch, device="cpu", dtype=self.dtype, context=InitialContext())

    def test_state_dict_round_trip_gives_the_same_numbers(self, registry: Registry) -> None:
        """``load_state_dict`` into a second build reproduces the first."""
        self.check_state_dict(registry)

    def test_works_under_every_registered_topology(self, registry: Registry, topology_name: str) -> None:
        """The policy starts every registered topology; each sequence of a ragged batch gives what it gives alone."""
        spec = _common.spec_for("topology", topology_name)
        self.check_ragged(self.build(registry, topology=spec), f"{self.policy_spec} under {topology_name}")
