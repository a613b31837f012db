"""Numerical faults in real runs: a NaN injected at a chosen step under each policy; exploding gradients.

(The trainer-level mechanics of each policy are in tests/test_trainer.py; here the fault goes through
``statesim run`` and the outcome is judged on what the run leaves behind: exit code, message,
checkpoints, metrics.jsonl, compared with a clean run of the same config.)
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _reliability import TINY_LINEAR, deep_update, trees_equal, write_scenario
from statesim.checkpoint import list_checkpoints, load_checkpoint
from statesim.trainer import Trainer

BAD_STEP = 7
STEPS = 12


class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _inject(monkeypatch, kind: str) -> None:
    """Make the BAD_STEP-th training update see a NaN loss, or a finite loss with a NaN gradient."""
    original = Trainer._loss

    def loss(self, batch, outputs, t0):
        value = original(self, batch, outputs, t0)
        if self.model.training and self.step + 1 == BAD_STEP:
            return value * float("nan") if kind == "loss" else _NanGradient.apply(value)
        return value

    monkeypatch.setattr(Trainer, "_loss", loss)


def _config(tmp_path, policy: str):
    return write_scenario(tmp_path, deep_update(TINY_LINEAR, {"training": {
        "steps": STEPS, "checkpoint_every": 2, "keep_checkpoints": 100, "nonfinite": policy}}), f"{policy}.yaml")


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if "loss" in r}


@pytest.fixture
def cli(monkeypatch, capsys):
    monkeypatch.setenv("STATESIM_DISABLE_PLUGIN_AUTOLOAD", "1")
    from statesim.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        return code, capsys.readouterr().err

    return run


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_abort_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, cli, kind):
    config = _config(tmp_path, "abort")
    assert cli("run", config, "--out", tmp_path / "clean")[0] == 0
    _inject(monkeypatch, kind)
    code, err = cli("run", config, "--out", tmp_path / "faulty")
    assert code == 2 and "Traceback" not in err
    assert f"non-finite {kind} at step {BAD_STEP}" in err and str(tmp_path / "faulty" / "checkpoints") in err
    sidecars = list_checkpoints(tmp_path / "faulty" / "checkpoints" / "main")
    tree, info = load_checkpoint(sidecars[-1])  # verifies the checksum
    assert info.step == BAD_STEP - 1
    clean_tree, _ = load_checkpoint(tmp_path / "clean" / "checkpoints" / "main" / sidecars[-1].name)
    assert trees_equal(tree, clean_tree) == []
    assert not (tmp_path / "faulty" / "results.json").exists()


def test_skip_leaves_optimizer_and_schedule_one_step_behind(tmp_path, monkeypatch, cli):
    config = _config(tmp_path, "skip")
    assert cli("run", config, "--out", tmp_path / "clean")[0] == 0
    _inject(monkeypatch, "loss")
    assert cli("run", config, "--out", tmp_path / "faulty")[0] == 0
    clean, faulty = _records(tmp_path / "clean"), _records(tmp_path / "faulty")
    assert faulty[BAD_STEP]["nonfinite"] is True and math.isnan(faulty[BAD_STEP]["loss"])
    assert [faulty[s]["nonfinite_total"] for s in (BAD_STEP - 1, BAD_STEP, STEPS)] == [0, 1, 1]
    assert all(faulty[s] == clean[s] for s in range(1, BAD_STEP))
    # The skipped update moved nothing: the schedule runs one step late from there on.
    assert [faulty[s]["lr"] for s in range(BAD_STEP + 1, STEPS + 1)] == \
        [clean[s]["lr"] for s in range(BAD_STEP, STEPS)]
    tree, info = load_checkpoint(list_checkpoints(tmp_path / "faulty" / "checkpoints" / "main")[-1])
    assert info.step == STEPS and tree["trainer"]["nonfinite_steps"] == 1
    assert tree["scheduler"]["last_epoch"] == STEPS - 1
    assert {float(s["step"]) for s in tree["optimizer"]["state"].values()} == {STEPS - 1.0}
    params = [v for v in tree["model"].values()]
    assert all(torch.isfinite(p).all() for p in params)


def test_reduce_lr_halves_the_rate_from_the_bad_step_on(tmp_path, monkeypatch, cli):
    config = _config(tmp_path, "reduce_lr")
    assert cli("run", config, "--out", tmp_path / "clean")[0] == 0
    _inject(monkeypatch, "gradient")
    assert cli("run", config, "--out", tmp_path / "faulty")[0] == 0
    clean, faulty = _records(tmp_path / "clean"), _records(tmp_path / "faulty")
    assert faulty[BAD_STEP]["nonfinite"] is True and math.isfinite(faulty[BAD_STEP]["loss"])
    assert all(faulty[s]["lr"] == clean[s]["lr"] for s in range(1, BAD_STEP + 1))
    for step in range(BAD_STEP + 1, STEPS + 1):
        assert faulty[step]["lr"] == pytest.approx(0.5 * clean[step - 1]["lr"], rel=1e-12)
    tree, _ = load_checkpoint(list_checkpoints(tmp_path / "faulty" / "checkpoints" / "main")[-1])
    assert tree["scheduler"]["base_lrs"] == [0.5 * TINY_LINEAR["training"]["lr"]]


def _inject_from(monkeypatch, first_bad: int, last_bad: int | None = None) -> None:
    """Every training update from ``first_bad`` (to ``last_bad``) sees a NaN loss."""
    original = Trainer._loss

    def loss(self, batch, outputs, t0):
        value = original(self, batch, outputs, t0)
        if self.model.training and first_bad <= self.step + 1 <= (last_bad or 10**9):
            return value * float("nan")
        return value

    monkeypatch.setattr(Trainer, "_loss", loss)


@pytest.mark.parametrize("policy", ["skip", "reduce_lr"])
def test_skip_and_reduce_lr_stop_when_most_recent_updates_were_non_finite(tmp_path, monkeypatch, cli, policy):
    """85-95 % of updates skipped used to exit 0 silently. From step 3 every update is NaN: warnings as the
    count grows (1, 10), then exit 2 once more than half of the last updates were non-finite, no results.json,
    the last checkpoint verifies."""
    config = write_scenario(tmp_path, deep_update(TINY_LINEAR, {"training": {
        "steps": 40, "checkpoint_every": 2, "nonfinite": policy, "nonfinite_window": 10}}), f"{policy}.yaml")
    _inject_from(monkeypatch, 3)
    code, err = cli("run", config, "--out", tmp_path / "faulty")
    assert code == 2 and "Traceback" not in err, err
    assert "1 update(s) skipped so far" in err
    # 2 good updates then NaNs: more than 5 of the last 10 at step 10 (the window is full from step 10 on)
    assert "job 'main': 8 of the last 10 updates (up to step 10)" in err, err
    assert "nonfinite_max_fraction = 0.5" in err and str(tmp_path / "faulty" / "checkpoints") in err
    assert not (tmp_path / "faulty" / "results.json").exists()
    load_checkpoint(list_checkpoints(tmp_path / "faulty" / "checkpoints" / "main")[-1])


def test_a_share_below_the_limit_trains_on_and_results_flag_non_finite_values(tmp_path, monkeypatch, cli):
    """The last update alone is NaN (1 of 12, below the limit): the run finishes, results.json is strict JSON
    (null where the final loss was NaN) and says which values were not finite."""
    from _reliability import ROOT
    from test_reliability_resume_matrix import QUIET, TINY

    tiny = [o for o in TINY["adding.yaml"] if not o.startswith("training.steps=")]
    sets = [a for o in tiny + QUIET + [f"training.steps={STEPS}", "training.nonfinite=skip",
                                       "scenario.stop_when_solved=false"] for a in ("--set", o)]
    _inject_from(monkeypatch, STEPS, STEPS)
    code, err = cli("run", ROOT / "scenarios" / "adding.yaml", "--out", tmp_path / "faulty", *sets)
    assert code == 0, err
    assert "1 update(s) skipped so far" in err and "nonfinite_values" in err
    text = (tmp_path / "faulty" / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda name: pytest.fail(f"results.json holds {name}"))
    assert results["final_train_loss"] is None
    assert results["nonfinite_values"] == {"final_train_loss": "nan"}


# --------------------------------------------------------------------------- exploding gradients
@settings(max_examples=30, deadline=None, derandomize=True)
@given(gain=st.floats(1.0, 50.0), input_scale=st.floats(1e-3, 1e6), steps=st.integers(5, 60),
       clip=st.one_of(st.builds(dict, max_norm=st.floats(1e-3, 10.0)),
                      st.builds(dict, max_value=st.floats(1e-3, 10.0)),
                      st.builds(dict, max_norm=st.floats(1e-3, 10.0), max_value=st.floats(1e-3, 10.0)),
                      st.builds(dict, adaptive=st.floats(0.5, 4.0))),
       optimizer=st.sampled_from(["sgd", "adam"]), lr=st.floats(1e-4, 1.0),
       policy=st.sampled_from(["skip", "reduce_lr", "abort"]), activation=st.sampled_from(["tanh", "identity"]),
       seed=st.integers(0, 2**16))
def test_clipping_never_lets_a_parameter_become_non_finite(gain, input_scale, steps, clip, optimizer, lr, policy,
                                                           activation, seed):
    """Recurrent weights scaled far past the edge of stability (identity activation: gradients grow like
    gain**T and overflow), huge inputs; with clipping on, every parameter stays finite after every update."""
    from statesim.config import TrainingConfig, validate_model
    from statesim.data import DataSplits, SequenceData
    from statesim.errors import TrainingError
    from statesim.model import build_model
    from statesim.plugin_manager import build_plugin_host

    torch.manual_seed(seed)
    host = _HOST.setdefault("host", build_plugin_host(autoload=False))
    model_config = validate_model({"cell": {"type": "vanilla", "hidden_size": 4, "activation": activation}},
                                  host.registry)
    model = build_model(host.registry, model_config, 2, 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "hh" in name:
                p.mul_(gain)
    x = torch.randn(steps, 8, 2) * input_scale
    data = DataSplits(SequenceData(x, torch.randn(steps, 8, 1) * input_scale))
    config = TrainingConfig(steps=4, batch_size=4, lr=lr, optimizer=optimizer, clip=clip, nonfinite=policy)

    before = [p.detach().clone() for p in model.parameters()]

    def check(trainer, record):
        bad = [n for n, p in trainer.model.named_parameters() if not torch.isfinite(p).all()]
        assert not bad, f"non-finite {bad} after update {record['step']} ({record})"
        now = [p.detach().clone() for p in trainer.model.parameters()]
        if optimizer == "sgd" and not record.get("nonfinite"):  # plain SGD: the step is lr times the clipped grad
            delta = torch.cat([(a - b).flatten() for a, b in zip(now, before)]).double()
            if "max_norm" in clip:
                assert delta.norm() <= record["lr"] * clip["max_norm"] * (1 + 1e-3) + 1e-6 * (1 + input_scale)
            if "max_value" in clip:
                assert delta.abs().max() <= record["lr"] * clip["max_value"] * (1 + 1e-3) + 1e-6 * (1 + input_scale)
        before[:] = now

    trainer = Trainer(model, config, on_update=check)
    try:
        trainer.fit(data)
    except TrainingError:
        assert policy == "abort"
    assert all(torch.isfinite(p).all() for p in model.parameters())


_HOST: dict = {}


def test_the_setup_above_does_explode():
    """Control for the property: without clipping the same kind of model has astronomically large gradients."""
    from statesim.config import TrainingConfig, validate_model
    from statesim.data import DataSplits, SequenceData
    from statesim.model import build_model
    from statesim.plugin_manager import build_plugin_host

    host = _HOST.setdefault("host", build_plugin_host(autoload=False))
    model_config = validate_model({"cell": {"type": "vanilla", "hidden_size": 4, "activation": "identity"}},
                                  host.registry)
    model = build_model(host.registry, model_config, 2, 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "hh" in name:
                p.mul_(10.0)
    data = DataSplits(SequenceData(torch.randn(40, 8, 2), torch.randn(40, 8, 1)))
    records = []
    Trainer(model, TrainingConfig(steps=1, batch_size=4, optimizer="sgd", nonfinite="skip"),
            on_update=lambda t, r: records.append(r)).fit(data)
    assert not math.isfinite(records[0]["grad_norm"]) or records[0]["grad_norm"] > 1e12
