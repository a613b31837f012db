"""End-to-end runs of translation, captioning and initial_state_effect (small but real), and their data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from statesim.builtin.scenarios.captioning import COLOURS, make_image
from statesim.builtin.scenarios.translation import CorpusConfig, read_corpus
from statesim.errors import StatesimError
from statesim.run import execute

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["translation", "translation_attention", "translation_gnmt", "translation_corpus", "captioning",
           "initial_state_effect"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenarios_validate(name):
    from statesim.run import prepare

    text = (ROOT / "scenarios" / f"{name}.yaml").read_text(encoding="utf-8")
    assert text.startswith(f"# statesim run scenarios/{name}.yaml")
    config, _ = prepare(ROOT / "scenarios" / f"{name}.yaml")
    assert config.scenario.type in {"translation", "captioning", "initial_state_effect"}


def run(tmp_path, name, overrides, monkeypatch=None):
    if monkeypatch is not None:
        monkeypatch.chdir(ROOT)
    out = execute(ROOT / "scenarios" / f"{name}.yaml", ["output.progress=false", *overrides], out=tmp_path / name)
    return json.loads((out / "results.json").read_text()), out


def test_corpus_reading_errors(tmp_path):
    with pytest.raises(StatesimError, match="does not exist"):
        read_corpus(CorpusConfig(tsv=str(tmp_path / "missing.tsv")))
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nno tab here\nc\td\n", encoding="utf-8")
    with pytest.raises(StatesimError, match="line 2"):
        read_corpus(CorpusConfig(tsv=str(bad)))
    (tmp_path / "s.txt").write_text("a\nb\nc\n", encoding="utf-8")
    (tmp_path / "t.txt").write_text("x\ny\n", encoding="utf-8")
    with pytest.raises(StatesimError, match="line-aligned"):
        read_corpus(CorpusConfig(source=str(tmp_path / "s.txt"), target=str(tmp_path / "t.txt")))
    with pytest.raises(ValueError):
        CorpusConfig(tsv="a.tsv", source="b.txt")


@pytest.mark.parametrize("name", ["translation", "captioning"])
def test_a_missing_sacrebleu_stops_the_scenario_before_training(tmp_path, monkeypatch, name):
    import sys

    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    with pytest.raises(StatesimError, match=r"pip install 'statesim\[seq2seq\]'"):
        run(tmp_path, name, ["training.steps=1"])
    assert not (tmp_path / name / "checkpoints").exists()


def test_captions_describe_the_drawn_pixels():
    """Independent check of the generator: colours named are the colours drawn, in the named order."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        image, caption = make_image(rng)
        words = caption.split()
        named = [w for w in words if w in COLOURS]
        centres = []
        for colour in named:
            hit = np.all(np.isclose(image, COLOURS[colour], atol=1e-6), axis=-1)
            assert hit.sum() > 10, caption
            ys, xs = np.nonzero(hit)
            centres.append((ys.mean(), xs.mean()))
        if "left" in words and named[0] != named[1]:
            assert centres[0][1] < centres[1][1]
        if "above" in words and named[0] != named[1]:
            assert centres[0][0] < centres[1][0]


@pytest.mark.slow
def test_translation_learns_unseen_numbers(tmp_path):
    results, _ = run(tmp_path, "translation_attention", [
        "scenario.max_number=999", "scenario.train_size=600", "scenario.val_size=0", "scenario.test_size=60",
        "model.cell.hidden_size=48", "training.steps=250", "training.batch_size=32", "training.lr=0.01",
        "training.checkpoint_every=1000", "scenario.beam_size=3"])
    assert results["data"]["test"] == 60 and results["data"]["train"] == 600
    # held-out numbers: far better than chance (a wrong digit anywhere makes the whole sequence wrong)
    assert results["greedy"]["exact_match"] >= 0.5
    assert results["beam3"]["bleu"] >= 60
    assert {"source", "reference", "greedy", "beam3"} <= set(results["examples"][0])


