"""The fused torch kernels (``torch._VF``) that the ``fused`` path runs with a cell's own weights."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from statesim.fastpath.forms import FusedForm, State


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
