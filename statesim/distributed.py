"""Data-parallel training on ``torch.distributed``: ``statesim run FILE --nproc N`` or under ``torchrun``.

Every rank builds the same data and model from the same seed. The trainer draws the same global batch
on every rank; each rank runs forward and backward on its contiguous shard of it, then one all-reduce
sums the shard gradients weighted by shard size (``n_r / N``), which for a per-sample mean loss is the
gradient of the whole global batch. Clipping, the non-finite check and the optimizer step then see the
global gradient, identically on every rank, so the parameters stay equal without further broadcasts.

Why an explicit all-reduce rather than ``DistributedDataParallel``: the trainer's call patterns include
truncated BPTT whose later chunks leave a learned initial state without a gradient, conditioned models
whose encoder is called once per chunk, and a non-finite loss that skips the
backward pass; DDP's reducer deadlocks or raises on each of these (or needs ``find_unused_parameters``).
The all-reduce after ``backward()`` computes what DDP computes (one flattened bucket per dtype, without
overlapping communication with the backward pass) and works for all of them.

Only rank 0 writes (checkpoints, metrics, plots, results); every collective has a timeout
(``STATESIM_DIST_TIMEOUT`` seconds, default 300) so a dead or stuck rank stops the run with an error.
The launcher for ``--nproc`` starts the ranks as child processes with torchrun's environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and stops them all when one fails.
"""
from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from statesim.errors import StatesimError

DEFAULT_TIMEOUT_S = 300.0
_ACTIVE: "DataParallel | None" = None


class DistributedError(StatesimError):
    """A distributed run cannot start or continue (a rank died, a collective timed out)."""


def timeout_seconds() -> float:
    """The collective timeout: ``STATESIM_DIST_TIMEOUT`` seconds, default 300."""
    raw = os.environ.get("STATESIM_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        value = float(raw)
    except ValueError:
        raise DistributedError(f"STATESIM_DIST_TIMEOUT={raw!r} is not a number of seconds.") from None
    if value <= 0:
        raise DistributedError(f"STATESIM_DIST_TIMEOUT must be positive, got {raw}.")
    return value


@dataclass
class DataParallel:
    """This process's place in a data-parallel group, and the collectives the trainer needs."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    timeout: float
    weight: float = 1.0  # this rank's share of the current global batch (n_r / N)

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def _collective(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # gloo/NCCL raise RuntimeError subclasses (DistBackendError, timeouts)
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: the collective '{what}' failed, so another rank has died, "
                f"is stuck, or the network failed (timeout {self.timeout:g} s, STATESIM_DIST_TIMEOUT). The run "
                f"stopped; rank 0's last checkpoint is intact, continue with --resume RUN_DIR. Cause: "
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None

    def shard(self, index: Tensor) -> Tensor:
        """This rank's contiguous part of a global batch's sample indices (and remember its weight)."""
        if len(index) < self.world_size:
            raise DistributedError(f"the global batch has {len(index)} samples but there are {self.world_size} "
                                   f"ranks; raise training.batch_size (or the data) to at least {self.world_size}.")
        part = torch.tensor_split(index, self.world_size)[self.rank]
        self.weight = len(part) / len(index)
        return part

    def reduce_loss(self, loss: Tensor) -> Tensor:
        """The global batch's loss: the shard losses weighted by shard size, summed over ranks."""
        value = loss.detach().to(torch.float64).reshape(1) * self.weight
        self._collective("loss all-reduce", torch.distributed.all_reduce, value)
        return value[0].to(loss.dtype)

    def reduce_gradients(self, params: list[nn.Parameter]) -> None:
        """Replace each rank's shard gradient by the global-batch gradient (None where no rank had one)."""
        groups: dict[tuple[torch.dtype, torch.device], list[nn.Parameter]] = {}
        for p in params:
            groups.setdefault((p.dtype, p.device), []).append(p)
        for (dtype, device), group in groups.items():
            flags = torch.tensor([p.grad is not None for p in group], dtype=dtype, device=device)
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) * self.weight
                              for p in group] + [flags])
            self._collective("gradient all-reduce", torch.distributed.all_reduce, flat)
            offset = 0
            for i, p in enumerate(group):
                n = p.numel()
                p.grad = flat[offset:offset + n].view_as(p).clone() if flat[-len(group) + i] > 0 else None
                offset += n

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (a stop request must stop all ranks at the same update)."""
        value = torch.tensor([float(flag)], device=self.device)
        self._collective("stop-flag all-reduce", torch.distributed.all_reduce, value, op=torch.distributed.ReduceOp.MAX)
        return bool(value[0] > 0)

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (a plugin's initialiser may not be seeded)."""
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                self._collective("parameter broadcast", torch.distributed.broadcast, tensor.data, 0)

    def share_text(self, text: str) -> str:
        """Rank 0's ``text`` on every rank (as UTF-8 bytes in a tensor; nothing is pickled)."""
        data = torch.tensor(list(text.encode("utf-8")) if self.is_writer else [], dtype=torch.uint8)
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        self._collective("text broadcast", torch.distributed.broadcast, size, 0)
        buffer = torch.zeros(int(size[0]), dtype=torch.uint8, device=self.device)
        if self.is_writer:
            buffer.copy_(data.to(self.device))
        self._collective("text broadcast", torch.distributed.broadcast, buffer, 0)
        return bytes(buffer.cpu().tolist()).decode("utf-8")


