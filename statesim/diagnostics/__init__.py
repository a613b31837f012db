"""Gradient-flow diagnostics (lecture Part 3): why RNNs are hard to train, measured on any cell.

Everything here works through the cell contract only: a cell's step ``(x_t, state) -> (y_t, state)``
and its named state parts. The state is flattened part by part into one vector of size ``N`` so a
step has one Jacobian ``J_t = d state_t / d state_{t-1}`` (``[N, N]``), and the lecture's product

    P_{s,t} = prod_{i=s}^{t-1} d h_i / d h_{i-1}

is a product of ``t - s`` such Jacobians. For the ``linear`` cell ``J_t = D`` for every ``t`` and
``P_{s,t} = D^{t-s} = Q Lambda^{t-s} Q^{-1}``: :func:`gradient_flow` notices a state-independent
Jacobian and reports its eigenvalues and the closed form next to the measurement. For the LSTM the
diagonal of the ``c <- c`` block of ``J_t`` is exactly the forget gate ``f_t`` (the gate "that damps
the gradient and never amplifies it"), so it is reported as the part's self-diagonal.

API: :func:`step_jacobians`, :func:`gradient_flow` (lag curves, spectrum, verdict),
:func:`loss_gradients` (``||dE/dh_s||`` vs lag), :func:`bptt_horizon` (the horizon truncated BPTT
imposes, measured through the real trainer), :func:`training_summary` (clipping and non-finite
statistics from ``metrics.jsonl``), :class:`GradientFlowMonitor` (a training callback), the plots,
and :func:`diagnose_run` behind ``statesim diagnose RUN_DIR``.

Modules: ``jacobians`` (per-step Jacobians and norms of their products), ``flow`` (the gradient-flow
measurement, its regime, the training monitor), ``gradients`` (loss gradients through a model, the BPTT
horizon), ``records`` (``metrics.jsonl`` statistics), ``plots``, ``report`` (``statesim diagnose``). Every
public name is importable from ``statesim.diagnostics`` itself, as documented in docs/gradients.md.
"""
from __future__ import annotations

# The one flattening of a state (statesim.cell), re-exported here, where the Jacobians are taken over it.
from statesim.cell import flatten_state, state_layout, unflatten_state
from statesim.diagnostics.flow import TOLERANCE, GradientFlow, GradientFlowMonitor, gradient_flow, tail_rate, verdict_of
from statesim.diagnostics.gradients import bptt_horizon, loss_gradients
from statesim.diagnostics.jacobians import (JacobianTrace, NormKind, geometric_mean, matrix_norms, product_norms,
                                            step_jacobians)
from statesim.diagnostics.plots import (plot_gradient_flow, plot_horizon, plot_loss_gradients, plot_monitor,
                                        plot_training)
from statesim.diagnostics.records import read_metrics, training_summary
from statesim.diagnostics.report import DiagnoseError, diagnose_run

__all__ = ["TOLERANCE", "DiagnoseError", "GradientFlow", "GradientFlowMonitor", "JacobianTrace", "NormKind",
           "bptt_horizon", "diagnose_run", "flatten_state", "geometric_mean", "gradient_flow", "loss_gradients",
           "matrix_norms", "plot_gradient_flow", "plot_horizon", "plot_loss_gradients", "plot_monitor",
           "plot_training", "product_norms", "read_metrics", "state_layout", "step_jacobians", "tail_rate",
           "training_summary", "unflatten_state", "verdict_of"]
