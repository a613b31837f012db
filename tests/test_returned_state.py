"""The state a cell returns is checked (issue 19 item 2): a plugin cell that returns a wrong state is stopped on
its first step with a ShapeError naming the cell, the part, what was expected and what it got, wherever the
engine runs it (unroll, one tick, a model, training); a step that writes into its input state is caught there
too, and on every step in strict mode."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from statesim import fastpath
from statesim.cell import Cell
from statesim.engine import Stepper, step, unroll
from statesim.errors import ShapeError


class TwoPart(Cell):
    """A two-part cell (h, c) whose step can be broken in one chosen way."""

    output_part = "h"

    def __init__(self, input_size: int = 2, hidden: int = 4, fault: str | None = None, fault_at: int = 0) -> None:
        super().__init__(input_size)
        self.hidden, self.fault, self.fault_at, self.calls = hidden, fault, fault_at, 0
        self.inp = nn.Linear(input_size, hidden)

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return {"h": (self.hidden,), "c": (self.hidden,)}

    @property
    def output_size(self) -> int:
        return self.hidden

    def forward(self, x, state):
        c = state["c"]
        broken = self.fault if self.calls >= self.fault_at else None
        self.calls += 1
        if broken == "in_place":
            c.mul_(0.5)  # writes into the state it was given
            return torch.tanh(self.inp(x) + c), {"h": torch.tanh(self.inp(x) + c), "c": c}
        c_new = 0.9 * c + self.inp(x)
        h_new = torch.tanh(c_new)
        out = {"h": h_new, "c": c_new}
        y = h_new
        if broken == "missing":
            out = {"h": h_new}
        elif broken == "extra":
            out = {**out, "n": c_new}
        elif broken == "collapsed":
            out = {"h": h_new[:1], "c": c_new}
        elif broken == "width":
            out = {"h": h_new[:, :-1], "c": c_new}
        elif broken == "rank":
            out = {"h": h_new.unsqueeze(1), "c": c_new}
        elif broken == "dtype":
            out = {"h": h_new.double(), "c": c_new}
        elif broken == "y_width":
            y = torch.cat([h_new, h_new], -1)
        elif broken == "not_tensor":
            out = {"h": h_new.tolist(), "c": c_new}
        return y, out


FAULTS = {
    "missing": r"TwoPart: the step returned state parts \['h'\], but state_spec declares \['c', 'h'\] \(missing "
               r"\['c'\], extra \[\]\)",
    "extra": r"returned state parts \['c', 'h', 'n'\].*missing \[\], extra \['n'\]",
    "collapsed": r"TwoPart: the step returned state part 'h' of shape \[1, 4\], expected \[3, 4\] \(batch 3, "
                 r"state_spec \(4,\)\): the batch dimension changed",
    "width": r"state part 'h' of shape \[3, 3\], expected \[3, 4\].*wrong width",
    "rank": r"state part 'h' of shape \[3, 1, 4\], expected \[3, 4\].*rank 3 instead of 2",
    "dtype": r"state part 'h' as torch.float64 on cpu, expected torch.float32 on cpu",
    "y_width": r"returned y of shape \[3, 8\], expected \[3, 4\] \(batch 3, output_size 4\)",
    "not_tensor": r"state part 'h' as list, expected a tensor of shape \[3, 4\]",
    "in_place": r"TwoPart: the step modified its input state part 'c' in place",
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_wrong_returned_state_fails_the_first_step_of_an_unroll(fault):
    cell = TwoPart(fault=fault)
    state = {k: torch.randn(3, 4) for k in ("h", "c")}
    with fastpath.policy("generic"), pytest.raises(ShapeError, match=FAULTS[fault]):
        unroll(cell, torch.randn(5, 3, 2), state)
    assert cell.calls == 1  # stopped at once, not after the whole sequence


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_wrong_returned_state_fails_a_single_tick(fault):
    with pytest.raises(ShapeError, match=FAULTS[fault]):
        step(TwoPart(fault=fault), torch.randn(3, 2), {k: torch.randn(3, 4) for k in ("h", "c")})


def test_a_correct_cell_passes_and_its_numbers_are_untouched_by_the_check():
    cell, x = TwoPart(), torch.randn(6, 3, 2)
    with fastpath.policy("generic"):
        got = unroll(cell, x)
    h = c = torch.zeros(3, 4)
    for t in range(6):  # the cell's own recurrence, by hand
        c = 0.9 * c + cell.inp(x[t])
        h = torch.tanh(c)
        assert torch.equal(got.outputs[t], h)
    assert torch.equal(got.final_state["c"], c)


def test_only_the_first_step_is_checked_unless_strict(monkeypatch):
    """A fault from step 3 on slips past the (cheap) first-step check, and is caught in strict mode."""
    x = torch.randn(6, 3, 2)
    monkeypatch.setenv("STATESIM_STRICT", "0")  # recorded, so the undo also removes what main sets
    with fastpath.policy("generic"):
        unroll(TwoPart(fault="in_place", fault_at=3), x)  # no error: only step 0 is checked
        monkeypatch.setenv("STATESIM_STRICT", "1")
        cell = TwoPart(fault="in_place", fault_at=3)
        with pytest.raises(ShapeError, match="modified its input state part 'c' in place"):
            unroll(cell, x)
    assert cell.calls == 4


def test_strict_mode_checks_every_tick_of_a_stepper(monkeypatch):
    monkeypatch.setenv("STATESIM_STRICT", "1")
    cell = TwoPart(fault="collapsed", fault_at=2)
    stepper = Stepper(cell)
    state = stepper.start(3, torch.zeros(3, 2))
    for _ in range(2):
        _, state = stepper.step(torch.randn(3, 2), state)
    with pytest.raises(ShapeError, match="batch dimension changed"):
        stepper.step(torch.randn(3, 2), state)


def test_run_strict_flag_sets_strict_mode_for_the_run(monkeypatch, tmp_path):
    from statesim import cli

    monkeypatch.setenv("STATESIM_STRICT", "0")  # recorded, so the undo also removes what main sets
    seen = {}

    def fake_run(args):
        from statesim.engine import strict_mode

        seen["strict"] = strict_mode()
        return 0

    parser = cli.build_parser()
    args = parser.parse_args(["run", "scenarios/moving_average.yaml", "--strict"])
    assert args.strict
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser, fake_run))
    assert cli.main(["run", "scenarios/moving_average.yaml", "--strict"]) == 0
    assert seen["strict"]


def _with_func(parser, func):
    """``parser`` whose ``run`` subcommand calls ``func`` (the real run is not what this test is about)."""
    for action in parser._subparsers._group_actions:
        action.choices["run"].set_defaults(func=func)
    return parser


def test_a_model_and_its_training_stop_on_the_first_step_of_a_cell_that_collapses_the_batch():
    """The failure seen: ``h[:1]`` with batch 3 trained silently (broadcasting hid it); now the first forward stops."""
    from statesim.builtin.initial_states import Zeros
    from statesim.builtin.topologies import Unidirectional
    from statesim.config import TrainingConfig
    from statesim.data import DataSplits, SequenceData
    from statesim.model import SequenceModel
    from statesim.trainer import Trainer

    cell = TwoPart(fault="collapsed")
    topology = Unidirectional(2, lambda n: cell)
    model = SequenceModel(topology, Zeros(topology.state_spec), nn.Linear(4, 1))
    with fastpath.policy("generic"), pytest.raises(ShapeError, match="batch dimension changed"):
        model(torch.randn(5, 3, 2))
    data = DataSplits(SequenceData(torch.randn(5, 6, 2), torch.randn(5, 6, 1)))
    trainer = Trainer(model, TrainingConfig(steps=3, batch_size=3, lr=0.01, log_every=1))
    with fastpath.policy("generic"), pytest.raises(ShapeError, match="TwoPart: the step returned state part 'h'"):
        trainer.fit(data)
