"""Every file a resume reads is checked: checkpoint sidecars (checksum and schema), data files, run-folder locks."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from _reliability import TINY_LINEAR, metrics_lines, write_scenario
from statesim.checkpoint import list_checkpoints, load_checkpoint
from statesim.errors import CheckpointError
from statesim.run import execute


def _run(config: Path, out: Path | None = None, resume: Path | None = None, echo=lambda m: None, overrides=()) -> Path:
    from statesim.plugin_manager import build_plugin_host

    return execute(config, list(overrides), out=out, resume=resume, host=build_plugin_host(autoload=False), echo=echo)


def _walk(node, key):
    """The first ``[key, child]`` pair of a sidecar skeleton, depth first."""
    if isinstance(node, dict):
        for k, v in node.get("__dict__", []):
            if k == key:
                return node, v
        for child in [v for _, v in node.get("__dict__", [])] + node.get("__list__", []):
            found = _walk(child, key)
            if found:
                return found
    return None


def _resign(data: dict) -> None:
    """Recompute a sidecar's own checksum (a forger can; then the schema has to catch it)."""
    from statesim.checkpoint import _content_digest

    data["sidecar_sha256"] = _content_digest(data)


def _flip_lr_bit(data: dict) -> None:
    _, lr = _walk(data["tree"], "lr")
    bits = struct.unpack("<Q", struct.pack("<d", lr["__value__"]))[0] ^ 1
    lr["__value__"] = struct.unpack("<d", struct.pack("<Q", bits))[0]


def _rename_key(data: dict) -> None:
    for pair in data["tree"]["__dict__"]:
        if pair[0] == "model":
            pair[0] = "modle"


def _nest_deeply(data: dict) -> None:
    node = {"__value__": 1}
    for _ in range(100):
        node = {"__list__": [node]}
    data["tree"]["__dict__"].append(["extra", node])


def _mistype_step(data: dict) -> None:
    _, trainer = _walk(data["tree"], "trainer")
    for pair in trainer["__dict__"]:
        if pair[0] == "step":
            pair[1] = {"__value__": "12"}


DAMAGE = {"lr_bit_flip": (_flip_lr_bit, False), "renamed_key": (_rename_key, False),
          "renamed_key_resigned": (_rename_key, True), "deep_tree_resigned": (_nest_deeply, True),
          "mistyped_step_resigned": (_mistype_step, True), "not_a_mapping": (None, False)}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_sidecar_falls_back_to_the_previous_checkpoint_naming_the_file(tmp_path, damage):
    """A one-bit change of a learning rate, a renamed key, a deep or mistyped tree in the newest sidecar:
    resume warns naming the file and starts from the previous checkpoint; results equal a straight run's."""
    config = write_scenario(tmp_path, TINY_LINEAR)
    straight = _run(config, out=tmp_path / "straight")
    run_dir = _run(config, out=tmp_path / "damaged")
    sidecars = list_checkpoints(run_dir / "checkpoints" / "main")
    newest, previous = sidecars[-1], sidecars[-2]
    change, resign = DAMAGE[damage]
    if change is None:
        newest.write_text("[1, 2, 3]")
    else:
        data = json.loads(newest.read_text())
        change(data)
        if resign:
            _resign(data)
        newest.write_text(json.dumps(data))
    messages: list[str] = []
    _run(config, resume=run_dir, echo=messages.append)
    warning = next(m for m in messages if "Falling back" in m)
    assert str(newest) in warning, messages
    assert f"resumed job 'main' at step {load_checkpoint(previous)[1].step}" in messages
    assert (straight / "results.json").read_bytes() == (run_dir / "results.json").read_bytes()
    assert metrics_lines(straight) == metrics_lines(run_dir)


def test_sidecar_checksum_covers_every_value(tmp_path):
    """The bit flip alone, without resume: load_checkpoint names the file and says it was edited."""
    import torch

    from statesim.checkpoint import save_checkpoint

    sidecar = save_checkpoint(tmp_path / "step_00000001", {"lr": 0.01, "w": torch.ones(2)}, step=1, config_digest="d")
    data = json.loads(sidecar.read_text())
    _flip_lr_bit(data)
    sidecar.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="sidecar_sha256") as info:
        load_checkpoint(sidecar)
    assert str(sidecar) in str(info.value)


def test_resume_refuses_a_changed_data_file_naming_it(tmp_path, monkeypatch, capsys):
    """A corpus TSV edited between the run and its --resume resumed silently with other data (or died in a
    size-mismatch traceback when the vocabulary grew): now exit 2 naming the file, and the digest differs."""
    import shutil

    from _reliability import ROOT
    from statesim.cli import main
    from test_reliability_resume_matrix import QUIET, TINY

    monkeypatch.setenv("STATESIM_DISABLE_PLUGIN_AUTOLOAD", "1")
    corpus = tmp_path / "corpus.tsv"
    shutil.copy(ROOT / "scenarios" / "data" / "de_en_sample.tsv", corpus)
    sets = [a for o in TINY["translation_corpus.yaml"] + QUIET + [f"scenario.corpus.tsv={corpus}"]
            for a in ("--set", o)]
    scenario = ROOT / "scenarios" / "translation_corpus.yaml"
    run_dir = tmp_path / "run"
    assert main(["run", str(scenario), "--out", str(run_dir), *sets]) == 0
    capsys.readouterr()
    from statesim.config import load_config
    from statesim.plugin_manager import build_plugin_host

    registry = build_plugin_host(autoload=False).registry
    before = load_config(scenario, registry, sets[1::2]).digest()
    results = (run_dir / "results.json").read_bytes()
    with corpus.open("a", encoding="utf-8") as handle:
        handle.write("Neues Wort.\tNew word.\n")
    assert load_config(scenario, registry, sets[1::2]).digest() != before
    code = main(["run", str(scenario), "--resume", str(run_dir), *sets])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "data files the scenario reads changed" in err and str(corpus) in err
    assert (run_dir / "results.json").read_bytes() == results