def active() -> DataParallel | None:
    """The data-parallel group of this process, or None when it runs alone."""
    return _ACTIVE


def is_writer() -> bool:
    """Whether this process writes the run folder (rank 0, or a process that runs alone)."""
    return _ACTIVE is None or _ACTIVE.is_writer


def setup(device: torch.device) -> DataParallel | None:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1); None otherwise."""
    global _ACTIVE
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    if _ACTIVE is not None:
        return _ACTIVE
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise DistributedError(f"WORLD_SIZE={world} but {', '.join(missing)} is not set; launch with "
                               f"`statesim run FILE --nproc N` or `torchrun --nproc-per-node N -m statesim run FILE`.")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timeout_seconds()
    try:
        torch.distributed.init_process_group(backend, rank=rank, world_size=world,
                                             timeout=datetime.timedelta(seconds=timeout))
    except Exception as exc:
        raise DistributedError(f"rank {rank} of {world} could not join the process group at "
                               f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({backend}) within "
                               f"{timeout:g} s: {type(exc).__name__}: {exc}") from None
    _ACTIVE = DataParallel(rank, world, local_rank, device, timeout)
    return _ACTIVE


def teardown() -> None:
    """Leave the process group (end of a run)."""
    global _ACTIVE
    if _ACTIVE is not None and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _ACTIVE = None


# --------------------------------------------------------------------------- the --nproc launcher
def free_port() -> int:
    """A TCP port nobody listens on now (for the rendezvous of a one-machine launch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def launch(command: list[str], nproc: int, *, env: dict[str, str] | None = None, grace: float = 10.0,
           poll: float = 0.1) -> None:
    """Run ``command`` as ``nproc`` local ranks; raise when one fails, after stopping the others.

    Rank 0 keeps stdout; the other ranks' stdout is dropped (it repeats rank 0's), stderr is kept.
    """
    if nproc < 1:
        raise DistributedError(f"--nproc must be at least 1, got {nproc}.")
    base = dict(os.environ if env is None else env)
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(nproc),
                LOCAL_WORLD_SIZE=str(nproc))
    if "OMP_NUM_THREADS" not in base:  # ranks share the cores instead of each taking all of them
        base["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    procs: list[subprocess.Popen] = []
    try:
        for rank in range(nproc):
            procs.append(subprocess.Popen(command, env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                          stdout=None if rank == 0 else subprocess.DEVNULL))
        while True:
            codes = [p.poll() for p in procs]
            failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                rank, code = failed[0]
                _stop(procs, grace)
                raise DistributedError(f"rank {rank} of {nproc} failed ({_describe(code)}); the other ranks were "
                                       f"stopped. Its error is printed above; rank 0's last checkpoint is intact "
                                       f"(continue with --resume RUN_DIR).")
            if all(code == 0 for code in codes):
                return
            time.sleep(poll)
    except KeyboardInterrupt:  # the ranks got the Ctrl-C too: give them time to checkpoint and stop
        _stop(procs, grace * 3, wait_first=True)
        raise
    finally:
        _stop(procs, grace)


def _stop(procs: Iterable[subprocess.Popen], grace: float, wait_first: bool = False) -> None:
    procs = [p for p in procs if p.poll() is None]
    deadline = time.monotonic() + grace
    if wait_first:
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + grace / 3
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def rank_command(argv: list[str]) -> list[str]:
    """The command each rank runs: this interpreter running ``statesim`` with ``argv``."""
    return [sys.executable, "-m", "statesim", *argv]
