"""Encoder-decoder, decoding (greedy, beam, scheduled sampling), metrics, number words, and the policies."""
from __future__ import annotations

import itertools

import pytest
import torch

from statesim.builtin.cells import LSTMCell
from statesim.builtin.scenarios.numberwords import english, german
from statesim.builtin.state_policies import Encoded, Warmup
from statesim.builtin.topologies import Unidirectional
from statesim.config import validate_data
from statesim.engine import unroll
from statesim.errors import ShapeError
from statesim.data import cross_entropy_loss
from statesim.model import InitialContext, SequenceModel, build_model, fed_back
from statesim.plugin_manager import build_plugin_host
from statesim.builtin.seq2seq import (BOS, EOS, Vocab, beam_decode, corpus_bleu, detokenize,
                                      exact_match, generate, greedy_decode, pad_ids, token_pairs, tokenize)

_HOST = build_plugin_host()
CELLS = _HOST.registry.names("cell")


# --------------------------------------------------------------------------- number words and text
@pytest.mark.parametrize("n, de, en", [
    (0, "null", "zero"), (1, "eins", "one"), (12, "zwölf", "twelve"), (16, "sechzehn", "sixteen"),
    (17, "siebzehn", "seventeen"), (21, "einundzwanzig", "twenty one"), (30, "dreißig", "thirty"),
    (100, "einhundert", "one hundred"), (101, "einhunderteins", "one hundred one"),
    (312, "dreihundertzwölf", "three hundred twelve"), (1000, "eintausend", "one thousand"),
    (2021, "zweitausendeinundzwanzig", "two thousand twenty one"),
    (21000, "einundzwanzigtausend", "twenty one thousand"),
    (101001, "einhunderteintausendeins", "one hundred one thousand one"),
    (999999, "neunhundertneunundneunzigtausendneunhundertneunundneunzig",
     "nine hundred ninety nine thousand nine hundred ninety nine")])
def test_number_words_known_pairs(n, de, en):
    assert german(n) == de and english(n) == en


def test_number_words_are_unique_and_bounded():
    sample = range(0, 1_000_000, 997)
    assert len({german(n) for n in sample}) == len(sample)
    with pytest.raises(ValueError):
        german(1_000_000)


def test_tokenizers_and_vocab_round_trip():
    text = "three hundred twelve"
    for mode in ("char", "whitespace"):
        tokens = tokenize(text, mode)
        vocab = Vocab.from_sequences([tokens])
        assert detokenize(vocab.decode(vocab.encode(tokens) + [EOS, 7]), mode) == text
    assert Vocab(["a"]).encode(["zzz"]) == [3]


def test_bleu_against_a_hand_computed_value():
    # precisions 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected, abs=1e-6)
    assert corpus_bleu(["a b c d"], ["a b c d"]) == pytest.approx(100)
    assert exact_match(["a  b", "c"], ["a b", "d"]) == 0.5


def test_sacrebleu_is_an_extra_and_its_absence_names_it(monkeypatch):
    import sys
    import tomllib
    from pathlib import Path

    from statesim.errors import StatesimError

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("sacrebleu") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert any(d.startswith("sacrebleu") for d in extras["seq2seq"])
    assert any(d.startswith("sacrebleu") for d in extras["dev"])
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import sacrebleu now raises ImportError
    with pytest.raises(StatesimError, match=r"statesim\[seq2seq\]"):
        corpus_bleu(["a b"], ["a b"])


# --------------------------------------------------------------------------- decoding
def tiny_decoder(vocab=6, hidden=5, seed=0):
    torch.manual_seed(seed)
    cell = LSTMCell(4, hidden)
    embed = torch.nn.Embedding(vocab, 4)
    head = torch.nn.Linear(hidden, vocab)
    with torch.no_grad():
        head.weight.mul_(4)  # peaked distributions make greedy and beam disagree more often
    state = {"h": torch.randn(3, hidden), "c": torch.randn(3, hidden)}
    return cell, embed, head, state


def sequence_scores(cell, embed, head, state, sequences):
    """Log-probabilities of whole sequences by a teacher-forced unroll (independent of step-wise decoding)."""
    scores = []
    for seq in sequences:
        inputs = torch.tensor([BOS] + seq[:-1]).unsqueeze(1).expand(-1, state["h"].shape[0])
        logp = torch.log_softmax(head(unroll(cell, embed(inputs), state).outputs), -1)
        target = torch.tensor(seq).unsqueeze(1).expand_as(inputs)
        scores.append(logp.gather(2, target.unsqueeze(-1)).squeeze(-1).sum(0))
    return torch.stack(scores)  # [S, B]


def test_beam_search_with_a_full_beam_finds_the_exhaustive_optimum():
    cell, embed, head, state = tiny_decoder()
    vocab, max_len = 6, 3
    candidates = {tuple(s[:s.index(EOS) + 1]) if EOS in s else tuple(s)
                  for s in map(list, itertools.product(range(vocab), repeat=max_len))}
    candidates = [list(c) for c in candidates]
    with torch.no_grad():
        scores = sequence_scores(cell, embed, head, state, candidates)
    best = scores.argmax(0)
    hyps, beam_scores = beam_decode(lambda k: cell, state, embed, head, beam_size=vocab ** max_len, max_len=max_len)
    for b in range(3):
        assert hyps[b] == candidates[int(best[b])]
        assert float(beam_scores[b]) == pytest.approx(float(scores[best[b], b]), abs=1e-4)