@pytest.mark.slow
def test_translation_on_a_user_corpus_from_two_files(tmp_path, monkeypatch):
    results, _ = run(tmp_path, "translation_corpus", [
        "scenario.corpus={source: scenarios/data/de_sample.txt, target: scenarios/data/en_sample.txt, "
        "tokenizer: whitespace, val_fraction: 0.0, test_fraction: 0.15}", "training.steps=150"], monkeypatch)
    assert results["data"]["train"] + results["data"]["test"] == 42
    # a sample this small tests the plumbing; the subject-verb pattern is learnable from 36 pairs
    assert results["greedy"]["bleu"] > 10


@pytest.mark.slow
def test_captioning_end_to_end(tmp_path):
    results, out = run(tmp_path, "captioning", [
        "scenario.train_images=1500", "scenario.val_images=0", "scenario.test_images=100", "training.steps=250",
        "training.checkpoint_every=1000"])
    assert (out / "plots" / "captions.png").stat().st_size > 10_000
    assert results["greedy"]["bleu"] > 10  # a caption model that ignores the image scores 0 here (measured)
    # exact match counts whole captions of the 100 test images; the greedy one agrees with its listed examples
    for name in ("greedy", "beam3"):
        matched = results[name]["exact_match"] * 100
        assert abs(matched - round(matched)) < 1e-9, (name, results[name])
    shown = sum(" ".join(e["greedy"].split()) == " ".join(e["true"].split()) for e in results["examples"])
    assert shown <= round(results["greedy"]["exact_match"] * 100) <= shown + 100 - len(results["examples"])


@pytest.mark.slow
def test_warmup_beats_blind_starts_on_the_first_steps(tmp_path):
    results, out = run(tmp_path, "initial_state_effect", [
        "scenario.train_sequences=128", "scenario.test_sequences=128", "training.steps=120",
        "training.checkpoint_every=1000"])
    policies = results["policies"]
    assert set(policies) == {"zeros", "random", "learned", "warmup"}
    assert results["ranking_first_steps"][0] == "warmup"
    # a blind start costs: the zero-state model's early error is well above its own later error
    assert policies["zeros"]["mse_first_steps"] > 2 * policies["zeros"]["mse_later_steps"]
    assert (out / "plots" / "initial_state_effect.png").exists()


# --------------------------------------------------------------------------- checkpoints rebuild (tiny runs)
TINY = {
    "translation": ["scenario.max_number=999", "scenario.train_size=48", "scenario.val_size=0", "scenario.test_size=6",
                    "scenario.embed_size=4", "scenario.examples=6", "model.cell.hidden_size=6", "training.steps=3",
                    "training.batch_size=16"],
    "translation_gnmt": ["scenario.max_number=999", "scenario.train_size=48", "scenario.val_size=0",
                         "scenario.test_size=6", "scenario.embed_size=4", "scenario.examples=6", "scenario.beam_size=2",
                         "model.cell.hidden_size=6", "training.steps=3", "training.batch_size=16",
                         "training.bptt={mode: truncated, k1: 2, k2: 3}"],
    "captioning": ["scenario.train_images=24", "scenario.val_images=0", "scenario.test_images=8", "scenario.channels=2",
                   "scenario.features=6", "scenario.embed_size=4", "model.cell.hidden_size=6", "training.steps=3",
                   "training.batch_size=8", "output.plots=false"],
}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq_runs")
    return {name: run(root, name, overrides) for name, overrides in TINY.items()}


