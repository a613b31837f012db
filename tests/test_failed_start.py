"""A run that fails before it saved anything leaves nothing that blocks a rerun (issue 19 item 4): the same
--out gives the same error again, not "already exists ... --resume"; a folder with anything saved is kept."""
from __future__ import annotations

from pathlib import Path

import pytest

from statesim.errors import StatesimError
from statesim.run import _clear_untrained, execute, prepare

# A forcing target the built model does not have: only the built model knows its state parts, so validation
# finds it by building the model and running its first forward.
BAD = ["forcing=[{target: zz, units: [0], start: 0, stop: 5, value: 1.0}]", "output.progress=false"]


@pytest.fixture
def unprobed(monkeypatch):
    """Validation without its first forward, as for a plugin scenario that offers no probes: the failure then
    comes when the run builds its model, after the run folder was made."""
    import statesim.probing

    monkeypatch.setattr(statesim.probing, "check_first_forward", lambda config, host, file: None)


def test_validation_builds_the_model_and_refuses_what_would_fail_at_once(tmp_path, capsys):
    """`statesim validate` said `valid` for a forcing target the model does not have; it now builds the model
    and names the key, and a run of it fails before it makes its folder."""
    from statesim.cli import main

    assert main(["validate", "scenarios/linear_system.yaml", "--set", BAD[0]]) == 2
    assert ("scenarios/linear_system.yaml: `forcing.0.target`: 'zz' is not 'input' or a state part of the model; "
            "valid targets: input, h.") in capsys.readouterr().err
    out = tmp_path / "run"
    with pytest.raises(StatesimError, match="'zz' is not 'input' or a state part of the model"):
        execute("scenarios/linear_system.yaml", BAD, out=out, echo=lambda m: None)
    assert not out.exists()


def test_validation_warns_when_part_of_the_model_would_never_train(capsys):
    """An encoder_decoder whose decoder starts from zeros without attention never reads its encoder: the
    probe's backward reaches none of the encoder's parameters, and validation says so (the shipped file,
    which starts the decoder from the encoding, gives no warning)."""
    import warnings

    from statesim.cli import main
    from statesim.probing import UntrainedParametersWarning

    translation = str(ROOT / "scenarios" / "translation.yaml")
    with pytest.warns(UntrainedParametersWarning) as caught:
        prepare(translation, ["model.initial_state.type=zeros"])
    message = str(caught[0].message)
    assert "`model`" in message and "encoder.embed" in message and "encoder.topology" in message, message
    assert "decoder." not in message and "head" not in message  # what the outputs do reach is not named
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedParametersWarning)
        prepare(translation)
    assert main(["validate", translation, "--set", "model.initial_state.type=zeros"]) == 0
    assert "warning: " + translation + ": `model`: 9 parameter tensors" in capsys.readouterr().err


def test_a_run_failing_its_first_forward_removes_its_new_folder_and_can_be_rerun(tmp_path, unprobed):
    out = tmp_path / "run"
    notes = []
    for _ in range(2):  # the second attempt meets the same error, not the folder the first one left
        with pytest.raises(StatesimError, match="'zz' is not 'input' or a state part of the model"):
            execute("scenarios/linear_system.yaml", BAD, out=out, echo=notes.append)
        assert not out.exists()
    assert notes == [f"note: removed {out}: the run failed before it saved anything, so the same --out can be "
                     f"used again"] * 2


def test_an_existing_empty_out_folder_is_emptied_but_kept(tmp_path, unprobed):
    out = tmp_path / "mine"
    out.mkdir()
    with pytest.raises(StatesimError):
        execute("scenarios/linear_system.yaml", BAD, out=out, echo=lambda m: None)
    assert out.is_dir() and list(out.iterdir()) == []


def _bookkeeping(folder, metrics=""):
    folder.mkdir()
    (folder / "config.yaml").write_text("name: x\n")
    (folder / "run.json").write_text("{}")
    (folder / "metrics.jsonl").write_text(metrics)
    (folder / "checkpoints" / "main").mkdir(parents=True)


def test_only_bookkeeping_and_empty_folders_are_cleared(tmp_path):
    _bookkeeping(tmp_path / "a")
    assert _clear_untrained(tmp_path / "a", created=True) and not (tmp_path / "a").exists()