def test_beam_of_one_is_greedy_and_greedy_score_is_the_sequence_log_probability():
    cell, embed, head, state = tiny_decoder(seed=3)
    greedy, greedy_scores = greedy_decode(cell, state, embed, head, max_len=6)
    beam, _ = beam_decode(lambda k: cell, state, embed, head, beam_size=1, max_len=6)
    assert greedy == beam
    for b, seq in enumerate(greedy):
        with torch.no_grad():
            score = sequence_scores(cell, embed, head, state, [seq])[0, b]
        assert float(greedy_scores[b]) == pytest.approx(float(score), abs=1e-4)


def test_scheduled_sampling_of_one_feeds_back_the_greedy_prediction():
    cell, embed, head, state = tiny_decoder(seed=5)
    gold = torch.randint(0, 6, (4, 3))
    gold[0] = BOS
    with torch.no_grad():
        logits = fed_back(cell, state, embed, head, gold, sampling=1.0).outputs
        greedy_logits, s = [], state
        previous = gold[0]
        for t in range(4):  # the model's own argmax fed back, by hand
            y, s = cell(embed(previous), s)
            greedy_logits.append(head(y))
            previous = greedy_logits[-1].argmax(-1)
        torch.testing.assert_close(logits, torch.stack(greedy_logits))
        forced = head(unroll(cell, embed(gold), state).outputs)  # teacher forcing
        torch.testing.assert_close(forced[0], logits[0])
        assert not torch.allclose(forced, logits)


# --------------------------------------------------------------------------- encoder-decoder
def model_config(cell: dict, encoder: dict, attention: str, decoder: dict | None = None, initial=None):
    data = {"scenario": {"type": "translation"},
            "model": {"cell": cell, "initial_state": initial or {"type": "encoded"}, "head": "linear",
                      "topology": {"type": "encoder_decoder", "encoder": encoder, "attention": attention,
                                   "attention_size": 8, **({"decoder": decoder} if decoder else {})}}}
    return validate_data(data, _HOST.registry).model


def seq2seq_model(config, source_vocab=7, target_vocab=9, embed_size=5) -> SequenceModel:
    """The translation scenario's model: target tokens in, logits out, conditioned on the source tokens."""
    return build_model(_HOST.registry, config, embed_size, target_vocab, input_vocab=target_vocab,
                       encoder={"type": "sequence", "vocab": source_vocab, "size": embed_size})


def logits(model, batch, sampling=0.0):
    return model(batch.inputs, lengths=batch.lengths, condition=batch.condition,
                 condition_lengths=batch.condition_lengths, sampling=sampling).outputs


def pair_batch(source_vocab=7, target_vocab=9):
    lengths = torch.tensor([6, 2, 4])
    source = torch.randint(4, source_vocab, (6, 3)) * (torch.arange(6).unsqueeze(1) < lengths)
    target, target_lengths = pad_ids([[4, 5, 6], [7], [8, 4]], eos=True)
    return token_pairs(source, lengths, target, target_lengths)


@pytest.mark.parametrize("attention", ["none", "additive", "dot"])
@pytest.mark.parametrize("encoder", [{"type": "unidirectional"}, {"type": "bidirectional"},
                                     {"type": "stacked", "layers": 2, "bidirectional_first": True,
                                      "residual": True, "residual_from": 1, "merge": "sum"}])
def test_ragged_batch_gives_each_sequence_its_own_result(attention, encoder):
    """Padding never leaks: a batch's logits equal each pair's logits computed alone."""
    config = model_config({"type": "lstm", "hidden_size": 6}, encoder, attention,
                          decoder={"type": "stacked", "layers": 2})
    model = seq2seq_model(config).eval()
    batch = pair_batch()
    with torch.no_grad():
        together = logits(model, batch)
        for b in range(3):
            alone = logits(model, batch.select(torch.tensor([b])))
            steps = int(batch.lengths[b])
            torch.testing.assert_close(together[:steps, b], alone[:steps, 0], atol=1e-5, rtol=1e-5)


def cell_spec(name: str) -> dict:
    record = _HOST.registry.get("cell", name).record
    return {"type": name, **{f: 4 for f, i in record.params.model_fields.items()
                             if i.is_required() and i.annotation is int}}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("attention", ["none", "additive"])
