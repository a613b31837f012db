"""Every registered cell fed the wrong shape, dtype or device: a ShapeError naming the cell, what it expected
and what it got, raised by statesim before torch sees the tensor (not a stack trace from inside torch)."""
from __future__ import annotations

import traceback

import pytest
import torch
from pydantic import ValidationError

from statesim.engine import step, unroll
from statesim.errors import ShapeError
from statesim.plugin_manager import build_plugin_host

HOST = build_plugin_host(autoload=False)
CANDIDATE_PARAMS = ({}, {"hidden_size": 3}, {"hidden_size": 3, "output_size": 2})


def _cells():
    """(name, cell) for every registered cell that builds from one of the candidate parameter sets."""
    built = []
    for name in HOST.registry.names("cell"):
        record = HOST.registry.get("cell", name).record
        for params in CANDIDATE_PARAMS:
            try:
                built.append((name, record.cls.from_params(2, record.params.model_validate(params))))
                break
            except (ValidationError, TypeError, ValueError):
                continue
    return built


CELLS = _cells()


def test_the_built_in_cells_are_all_covered():
    assert {"linear", "vanilla", "lstm", "gru", "window"} <= {name for name, _ in CELLS}


def _raised_by_statesim(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return "statesim" in frames[-1].filename and "torch" not in frames[-1].filename.split("statesim")[-1]


@pytest.mark.parametrize("name,cell", CELLS, ids=[n for n, _ in CELLS])
def test_wrong_input_shape_names_cell_expected_and_actual(name, cell):
    label = type(cell).__name__
    for bad, shown in ((torch.zeros(5, 4, 3), "[5, 4, 3]"), (torch.zeros(4, 2), "[4, 2]"),
                       (torch.zeros(5, 4, 2, 1), "[5, 4, 2, 1]")):
        with pytest.raises(ShapeError) as info:
            unroll(cell, bad)
        message = str(info.value)
        assert label in message and "input_size=2" in message and shown in message, message
        assert _raised_by_statesim(info.value)
    with pytest.raises(ShapeError, match=rf"{label}.*\[4, 3\]"):
        step(cell, torch.zeros(4, 3))


@pytest.mark.parametrize("name,cell", CELLS, ids=[n for n, _ in CELLS])
def test_wrong_dtype_or_device_names_cell_and_what_differs(name, cell):
    label = type(cell).__name__
    for bad, phrase in ((torch.zeros(5, 4, 2, dtype=torch.long), "torch.int64"),
                        (torch.zeros(5, 4, 2, dtype=torch.float64), "torch.float64"),
                        (torch.zeros(5, 4, 2, device="meta"), "meta")):
        if next(cell.parameters(), None) is None and phrase != "torch.int64":
            continue  # a cell without parameters has no dtype or device to disagree with
        with pytest.raises(ShapeError) as info:
            unroll(cell, bad)
        assert label in str(info.value) and phrase in str(info.value), str(info.value)
        assert _raised_by_statesim(info.value)


@pytest.mark.parametrize("name,cell", CELLS, ids=[n for n, _ in CELLS])
def test_wrong_state_names_cell_part_expected_and_actual(name, cell):
    label = type(cell).__name__
    state = cell.zero_state(4)
    if not state:
        return  # a stateless cell has no state to get wrong
    part = next(iter(state))
    wrong = dict(state)
    wrong[part] = torch.zeros(4, *[s + 1 for s in state[part].shape[1:]])
    with pytest.raises(ShapeError) as info:
        unroll(cell, torch.zeros(5, 4, 2), wrong)
    message = str(info.value)
    assert label in message and f"'{part}'" in message and str(list(state[part].shape)) in message
    assert str(list(wrong[part].shape)) in message
    missing = {k: v for k, v in state.items() if k != part}
    with pytest.raises(ShapeError, match=label):
        unroll(cell, torch.zeros(5, 4, 2), missing)


def test_a_model_built_from_config_reports_the_cell_too(builtin_host):
    from statesim.config import validate_model
    from statesim.model import build_model

    config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, builtin_host.registry)
    model = build_model(builtin_host.registry, config, 2, 1)
    with pytest.raises(ShapeError, match=r"LSTM.*input_size=2.*\[6, 4, 5\]"):
        model(torch.zeros(6, 4, 5))
