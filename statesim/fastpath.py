"""Fast paths behind the engine: the same numbers as the generic time loop, computed faster.

A fast path is an alternative implementation of :meth:`statesim.engine.Stepper.run`: a whole-sequence
kernel that replaces the engine's Python time loop. Paths are plugins: each is returned by a
``statesim_fast_paths`` hook (the built-in ``fused``, ``scan`` and ``compiled`` paths by
:mod:`statesim.builtin.fast_paths`, exactly as a third party's would be) and called through pluggy's
hook caller (:mod:`statesim.extensions`). A cell opts in through the contract, never by its class name:

* :meth:`statesim.cell.Cell.fused_form` returns a :class:`FusedForm` when the cell's step *is* one of
  torch's fused recurrent kernels (``lstm``, ``gru``, ``rnn_tanh``, ``rnn_relu``) with its weights in
  torch's layout. The ``fused`` path then calls that kernel (``torch._VF``) with the cell's own
  parameters: nothing is copied, so nothing can drift, and gradients land on the cell's parameters.
  Variable lengths go through :func:`torch.nn.utils.rnn.pack_padded_sequence`.
* :meth:`statesim.cell.Cell.linear_form` returns a :class:`LinearForm` for a time-invariant linear
  state-space cell. The ``scan`` path computes the recurrence with a blocked scan (O(sqrt T) short
  sequential steps instead of T) and its gradient with the adjoint recurrence run backwards.

A fast path runs only when nothing needs per-step access: a clamp on a state part always takes the
generic loop (so does a run that observes every step), and the fused kernel also gives way when every
state must be returned. Third parties add paths (a CUDA kernel, say) by implementing the hook, and
kernels with :data:`FUSED_KERNELS`.

* Any other cell can ask for the ``compiled`` path (``model.compile: true``): the engine's loop with
  every :data:`COMPILE_CHUNK` steps in one :func:`torch.compile`'d call.

The choice follows a :class:`Policy` held in a context variable: ``mode`` is ``auto`` (the first path
that applies), ``generic`` (always the plain loop) or a path's name (that path or a
:class:`FastPathError`); ``compile`` lets ``auto`` pick the compiled loop. A stepper resolves its path once,
under its own ``path`` or the policy in force when it first runs (:func:`resolve`). Every choice is recorded
with its reason (:func:`record_decisions`), which is how runs report it in their log and
``results.json``.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import torch
from torch import Tensor

from statesim.errors import StatesimError

if TYPE_CHECKING:
    from statesim.cell import Cell
    from statesim.engine import Stepper

State = dict[str, Tensor]
#: What a fast path returns: outputs ``[T, B, O]``, the final state, and every state (or None).
Result = tuple[Tensor, State, "dict[str, Tensor] | None"]


class FastPathError(StatesimError):
    """A fast path was demanded (``model.fast_path: NAME``) where it cannot run."""


# --------------------------------------------------------------------------- what cells offer
@dataclass(slots=True)
class FusedForm:
    """A cell whose step is torch's fused ``kernel`` with ``weights`` in torch's order and layout.

    ``weights`` are the cell's own parameters ``(weight_ih, weight_hh[, bias_ih, bias_hh])``;
    ``state_parts`` names the state in the kernel's order (``("h", "c")`` for an LSTM); the kernel's output
    is its first part, which must be the cell's declared :attr:`~statesim.cell.Cell.output_part`.
    """

    kernel: str
    weights: tuple[Tensor, ...]
    hidden_size: int
    state_parts: tuple[str, ...] = ("h",)

    @property
    def has_biases(self) -> bool:
        """Whether the weights include ``bias_ih`` and ``bias_hh``."""
        return len(self.weights) == 4


@dataclass(slots=True)
class LinearForm:
    """A time-invariant linear cell ``y_t = A x_t + B h_{t-1}``, ``h_t = C x_t + D h_{t-1}``."""

    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor
    state_part: str = "h"


@dataclass(frozen=True)
class Request:
    """What a stepper needs from its runs, as far as choosing a path goes."""

    forces_state: bool
    return_states: bool
    observed: bool = False


#: A prepared fast path: ``run(inputs, state, lengths) -> Result`` and why it was chosen.
Prepared = tuple[Callable[[Tensor, State, "Tensor | None"], Result], str]


class FastPath(Protocol):
    """A whole-sequence implementation of :meth:`statesim.engine.Stepper.run` (returned by ``statesim_fast_paths``)."""

    name: str

    def prepare(self, stepper: "Stepper", request: Request) -> "Prepared | str":
        """``(run, why chosen)`` when the path can run ``stepper.cell`` for ``request``, else why not (a short clause).

        Called once per stepper. ``run(inputs, state, lengths)`` gets inputs with input forcing applied and a
        checked state; it may still raise :class:`Decline` for a reason only the data shows (a zero length,
        too few steps).
        """


# --------------------------------------------------------------------------- the fused torch kernels
#: Fused kernels by name: ``kernel(input, hx, params, has_biases, num_layers, dropout, train,
#: bidirectional, batch_first)`` and the packed form ``kernel(data, batch_sizes, hx, params, ...)``.
FUSED_KERNELS: dict[str, Callable[..., Any]] = {
    "lstm": torch._VF.lstm,
    "gru": torch._VF.gru,
    "rnn_tanh": torch._VF.rnn_tanh,
    "rnn_relu": torch._VF.rnn_relu,
}


def fused_sequence(forms: list[list[FusedForm]], inputs: Tensor, states: list[list[State]],
                   lengths: Tensor | None = None) -> tuple[Tensor, list[list[State]]]:
    """Run layers x directions of fused cells over ``inputs [T, B, F]`` in one kernel call.

    ``forms[layer][direction]`` and ``states[layer][direction]`` as for ``torch.nn.LSTM`` with
    ``num_layers=len(forms)`` and ``bidirectional=len(forms[0]) == 2``: outputs are ``[T, B, dirs * H]``
    (forward then backward halves); the backward direction runs over each sequence's own valid steps.
    Steps past a sequence's length give zero outputs; final states are each sequence's own last state.
    """
    first = forms[0][0]
    kernel = FUSED_KERNELS[first.kernel]
    dirs = len(forms[0])
    params = [w for layer in forms for form in layer for w in form.weights]
    parts = first.state_parts
    hx_parts = [torch.stack([states[i][d][part] for i in range(len(forms)) for d in range(dirs)])
                for part in parts]
    train = torch.is_grad_enabled()  # cuDNN keeps its workspace for backward only in training mode
    steps = inputs.shape[0]
    if lengths is None:
        hx = tuple(hx_parts) if len(parts) > 1 else hx_parts[0]
        result = kernel(inputs, hx, params, first.has_biases, len(forms), 0.0, train, dirs == 2, False)
        outputs, finals = result[0], list(result[1:])
    else:
        from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

        packed = pack_padded_sequence(inputs, lengths.clamp(max=steps).cpu(), enforce_sorted=False)
        assert packed.sorted_indices is not None  # enforce_sorted=False always sorts
        hx_parts = [h.index_select(1, packed.sorted_indices) for h in hx_parts]
        hx = tuple(hx_parts) if len(parts) > 1 else hx_parts[0]
        result = kernel(packed.data, packed.batch_sizes, hx, params, first.has_biases, len(forms), 0.0, train,
                        dirs == 2)
        out = PackedSequence(result[0], packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        outputs, _ = pad_packed_sequence(out, total_length=steps)
        finals = [f.index_select(1, packed.unsorted_indices) for f in result[1:]]
    final_states = [[{part: finals[k][i * dirs + d] for k, part in enumerate(parts)} for d in range(dirs)]
                    for i in range(len(forms))]
    return outputs, final_states


def fused_incompatibility(forms: list[list[FusedForm | None]], inputs: Tensor,
                          lengths: Tensor | None) -> str | None:
    """None when :func:`fused_sequence` can run these forms, else why not."""
    flat = [f for layer in forms for f in layer if f is not None]
    if len(flat) < sum(len(layer) for layer in forms):
        return "the cell offers no fused form"
    first = flat[0]
    if first.kernel not in FUSED_KERNELS:
        return f"no fused kernel named '{first.kernel}' is registered"
    if any(f.kernel != first.kernel or f.hidden_size != first.hidden_size or f.has_biases != first.has_biases
           or f.state_parts != first.state_parts for f in flat):
        return "its cells differ in kernel, size or biases"
    if any(w.dtype != inputs.dtype or w.device != inputs.device for f in flat for w in f.weights):
        return "the input's dtype or device differs from the weights'"
    if lengths is not None and bool((lengths <= 0).any()):
        return "a sequence has length 0 (packed sequences need at least one step)"
    return None


# --------------------------------------------------------------------------- the linear scan
def _block_size(steps: int, batch: int, size: int) -> int:
    """Steps per block: about sqrt(T) sequential steps each way, unless the H^3 powers would dominate."""
    block = math.isqrt(max(steps - 1, 0)) + 1
    return max(1, min(block, (steps * batch) // max(size, 1)))


def scan_linear_(x: Tensor, M: Tensor, *, reverse: bool = False) -> Tensor:
    """In place over ``x [T, N, H]``: ``x_t <- x_t + x_{t-1} M`` in time order (``x_{t+1}`` when ``reverse``).

    Blocked scan without a T-step loop: the sequence is cut into ``K`` blocks of ``L ~ sqrt(T)`` steps
    that run side by side (L short steps, each one product over every block), the states carried
    between blocks follow ``c_k = e_k + c_{k-1} M^L`` (K short steps), and step ``l`` of block ``k`` then
    gains ``c_{k-1} M^{l+1}`` (one product for all). Work stays in the caller's time-major layout, so
    the whole scan reads and writes ``x`` about three times.
    """
    steps, batch, size = x.shape
    block = _block_size(steps, batch, size)
    blocks = steps // block
    rest = steps - blocks * block  # the last (or, reversed, first) steps, done one by one
    body = (x[rest:] if reverse else x[:blocks * block]).view(blocks, block, batch, size)
    for j in (range(block - 2, -1, -1) if reverse else range(1, block)):
        body[:, j] += body[:, j + 1 if reverse else j - 1] @ M
    if blocks > 1:
        powers = [M]
        for _ in range(1, block):
            powers.append(powers[-1] @ M)
        carry = x.new_zeros(blocks, batch, size)  # the state entering block k from its neighbour
        for k in (range(blocks - 2, -1, -1) if reverse else range(1, blocks)):
            src = k + 1 if reverse else k - 1
            torch.addmm(body[src, 0 if reverse else block - 1], carry[src], powers[-1], out=carry[k])
        # position l of a block gains carry M^(l+1) (M^(L-l) reversed): [K * N, H] @ [H, L * H]
        kernel = torch.cat(powers[::-1] if reverse else powers, dim=1)
        body += (carry.view(-1, size) @ kernel).view(blocks, batch, block, size).transpose(1, 2)
    for t in (range(rest - 1, -1, -1) if reverse else range(blocks * block, steps)):
        x[t].addmm_(x[t + 1 if reverse else t - 1], M)
    return x


class _LinearSystem(torch.autograd.Function):
    """The whole linear cell over a sequence, with a hand-written adjoint backward (few full-size passes).

    Forward: ``u_t = C x_t (+ D h0 at t = 0)``, ``h = scan(u)``, ``y_t = A x_t + B h_{t-1}``. Backward:
    ``lam_t = g_t + lam_{t+1} D`` (a reverse scan) where ``g_t`` gathers the gradients reaching ``h_t``
    directly and through ``y_{t+1}``; every parameter gradient is then one matrix product.
    """

    @staticmethod
    def forward(ctx: Any, inputs: Tensor, h0: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor
                ) -> tuple[Tensor, Tensor]:
        steps, batch, features = inputs.shape
        size, out = D.shape[0], A.shape[0]
        x2 = inputs.reshape(-1, features)
        u = (x2 @ C.T).view(steps, batch, size)
        u[0].addmm_(h0, D.T)
        h = scan_linear_(u, D.T)  # u is this function's own temporary: scan it in place
        y = (x2 @ A.T).view(steps, batch, out)
        y[0].addmm_(h0, B.T)
        y.view(-1, out)[batch:].addmm_(h[:-1].reshape(-1, size), B.T)
        ctx.save_for_backward(inputs, h0, h, A, B, C, D)
        return y, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gy: Tensor | None, gh: Tensor | None) -> tuple[Tensor | None, ...]:
        inputs, h0, h, A, B, C, D = ctx.saved_tensors
        steps, batch, features = inputs.shape
        size, out = D.shape[0], A.shape[0]
        g = torch.empty_like(h).copy_(gh) if gh is not None else torch.zeros_like(h)  # contiguous, ours
        gy2 = None
        if gy is not None:
            gy2 = gy.reshape(-1, out)
            g.view(-1, size)[:-batch].addmm_(gy2[batch:], B)  # h_t feeds y_{t+1}
        lam = scan_linear_(g, D, reverse=True)
        x2, lam2, prev = inputs.reshape(-1, features), lam.reshape(-1, size), h[:-1].reshape(-1, size)
        need = ctx.needs_input_grad
        gx = gh0 = gA = gB = gC = gD = None
        if need[0]:
            gx = lam2 @ C
            if gy2 is not None:
                gx.addmm_(gy2, A)
            gx = gx.view(steps, batch, features)
        if need[1]:
            gh0 = lam[0] @ D
            if gy2 is not None:
                gh0.addmm_(gy2[:batch], B)
        if need[2] and gy2 is not None:
            gA = gy2.T @ x2
        if need[3] and gy2 is not None:
            gB = gy2[:batch].T @ h0 + gy2[batch:].T @ prev
        if need[4]:
            gC = lam2.T @ x2
        if need[5]:
            gD = lam[0].T @ h0 + lam2[batch:].T @ prev
        return gx, gh0, gA, gB, gC, gD


def run_linear(form: LinearForm, inputs: Tensor, h0: Tensor, lengths: Tensor | None,
               return_states: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """The linear cell over ``inputs [T, B, F]`` from ``h0``: outputs, final h, and every h if asked."""
    steps = inputs.shape[0]
    outputs, h = _LinearSystem.apply(inputs, h0, form.A, form.B, form.C, form.D)
    if lengths is None:
        return outputs, h[-1], h if return_states else None
    lengths = lengths.to(device=inputs.device, dtype=torch.long).clamp(0, steps)
    batch = inputs.shape[1]
    history = torch.cat([h0.unsqueeze(0), h])  # history[t] = h_{t-1}
    final = history[lengths, torch.arange(batch, device=inputs.device)]
    keep = _mask(lengths, steps)
    outputs = outputs * keep.unsqueeze(-1).to(outputs.dtype)
    states = None
    if return_states:  # a finished sequence keeps its last state
        index = torch.minimum(torch.arange(1, steps + 1, device=inputs.device).unsqueeze(1), lengths.unsqueeze(0))
        states = history.gather(0, index.unsqueeze(-1).expand(steps, batch, h.shape[-1]))
    return outputs, final, states


# --------------------------------------------------------------------------- torch.compile'd loop
#: Steps per compiled call. One call runs this many steps, so guard checks and Python overhead are
#: paid once per chunk and the pointwise work of consecutive steps fuses; compile time grows with it.
COMPILE_CHUNK = 16


# --------------------------------------------------------------------------- registry and policy
def paths() -> list[FastPath]:
    """Every registered fast path, in the order ``auto`` tries them (the ``statesim_fast_paths`` hook's results)."""
    from statesim import extensions

    found: list[FastPath] = []
    for provided in extensions.manager().hook.statesim_fast_paths():
        found.extend(provided or [])
    names = [p.name for p in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice or {"auto", "generic"} & set(names):
        raise FastPathError(f"fast path name(s) {', '.join(twice or sorted({'auto', 'generic'} & set(names)))} are "
                            f"registered twice or reserved (auto, generic); rename one in its plugin's "
                            f"statesim_fast_paths hook.")
    return found


def known_modes() -> list[str]:
    """Valid values of ``model.fast_path``."""
    return ["auto", "generic", *[p.name for p in paths()]]


@dataclass(frozen=True)
class Policy:
    """How the engine picks its path: ``mode`` (auto, generic or a path name) and ``compile``."""

    mode: str = "auto"
    compile: bool = False


_POLICY: ContextVar[Policy] = ContextVar("statesim_fast_path_policy", default=Policy())
_RECORDERS: ContextVar[tuple[dict, ...]] = ContextVar("statesim_fast_path_recorders", default=())


def current_policy() -> Policy:
    """The policy in force here."""
    return _POLICY.get()


@contextmanager
def policy(mode: str | None = "auto", compile: bool | None = None) -> Iterator[Policy]:
    """Use ``mode``/``compile`` for unrolls inside the block (None keeps the surrounding setting)."""
    outer = _POLICY.get()
    mode = outer.mode if mode is None else mode
    if mode not in known_modes():
        raise FastPathError(f"unknown fast path '{mode}'; choose one of {', '.join(known_modes())}.")
    token = _POLICY.set(Policy(mode, outer.compile if compile is None else bool(compile)))
    try:
        yield _POLICY.get()
    finally:
        _POLICY.reset(token)


class scope:  # noqa: N801 - used like the context managers above
    """Policy and decision recorder of one model's forward in one cheap context (see SequenceModel.forward).

    ``mode``/``compile`` None keep the surrounding policy; ``sink`` receives the decisions.
    """

    __slots__ = ("policy", "sink", "tokens")

    def __init__(self, mode: str | None, compile: bool | None, sink: dict) -> None:
        self.policy, self.sink = (mode, compile), sink
        self.tokens: tuple[Any, ...] = ()

    def __enter__(self) -> "scope":
        mode, compile = self.policy
        outer = _POLICY.get()
        token = None
        if (mode is not None and mode != outer.mode) or (compile is not None and compile != outer.compile):
            if mode is not None and mode not in known_modes():
                raise FastPathError(f"unknown fast path '{mode}'; choose one of {', '.join(known_modes())}.")
            token = _POLICY.set(Policy(outer.mode if mode is None else mode,
                                       outer.compile if compile is None else bool(compile)))
        self.tokens = (token, _RECORDERS.set(_RECORDERS.get() + (self.sink,)))
        return self

    def __exit__(self, *exc: Any) -> None:
        policy_token, recorder_token = self.tokens
        _RECORDERS.reset(recorder_token)
        if policy_token is not None:
            _POLICY.reset(policy_token)


@contextmanager
def record_decisions(into: dict | None = None) -> Iterator[dict]:
    """Collect every path decision made inside the block: ``{(cell, path, reason): info}``."""
    sink = {} if into is None else into
    token = _RECORDERS.set(_RECORDERS.get() + (sink,))
    try:
        yield sink
    finally:
        _RECORDERS.reset(token)


def record(cell: "Cell", path: str, reason: str) -> list[dict]:
    """Count one decision in every active recorder; returns their entries (to attach details later)."""
    key = (type(cell).__name__, path, reason)
    infos = []
    for sink in _RECORDERS.get():
        info = sink.setdefault(key, {"calls": 0})
        info["calls"] += 1
        infos.append(info)
    return infos


def summarize(decisions: dict) -> list[dict[str, Any]]:
    """Recorded decisions as JSON-ready rows ``{cell, path, reason, calls[, compile_seconds]}``."""
    return [{"cell": cell, "path": path, "reason": reason, **info}
            for (cell, path, reason), info in decisions.items()]


class Decline(Exception):
    """Raised by a prepared path's ``run`` when a data-dependent check fails (e.g. a zero length)."""


def _mask(lengths: Tensor, steps: int) -> Tensor:
    from statesim.engine import lengths_to_mask  # the engine imports this module

    return lengths_to_mask(lengths, steps)


def _prepare(path: FastPath, stepper: "Stepper", request: Request) -> "Prepared | str":
    if request.forces_state:
        return "a clamp on a state part needs every step"
    if request.observed:
        return "every step is observed (on_step)"
    return path.prepare(stepper, request)


class Resolved:
    """The paths a :class:`statesim.engine.Stepper` may take, prepared once; :meth:`run` tries them in order."""

    __slots__ = ("cell", "mode", "prepared", "reasons")

    def __init__(self, cell: "Cell", mode: str, prepared: list[tuple[FastPath, Prepared]], reasons: list[str]) -> None:
        self.cell, self.mode, self.prepared, self.reasons = cell, mode, prepared, reasons

    def run(self, inputs: Tensor, state: State, lengths: Tensor | None) -> tuple[Result | None, str]:
        """``(result, path name)`` from the first path that runs, or ``(None, why the generic loop runs)``."""
        if self.mode == "generic":
            return None, "fast_path: generic"
        reasons = list(self.reasons)
        for path, (run, chosen) in self.prepared:
            if inputs.shape[0] == 0:
                why = "the sequence is empty"
            else:
                try:
                    result = run(inputs, state, lengths)
                except Decline as exc:
                    why = str(exc)
                else:
                    infos = record(self.cell, path.name, chosen)
                    if infos and hasattr(path, "details"):
                        details = path.details(self.cell)
                        for info in infos:
                            info.update(details)
                    return result, path.name
            reasons.append(f"{path.name}: {why}")
            self._demanded(why)
        return None, "; ".join(reasons) or "no fast path is registered"

    def _demanded(self, why: str) -> None:
        if self.mode != "auto":
            raise FastPathError(f"model.fast_path is '{self.mode}' but {type(self.cell).__name__} cannot take it "
                                f"here: {why}. Use fast_path: auto to fall back to the generic loop.")


def resolve(stepper: "Stepper") -> Resolved:
    """Prepare the paths ``stepper`` may take under its pinned path or the policy in force (once per stepper)."""
    # No path depends on whether lengths are given: every one takes them when it runs.
    mode = stepper.path or _POLICY.get().mode
    if mode not in ("auto", "generic") and mode not in known_modes():
        raise FastPathError(f"unknown fast path '{mode}'; choose one of {', '.join(known_modes())}.")
    resolved = Resolved(stepper.cell, mode, [], [])
    if mode == "generic":
        return resolved
    request = Request(stepper.forcing.forces_state, stepper.return_states, stepper.on_step is not None)
    for path in paths():
        if mode != "auto" and path.name != mode:
            continue
        prepared = _prepare(path, stepper, request)
        if isinstance(prepared, str):
            resolved.reasons.append(f"{path.name}: {prepared}")
            resolved._demanded(prepared)
        else:
            resolved.prepared.append((path, prepared))
    return resolved


def explain(cell: "Cell", *, forces_state: bool = False, return_states: bool = False) -> tuple[str, str]:
    """``(path, reason)`` the engine would take for ``cell`` under the current policy, without running it.

    Data-dependent declines (a sequence of length 0, fewer steps than one compiled chunk) cannot be foreseen;
    the stepper records those when it runs.
    """
    from statesim.engine import Stepper

    pol = _POLICY.get()
    if pol.mode == "generic":
        return "generic", "fast_path: generic"
    stepper = Stepper(cell, return_states=return_states)
    request = Request(forces_state, return_states, False)
    reasons = []
    for path in paths():
        if pol.mode != "auto" and path.name != pol.mode:
            continue
        prepared = _prepare(path, stepper, request)
        if not isinstance(prepared, str):
            return path.name, prepared[1]
        reasons.append(f"{path.name}: {prepared}")
    return "generic", "; ".join(reasons) or "no fast path is registered"


def plan(model: Any, **request: bool) -> list[dict[str, str]]:
    """What :func:`explain` says for every outermost cell of ``model`` under the model's own policy."""
    from statesim.cell import Cell

    cells: list[Cell] = []
    inner: set[int] = set()
    for module in model.modules():
        if isinstance(module, Cell) and id(module) not in inner:
            cells.append(module)
            inner.update(id(m) for m in module.modules() if m is not module)
    rows, seen = [], set()
    with policy(getattr(model, "fast_path", None), getattr(model, "compile_steps", None)):
        for cell in cells:
            path, reason = explain(cell, **request)
            key = (type(cell).__name__, path, reason)
            if key not in seen:
                seen.add(key)
                rows.append({"cell": key[0], "path": path, "reason": reason})
    return rows