@pytest.mark.parametrize("saved", ["checkpoint", "metrics", "plot", "link"])
def test_a_folder_holding_anything_saved_is_kept_untouched(tmp_path, saved):
    run = tmp_path / "b"
    _bookkeeping(run, metrics='{"step": 1}\n' if saved == "metrics" else "")
    if saved == "checkpoint":
        (run / "checkpoints" / "main" / "step_1.json").write_text("{}")
    elif saved == "plot":
        (run / "plots").mkdir()
        (run / "plots" / "loss.png").write_bytes(b"png")
    elif saved == "link":
        (run / "checkpoints" / "main" / "elsewhere").symlink_to(tmp_path)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert not _clear_untrained(run, created=True)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_validation_refuses_a_policy_whose_needs_nothing_supplies(capsys):
    """`initial_state: encoded` on a scenario without an encoder validated and then failed at once; now
    validation names the key and the policies, topologies and scenarios that fit."""
    from statesim.cli import main

    assert main(["validate", "scenarios/linear_system.yaml", "--set", "model.initial_state.type=encoded"]) == 2
    err = capsys.readouterr().err
    assert "`model.initial_state.type`: initial_state 'encoded' needs an encoding (an encoder's output), but " \
           "scenario 'linear_system' with topology 'unidirectional' supplies none" in err
    # warmup's default (prefix: given) needs a prefix that linear_system does not supply either
    assert "Choose one of learned, random, zeros here, or a scenario that supplies it (captioning, " \
           "translation)." in err
    # where the scenario supplies the encoding (its CNN encoder), the same policy validates
    assert main(["validate", "scenarios/captioning.yaml", "--set", "model.initial_state.type=encoded"]) == 0


ROOT = Path(__file__).resolve().parents[1]
TOPOLOGIES = ["unidirectional", "bidirectional", "stacked", "encoder_decoder"]
# random and learned need what zeros needs (nothing); warmup (a prefix) and encoded (an encoding) need more
POLICIES = ["zeros", "warmup", "encoded"]
TINY = {"linear_system": ["scenario.steps=12", "scenario.train_sequences=4", "training.steps=1",
                          "training.batch_size=4", "output.plots=false", "output.progress=false",
                          "model.cell={type: gru, hidden_size: 3}", "model.head=auto"],
        "translation": ["scenario.max_number=99", "scenario.train_size=8", "scenario.val_size=2",
                        "scenario.test_size=2", "scenario.beam_size=1", "scenario.embed_size=4", "training.steps=1",
                        "training.batch_size=4", "output.plots=false", "output.progress=false",
                        "model.cell={type: gru, hidden_size: 3}"],
        "captioning": ["scenario.train_images=8", "scenario.val_images=2", "scenario.test_images=2",
                       "scenario.channels=2", "scenario.features=4", "scenario.embed_size=4", "scenario.beam_size=1",
                       "training.steps=1", "training.batch_size=4", "output.plots=false", "output.progress=false",
                       "model.cell={type: gru, hidden_size: 3}"],
        "flipflop": ["scenario.steps=8", "scenario.train_sequences=4", "scenario.test_sequences=2",
                     "scenario.starts=4", "training.steps=1", "training.batch_size=4", "output.plots=false",
                     "output.progress=false", "model.cell={type: gru, hidden_size: 3}"]}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(TINY))
def test_what_validates_runs_for_every_topology_and_policy(tmp_path, scenario):
    """Every topology x initial-state policy on a scenario without a source (linear_system) and one with
    (translation): validation refuses exactly the combinations whose first update fails, so what validates,
    runs. The truth is the run itself (one update), not the declarations validation reads."""
    from statesim.errors import ConfigError

    for topology in TOPOLOGIES:
        for policy in POLICIES:
            combo = [f"model.topology.type={topology}", f"model.initial_state.type={policy}"]
            if topology == "encoder_decoder" and scenario == "translation":
                combo = [f"model.initial_state.type={policy}"]  # keep the shipped encoder and decoder
            overrides = [*TINY[scenario], *combo]
            try:
                prepare(ROOT / "scenarios" / f"{scenario}.yaml", overrides)  # what `statesim validate` runs
                valid = True
            except ConfigError:
                valid = False
            try:
                execute(ROOT / "scenarios" / f"{scenario}.yaml", overrides, out=tmp_path / f"{topology}-{policy}",
                        echo=lambda m: None)
                ran = True
            except StatesimError as exc:
                ran = False
                assert not isinstance(exc, ConfigError) or not valid, exc
            assert valid == ran, (topology, policy, "validated" if valid else "refused", "ran" if ran else "failed")
