"""Scenario ``translation``: sequence-to-sequence translation with an ``encoder_decoder`` model.

By default the pairs are generated: German number words to English (``dreihundertzwölf`` -> ``three
hundred twelve``), numbers drawn from 0..max_number and split by number, so every test number is unseen
in training. With ``corpus:`` the same scenario reads a user's parallel corpus (a TSV of
``source<TAB>target`` lines, or two line-aligned text files) and splits it by fraction.

Training: teacher forcing with an optional scheduled-sampling ratio ramped over training. Evaluation
on the held-out test set: exact-sequence accuracy and corpus BLEU (sacrebleu) for greedy and beam
decoding, plus a few translated examples.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from statesim.builtin.scenarios.numberwords import MAX_NUMBER, english, german
from statesim.data import DataSplits
from statesim.errors import StatesimError
from statesim.hookimpl import hookimpl
from statesim.registry import Registration
from statesim.scenario import Probe, RunContext, Scenario, ScenarioParams
from statesim.builtin.seq2seq import (Vocab, corpus_bleu, detokenize, exact_match, generate, pad_ids,
                                      PROBE_VOCAB, probe_pairs, require_sacrebleu, token_pairs, tokenize)
from statesim.data import SequenceData, cross_entropy_loss
from statesim.model import SequenceModel
from statesim.config import RunConfig, Strict
from statesim.datafiles import DataPath

Tokenizer = Literal["char", "whitespace"]


class CorpusConfig(Strict):
    """A user's parallel corpus: ``tsv`` (source<TAB>target per line) or ``source`` + ``target`` files."""

    tsv: DataPath | None = Field(None, description="path of a TSV file, one 'source<TAB>target' pair per line")
    source: DataPath | None = Field(None, description="path of the source-language file, one sentence per line")
    target: DataPath | None = Field(None, description="path of the target-language file, line-aligned with source")
    tokenizer: Tokenizer = Field("whitespace", description="tokenizer of both sides: char or whitespace")
    max_length: int = Field(50, gt=0, description="drop pairs with more tokens than this on either side")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of pairs for validation")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="fraction of pairs for the test set")

    @model_validator(mode="after")
    def _one_source(self) -> "CorpusConfig":
        if (self.tsv is None) == (self.source is None and self.target is None):
            raise ValueError("give either 'tsv' or both 'source' and 'target'")
        if self.tsv is None and (self.source is None or self.target is None):
            raise ValueError("give both 'source' and 'target' files")
        return self


class TranslationParams(ScenarioParams):
    max_number: int = Field(MAX_NUMBER, ge=10, le=MAX_NUMBER, description="largest number generated")
    train_size: int = Field(20000, gt=0, description="generated training pairs")
    val_size: int = Field(500, ge=0, description="generated validation pairs")
    test_size: int = Field(500, gt=0, description="generated test pairs (numbers unseen in training)")
    source_tokenizer: Tokenizer = Field("char", description="generated data: tokenizer of the German side")
    target_tokenizer: Tokenizer = Field("whitespace", description="generated data: tokenizer of the English side "
                                                                  "(whitespace = words, char = characters)")
    corpus: CorpusConfig | None = Field(None, description="translate a user's parallel corpus instead")
    embed_size: int = Field(32, gt=0, description="size of the token embeddings")
    sampling_start: float = Field(0.0, ge=0, le=1, description="scheduled-sampling ratio at the first update")
    sampling_end: float = Field(0.0, ge=0, le=1, description="scheduled-sampling ratio after sampling_ramp updates")
    sampling_ramp: int = Field(1000, gt=0, description="updates over which the ratio moves from start to end")
    beam_size: int = Field(4, ge=1, description="beam width of beam-search decoding")
    length_penalty: float = Field(0.0, ge=0, description="GNMT length normalisation exponent of beam search")
    max_decode_length: int | None = Field(None, gt=0, description="longest generated output; default: longest "
                                                                   "test target + 5")
    examples: int = Field(8, ge=0, description="translated test examples reported")


