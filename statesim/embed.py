"""Embed a trained model in a host simulation: the host owns the clock, statesim steps one tick per call.

::

    import statesim.embed

    sim = statesim.embed.load("runs/my-run")          # a run folder, or a checkpoint's .json/.safetensors
    sim.reset(batch_size=4)                           # the model's initial-state policy, or any registered one
    for tick in range(1000):
        y = sim.step(x)                               # x [4, input_size] -> y [4, output_size]; NumPy or torch
        saved = sim.save_state()                      # read / save / restore / overwrite state by named part
        sim.force("h", 0.0, units=[0, 1], steps=1)    # clamp units for the next step (steps=None: until released)

Loading is :func:`statesim.runfolder.load_model`'s: the model is rebuilt through the plugin registry from
the model description stored with the checkpoint (or the run's ``config.yaml``) and its weights come from
the verified safetensors file; no trainer or optimizer is built. Stepping is inference only, thread-safe
per instance (one lock), and gives the numbers of :func:`statesim.engine.unroll` over the same inputs,
forcing included.

Fast path: when the step cell offers :meth:`~statesim.cell.Cell.numpy_step`, the state lives in NumPy
arrays and each tick is a handful of NumPy calls (no torch dispatch). Otherwise, or with ``fast=False``,
each tick is one :meth:`statesim.engine.Stepper.step` of a stepper prepared once (and prepared again only
when the clamps change), so a tick costs about one call of the cell.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from statesim import engine
from statesim.cell import Cell, NumpyStep, device_and_dtype
from statesim.errors import EmbedError, NotSteppableError, StatesimError
from statesim.forcing import Clamp, Forcing, ForcingValue
from statesim.kernelcheck import numpy_step_mismatch, warn_mismatch
from statesim.model import InitialState, Memory, SequenceModel
from statesim.registry import Registry
from statesim.runfolder import load_model

# load_model moved to statesim.runfolder and stays importable here because docs/reliability.md documents
# statesim.embed.load_model; EmbedError lives in statesim.errors so that runfolder can raise it too.
__all__ = ["EmbedError", "EmbeddedModel", "StateSnapshot", "load", "load_model"]


@dataclass(frozen=True)
class StateSnapshot:
    """A saved state: every named part (``[B, *shape]`` NumPy copies) and the step counter it belongs to.

    >>> import numpy as np, torch, statesim, statesim.embed
    >>> from statesim.config import validate_model
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
    >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
    ...                                  batch_size=2, registry=registry)
    >>> snapshot = sim.save_state()
    >>> snapshot.batch_size, snapshot.t, sorted(snapshot.state)
    (2, 0, ['c', 'h'])
    """

    state: dict[str, np.ndarray]
    t: int

    @property
    def batch_size(self) -> int:
        """Number of agents in the snapshot."""
        return next(iter(self.state.values())).shape[0]


def load(path: str | Path, *, job: str | None = None, weights: str = "auto", batch_size: int = 1,
         fast: bool = True, device: str | torch.device = "cpu", registry: Registry | None = None,
         input_size: int | None = None, output_size: int | None = None) -> "EmbeddedModel":
    """Load a finished run (or a checkpoint) into a ready :class:`EmbeddedModel`, reset for ``batch_size`` agents.

    ``path``: a run folder, a checkpoint folder or one checkpoint's ``.json``/``.safetensors``; ``job``: which
    job of a run that trained several; ``weights``: ``"auto"`` (the model the run finished with: the best
    validated one under early stopping, else the last), ``"last"`` or ``"best"``; ``fast``: use the cell's NumPy
    kernel when it offers one (False: always torch); ``device``: where the torch path computes; ``registry``:
    the plugins to rebuild the model with (installed plugins when None); ``input_size``/``output_size``: only
    for checkpoints older than the sizes they record (see :func:`statesim.runfolder.load_model`).

    >>> import tempfile, numpy as np, torch, statesim, statesim.embed
    >>> from pathlib import Path
    >>> from statesim.config import TrainingConfig, validate_model
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
    >>> model = statesim.build_model(registry, config, input_size=2, output_size=1)
    >>> folder = Path(tempfile.mkdtemp())
    >>> data = statesim.DataSplits(statesim.SequenceData(torch.randn(20, 8, 2), torch.randn(20, 8, 1)))
    >>> statesim.Trainer(model, TrainingConfig(steps=2, batch_size=4), checkpoint_dir=folder).fit(data).steps
    2
    >>> sim = statesim.embed.load(folder, weights="last", batch_size=3, fast=False, registry=registry)
    >>> sim
    EmbeddedModel(LSTMCell, input_size=2, output_size=1, state={'h': (3,), 'c': (3,)}, batch_size=3, t=0, path=torch)
    >>> sim.step(np.zeros((3, 2))).shape
    (3, 1)
    """
    if registry is None:
        from statesim.plugin_manager import build_plugin_host

        registry = build_plugin_host().registry
    model, info = load_model(path, job=job, weights=weights, registry=registry, input_size=input_size,
                             output_size=output_size, device=device)
    return EmbeddedModel(model, batch_size=batch_size, fast=fast, registry=registry, source=info.path)


# --------------------------------------------------------------------------- the stepping object
class EmbeddedModel:
    """A trained model stepped one tick at a time by a host; the state (one row per agent) is kept inside.

    Made by :func:`load` (a run folder or checkpoint) or :func:`as_embedded` (a model in memory).

    >>> import numpy as np, torch, statesim, statesim.embed
    >>> from statesim.config import validate_model
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
    >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
    ...                                  batch_size=2, registry=registry)
    >>> for tick in range(10):
    ...     y = sim.step(np.ones((2, 2)))   # NumPy in, NumPy out: [agents, output_size]
    >>> y.shape, sim.t, sim.state_parts
    ((2, 1), 10, ['h', 'c'])
    """

    #: Above this many agents torch's vectorised kernels beat NumPy's per-element ufuncs, so the NumPy
    #: kernel is used only up to here (benchmarks/embedding_latency.py measures the crossover).
    #:
    #: >>> from statesim.embed import EmbeddedModel
    #: >>> EmbeddedModel.numpy_max_batch
    #: 512
    numpy_max_batch: int = 512

    def __init__(self, model: SequenceModel, *, batch_size: int = 1, fast: bool = True,
                 registry: Registry | None = None, source: Path | None = None) -> None:
        self.model = model
        #: The memory of the condition the agents were reset with (a conditioned model; None otherwise).
        self.memory: Memory | None = None
        try:
            self.cell: Cell | None = model.step_cell()
        except NotSteppableError:
            if model.encoder is None:
                raise
            self.cell = None  # an attending model is stepped once reset(condition=...) gave it a memory
        #: Token-id inputs ``[B]`` are embedded by the model before each step.
        self.tokens = model.embed is not None
        self.source = source
        self._registry = registry
        self._lock = threading.Lock()
        self.device, self.dtype = device_and_dtype(model)
        self._np_dtype = np.dtype(str(self.dtype).removeprefix("torch."))
        self.input_size, self.output_size = model.input_size, model.output_size
        self.state_spec: dict[str, tuple[int, ...]] = dict(model.state_spec)
        self._fast_requested = fast
        self._clamps: dict[int, Clamp] = {}
        self._stepper = engine.Stepper(self.cell) if self.cell is not None else None
        self._next_handle = 0
        self._t = 0
        self._batch = 0
        self._state: dict[str, Any] = {}
        self._kernel: NumpyStep | None = None
        self._numpy_kernel: NumpyStep | None = None
        self._head = self._numpy_head = None
        self._np_scaling: dict[str, np.ndarray | None] | None = None
        self.refresh()
        if model.encoder is None:
            self.reset(batch_size=batch_size)
        else:  # a conditioned model starts from its condition's memory: reset(condition=...) before stepping
            self._batch = int(batch_size)

    # ------------------------------------------------------------------ properties
    @property
    def fast(self) -> bool:
        """Whether steps run through the cell's NumPy kernel (True) or through torch and the engine.

        With ``fast=True`` the NumPy kernel is used when the cell offers one, the model is on the CPU and
        the batch has at most :attr:`numpy_max_batch` agents.

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> sim.fast
        True
        """
        return self._kernel is not None

    @property
    def batch_size(self) -> int:
        """Number of agents stepped together.

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> sim.reset(batch_size=5)
        >>> sim.batch_size
        5
        """
        return self._batch

    @property
    def t(self) -> int:
        """Steps taken since the last full reset (the global step index forcing windows refer to).

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> _ = sim.step(np.zeros((2, 2)))
        >>> sim.t
        1
        """
        return self._t

    @property
    def state_parts(self) -> list[str]:
        """Names of the state parts (``h``, ``c``, ``layer1.h`` ...).

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> sim.state_parts
        ['h', 'c']
        """
        return list(self.state_spec)

    def refresh(self) -> None:
        """Rebuild the NumPy kernels from the model's current weights (call after changing the weights or
        their ``requires_grad``).

        The NumPy kernel is a snapshot of the weights, checked against the torch step when it is built.

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> with torch.no_grad():
        ...     _ = sim.model.head.weight.zero_(), sim.model.head.bias.fill_(1.0)
        >>> sim.refresh()
        >>> sim.step(np.zeros((2, 2))).tolist()  # the new head's output, through the rebuilt NumPy kernel
        [[1.0], [1.0]]
        """
        with self._lock:
            self._tracks_grad = any(p.requires_grad for p in self.model.parameters())
            self._head_module = self.model.head
            kernel = None
            if self._fast_requested and self.device.type == "cpu" and self.cell is not None and not self.tokens:
                kernel = self.cell.numpy_step()
            if kernel is not None and self.cell is not None:  # checked on every refresh: a snapshot of these weights
                wrong = numpy_step_mismatch(self.cell, kernel)
                if wrong is not None:
                    warn_mismatch(self.cell, "numpy_step", wrong, "the torch step")
                    kernel = None
            head: Any = None
            if kernel is not None and self.model.head is not None:
                head = self.model.head
                if isinstance(head, nn.Linear):
                    weight = head.weight.detach().cpu().numpy().T.copy()
                    bias = None if head.bias is None else head.bias.detach().cpu().numpy().copy()
                    head = (weight, bias)
                # any other head is run through torch on the kernel's output
            self._numpy_kernel, self._numpy_head = kernel, head
            scaling = self.model.scaling
            #: The model's fixed z-scores as NumPy arrays (None: none), applied around the NumPy kernel.
            self._np_scaling = None if scaling is None else {
                name: None if value is None else value.detach().cpu().numpy().astype(self._np_dtype)
                for name, value in scaling.named_buffers()}
            self._choose_path(self._batch)

    def _choose_path(self, batch: int) -> None:
        """Use the NumPy kernel for this batch size or not, converting the stored state when that changes."""
        use = self._numpy_kernel is not None and batch <= self.numpy_max_batch
        was_fast = self._kernel is not None
        self._kernel = self._numpy_kernel if use else None
        self._head = self._numpy_head if use else None
        if self._state and was_fast != use:
            self._state = {k: self._store(v) for k, v in self._state.items()}

    # ------------------------------------------------------------------ conversions
    def _store(self, value: Any) -> Any:
        """A value in the internal representation (NumPy on the fast path, torch otherwise), as a copy."""
        if self._kernel is not None:
            if isinstance(value, Tensor):
                return value.detach().cpu().numpy().astype(self._np_dtype, copy=True)
            return np.array(value, dtype=self._np_dtype, copy=True)
        if isinstance(value, Tensor):
            return value.detach().to(self.device, self.dtype).clone()
        return torch.as_tensor(np.asarray(value), dtype=self.dtype, device=self.device).clone()

    def _export(self, value: Any, as_tensor: bool) -> Any:
        if isinstance(value, Tensor):
            return value.detach().clone() if as_tensor else value.detach().cpu().numpy().copy()
        return torch.from_numpy(value.copy()) if as_tensor else value.copy()

    def _check_part(self, part: str) -> None:
        if part not in self.state_spec:
            raise EmbedError(f"'{part}' is not a state part of this model; "
                             f"its parts are: {', '.join(self.state_spec)}.")

    def _full_part(self, part: str, value: Any, rows: int) -> Any:
        """``value`` broadcast to ``[rows, *shape]`` of ``part``, in the internal representation."""
        shape = (rows, *self.state_spec[part])
        stored = self._store(value)
        try:
            if isinstance(stored, Tensor):
                return stored.expand(shape).clone() if tuple(stored.shape) != shape else stored
            return np.broadcast_to(stored, shape).copy() if stored.shape != shape else stored
        except (RuntimeError, ValueError):
            raise EmbedError(f"a value of shape {list(stored.shape)} cannot fill state part '{part}' of shape "
                             f"{list(shape)} (give [{', '.join(map(str, self.state_spec[part]))}] for every agent "
                             f"or {list(shape)}).") from None

    # ------------------------------------------------------------------ reset and state
    def _initial(self, batch_size: int, initial_state: Any) -> dict[str, Any]:
        device, dtype = self.device, self.dtype
        values: dict[str, Any]
        if initial_state is None or initial_state == "model":
            try:
                with torch.no_grad():
                    values = self.model.initial(batch_size, memory=self.memory)
            except StatesimError as exc:
                if self.model.encoder is None or self.memory is not None:
                    raise
                raise EmbedError(f"this model's initial state comes from its condition: reset(batch_size, "
                                 f"condition=...) with what it is conditioned on ({exc})") from None
        elif isinstance(initial_state, InitialState):
            with torch.no_grad():
                values = initial_state(batch_size, device=device, dtype=dtype)
        elif isinstance(initial_state, str) or (isinstance(initial_state, Mapping) and "type" in initial_state):
            values = self._policy(initial_state)(batch_size, device=device, dtype=dtype)
        elif isinstance(initial_state, StateSnapshot):
            values = initial_state.state
        elif isinstance(initial_state, Mapping):
            unknown = set(initial_state) - set(self.state_spec)
            if unknown:
                raise EmbedError(f"initial_state names unknown state parts {sorted(unknown)}; the parts are "
                                 f"{', '.join(self.state_spec)} (missing parts start at zero).")
            values = {part: initial_state.get(part, np.zeros(shape)) for part, shape in self.state_spec.items()}
        else:
            raise EmbedError(f"initial_state must be None (the model's policy), a registered policy name or "
                             f"{{type: name, ...params}}, an InitialState, a StateSnapshot or {{part: values}}; "
                             f"got {type(initial_state).__name__}.")
        return {part: self._full_part(part, values[part], batch_size) for part in self.state_spec}

    def _policy(self, spec: str | Mapping[str, Any]) -> InitialState:
        from pydantic import ValidationError

        if self._registry is None:
            from statesim.plugin_manager import build_plugin_host

            self._registry = build_plugin_host().registry
        spec = {"type": spec} if isinstance(spec, str) else dict(spec)
        name = spec.pop("type")
        try:
            entry = self._registry.get("initial_state", name).record
        except KeyError as exc:
            raise EmbedError(str(exc.args[0])) from None
        try:
            params = entry.params.model_validate(spec)
        except ValidationError as exc:
            raise EmbedError(f"initial-state policy '{name}': {exc.errors()[0]['msg']} "
                             f"({'.'.join(map(str, exc.errors()[0]['loc']))}).") from None
        return entry.cls.from_params(self.state_spec, params).to(self.device)

    def reset(self, batch_size: int | None = None, initial_state: Any = None, *,
              agents: Sequence[int] | np.ndarray | None = None, condition: Any = None,
              condition_lengths: Any = None) -> None:
        """Start over: a fresh state from ``initial_state`` and the step counter at 0.

        ``initial_state``: None (the model's own policy), a registered policy name (``"zeros"``,
        ``"random"``) or ``{"type": "random", "scale": 0.5}``, an :class:`InitialState`, a
        :class:`StateSnapshot`, or ``{part: values}``. With ``agents``, only those rows are reset (an
        episode ended for some agents) and the step counter keeps running. ``condition`` (a conditioned
        model: one per agent, on dim 1, e.g. a source sentence ``[S, B]``) is encoded once; its memory
        starts the state and, for an attending model, is read at every step.

        A partial state: ``{part: values}`` need not name every part; the parts it leaves out start at zero
        (not at the model's policy). A value is ``[*shape]`` (the same for every agent) or ``[B, *shape]``.
        Together with ``agents``, only those rows get the new state; the other agents keep theirs.

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> sim.reset(batch_size=3, initial_state={"h": np.full(3, 0.5)})   # c starts at zero
        >>> sim.get_state("h")[0].tolist(), sim.get_state("c")[0].tolist()
        ([0.5, 0.5, 0.5], [0.0, 0.0, 0.0])
        >>> sim.reset(agents=[2], initial_state="zeros")                    # only agent 2 starts over
        >>> sim.get_state("h")[:, 0].tolist()
        [0.5, 0.5, 0.0]
        """
        with self._lock:
            if condition is not None:
                if agents is not None:
                    raise EmbedError("reset(condition=...) conditions every agent; reset all of them at once.")
                condition = torch.as_tensor(np.asarray(condition) if not isinstance(condition, Tensor) else condition)
                lengths = None if condition_lengths is None else torch.as_tensor(np.asarray(condition_lengths))
                with torch.no_grad():
                    self.memory = self.model.encode(condition.to(self.device), lengths)
                    self.cell = self.model.step_cell(self.memory)
                self._prepare()
                batch_size = int(self.memory.encoded.shape[0])
            if self.cell is None:
                raise EmbedError("this model reads its condition's memory at every step: reset(condition=...) first.")
            if agents is not None:
                if batch_size is not None and batch_size != self._batch:
                    raise EmbedError("reset(agents=...) keeps the batch; do not pass a different batch_size.")
                rows = np.asarray(agents, dtype=np.int64).reshape(-1)
                if rows.size and (rows.min() < -self._batch or rows.max() >= self._batch):
                    raise EmbedError(f"agents {rows.tolist()} out of range for a batch of {self._batch}.")
                fresh = self._initial(len(rows), initial_state)
                for part, value in fresh.items():
                    self._write_rows(part, rows, value)
                return
            batch = self._batch if batch_size is None else int(batch_size)
            if batch <= 0:
                raise EmbedError(f"batch_size must be positive, got {batch}.")
            self._batch = batch
            self._choose_path(batch)
            self._state = self._initial(batch, initial_state)
            self._t = 0 if not isinstance(initial_state, StateSnapshot) else initial_state.t
            # Clamps for a number of steps end with the episode; clamps until released carry over.
            self._clamps = {h: c for h, c in self._clamps.items() if c.stop is None}
            for clamp in self._clamps.values():
                clamp.start = min(clamp.start, self._t)
            self._prepare()

    def _write_rows(self, part: str, rows: Any, value: Any) -> None:
        current = self._state[part]
        if isinstance(current, Tensor):
            current = current.clone()
            current[torch.as_tensor(rows, device=current.device)] = value
        else:
            current = current.copy()  # never write into an array a previous step returned
            current[rows] = value
        self._state[part] = current

    def get_state(self, part: str | None = None, *, as_tensor: bool = False) -> Any:
        """A copy of one state part ``[B, *shape]`` or of all of them (dict); NumPy unless ``as_tensor``.

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> sim.get_state("c").shape, type(sim.get_state("h", as_tensor=True)).__name__
        ((2, 3), 'Tensor')
        """
        with self._lock:
            if part is not None:
                self._check_part(part)
                return self._export(self._state[part], as_tensor)
            return {name: self._export(value, as_tensor) for name, value in self._state.items()}

    @property
    def state(self) -> dict[str, np.ndarray]:
        """A copy of every state part, as NumPy arrays.

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> {part: value.shape for part, value in sim.state.items()}
        {'h': (2, 3), 'c': (2, 3)}
        """
        return self.get_state()

    def set_state(self, part: str | Mapping[str, Any], value: Any = None, *,
                  agents: Sequence[int] | np.ndarray | None = None) -> None:
        """Overwrite a state part (or several: ``set_state({"h": ..., "c": ...})``), for all or chosen agents.

        A value ``[*shape]`` is broadcast to every chosen agent.

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> sim.set_state("h", [1.0, 2.0, 3.0], agents=[1])
        >>> sim.get_state("h").tolist()
        [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]
        """
        updates = dict(part) if isinstance(part, Mapping) else {part: value}
        with self._lock:
            for name in updates:
                self._check_part(name)
            for name, new in updates.items():
                if agents is None:
                    self._state[name] = self._full_part(name, new, self._batch)
                else:
                    rows = np.asarray(agents, dtype=np.int64).reshape(-1)
                    self._write_rows(name, rows, self._full_part(name, new, len(rows)))

    def save_state(self) -> StateSnapshot:
        """A snapshot of the whole state and the step counter, for :meth:`restore_state`.

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> snapshot = sim.save_state()
        >>> snapshot.t, snapshot.state["h"].shape
        (0, (2, 3))
        """
        with self._lock:
            return StateSnapshot({k: self._export(v, False) for k, v in self._state.items()}, self._t)

    def restore_state(self, snapshot: StateSnapshot) -> None:
        """Go back to a snapshot (its batch size, state and step counter).

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> snapshot = sim.save_state()
        >>> first = sim.rollout(np.ones((5, 2, 2)))
        >>> sim.restore_state(snapshot)
        >>> np.array_equal(sim.rollout(np.ones((5, 2, 2))), first), sim.t
        (True, 5)
        """
        if not isinstance(snapshot, StateSnapshot):
            raise EmbedError(f"restore_state takes what save_state returned, got {type(snapshot).__name__}.")
        self.reset(batch_size=snapshot.batch_size, initial_state=snapshot)

    # ------------------------------------------------------------------ forcing
    def force(self, target: str, value: ForcingValue, *, units: Sequence[int] | None = None,
              steps: int | None = 1) -> int:
        """Clamp ``units`` of ``target`` (``"input"`` or a state part) to ``value`` for the next ``steps`` steps.

        ``steps=None`` keeps the clamp until :meth:`release`. Semantics are :mod:`statesim.forcing`'s: the
        clamp replaces what the cell reads (the input ``x_t`` or the state entering the step); the
        stored state is what the dynamics produce. ``value`` may be a constant, one value per unit, an
        array ``[B, units]``, or a function of the global step index ``t``. Returns a handle for release. A NaN
        in the value leaves that agent's unit free.

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> lesion = sim.force("h", 0.0, units=[0], steps=None)      # until released
        >>> kick = sim.force("input", [[1.0], [np.nan]], units=[1])   # next step, agent 0 only
        >>> [(clamp.target, clamp.start, clamp.stop) for clamp in sim.forcing.clamps]
        [('h', 0, None), ('input', 0, 1)]
        >>> sim.step(np.zeros((2, 2))).shape
        (2, 1)
        """
        with self._lock:
            if target != "input":
                self._check_part(target)
            if steps is not None and int(steps) <= 0:
                raise EmbedError(f"steps must be positive (or None for 'until released'), got {steps}.")
            clamp = Clamp(target, value, None if units is None else [int(u) for u in units], self._t,
                          None if steps is None else self._t + int(steps))
            try:  # apply it once to a dummy of the right shape, so a bad clamp fails here, not mid-run
                probe = Forcing([clamp])
                if target == "input":
                    probe.apply_to_inputs(torch.zeros(1, self._batch, self.input_size, dtype=self.dtype), self._t)
                else:
                    dummy = torch.zeros(self._batch, *self.state_spec[target], dtype=self.dtype)
                    probe.apply_to_state({target: dummy}, self._t)
            except (ValueError, RuntimeError, IndexError, TypeError) as exc:
                raise EmbedError(f"cannot force '{target}': {exc}") from None
            handle = self._next_handle
            self._next_handle += 1
            self._clamps[handle] = clamp
            self._prepare()
            return handle

    def release(self, handle: int | str | None = None) -> None:
        """End clamps: one by handle, all of one target by name, or all (None).

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> handle = sim.force("h", 0.0, steps=None)
        >>> _ = sim.force("c", 0.0, steps=None)
        >>> sim.release(handle)
        >>> [clamp.target for clamp in sim.forcing.clamps]
        ['c']
        >>> sim.release()
        >>> bool(sim.forcing)
        False
        """
        with self._lock:
            if handle is None:
                self._clamps.clear()
            elif isinstance(handle, str):
                self._clamps = {h: c for h, c in self._clamps.items() if c.target != handle}
            elif handle in self._clamps:
                del self._clamps[handle]
            self._prepare()

    def _prepare(self) -> None:
        """A stepper holding the clamps in force now and scheduled (called when they or the cell change)."""
        if self.cell is not None:
            self._stepper = engine.Stepper(self.cell, forcing=Forcing(list(self._clamps.values())))

    @property
    def forcing(self) -> Forcing:
        """The clamps in force now (and scheduled), as an engine :class:`Forcing`.

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> _ = sim.force("input", 0.0, units=[1], steps=3)
        >>> [(c.target, c.start, c.stop) for c in sim.forcing.clamps]
        [('input', 0, 3)]
        """
        with self._lock:
            return Forcing(list(self._clamps.values()))

    def _drop_expired(self) -> None:
        """Forget clamps whose window has passed (the stepper would skip them; this keeps it lean)."""
        expired = [h for h, c in self._clamps.items() if c.stop is not None and c.stop <= self._t]
        for h in expired:
            del self._clamps[h]
        if expired:
            self._prepare()

    # ------------------------------------------------------------------ stepping
    def _as_tokens(self, x: Any) -> tuple[Tensor, bool, bool]:
        is_tensor = isinstance(x, Tensor)
        ids = torch.as_tensor(x.detach() if is_tensor else np.asarray(x), device=self.device)
        single = ids.dim() == 0
        ids = ids.reshape(1) if single else ids
        if ids.dim() != 1 or ids.shape[0] != self._batch or ids.is_floating_point():
            raise EmbedError(f"this model reads token ids: step expects x of shape [{self._batch}] (one integer id "
                             f"per agent), got {list(ids.shape)} of {ids.dtype}.")
        with torch.no_grad():
            return self.model.read_in(ids.long()), is_tensor, single

    def _as_batch(self, x: Any) -> tuple[Any, bool, bool]:
        if self.tokens:
            return self._as_tokens(x)
        is_tensor = isinstance(x, Tensor)
        if is_tensor:
            if x.requires_grad:
                x = x.detach()
        elif self._kernel is not None:
            x = np.asarray(x, dtype=self._np_dtype)
        else:
            x = torch.tensor(np.asarray(x), dtype=self.dtype, device=self.device)
        single = x.ndim == 1
        if single:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[0] != self._batch or x.shape[1] != self.input_size:
            want = f"[{self._batch}, {self.input_size}]" + (f" or [{self.input_size}]" if self._batch == 1 else "")
            raise EmbedError(f"step expects x of shape {want} (batch of {self._batch} agents, "
                             f"input_size {self.input_size}), got {list(x.shape)}. Call reset(batch_size=...) "
                             f"to change the number of agents.")
        if single and self._batch != 1:
            raise EmbedError(f"a 1-D x is accepted only for a single agent; this instance steps {self._batch}.")
        return x, is_tensor, single

    def step(self, x: Any) -> Any:
        """One tick for every agent: ``x [B, input_size]`` (or ``[input_size]`` for one agent) -> ``y``.

        NumPy (or anything array-like) in gives NumPy out; a torch tensor in gives a tensor out. Inference only:
        no autograd graph is built. Calling the instance is the same.

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> sim.step(np.zeros((2, 2))).shape, sim(torch.zeros(2, 2)).shape
        ((2, 1), torch.Size([2, 1]))
        """
        with self._lock:
            if not self._state:
                raise EmbedError("this model is conditioned: reset(condition=...) with what the agents are "
                                 "conditioned on (a source sentence, an image) before the first step.")
            x, is_tensor, single = self._as_batch(x)
            if self._clamps:
                self._drop_expired()
            y: np.ndarray | Tensor
            if self._kernel is not None:
                y = self._step_numpy(x.cpu().numpy().astype(self._np_dtype, copy=False) if is_tensor else x)
            else:
                if is_tensor and (x.dtype != self.dtype or not (x.is_cpu and self.device.type == "cpu")
                                  and x.device != self.device):
                    x = x.to(self.device, self.dtype)
                if self._tracks_grad:  # some weight requires grad: keep autograd from recording the ticks
                    with torch.no_grad():
                        y = self._step_torch(x)
                else:
                    y = self._step_torch(x)
            self._t += 1
        if single:
            y = y[0]
        if is_tensor:
            return torch.from_numpy(y) if isinstance(y, np.ndarray) else y
        return y if isinstance(y, np.ndarray) else y.cpu().numpy()

    __call__ = step

    def _step_numpy(self, x: np.ndarray) -> np.ndarray:
        scaling = self._np_scaling
        if scaling is None:
            return self._kernel_step(x)
        if scaling["input_mean"] is not None:
            x = (x - scaling["input_mean"]) / scaling["input_std"]
        y = self._kernel_step(x)
        return y if scaling["output_mean"] is None else y * scaling["output_std"] + scaling["output_mean"]

    def _kernel_step(self, x: np.ndarray) -> np.ndarray:
        state = self._state
        kernel, stepper = self._kernel, self._stepper
        assert kernel is not None and stepper is not None  # step() chose this path; reset built the stepper
        forcing = stepper.forcing
        if forcing:  # the stepper's clamps, by the engine's forcing rules, on zero-copy torch views
            xt = forcing.apply_to_inputs(torch.from_numpy(x).unsqueeze(0), self._t)[0]
            x = xt.numpy()
            read = forcing.apply_to_state({k: torch.from_numpy(v) for k, v in state.items()}, self._t)
            state = {k: v.numpy() for k, v in read.items()}
        y, new_state = kernel(x, state)
        self._state = new_state
        head = self._head
        if head is None:
            for value in new_state.values():
                if y is value:  # the caller may write into y; the state must not change with it
                    return y.copy()
            return y
        if isinstance(head, tuple):
            out = y @ head[0]
            if head[1] is not None:
                out += head[1]
            return out
        with torch.no_grad():
            return head(torch.from_numpy(y)).numpy()

    def _step_torch(self, x: Tensor) -> Tensor:
        assert self._stepper is not None  # step() checked reset gave the model its cell (and so a stepper)
        if self.model.scaling is not None:
            x = self.model.scaling.inputs(x)
        if self._batch <= self.numpy_max_batch:
            # x was checked against the batch, and the state is ours (reset/set_state check it): no re-check
            y, state = self._stepper.tick(x, self._state, self._t)
        else:  # many agents: the stepper's whole-sequence paths (fused kernels) beat one call per tick
            traj = self._stepper.run(x.unsqueeze(0), self._state, t0=self._t)
            y, state = traj.outputs[0], traj.final_state
        self._state = state
        if self._head_module is not None or self.model.scaling is not None:
            return self.model.read_out(y)
        for value in state.values():
            if y is value:  # y_t = h_t: the caller may write into y; the state must not change with it
                return y.clone()
        return y

    def rollout(self, inputs: Any) -> Any:
        """Step through ``inputs [T, B, input_size]`` and stack the outputs ``[T, B, output_size]``.

        The numbers of :func:`statesim.unroll` over the same inputs (up to float rounding).

        >>> import numpy as np, torch, statesim, statesim.embed
        >>> from statesim.config import validate_model
        >>> registry = statesim.build_plugin_host(autoload=False).registry
        >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
        >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
        ...                                  batch_size=2, registry=registry)
        >>> outputs = sim.rollout(np.ones((20, 2, 2)))
        >>> expected = sim.model(torch.ones(20, 2, 2)).outputs.detach().numpy()
        >>> outputs.shape, np.allclose(outputs, expected, atol=1e-5)
        ((20, 2, 1), True)
        """
        outputs = [self.step(x_t) for x_t in inputs]
        return torch.stack(outputs) if outputs and isinstance(outputs[0], Tensor) else np.stack(outputs)

    def __repr__(self) -> str:
        cell = type(self.cell).__name__ if self.cell is not None else "not yet conditioned"
        return (f"EmbeddedModel({cell}, input_size={self.input_size}, output_size={self.output_size}, "
                f"state={dict(self.state_spec)}, batch_size={self._batch}, t={self._t}, "
                f"path={'numpy' if self.fast else 'torch'})")


def as_embedded(model: SequenceModel, *, batch_size: int = 1, fast: bool = True,
                registry: Registry | None = None) -> EmbeddedModel:
    """Wrap an in-memory model (just built or trained) for stepping; weights are snapshotted for the fast path.

    After changing the model's weights in place, call :meth:`EmbeddedModel.refresh`.

    >>> import numpy as np, torch, statesim, statesim.embed
    >>> from statesim.config import validate_model
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
    >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2, output_size=1),
    ...                                  batch_size=2, registry=registry)
    >>> sim.batch_size, sim.input_size, sim.output_size, sim.fast
    (2, 2, 1, True)
    """
    return EmbeddedModel(model, batch_size=batch_size, fast=fast, registry=registry)