def _test_data(name, out):
    """The run's test set, regenerated from its saved config (the scenarios' data is seeded), its target
    vocabulary, the target tokenizer and the decoding length the scenario used."""
    from statesim.builtin.scenarios import captioning, translation
    from statesim.builtin.seq2seq import Vocab, tokenize
    from statesim.config import load_config
    from statesim.plugin_manager import build_plugin_host

    config = load_config(out / "config.yaml", build_plugin_host(autoload=False).registry)
    p = config.scenario.params
    if name == "captioning":
        _, _, vocab = captioning.make_dataset(p.train_images, config.seed)
        test = captioning.make_dataset(p.test_images, config.seed + 2, vocab)[0]
        return test, vocab, "whitespace", int(test.lengths.max()) + 3
    train, _, pairs = translation.generated_pairs(p, config.seed)
    src = Vocab.from_sequences(tokenize(s, p.source_tokenizer) for s, _ in train)
    tgt = Vocab.from_sequences(tokenize(t, p.target_tokenizer) for _, t in train)
    test = translation.make_data(pairs, src, tgt, p.source_tokenizer, p.target_tokenizer)
    return test, tgt, p.target_tokenizer, int(test.lengths.max()) + 5


@pytest.mark.parametrize("name", list(TINY))
def test_a_conditioned_checkpoint_rebuilds_and_decodes_as_the_run_did(tiny_runs, name):
    """statesim.runfolder.load_model rebuilds the model from the checkpoint alone; its greedy decodes are the run's."""
    from statesim.builtin.seq2seq import detokenize, generate
    from statesim.runfolder import load_model

    results, out = tiny_runs[name]
    model, info = load_model(out)
    assert info.meta["model"]["encoder"]["type"] == ("cnn" if name == "captioning" else "sequence")
    test, vocab, tokenizer, max_len = _test_data(name, out)
    ids = generate(model, test.condition, test.condition_lengths, max_len=max_len)
    decoded = [detokenize(vocab.decode(row), tokenizer) for row in ids]
    examples = results["examples"]
    assert len(examples) >= 6 and [e["greedy"] for e in examples] == decoded[:len(examples)]


@pytest.mark.parametrize("name", list(TINY))
def test_diagnose_export_and_embed_work_on_a_conditioned_run(tiny_runs, name, tmp_path):
    from statesim.builtin.seq2seq import generate
    from statesim.diagnostics import diagnose_run
    from statesim.embed import load
    from statesim.export import TOLERANCE, ExportError, export_model, verify_export
    from statesim.runfolder import load_model

    results, out = tiny_runs[name]
    model, _ = load_model(out)
    attends = name == "translation_gnmt"
    notes: list[str] = []
    report = diagnose_run(out, echo=notes.append)
    assert report["training"]["main"]["updates"] == 3
    if attends:  # the decoder reads the memory at every step: a clear note, no traceback
        assert "main" not in report["jobs"] and any("memory" in n for n in notes)
        with pytest.raises(ExportError, match="memory"):
            export_model(model, tmp_path / "step.pt", "torchscript")
    else:
        assert np.isfinite(report["jobs"]["main"]["rate_per_step"])
        sidecar = export_model(model, tmp_path / "step.pt", "torchscript")
        meta = json.loads(sidecar.read_text())
        assert meta["inputs"][0]["dtype"] == "int64" and meta["model"]["encoder"] == model.build_spec["encoder"]
        assert "context" in meta["initial_state"]["note"]  # the encoded state is the host's to compute
        assert verify_export(sidecar, model, steps=20) <= TOLERANCE
    # stepping the embedded model on its own argmax is greedy decoding
    test = _test_data(name, out)[0]
    condition, lengths = test.condition, test.condition_lengths
    sim = load(out)
    with pytest.raises(StatesimError, match="condition"):
        sim.step(np.zeros(1, dtype=np.int64))
    sim.reset(condition=condition, condition_lengths=lengths)
    expected = generate(model, condition, lengths, max_len=6)
    tokens = np.full(condition.shape[1], 1)  # <bos>
    stepped = []
    for _ in range(6):
        tokens = sim.step(tokens).argmax(-1)
        stepped.append(tokens)
    stepped = np.stack(stepped, 1)
    for row, ids in zip(stepped, expected):
        assert list(row[:len(ids)]) == ids
