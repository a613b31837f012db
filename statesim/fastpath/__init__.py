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

from statesim.fastpath.forms import (Decline, FastPath, FastPathError, FusedForm, LinearForm, Prepared, Request,
                                     Result, State)
from statesim.fastpath.fused import FUSED_KERNELS, fused_incompatibility, fused_sequence
from statesim.fastpath.policies import (COMPILE_CHUNK, Policy, current_policy, known_modes, paths, policy,
                                        record, record_decisions, scope, summarize)
from statesim.fastpath.resolution import Resolved, explain, plan, resolve
from statesim.fastpath.scan import _block_size, _LinearSystem, _mask, run_linear, scan_linear_

__all__ = [
    "COMPILE_CHUNK", "Decline", "FUSED_KERNELS", "FastPath", "FastPathError", "FusedForm", "LinearForm", "Policy",
    "Prepared", "Request", "Resolved", "Result", "State", "_LinearSystem", "_block_size", "_mask", "current_policy",
    "explain", "fused_incompatibility", "fused_sequence", "known_modes", "paths", "plan", "policy", "record",
    "record_decisions", "resolve", "run_linear", "scan_linear_", "scope", "summarize",
]