def generated_pairs(p: TranslationParams, seed: int) -> tuple[list[tuple[str, str]], ...]:
    """Train/val/test (German, English) pairs of distinct numbers, disjoint between the splits."""
    total = p.train_size + p.val_size + p.test_size
    if total > p.max_number + 1:
        raise StatesimError(f"translation: train_size + val_size + test_size = {total} distinct numbers do not fit "
                            f"in 0..{p.max_number}; lower the sizes or raise max_number.")
    gen = torch.Generator().manual_seed(seed)
    if p.max_number + 1 <= 4 * total:
        numbers = torch.randperm(p.max_number + 1, generator=gen)[:total].tolist()
    else:  # rejection sampling without materialising a huge permutation
        seen: dict[int, None] = {}
        while len(seen) < total:
            for n in torch.randint(0, p.max_number + 1, (total,), generator=gen).tolist():
                seen.setdefault(n)
        numbers = list(seen)[:total]
    pairs = [(german(n), english(n)) for n in numbers]
    a, b = p.train_size, p.train_size + p.val_size
    return pairs[:a], pairs[a:b], pairs[b:]


def read_corpus(c: CorpusConfig) -> list[tuple[str, str]]:
    """Pairs from a TSV or two aligned files; a clear error for missing files or misaligned lines."""
    def read(path: str) -> list[str]:
        file = Path(path)
        if not file.is_file():
            raise StatesimError(f"translation corpus: the file {file} does not exist (relative paths are taken from "
                                f"the directory statesim runs in, {Path.cwd()}).")
        return file.read_text(encoding="utf-8").splitlines()

    if c.tsv is not None:
        pairs = []
        for number, line in enumerate(read(c.tsv), 1):
            if not line.strip():
                continue
            if line.count("\t") < 1:
                raise StatesimError(f"translation corpus {c.tsv}, line {number}: expected 'source<TAB>target', found "
                                    f"no tab.")
            source, target = line.split("\t")[:2]
            pairs.append((source.strip(), target.strip()))
    else:
        assert c.source is not None and c.target is not None  # CorpusConfig._one_source: both without a tsv
        sources, targets = read(c.source), read(c.target)
        if len(sources) != len(targets):
            raise StatesimError(f"translation corpus: {c.source} has {len(sources)} lines but {c.target} has "
                                f"{len(targets)}; the files must be line-aligned.")
        pairs = [(s.strip(), t.strip()) for s, t in zip(sources, targets) if s.strip() and t.strip()]
    if len(pairs) < 3:
        raise StatesimError(f"translation corpus: found {len(pairs)} pairs; at least 3 are needed to train and test.")
    return pairs


def make_data(pairs: list[tuple[str, str]], src_vocab: Vocab, tgt_vocab: Vocab, src_tok: str,
              tgt_tok: str) -> SequenceData:
    """Padded id tensors of the pairs: the source is the condition, the decoder reads the shifted target."""
    source, source_lengths = pad_ids([src_vocab.encode(tokenize(s, src_tok)) for s, _ in pairs])
    target, target_lengths = pad_ids([tgt_vocab.encode(tokenize(t, tgt_tok)) for _, t in pairs], eos=True)
    return token_pairs(source, source_lengths, target, target_lengths)


def scheduled_ratio(p: TranslationParams, step: int) -> float:
    """Scheduled-sampling ratio at update ``step`` (linear ramp)."""
    progress = min(1.0, step / p.sampling_ramp)
    return p.sampling_start + (p.sampling_end - p.sampling_start) * progress


def translate(model: SequenceModel, data: SequenceData, tgt_vocab: Vocab, tgt_tok: str, *, beam_size: int,
              max_len: int, length_penalty: float, device: torch.device, chunk: int = 256) -> list[str]:
    """Decoded strings of every source in ``data``."""
    model.eval()
    out: list[str] = []
    for start in range(0, len(data), chunk):
        batch = data.select(slice(start, start + chunk)).to(device)
        if batch.condition is None:
            raise StatesimError("translate: the data has no source sentences (SequenceData.condition is None).")
        ids = generate(model, batch.condition, batch.condition_lengths, beam_size=beam_size, max_len=max_len,
                       length_penalty=length_penalty)
        out += [detokenize(tgt_vocab.decode(row), tgt_tok) for row in ids]
    return out


def build_translator(ctx: RunContext, source_vocab: int, target_vocab: int, embed_size: int) -> SequenceModel:
    """The run's model: target tokens in (embedded), logits out, conditioned on the embedded source."""
    config = ctx.config.model
    if config is not None and config.head == "auto":  # logits always come from a head, even if sizes match
        config = config.model_copy(update={"head": "linear"})
    return ctx.build_model(config, embed_size, target_vocab, input_vocab=target_vocab,
                           encoder={"type": "sequence", "vocab": source_vocab, "size": embed_size})