def test_encoder_decoder_trains_and_decodes_with_every_cell(cell, attention):
    config = model_config(cell_spec(cell), {"type": "stacked", "layers": 2, "bidirectional_first": True}, attention,
                          decoder={"type": "stacked", "layers": 2, "dropout": 0.1})
    try:
        model = seq2seq_model(config, embed_size=3)
    except ShapeError as exc:  # a cell with a fixed input size (a CPG's two drives) refuses clearly
        assert "input_size" in str(exc)
        return
    batch = pair_batch()
    loss = cross_entropy_loss(logits(model, batch, sampling=0.5), batch.targets, batch.mask())
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[:2])
    assert model.initial_state.map.weight.grad.abs().sum() > 0  # the decoder really starts from the encoding
    greedy = generate(model, batch.condition, batch.condition_lengths, beam_size=1, max_len=5)
    beam = generate(model, batch.condition, batch.condition_lengths, beam_size=3, max_len=5)
    assert len(greedy) == len(beam) == 3 and all(len(row) <= 5 for row in greedy + beam)


def test_attention_weights_ignore_padding_and_sum_to_one():
    config = model_config({"type": "gru", "hidden_size": 6}, {"type": "bidirectional"}, "additive")
    model = seq2seq_model(config)
    batch = pair_batch()
    memory = model.encode(batch.condition, batch.condition_lengths)
    cell = model.step_cell(memory)
    state = model.initial(3, memory=memory)
    from statesim.builtin.state_policies import flatten_state

    _, weights = cell.attention(flatten_state(state), cell.keys, memory)
    torch.testing.assert_close(weights.sum(1), torch.ones(3))
    assert torch.all(weights[1, 2:] == 0) and torch.all(weights[2, 4:] == 0)


def test_encoder_decoder_refuses_a_decoder_that_cannot_step():
    from statesim.errors import StatesimError

    with pytest.raises(StatesimError, match="stepped"):
        seq2seq_model(model_config({"type": "lstm", "hidden_size": 4}, {"type": "unidirectional"}, "none",
                                   decoder={"type": "bidirectional"}))


# --------------------------------------------------------------------------- initial-state policies
def test_warmup_state_is_the_state_reached_on_the_prefix():
    topo = Unidirectional(2, lambda n: LSTMCell(n, 4))
    prefix = torch.randn(7, 3, 2)
    policy = Warmup(topo.state_spec, steps=5, prefix="given")
    state = policy(3, device="cpu", dtype=torch.float32, context=InitialContext(topology=topo, prefix=prefix))
    expected = unroll(topo.cell, prefix[-5:]).final_state  # the engine from zeros on the last 5 prefix steps
    torch.testing.assert_close(state["h"], expected["h"])
    torch.testing.assert_close(state["c"], expected["c"])
    with pytest.raises(ShapeError, match="prefix"):
        policy(3, device="cpu", dtype=torch.float32, context=InitialContext(topology=topo))
    inputs = torch.randn(9, 3, 2)
    own = Warmup(topo.state_spec, steps=4, prefix="inputs")(3, device="cpu", dtype=torch.float32,
                                                             context=InitialContext(inputs=inputs, topology=topo))
    torch.testing.assert_close(own["h"], unroll(topo.cell, inputs[:4]).final_state["h"])


def test_warmup_applies_per_layer_and_direction():
    from statesim.builtin.layered import Stacked

    topo = Stacked(2, lambda n: LSTMCell(n, 3), layers=2, bidirectional_first=True)
    prefix = torch.randn(4, 2, 2)
    state = Warmup(topo.state_spec, steps=4)(2, device="cpu", dtype=torch.float32,
                                             context=InitialContext(topology=topo, prefix=prefix))
    reference = topo(prefix, {n: torch.zeros(2, *s) for n, s in topo.state_spec.items()}).final_state
    assert set(state) == set(topo.state_spec) and "layer0.bwd.c" in state
    for name in state:
        torch.testing.assert_close(state[name], reference[name])


def test_encoded_policy_identity_split_and_learned_map():
    spec = {"h": (2,), "c": (3,)}
    code = torch.randn(4, 5)
    split = Encoded(spec, activation="identity")(4, device="cpu", dtype=torch.float32,
                                                  context=InitialContext(encoded=code))
    torch.testing.assert_close(split["h"], code[:, :2])
    torch.testing.assert_close(split["c"], code[:, 2:])
    mapped = Encoded(spec, encoded_size=7)
    code7 = torch.randn(4, 7)
    out = mapped(4, device="cpu", dtype=torch.float32, context=InitialContext(encoded=code7))
    normed = (code7 - code7.mean(-1, keepdim=True)) / torch.sqrt(code7.var(-1, unbiased=False, keepdim=True) + 1e-5)
    full = torch.tanh(normed @ mapped.map.weight.T + mapped.map.bias)
    torch.testing.assert_close(torch.cat([out["h"], out["c"]], -1), full)
    with pytest.raises(ShapeError, match="encoded_size"):
        mapped(4, device="cpu", dtype=torch.float32, context=InitialContext(encoded=code))


def test_seq2seq_model_is_an_nn_module_with_one_parameter_set():
    config = model_config({"type": "lstm", "hidden_size": 4}, {"type": "stacked", "layers": 2}, "dot",
                          decoder={"type": "stacked", "layers": 2})
    model = seq2seq_model(config)
    assert isinstance(model, SequenceModel) and model.encoder is not None
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(set(names))
    assert any(n.startswith("topology.decoder.layers.1.") for n in names)
