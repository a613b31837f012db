"""``CellContractTests``: the checks every cell must pass, as a pytest base class a cell's author subclasses.

Each check compares the cell with an independent truth: the cell's own ``forward`` called in a plain Python loop
(no engine), the generic engine loop against a fast kernel, a sequence run alone against the same sequence in a
ragged batch, or a documented error. See docs/writing-plugins.md, "Testing a plugin".
"""
from __future__ import annotations

import copy
from typing import Any, Callable, ClassVar

import numpy as np
import pytest
import torch
from torch import Tensor

from statesim import fastpath
from statesim.cell import Cell, State
from statesim.engine import step, unroll
from statesim.errors import ShapeError, StatesimError
from statesim.forcing import Clamp, Forcing
from statesim.registry import Registry
from statesim.testing import _common
from statesim.testing._common import assert_close, assert_states_close, random_state

#: What each fast kernel is called in ``fastpath.policy`` (a ``numpy_step`` is no engine path: embed uses it).
KERNEL_PATHS = {"fused_form": "fused", "linear_form": "scan"}


def hand_loop(cell: Cell, inputs: Tensor, state: State,
              read: Callable[[State, int], State] | None = None) -> tuple[Tensor, State]:
    """The truth without the engine: ``cell(x_t, state)`` once per step; ``read(state, t)`` forces what step t reads."""
    outputs = []
    for t, x in enumerate(inputs):
        y, state = cell(x, read(state, t) if read is not None else state)
        outputs.append(y)
    return torch.stack(outputs), state


def _overwrite(value: Tensor, units: list[int], new: Tensor) -> Tensor:
    """``value`` with ``units`` of its flattened per-sample shape replaced by ``new [B, len(units)]`` where not NaN."""
    flat = value.reshape(value.shape[0], -1).clone()
    flat[:, units] = torch.where(torch.isnan(new), flat[:, units], new)
    return flat.view(value.shape)


def _grads(loss: Tensor, tensors: list[Tensor]) -> list[Tensor]:
    """d loss / d each tensor (zeros where it does not reach)."""
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]