class Translation(Scenario[TranslationParams]):
    """Train an encoder-decoder on German number words (or a user corpus); report accuracy and BLEU."""

    Params = TranslationParams
    supplies = frozenset({"encoding", "source"})  # every model is built with a source-sequence encoder
    needs = frozenset({"encoder"})  # which runs the topology's own encoder (encoder_decoder names it)

    def probes(self, config: RunConfig) -> list[Probe]:
        """The translator on two short source sentences (ids) and their teacher-forced targets."""
        embed_size = self.params.embed_size
        batch = probe_pairs(torch.full((4, 2), PROBE_VOCAB - 1, dtype=torch.long), torch.tensor([4, 3]))
        return [Probe("model", lambda ctx: build_translator(ctx, PROBE_VOCAB, PROBE_VOCAB, embed_size), batch)]

    def run(self, ctx: RunContext) -> dict[str, Any]:
        require_sacrebleu("translation")  # before training, not after it
        p = self.params
        if p.corpus is None:
            train, val, test = generated_pairs(p, ctx.config.seed)
            src_tok, tgt_tok = p.source_tokenizer, p.target_tokenizer
        else:
            src_tok = tgt_tok = p.corpus.tokenizer
            pairs = [(s, t) for s, t in read_corpus(p.corpus)
                     if len(tokenize(s, src_tok)) <= p.corpus.max_length
                     and len(tokenize(t, tgt_tok)) <= p.corpus.max_length]
            order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(ctx.config.seed)).tolist()
            pairs = [pairs[i] for i in order]
            n_test = max(1, round(len(pairs) * p.corpus.test_fraction))
            n_val = round(len(pairs) * p.corpus.val_fraction)
            test, val, train = pairs[:n_test], pairs[n_test:n_test + n_val], pairs[n_test + n_val:]
        src_vocab = Vocab.from_sequences(tokenize(s, src_tok) for s, _ in train)
        tgt_vocab = Vocab.from_sequences(tokenize(t, tgt_tok) for _, t in train)
        test_data = make_data(test, src_vocab, tgt_vocab, src_tok, tgt_tok)
        splits = DataSplits(make_data(train, src_vocab, tgt_vocab, src_tok, tgt_tok),
                            make_data(val, src_vocab, tgt_vocab, src_tok, tgt_tok) if val else None, test_data)
        model = build_translator(ctx, len(src_vocab), len(tgt_vocab), p.embed_size)
        sampling = (lambda step: scheduled_ratio(p, step)) if p.sampling_start or p.sampling_end else None
        trained = ctx.train(model, splits, loss_fn=cross_entropy_loss, sampling=sampling)
        references = [t for _, t in test]
        assert test_data.lengths is not None  # token_pairs records the target lengths
        max_len = p.max_decode_length or int(test_data.lengths.max()) + 5
        results: dict[str, Any] = {
            "data": {"source": "corpus" if p.corpus else "generated German number words", "train": len(train),
                     "val": len(val), "test": len(test), "source_vocab": len(src_vocab),
                     "target_vocab": len(tgt_vocab), "source_tokenizer": src_tok, "target_tokenizer": tgt_tok},
            "parameters": sum(x.numel() for x in model.parameters()),
            "final_train_loss": trained.final_loss, "best_val_loss": trained.best_val_loss}
        decoded = {}
        for name, beam in (("greedy", 1), (f"beam{p.beam_size}", p.beam_size)):
            started = time.perf_counter()
            hyps = translate(model, test_data, tgt_vocab, tgt_tok, beam_size=beam, max_len=max_len,
                             length_penalty=p.length_penalty, device=ctx.device)
            decoded[name] = hyps
            results[name] = {"exact_match": exact_match(hyps, references),
                             "bleu": corpus_bleu(hyps, references)}
            ctx.decode_seconds[name] = time.perf_counter() - started  # a wall time: run.json, not results.json
        results["examples"] = [{"source": s, "reference": t, **{k: v[i] for k, v in decoded.items()}}
                               for i, (s, t) in enumerate(test[:p.examples])]
        return results


@hookimpl
def statesim_scenarios() -> list[Registration]:
    """Register the scenario."""
    return [Registration("translation", Translation, TranslationParams,
                         "encoder-decoder translation: German number words -> English (generated), or a user corpus; "
                         "exact match and BLEU with greedy and beam decoding")]
