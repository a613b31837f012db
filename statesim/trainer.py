"""The one BPTT trainer every scenario shares.

Full BPTT builds one graph over each batch of whole sequences. Truncated BPTT (``k1``, ``k2``) walks
each batch in chunks of ``k1`` steps, carrying the state across chunks; each chunk is one optimizer
update whose graph starts ``k2 - k1`` steps before the chunk (``k2 >= k1``) from a detached state, so
gradients never reach further back than ``k2`` steps; a shorter last chunk reaches back the same
``k2 - k1`` steps. ``steps`` always counts optimizer updates.

A conditioned model (one with a conditioning encoder, e.g. an encoder-decoder) trains the same way: the
batch's ``condition`` is encoded once per graph (per chunk under truncated BPTT, so every update reaches
the encoder through the memory its chunk reads), and a deterministic initial state is recomputed in every
graph that starts at ``t = 0``; with ``k1 = k2 = T`` truncated BPTT is full BPTT.
"""
from __future__ import annotations

import copy
import math
import random
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from statesim.cell import State, constrained_cells
from statesim.checkpoint import list_checkpoints, load_checkpoint, prune_checkpoints, save_checkpoint
from statesim.config import TrainingConfig
from statesim.data import DataSplits, SequenceData, mse_loss
from statesim.errors import CheckpointError, TrainingError
from statesim.model import SequenceModel

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]
#: Scheduled sampling: the probability, at optimizer update ``step``, that a training step reads the model's
#: own previous prediction instead of the given token (a function of the step, so a resume continues it).
Sampling = Callable[[int], float]