class CellContractTests:
    """Subclass in a test module, set :attr:`cell_spec` (what a YAML file's ``model.cell`` holds), and pytest runs
    every check on that cell. Override the ``make_cell`` fixture to build the cell another way."""

    #: ``{type: NAME, ...params}`` of the cell, as written under ``model.cell`` in a scenario file.
    cell_spec: ClassVar[dict[str, Any]] = {}
    #: Features per step the cell reads.
    input_size: ClassVar[int] = 3
    #: Precision of the numeric checks (float64 makes "equal up to rounding" tight).
    dtype: ClassVar[torch.dtype] = torch.float64
    batch: ClassVar[int] = 3
    steps: ClassVar[int] = 6
    #: Parameters for registered topologies and initial-state policies, by name, over the suite's defaults.
    topology_params: ClassVar[dict[str, dict[str, Any]]] = {}
    policy_params: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Steps of the embed and export checks, and their tolerance (float32, as hosts run them).
    long_steps: ClassVar[int] = 200
    #: Run the ONNX export check (slow: seconds per export); off where another test already exports the cell.
    check_onnx: ClassVar[bool] = True
    long_atol: ClassVar[float] = 1e-4

    # ------------------------------------------------------------------ fixtures
    @pytest.fixture
    def registry(self) -> Registry:
        """The registry of built-ins and installed plugins."""
        return _common.registry()

    @pytest.fixture
    def make_cell(self, registry: Registry) -> Callable[[int], Cell]:
        """``seed -> cell``: the cell of :attr:`cell_spec` in :attr:`dtype`, its parameters perturbed so that no
        weight is a round default (a zero bias hides a dropped bias term)."""

        def make(seed: int = 0) -> Cell:
            spec = dict(self.cell_spec)
            entry = registry.get("cell", spec.pop("type")).record
            torch.manual_seed(seed)
            cell = entry.cls.from_params(self.input_size, entry.params.model_validate(spec)).to(self.dtype)
            with torch.no_grad():
                for p in cell.parameters():
                    p.add_(0.1 * torch.randn_like(p))
                cell.constrain_parameters_()
            return cell.eval()

        return make

    @pytest.fixture
    def cell(self, make_cell: Callable[[int], Cell]) -> Cell:
        """The cell under test."""
        return make_cell(0)

    def inputs(self, cell: Cell, steps: int | None = None, seed: int = 2) -> Tensor:
        """Random inputs ``[T, B, input_size]`` in the cell's dtype."""
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(steps or self.steps, self.batch, cell.input_size, generator=gen, dtype=self.dtype)

    # ------------------------------------------------------------------ stepping
    def test_unroll_equals_its_step_in_a_plain_loop(self, cell: Cell) -> None:
        """The engine's generic loop gives what calling ``forward`` step by step gives."""
        xs, state0 = self.inputs(cell), random_state(cell.state_spec, self.batch, self.dtype)
        with torch.no_grad(), fastpath.policy("generic"):
            traj = unroll(cell, xs, state0, return_states=True)
            truth_y, truth_state = hand_loop(cell, xs, state0)
        assert_close(traj.outputs, truth_y, "unroll's outputs")
        assert_states_close(traj.final_state, truth_state, "unroll's final state")
        assert traj.states is not None, "unroll(return_states=True) returned no states"
        for part in cell.state_spec:
            assert_close(traj.states[part][-1], truth_state[part], f"unroll's last returned state '{part}'")

    @pytest.mark.parametrize("mode", ["generic", "auto"])
    def test_step_equals_unroll(self, cell: Cell, mode: str) -> None:
        """``statesim.step`` one tick at a time gives ``unroll``'s outputs and states (on its default path too)."""
        xs, state = self.inputs(cell), random_state(cell.state_spec, self.batch, self.dtype)
        with torch.no_grad(), fastpath.policy(mode):
            traj = unroll(cell, xs, state)
            outputs = []
            for t, x in enumerate(xs):
                y, state = step(cell, x, state, t=t)
                outputs.append(y)
        assert_close(torch.stack(outputs), traj.outputs, f"step vs unroll ({mode})")
        assert_states_close(state, traj.final_state, f"step vs unroll ({mode})")

    def test_project_inputs_then_transition_equals_forward(self, cell: Cell) -> None:
        """Projecting the whole sequence at once, then ``transition`` per step, is ``forward`` per step."""
        if not cell.hoists_inputs:
            pytest.skip("the cell does not split its step into project_inputs + transition")
        xs, state0 = self.inputs(cell), random_state(cell.state_spec, self.batch, self.dtype)
        with torch.no_grad():
            projected = cell.project_inputs(xs)
            assert projected.shape[:2] == xs.shape[:2], "project_inputs must keep [T, B] in front"
            hoisted_y, state = [], state0
            for p in projected:
                y, state = cell.transition(p, state)
                hoisted_y.append(y)
            truth_y, truth_state = hand_loop(cell, xs, state0)
        assert_close(torch.stack(hoisted_y), truth_y, "project_inputs + transition vs forward")
        assert_states_close(state, truth_state, "project_inputs + transition vs forward")

    # ------------------------------------------------------------------ fast kernels
    @pytest.mark.parametrize("kernel", ["fused_form", "linear_form"])
    @pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
    def test_fast_form_equals_generic_loop_in_values_and_gradients(self, cell: Cell, kernel: str,
                                                                    ragged: bool) -> None:
        """A ``fused_form``/``linear_form`` path gives the generic loop's outputs, states and every gradient."""
        if getattr(cell, kernel)() is None:
            pytest.skip(f"the cell offers no {kernel}")
        xs = self.inputs(cell)
        lengths = torch.tensor([self.steps, 2, 4][:self.batch]) if ragged else None
        state0 = random_state(cell.state_spec, self.batch, self.dtype)
        results = []
        for mode in ("generic", KERNEL_PATHS[kernel]):
            x = xs.clone().requires_grad_(True)
            s0 = {k: v.clone().requires_grad_(True) for k, v in state0.items()}
            with fastpath.policy(mode):  # demanding the fast path raises where it cannot run
                traj = unroll(cell, x, s0, lengths=lengths)
            gen = torch.Generator().manual_seed(5)
            loss = (traj.outputs * torch.randn(traj.outputs.shape, generator=gen, dtype=self.dtype)).sum() + sum(
                (traj.final_state[k] * torch.randn(v.shape, generator=gen, dtype=self.dtype)).sum()
                for k, v in state0.items())
            params = [p for p in cell.parameters() if p.requires_grad]
            results.append((traj, _grads(loss, [x, *s0.values(), *params])))
        (generic, truth), (fast, got) = results
        assert_close(fast.outputs, generic.outputs, f"{kernel} outputs")
        assert_states_close(fast.final_state, generic.final_state, f"{kernel} final state")
        names = ["the inputs", *[f"initial state '{k}'" for k in state0],
                 *[f"parameter '{n}'" for n, p in cell.named_parameters() if p.requires_grad]]
        for name, g, want in zip(names, got, truth):
            assert_close(g, want, f"{kernel}: gradient wrt {name}", scale=10)

    def test_numpy_step_equals_generic_loop(self, cell: Cell) -> None:
        """The ``numpy_step`` kernel, stepped in NumPy, gives the generic loop's outputs and states."""
        kernel = cell.numpy_step()
        if kernel is None:
            pytest.skip("the cell offers no numpy_step")
        xs, state0 = self.inputs(cell), random_state(cell.state_spec, self.batch, self.dtype)
        with torch.no_grad(), fastpath.policy("generic"):
            truth = unroll(cell, xs, state0)
        arrays = {k: v.numpy().copy() for k, v in state0.items()}
        outputs = []
        for x in xs.numpy():
            before = {k: v.copy() for k, v in arrays.items()}
            y, new = kernel(x.copy(), arrays)
            for k in before:  # the contract: arguments are never modified in place
                np.testing.assert_array_equal(arrays[k], before[k], err_msg=f"numpy_step modified state '{k}'")
            outputs.append(np.array(y, copy=True))
            arrays = new
        assert_close(np.stack(outputs), truth.outputs, "numpy_step outputs")
        assert_states_close({k: torch.as_tensor(v) for k, v in arrays.items()}, truth.final_state,
                            "numpy_step final state")

    # ------------------------------------------------------------------ forcing
    def _clamps(self, cell: Cell, part: str, value: Tensor) -> tuple[Forcing, Callable[[State, int], State]]:
        """A clamp of ``part``'s units 0 and last over steps [1, 3) and the same forcing done by hand."""
        width = int(np.prod(cell.state_spec[part]))
        units = sorted({0, width - 1})
        forcing = Forcing([Clamp(part, value, units=units, start=1, stop=3)])

        def read(state: State, t: int) -> State:
            if not 1 <= t < 3:
                return state  # released after the window: the dynamics run free
            new = value.expand(state[part].shape[0], len(units)).to(state[part].dtype)
            return {**state, part: _overwrite(state[part], units, new)}

        return forcing, read

    def test_every_state_part_can_be_forced_as_a_hand_loop_does(self, cell: Cell) -> None:
        """Clamped inside its window, released after it, NaN samples left free; gradients reach the clamp value."""
        xs, state0 = self.inputs(cell), random_state(cell.state_spec, self.batch, self.dtype)
        params = [p for p in cell.parameters() if p.requires_grad]
        for part in cell.state_spec:
            width = len({0, int(np.prod(cell.state_spec[part])) - 1})
            value = torch.full((self.batch, width), 0.7, dtype=self.dtype)
            value[0] = float("nan")  # sample 0 is not forced at all
            got: list[tuple[Tensor, State, list[Tensor]]] = []
            want: list[tuple[Tensor, State, list[Tensor]]] = []
            for engine in (True, False):
                v = value.clone().requires_grad_(True)
                forcing, read = self._clamps(cell, part, v)
                if engine:
                    traj = unroll(cell, xs, state0, forcing=forcing)
                    y, final = traj.outputs, traj.final_state
                else:
                    y, final = hand_loop(cell, xs, state0, read)
                loss = y.square().sum() + sum(s.square().sum() for s in final.values())
                (got if engine else want).append((y, final, _grads(loss, [v, *params])))
            (y, final, grads), (y_hand, final_hand, grads_hand) = got[0], want[0]
            assert_close(y, y_hand, f"outputs with '{part}' forced")
            assert_states_close(final, final_hand, f"final state with '{part}' forced")
            for g, h in zip(grads, grads_hand):
                assert_close(g, h, f"gradients with '{part}' forced", scale=10)
            assert bool(grads[0][1:].abs().sum() > 0) or self.batch == 1, \
                f"no gradient reached the forcing value of '{part}' (it must, see statesim.forcing)"
            with torch.no_grad():
                free = unroll(cell, xs, state0)
            assert_close(y[:, 0], free.outputs[:, 0], f"sample 0 (NaN: not forced) of '{part}'")

    def test_a_forced_unit_passes_no_gradient_to_what_it_overwrote(self, cell: Cell) -> None:
        """Every unit of a part clamped at step 0: the initial value of that part gets exactly zero gradient."""
        xs = self.inputs(cell)
        for part in cell.state_spec:
            state0 = {k: v.requires_grad_(True) for k, v in random_state(cell.state_spec, self.batch,
                                                                       self.dtype).items()}
            traj = unroll(cell, xs, state0, forcing=Forcing([Clamp(part, 0.3, start=0, stop=1)]))
            loss = traj.outputs.square().sum() + sum(s.square().sum() for s in traj.final_state.values())
            grad = _grads(loss, [state0[part]])[0]
            assert bool((grad == 0).all()), f"the clamped initial '{part}' still receives a gradient"

    # ------------------------------------------------------------------ lengths
    @pytest.mark.parametrize("mode", ["generic", "auto"])
    def test_variable_lengths_hold_each_sequences_last_state(self, cell: Cell, mode: str) -> None:
        """In a ragged batch each sequence ends in the state it reaches alone, and its padded outputs are 0."""
        xs, state0 = self.inputs(cell), random_state(cell.state_spec, self.batch, self.dtype)
        lengths = [self.steps, 2, 4][:self.batch]
        with torch.no_grad(), fastpath.policy(mode):
            traj = unroll(cell, xs, state0, lengths=torch.tensor(lengths))
        for b, n in enumerate(lengths):
            with torch.no_grad():
                y, alone = hand_loop(cell, xs[:n, b:b + 1], {k: v[b:b + 1] for k, v in state0.items()})
            assert_close(traj.outputs[:n, b:b + 1], y, f"outputs of sequence {b} (length {n}, {mode})")
            assert bool((traj.outputs[n:, b] == 0).all()), f"padded outputs of sequence {b} are not zero"
            assert_states_close({k: v[b:b + 1] for k, v in traj.final_state.items()}, alone,
                                f"final state of sequence {b} (length {n}, {mode})")

    # ------------------------------------------------------------------ errors
    def test_wrong_inputs_raise_shape_error(self, cell: Cell) -> None:
        """Wrong width, rank, dtype or device of the input is a ShapeError, in unroll and in step."""
        state = cell.zero_state(self.batch)
        wrong = {"width": torch.zeros(self.steps, self.batch, cell.input_size + 1, dtype=self.dtype),
                 "rank": torch.zeros(self.batch, cell.input_size, dtype=self.dtype),
                 "integer dtype": torch.zeros(self.steps, self.batch, cell.input_size, dtype=torch.long),
                 "other float dtype": torch.zeros(self.steps, self.batch, cell.input_size, dtype=self._other_dtype),
                 "device": torch.zeros(self.steps, self.batch, cell.input_size, dtype=self.dtype, device="meta")}
        for what, x in wrong.items():
            with pytest.raises(ShapeError):
                unroll(cell, x, state)
            if what != "rank":
                with pytest.raises(ShapeError):
                    step(cell, x[0] if x.dim() == 3 else x, state)

    @property
    def _other_dtype(self) -> torch.dtype:
        return torch.float32 if self.dtype == torch.float64 else torch.float64

    def test_wrong_states_raise_shape_error(self, cell: Cell) -> None:
        """A missing or extra part, a wrong shape, batch, dtype or device of a state part is a ShapeError."""
        xs, good = self.inputs(cell), cell.zero_state(self.batch)
        first = next(iter(cell.state_spec))
        wrong = {"missing part": {k: v for k, v in good.items() if k != first},
                 "extra part": {**good, "not_a_part": good[first]},
                 "wrong shape": {**good, first: torch.zeros(self.batch, 99, dtype=self.dtype)},
                 "wrong batch": {k: v[:1].expand(self.batch + 1, *v.shape[1:]) for k, v in good.items()},
                 "wrong dtype": {**good, first: good[first].to(self._other_dtype)},
                 "wrong device": {**good, first: good[first].to("meta")}}
        for what, state in wrong.items():
            with pytest.raises(ShapeError):
                unroll(cell, xs, state)
            with pytest.raises(ShapeError):
                step(cell, xs[0], state)

    def test_zero_state_honours_dtype_and_device(self, cell: Cell) -> None:
        """``zero_state`` is zeros of each declared shape, in the cell's dtype or the one asked for, where asked."""
        for kwargs, dtype, device in (({}, self.dtype, "cpu"), ({"dtype": self._other_dtype}, self._other_dtype, "cpu"),
                                      ({"device": "meta"}, self.dtype, "meta")):
            state = cell.zero_state(2, **kwargs)
            assert set(state) == set(cell.state_spec)
            for part, shape in cell.state_spec.items():
                value = state[part]
                assert tuple(value.shape) == (2, *shape) and value.dtype == dtype and value.device.type == device, \
                    f"zero_state(2, {kwargs}) gave '{part}' {tuple(value.shape)} {value.dtype} on {value.device}"
                if device != "meta":
                    assert bool((value == 0).all())

    # ------------------------------------------------------------------ copies
    def test_deepcopy_gives_the_same_numbers_and_owns_its_weights(self, cell: Cell) -> None:
        """A deepcopy unrolls like the original, and changing the original's weights afterwards leaves it alone."""
        xs, state0 = self.inputs(cell), random_state(cell.state_spec, self.batch, self.dtype)
        with torch.no_grad():
            before = unroll(cell, xs, state0)
            twin = copy.deepcopy(cell)
            for p in cell.parameters():
                p.mul_(1.5)
            after = unroll(twin, xs, state0)
        assert_close(after.outputs, before.outputs, "a deepcopy's outputs")
        assert_states_close(after.final_state, before.final_state, "a deepcopy's final state")

    def test_state_dict_round_trip_gives_the_same_numbers(self, cell: Cell, make_cell: Callable[[int], Cell]) -> None:
        """A cell built with another seed, loaded with ``state_dict()``, unrolls like the original."""
        xs, state0 = self.inputs(cell), random_state(cell.state_spec, self.batch, self.dtype)
        other = make_cell(1)
        other.load_state_dict(cell.state_dict())
        with torch.no_grad():
            want, got = unroll(cell, xs, state0), unroll(other, xs, state0)
        assert_close(got.outputs, want.outputs, "outputs after load_state_dict")
        assert_states_close(got.final_state, want.final_state, "final state after load_state_dict")

    # ------------------------------------------------------------------ in models
    def pytest_generate_tests(self, metafunc: Any) -> None:
        """One test per registered topology and initial-state policy."""
        for argument, kind in (("topology_name", "topology"), ("policy_name", "initial_state")):
            if argument in metafunc.fixturenames:
                metafunc.parametrize(argument, _common.registry().names(kind))

    def _model(self, registry: Registry, topology: dict[str, Any] | None = None,
               policy: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> Any:
        config = _common.model_config(registry, self.cell_spec, topology, policy)
        try:
            return _common.build(registry, config, self.input_size, dtype or self.dtype)
        except ShapeError as exc:
            # a cell with a fixed input size cannot read another layer's outputs: it must say so, clearly
            assert "input" in str(exc), f"building the model failed with an unclear ShapeError: {exc}"
            pytest.skip(f"the cell cannot be built into this model: {exc}")

    def test_works_under_every_registered_topology(self, registry: Registry, topology_name: str) -> None:
        """Each sequence of a ragged batch gives what it gives alone, gradients reach the cell, and a topology that
        can be stepped steps like it runs."""
        model = self._model(registry, _common.spec_for("topology", topology_name, self.topology_params))
        batch = _common.Batch(model, self.steps, self.batch, self.dtype, lengths=[self.steps, 2, 4][:self.batch])
        traj = batch.run(model)
        assert traj.outputs.shape == (self.steps, self.batch, model.output_size)
        assert set(traj.final_state) == set(model.state_spec)
        assert batch.lengths is not None
        for b in range(self.batch):
            n = int(batch.lengths[b])
            with torch.no_grad():
                alone = batch.select(b).run(model)
            assert_close(traj.outputs[:n, b:b + 1], alone.outputs, f"{topology_name}: sequence {b} alone vs in "
                                                                    f"the batch", scale=100)
            assert_states_close({k: v[b:b + 1] for k, v in traj.final_state.items()}, alone.final_state,
                                f"{topology_name}: final state of sequence {b}", scale=100)
        cell_params = [p for m in model.modules() if isinstance(m, Cell) for p in m.parameters() if p.requires_grad]
        if cell_params:
            traj.outputs.square().sum().backward()
            assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in cell_params), \
                f"{topology_name}: no gradient reached the cell's parameters"
        try:
            stepper = model.step_cell()
        except StatesimError:
            return  # this topology needs the whole sequence
        full = _common.Batch(model, self.steps, self.batch, self.dtype)
        with torch.no_grad():
            state0 = model.initial(self.batch, inputs=full.inputs)
            want = model(full.inputs, state0)
            got = hand_loop(stepper, full.inputs, state0)
        assert_close(got[0], want.outputs, f"{topology_name}: its step cell vs its run", scale=100)

    def test_works_under_every_registered_initial_state_policy(self, registry: Registry, policy_name: str) -> None:
        """The model run from each policy's state equals the cell unrolled from that state; gradients flow."""
        spec = _common.spec_for("initial_state", policy_name, self.policy_params)
        model = self._model(registry, None, spec)
        needs = type(model.initial_state).needs
        if needs - {"encoding"}:
            pytest.skip(f"the policy needs {sorted(needs)}, which this suite does not know how to give")
        xs = self.inputs(model.topology.as_cell())
        encoded = torch.randn(self.batch, spec.get("encoded_size", 3), dtype=self.dtype) if needs else None
        state = model.initial(self.batch, inputs=xs, encoded=encoded)
        for part, shape in model.state_spec.items():
            assert state[part].shape == (self.batch, *shape) and state[part].dtype == self.dtype, \
                f"{policy_name}: initial '{part}' is {tuple(state[part].shape)} {state[part].dtype}"
        traj = model(xs, state)
        with torch.no_grad():
            truth = hand_loop(model.step_cell(), xs, state)
        assert_close(traj.outputs, truth[0], f"{policy_name}: the model from its initial state")
        if any(p.requires_grad for p in model.initial_state.parameters()):
            model(xs, encoded=encoded).outputs.square().sum().backward()
            assert all(p.grad is not None for p in model.initial_state.parameters() if p.requires_grad), \
                f"{policy_name}: its parameters get no gradient through the cell"

    # ------------------------------------------------------------------ hosts
    @pytest.mark.parametrize("fast", [True, False], ids=["numpy", "torch"])
    def test_embedded_equals_engine(self, registry: Registry, fast: bool) -> None:
        """``statesim.embed`` stepping the cell's model for :attr:`long_steps` ticks gives the engine's numbers."""
        from statesim.embed import EmbeddedModel

        model = self._model(registry, dtype=torch.float32)
        xs = torch.randn(self.long_steps, self.batch, model.input_size, generator=torch.Generator().manual_seed(3))
        state0 = random_state(model.state_spec, self.batch, torch.float32)
        with torch.no_grad(), fastpath.policy("generic"):
            truth = model(xs, state0)
        sim = EmbeddedModel(model, batch_size=self.batch, fast=fast)
        sim.set_state(state0)
        outputs = sim.rollout(xs.numpy())
        np.testing.assert_allclose(outputs, truth.outputs.numpy(), atol=self.long_atol, rtol=0)
        for part, value in sim.get_state().items():
            np.testing.assert_allclose(value, truth.final_state[part].numpy(), atol=self.long_atol, rtol=0,
                                       err_msg=f"embedded final state '{part}'")

    @pytest.mark.slow  # seconds per export (torch.onnx); the fast lane runs the embed check over as many steps
    def test_onnx_export_equals_engine(self, registry: Registry, tmp_path: Any) -> None:
        """The ONNX export, run by onnxruntime for :attr:`long_steps` steps, gives the engine's numbers."""
        if not self.check_onnx:
            pytest.skip("check_onnx = False: the ONNX export of this cell is tested elsewhere")
        pytest.importorskip("onnxscript", reason="the statesim[export] extra is not installed")
        pytest.importorskip("onnxruntime", reason="the statesim[export] extra is not installed")
        from statesim.export import ExportedStep, export_model

        model = self._model(registry, dtype=torch.float32)
        runner = ExportedStep(export_model(model, tmp_path / "step.onnx", "onnx"))
        xs = torch.randn(self.long_steps, self.batch, model.input_size, generator=torch.Generator().manual_seed(4))
        state0 = random_state(model.state_spec, self.batch, torch.float32)
        with torch.no_grad():
            truth = model(xs, state0)
        state = {k: v.numpy() for k, v in state0.items()}
        outputs = []
        for x in xs.numpy():
            y, state = runner(x, state)
            outputs.append(y)
        np.testing.assert_allclose(np.stack(outputs), truth.outputs.numpy(), atol=self.long_atol, rtol=0)
        for part in model.state_spec:
            np.testing.assert_allclose(state[part], truth.final_state[part].numpy(), atol=self.long_atol, rtol=0,
                                       err_msg=f"exported final state '{part}'")
