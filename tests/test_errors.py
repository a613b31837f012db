"""User-facing errors are StatesimError subclasses with one paragraph (and keep the builtin base they had)."""
from __future__ import annotations

import pytest
import torch

from statesim.builtin.cells import LSTMCell
from statesim.builtin.initial_states import Zeros
from statesim.builtin.layered import Bidirectional
from statesim.data import SequenceData
from statesim.engine import unroll
from statesim.errors import StatesimError
from statesim.forcing import Clamp, Forcing
from statesim.model import SequenceModel
from statesim.plugin_manager import build_plugin_host


def _one_paragraph(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and not text.startswith("'"), text
    return text


def test_forcing_errors_are_statesim_errors():
    cell = LSTMCell(2, 3)
    with pytest.raises(StatesimError, match="valid targets") as bad_target:
        unroll(cell, torch.zeros(4, 1, 2), forcing=Forcing([Clamp("q", 0.0)]))
    with pytest.raises(StatesimError, match="out of range") as bad_units:
        unroll(cell, torch.zeros(4, 1, 2), forcing=Forcing([Clamp("h", 0.0, units=[7])]))
    for info in (bad_target, bad_units):
        assert isinstance(info.value, ValueError)
        _one_paragraph(info.value)


def test_an_unknown_registered_name_is_a_statesim_error_and_still_a_key_error():
    registry = build_plugin_host(autoload=False).registry
    with pytest.raises(StatesimError, match="Did you mean 'lstm'") as info:
        registry.get("cell", "lstn")
    assert isinstance(info.value, KeyError)
    assert _one_paragraph(info.value).startswith("unknown cell 'lstn'")


def test_a_model_that_cannot_step_says_so_as_a_statesim_error():
    topology = Bidirectional(2, lambda n: LSTMCell(n, 3))
    model = SequenceModel(topology, Zeros(topology.state_spec))
    with pytest.raises(StatesimError, match="whole sequence") as info:
        model.step_cell()
    assert isinstance(info.value, TypeError)
    _one_paragraph(info.value)


def test_malformed_sequence_data_is_a_shape_error():
    with pytest.raises(StatesimError, match=r"\[T, N, F\]") as info:
        SequenceData(torch.zeros(4, 2), torch.zeros(4, 2))
    assert isinstance(info.value, ValueError)
    with pytest.raises(StatesimError, match="share"):
        SequenceData(torch.zeros(4, 2, 1), torch.zeros(5, 2, 1))