#: Recent losses kept in memory and in checkpoints; the whole trace lives in metrics.jsonl, so memory and
#: checkpoint size stay flat however long a run is.
LOSS_WINDOW = 256


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C) after writing a checkpoint."""


@dataclass
class TrainResult:
    """What a training job achieved."""

    steps: int
    final_loss: float
    best_val_loss: float | None
    stopped_early: bool
    nonfinite_steps: int
    losses: list[float] = field(default_factory=list)  # the last LOSS_WINDOW losses; full trace in metrics.jsonl


# --------------------------------------------------------------------------- reproducibility
def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """RNG states of torch, numpy and random as checkpointable data."""
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]  # stub: dict
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"].to(torch.uint8))
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def module_generators(model: nn.Module) -> dict[str, torch.Generator]:
    """``torch.Generator`` attributes of every submodule (e.g. a seeded random initial state), by dotted name."""
    found: dict[str, torch.Generator] = {}
    for prefix, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Generator):
                found[f"{prefix}.{attr}" if prefix else attr] = value
    return found


# --------------------------------------------------------------------------- helpers
def make_optimizer(params: list[nn.Parameter], config: TrainingConfig) -> torch.optim.Optimizer:
    """The optimizer named in the config."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def lr_factor(config: TrainingConfig) -> Callable[[int], float]:
    """Multiplier of the base learning rate at update ``step``."""
    sched = config.schedule

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / sched.warmup_steps) if sched.warmup_steps else 1.0
        if sched.type == "constant":
            return warm
        if sched.type == "step":
            return warm * sched.gamma ** (step // sched.step_size)
        if sched.type == "exponential":
            return warm * sched.gamma ** (step / sched.step_size)
        progress = min(1.0, step / max(config.steps, 1))
        floor = sched.min_lr / config.lr
        return warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    return factor


def detach_state(state: State) -> State:
    """Cut the graph at a state (truncated BPTT borders)."""
    return {name: value.detach() for name, value in state.items()}


def clip_gradients(params: list[nn.Parameter], max_norm: float | None, max_value: float | None,
                   norm_type: float = 2.0) -> tuple[float, float]:
    """Clip by value then by global norm via ``torch.nn.utils``; return the norm before and after clipping."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0, 0.0

    def total_norm() -> float:
        return float(torch.nn.utils.get_total_norm([p.grad for p in grads if p.grad is not None], norm_type))

    before = total_norm()
    if max_value is not None:
        torch.nn.utils.clip_grad_value_(grads, max_value)
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(grads, max_norm, norm_type=norm_type)
    after = total_norm() if (max_value is not None or max_norm is not None) else before
    return before, after


# --------------------------------------------------------------------------- trainer
class _TrainerCounters(BaseModel):
    """Schema of a checkpoint's ``trainer`` entry: a mistyped value falls back like a corrupt file."""

    model_config = ConfigDict(extra="forbid", strict=True)
    step: int = Field(ge=0)
    nonfinite_steps: int = Field(ge=0)
    clipped_steps: int = Field(0, ge=0)
    norm_mean: float | None
    best_val: float | None
    stale_evals: int = Field(ge=0)
    losses: list[float]
    stop_requested: bool = False
    recent_nonfinite: list[bool] = []


class Trainer:
    """Fit a :class:`SequenceModel` to :class:`DataSplits` with (truncated) BPTT.

    With ``checkpoint_dir`` it checkpoints along the way and resumes from the newest good checkpoint.

    >>> import torch, statesim
    >>> from statesim.config import TrainingConfig, validate_model
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> config = validate_model({"cell": {"type": "gru", "hidden_size": 4}}, registry)
    >>> model = statesim.build_model(registry, config, input_size=1, output_size=1)
    >>> x = torch.randn(20, 16, 1)
    >>> data = statesim.DataSplits(statesim.SequenceData(x, 0.5 * x))
    >>> result = statesim.Trainer(model, TrainingConfig(steps=30, batch_size=8, lr=0.01)).fit(data)
    >>> result.steps, result.losses[-1] < result.losses[0]
    (30, True)
    """

    def __init__(self, model: SequenceModel, config: TrainingConfig, *, loss_fn: LossFn = mse_loss,
                 job: str = "main", checkpoint_dir: str | Path | None = None, config_digest: str = "",
                 device: torch.device | str = "cpu", seed: int = 0, log: Any = None,
                 should_stop: Callable[[], bool] = lambda: False,
                 on_update: Callable[["Trainer", dict[str, Any]], None] | None = None,
                 sampling: Sampling | None = None, dist: Any = None,
                 scenario_state: dict[str, Any] | None = None) -> None:
        self.model = model.to(device)
        # A statesim.distributed.DataParallel: shards each global batch and all-reduces the gradient.
        self.dist = dist
        self.config, self.loss_fn, self.job = config, loss_fn, job
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.config_digest, self.device, self.seed, self.log = config_digest, torch.device(device), seed, log
        self.should_stop = should_stop
        # Called after every optimizer update with its record (diagnostics, monitors); never changes training.
        self.on_update = on_update
        self.stop_requested = False  # an on_update callback may end training early (e.g. once a task is solved)
        # Scenario objects whose state affects results (a solve tracker's history): each has state_dict() and
        # load_state_dict(tree) and is checkpointed with the trainer, so a resume continues them exactly.
        self.scenario_state = dict(scenario_state or {})
        self.sampling = sampling
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:  # torch.optim would say only "optimizer got an empty parameter list"
            raise TrainingError(f"job '{job}': the model has no trainable parameter (its cell, topology, initial "
                                f"state and head are all fixed or parameter-free), so there is nothing to train. "
                                f"Use a cell with parameters, set the job's head: linear, or un-fix the cell's "
                                f"parameters (model.cell.fixed).")
        self.optimizer = make_optimizer(self.params, config)
        self.constrained = constrained_cells(self.model)  # looked up once, not on every update
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(config))
        self.order = torch.Generator().manual_seed(seed)
        self.step = 0
        self.epoch_perm: Tensor | None = None
        self.epoch_pos = 0
        self.nonfinite_steps = 0
        # Non-finite flags of the last nonfinite_window updates: skip/reduce_lr stop once too many pile up.
        self.recent_nonfinite: deque[bool] = deque(maxlen=config.nonfinite_window)
        self.warn: Callable[[str], None] = lambda message: None  # RunContext points it at the run's echo
        self.clipped_steps = 0
        self.norm_mean: float | None = None
        self.best_val: float | None = None
        self.best_state: dict[str, Tensor] | None = None
        self.stale_evals = 0
        self.losses: deque[float] = deque(maxlen=LOSS_WINDOW)

    # ------------------------------------------------------------------ batching
    def _next_batch(self, data: SequenceData) -> SequenceData:
        size = min(self.config.batch_size, len(data))
        lengths = data.lengths if self.config.batching == "by_length" else None
        by_length = lengths is not None
        if self.epoch_perm is None or self.epoch_pos + size > len(self.epoch_perm):
            self.epoch_perm = self._length_epoch(lengths, size) if lengths is not None \
                else torch.randperm(len(data), generator=self.order)
            self.epoch_pos = 0
        index = self.epoch_perm[self.epoch_pos:self.epoch_pos + size]
        self.epoch_pos += size
        if self.dist is not None:  # every rank drew the same global batch; each trains on its part
            index = self.dist.shard(index)
        batch = data.select(index)
        if by_length and batch.lengths is not None and bool((batch.lengths == batch.steps).all()):
            batch = replace(batch, lengths=None)  # all full: the unpadded path, same numbers
        return batch.to(self.device)

    def _length_epoch(self, lengths: Tensor, size: int) -> Tensor:
        """One epoch's order for ``batching: by_length``: whole batches of equal-length sequences, shuffled.

        Each length's sequences are shuffled and cut into full batches; what is left over of every length is
        pooled into mixed (padded) batches, so no sequence waits longer than in random batching. The batches are
        shuffled and concatenated, so consecutive slices of ``size`` are the batches and the epoch is a plain
        index order that checkpoints and resumes like a random one."""
        batches, rest = [], []
        for length in torch.unique(lengths):
            members = torch.nonzero(lengths == length).flatten()
            members = members[torch.randperm(len(members), generator=self.order)]
            whole = len(members) // size * size
            batches += [members[start:start + size] for start in range(0, whole, size)]
            rest.append(members[whole:])
        pooled = torch.cat(rest)
        if len(pooled) >= size:  # (no draw otherwise: the order of a set without leftovers stays as it was)
            pooled = pooled[torch.randperm(len(pooled), generator=self.order)]
            batches += [pooled[start:start + size] for start in range(0, len(pooled) // size * size, size)]
        order = torch.randperm(len(batches), generator=self.order)
        return torch.cat([batches[i] for i in order])

    # ------------------------------------------------------------------ one update
    def _loss(self, batch: SequenceData, outputs: Tensor, t0: int) -> Tensor:
        mask = batch.mask()
        skip = max(self.config.loss_from_step - t0, 0)
        if skip:
            mask = mask.clone()
            mask[:skip] = False
        return self.loss_fn(outputs, batch.targets, mask)

    def _update(self, loss: Tensor) -> dict[str, Any]:
        """Backward, clip, step: returns the logged record of this update."""
        clip = self.config.clip
        self.optimizer.zero_grad(set_to_none=True)
        # Distributed: the global batch's loss decides for every rank alike, and clipping sees the global gradient.
        global_loss = self.dist.reduce_loss(loss) if self.dist is not None else loss
        finite_loss = bool(torch.isfinite(global_loss))
        if finite_loss:
            loss.backward()
            if self.dist is not None:
                self.dist.reduce_gradients(self.params)
        max_norm = clip.max_norm
        if clip.adaptive is not None and self.norm_mean is not None:
            adaptive = clip.adaptive * self.norm_mean
            max_norm = adaptive if max_norm is None else min(max_norm, adaptive)
        before, after = clip_gradients(self.params, max_norm, clip.max_value, clip.norm_type) if finite_loss \
            else (float("nan"), float("nan"))
        record = {"job": self.job, "step": self.step + 1, "loss": float(global_loss.detach()), "grad_norm": before,
                  "grad_norm_clipped": after, "clipped": bool(finite_loss and after < before - 1e-12),
                  "lr": self.optimizer.param_groups[0]["lr"]}
        # Cumulative counts make the clipped fraction exact although only every log_every-th record is written.
        self.clipped_steps += int(record["clipped"])
        record["clipped_total"] = self.clipped_steps
        record["nonfinite_total"] = self.nonfinite_steps + int(not (finite_loss and math.isfinite(before)))
        self.recent_nonfinite.append(not (finite_loss and math.isfinite(before)))
        if not (finite_loss and math.isfinite(before)):
            self.nonfinite_steps += 1
            record["nonfinite"] = True
            if self.config.nonfinite == "abort":
                raise TrainingError(
                    f"job '{self.job}': non-finite {'loss' if not finite_loss else 'gradient'} "
                    f"at step {self.step + 1}. "
                    f"The last good checkpoint is kept in {self.checkpoint_dir or '(no checkpoint folder)'}. "
                    f"Lower training.lr, enable training.clip.max_norm, or set training.nonfinite: skip.")
            self._check_nonfinite_share()
            if self.config.nonfinite == "reduce_lr":
                self.scheduler.base_lrs = [lr * 0.5 for lr in self.scheduler.base_lrs]
                for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
                    group["lr"] = base * lr_factor(self.config)(self.step)
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            with torch.no_grad():  # each cell's declared projection, after every update (issue 19 item 8)
                for cell in self.constrained:
                    cell.constrain_parameters_()
            self.scheduler.step()
            self.norm_mean = before if self.norm_mean is None else 0.95 * self.norm_mean + 0.05 * before
        self.step += 1
        self.losses.append(record["loss"])
        if self.on_update is not None:  # right after this update, before the next chunk's forward
            self.on_update(self, record)
        return record

    def _check_nonfinite_share(self) -> None:
        """Warn as skipped updates pile up (1, 10, 100, ...); stop when too many recent ones were non-finite."""
        config, recent = self.config, self.recent_nonfinite
        bad = sum(recent)
        if len(recent) >= min(config.nonfinite_window, 10) and bad > config.nonfinite_max_fraction * len(recent):
            raise TrainingError(
                f"job '{self.job}': {bad} of the last {len(recent)} updates (up to step {self.step + 1}) had a "
                f"non-finite loss or gradient and were skipped (training.nonfinite: {config.nonfinite}), more than "
                f"training.nonfinite_max_fraction = {config.nonfinite_max_fraction:g}; the run is not learning. "
                f"The last good checkpoint is kept in {self.checkpoint_dir or '(no checkpoint folder)'}. Lower "
                f"training.lr or enable training.clip.max_norm (or raise nonfinite_max_fraction).")
        if str(self.nonfinite_steps).rstrip("0") == "1":  # the 1st, 10th, 100th, ...
            self.warn(f"warning: job '{self.job}': {self.nonfinite_steps} update(s) skipped so far for a non-finite "
                      f"loss or gradient ({bad} of the last {len(recent)}); training.nonfinite: {config.nonfinite}.")

    def _sampling(self) -> float:
        return self.sampling(self.step) if self.sampling is not None and self.model.training else 0.0

    def _initial(self, batch: SequenceData, memory: Any) -> State:
        return self.model.initial(len(batch), inputs=batch.inputs, lengths=batch.lengths, prefix=batch.prefix,
                                  memory=memory)

    def _encode(self, batch: SequenceData) -> Any:
        """The conditioning memory of a batch (None for an unconditioned model)."""
        return None if batch.condition is None else self.model.encode(batch.condition, batch.condition_lengths)

    def _train_batch(self, batch: SequenceData) -> list[dict[str, Any]]:
        """All updates for one batch: one (full BPTT) or one per chunk (truncated)."""
        self.model.train()
        bptt = self.config.bptt
        if bptt.mode == "full":
            traj = self.model(batch.inputs, lengths=batch.lengths, prefix=batch.prefix, condition=batch.condition,
                              condition_lengths=batch.condition_lengths, sampling=self._sampling())
            return [self._update(self._loss(batch, traj.outputs, 0))]
        k1 = bptt.k1 or batch.steps
        k2 = max(bptt.k2 or k1, k1)
        # A deterministic initial state is recomputed inside each graph that starts at t = 0, so the gradient
        # reaches the policy (and the encoder through it), as in full BPTT; a random one is drawn once per batch.
        fresh = self.model.initial_state.deterministic
        history: dict[int, State] = {}  # detached state entering each step
        if not fresh:
            with torch.no_grad():
                history[0] = detach_state(self._initial(batch, self._encode(batch)))
        records = []
        for start in range(0, batch.steps, k1):
            if self.step >= self.config.steps or self.stop_requested:
                break
            stop = min(start + k1, batch.steps)
            begin = max(start + k1 - k2, 0)  # k2 - k1 steps before the chunk (a short last chunk too)
            chunk = batch.window(begin, stop)
            memory = self._encode(batch)  # each update's graph reaches the encoder through its own encoding
            entering = self._initial(batch, memory) if begin == 0 and fresh else history[begin]
            traj = self.model(chunk.inputs, entering, lengths=chunk.lengths, t0=begin, return_states=k2 > k1,
                              memory=memory, sampling=self._sampling())
            outputs = traj.outputs[start - begin:]
            target = batch.window(start, stop)
            records.append(self._update(self._loss(target, outputs, start)))
            history[stop] = detach_state(traj.final_state)
            if k2 > k1:  # keep the states a later chunk's longer graph will start from
                for t in range(begin + 1, stop):
                    history[t] = {name: value[t - begin - 1].detach() for name, value in traj.states.items()}
            history = {t: s for t, s in history.items() if t >= max(stop + k1 - k2, 0)}
        return records

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, data: SequenceData) -> float:
        """Mean loss over a dataset, full sequences, no gradient."""
        self.model.eval()
        total, count = 0.0, 0
        for start in range(0, len(data), max(self.config.batch_size, 256)):
            batch = data.select(slice(start, start + max(self.config.batch_size, 256))).to(self.device)
            traj = self.model(batch.inputs, lengths=batch.lengths, prefix=batch.prefix, condition=batch.condition,
                              condition_lengths=batch.condition_lengths)
            total += float(self._loss(batch, traj.outputs, 0)) * len(batch)
            count += len(batch)
        return total / max(count, 1)

    # ------------------------------------------------------------------ checkpoints
    def state_tree(self) -> dict[str, Any]:
        """Everything needed to continue exactly where training stands."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": {"last_epoch": self.scheduler.last_epoch, "base_lrs": self.scheduler.base_lrs},
                "rng": rng_states(), "order": self.order.get_state(),
                # Generators a plugin keeps in its modules are part of the exact-resume state too.
                "generators": {name: gen.get_state() for name, gen in module_generators(self.model).items()},
                "epoch_perm": self.epoch_perm, "epoch_pos": self.epoch_pos,
                "trainer": {"step": self.step, "nonfinite_steps": self.nonfinite_steps, "norm_mean": self.norm_mean,
                            "clipped_steps": self.clipped_steps,
                            "best_val": self.best_val, "stale_evals": self.stale_evals, "losses": list(self.losses),
                            "stop_requested": self.stop_requested, "recent_nonfinite": list(self.recent_nonfinite)},
                "scenario": {name: obj.state_dict() for name, obj in self.scenario_state.items()},
                "best_model": self.best_state}

    def save(self) -> Path | None:
        """Write a checkpoint of the current step and prune old ones."""
        if self.checkpoint_dir is None or (self.dist is not None and not self.dist.is_writer):
            return None
        path = save_checkpoint(self.checkpoint_dir / f"step_{self.step:08d}", self.state_tree(), step=self.step,
                               config_digest=self.config_digest,
                               meta={"job": self.job, "model": getattr(self.model, "build_spec", None)})
        prune_checkpoints(self.checkpoint_dir, self.config.keep_checkpoints)
        return path

    def restore(self, warn: Callable[[str], None] = print) -> bool:
        """Load the newest good checkpoint of this job, if any; refuse one from a different config.

        A checkpoint that fails to verify or to apply (a tree of the wrong shape) is reported through ``warn``
        and the previous one is tried, as for damaged weights.
        """
        if self.checkpoint_dir is None:
            return False
        touched = None
        for sidecar in reversed(list_checkpoints(self.checkpoint_dir)):
            try:
                tree, info = load_checkpoint(sidecar)
            except CheckpointError as exc:
                warn(f"{exc} Falling back to the previous checkpoint.")
                continue
            if self.config_digest and info.config_digest != self.config_digest:
                raise CheckpointError(f"checkpoint {info.path} was written by a different config "
                                      f"(digest {info.config_digest}, now {self.config_digest}).")
            try:
                touched = sidecar
                self._apply(tree, info)
                return True
            except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
                warn(f"checkpoint {sidecar} cannot be restored ({type(exc).__name__}: {exc}). "
                     f"Falling back to the previous checkpoint.")
        if touched is not None:  # a failed apply may have changed some of the state: never train on from it
            raise CheckpointError(f"no checkpoint in {self.checkpoint_dir} could be restored (the newest tried "
                                  f"was {touched}); move the folder away and start a new run.")
        return False

    def _apply(self, tree: dict[str, Any], info: Any) -> None:
        """Set every piece of training state from a verified checkpoint tree."""
        counters = _TrainerCounters.model_validate(tree["trainer"])  # a ValidationError is a ValueError
        self.model.load_state_dict(tree["model"])
        self.optimizer.load_state_dict(tree["optimizer"])
        self.scheduler.last_epoch = tree["scheduler"]["last_epoch"]
        self.scheduler.base_lrs = list(tree["scheduler"]["base_lrs"])
        set_rng_states(tree["rng"])
        self.order.set_state(tree["order"])
        generators = module_generators(self.model)
        for name, gen_state in (tree.get("generators") or {}).items():
            if name in generators:
                generators[name].set_state(gen_state.to(torch.uint8))
        self.epoch_perm, self.epoch_pos = tree["epoch_perm"], tree["epoch_pos"]
        self.step, self.nonfinite_steps = counters.step, counters.nonfinite_steps
        self.clipped_steps = counters.clipped_steps
        self.norm_mean, self.best_val, self.stale_evals = counters.norm_mean, counters.best_val, counters.stale_evals
        self.losses = deque(counters.losses, maxlen=LOSS_WINDOW)
        self.best_state = tree["best_model"]
        self.stop_requested = counters.stop_requested
        self.recent_nonfinite = deque(counters.recent_nonfinite, maxlen=self.config.nonfinite_window)
        saved = tree.get("scenario") or {}
        missing = [name for name in self.scenario_state if name not in saved]
        if missing:
            raise CheckpointError(f"checkpoint {info.path} holds no state for {', '.join(missing)} of job "
                                  f"'{self.job}' (written by an older statesim); start a new run.")
        for name, obj in self.scenario_state.items():
            obj.load_state_dict(saved[name])

    # ------------------------------------------------------------------ the loop
    def fit(self, data: DataSplits, *, resume: bool = False, progress: Any = None) -> TrainResult:
        """Train for ``config.steps`` updates (or until early stopping); checkpoint along the way."""
        config = self.config
        if resume:
            self.restore()
        if self.dist is not None:
            self.dist.broadcast_module(self.model)
        stopped_early = False
        last_checkpoint = self.step
        while self.step < config.steps:
            # A checkpoint written where training decided to stop (solved, early stopping) resumes as stopped.
            if self.stop_requested or (config.early_stopping and self.stale_evals >= config.early_stopping):
                stopped_early = True
                break
            before = self.step  # one batch may make several updates (truncated BPTT)
            for record in self._train_batch(self._next_batch(data.train)):
                if self.log is not None and (record["step"] % config.log_every == 0 or record.get("nonfinite")
                                             or record["step"] == config.steps):
                    self.log(record)
                if progress is not None:
                    progress(self.step, record["loss"])
                if self.stop_requested:
                    stopped_early = True
            # Validate when this batch's updates crossed a multiple of eval_every, not only when the last update
            # landed on one: truncated BPTT steps over most multiples, which would stretch early stopping.
            if data.val is not None and (self.step // config.eval_every > before // config.eval_every
                                         or self.step >= config.steps):
                val = self.evaluate(data.val)
                if self.log is not None:
                    self.log({"job": self.job, "step": self.step, "val_loss": val})
                if self.best_val is None or val < self.best_val - config.min_delta:
                    self.best_val, self.stale_evals = val, 0
                    self.best_state = copy.deepcopy(self.model.state_dict())
                else:
                    self.stale_evals += 1
                if config.early_stopping and self.stale_evals >= config.early_stopping:
                    stopped_early = True
            if self.step - last_checkpoint >= config.checkpoint_every or self.step >= config.steps or stopped_early:
                self.save()
                last_checkpoint = self.step
            if stopped_early:
                break
            if self.dist.any(self.should_stop()) if self.dist is not None else self.should_stop():
                self.save()
                raise Interrupted(f"job '{self.job}' stopped at step {self.step}; checkpoint written.")
        if self.best_state is not None and config.early_stopping:
            self.model.load_state_dict(self.best_state)
        final = self.losses[-1] if self.losses else float("nan")
        return TrainResult(self.step, final, self.best_val, stopped_early, self.nonfinite_steps, list(self.losses))
