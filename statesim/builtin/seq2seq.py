"""Sequence-to-sequence support shared by the translation and captioning scenarios (built-in, not core).

* token vocabularies and the two tokenizers (``char``, ``whitespace``);
* :func:`token_pairs`: source/target id pairs as the trainer's :class:`~statesim.data.SequenceData` (the
  decoder reads ``<bos>`` + the shifted target, the source is the model's condition);
* decoding with feedback of the model's own predictions, one tick at a time through
  a prepared :class:`statesim.engine.Stepper` (greedy, beam search), for any :class:`~statesim.cell.Cell`
  (a decoder cell, a stack seen as one cell, an attention cell); :func:`generate` runs them on a conditioned
  :class:`~statesim.model.SequenceModel`;
* metrics: exact-sequence accuracy and corpus BLEU (sacrebleu, the ``seq2seq`` extra:
  ``pip install 'statesim[seq2seq]'``).

Decoding functions take a decoder ``cell``, its start ``state``, an ``embed`` (token ids -> inputs) and a
``head`` (outputs -> logits), so every conditioned model (an encoder-decoder, a captioner) shares them.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

from statesim.cell import Cell, State
from statesim.data import SequenceData
from statesim.engine import Stepper
from statesim.errors import StatesimError
from statesim.model import SequenceModel

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


# --------------------------------------------------------------------------- tokens
def tokenize(text: str, mode: str) -> list[str]:
    """Split ``text`` into characters (``char``) or whitespace-separated words (``whitespace``)."""
    if mode == "char":
        return list(text.strip())
    if mode == "whitespace":
        return text.split()
    raise StatesimError(f"unknown tokenizer '{mode}'; use 'char' or 'whitespace'.")


def detokenize(tokens: Sequence[str], mode: str) -> str:
    """Inverse of :func:`tokenize` (up to repeated whitespace)."""
    return "".join(tokens) if mode == "char" else " ".join(tokens)


class Vocab:
    """Token <-> id map with the specials ``<pad> <bos> <eos> <unk>`` at ids 0..3."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.itos = list(SPECIALS) + sorted(set(tokens) - set(SPECIALS))
        self.stoi = {token: i for i, token in enumerate(self.itos)}

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[str]]) -> "Vocab":
        """The vocabulary of every token in ``sequences``."""
        return cls(token for sequence in sequences for token in sequence)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Ids of ``tokens`` (unknown ones map to ``<unk>``)."""
        return [self.stoi.get(token, UNK) for token in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ``ids`` up to the first ``<eos>``, specials dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(self.itos[i])
        return out


def pad_ids(sequences: Sequence[Sequence[int]], *, bos: bool = False, eos: bool = False) -> tuple[Tensor, Tensor]:
    """Time-major ``[T, N]`` padded ids and lengths ``[N]`` (optionally with ``<bos>``/``<eos>`` added)."""
    rows = [([BOS] if bos else []) + list(s) + ([EOS] if eos else []) for s in sequences]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.full((max(int(lengths.max()), 1), len(rows)), PAD, dtype=torch.long)
    for n, row in enumerate(rows):
        out[:len(row), n] = torch.tensor(row, dtype=torch.long)
    return out, lengths


# --------------------------------------------------------------------------- data
def decoder_inputs(target: Tensor) -> Tensor:
    """``<bos>`` followed by the target ``[T, N]`` shifted right: what a teacher-forced decoder reads."""
    return torch.cat([torch.full_like(target[:1], BOS), target[:-1]], dim=0)


def token_pairs(condition: Tensor, condition_lengths: Tensor | None, target: Tensor,
                target_lengths: Tensor) -> SequenceData:
    """Training data of a conditioned token decoder: reads ``<bos>`` + shifted ``target [T, N]`` (ids ending in
    ``<eos>``), predicts ``target``, conditioned on ``condition`` (a source ``[S, N]``, images ``[1, N, ...]``)."""
    return SequenceData(decoder_inputs(target), target, target_lengths, condition, condition_lengths, trim=True)


#: A vocabulary size for validation's first forward: the specials and a few words (the real size comes from the data).
PROBE_VOCAB = len(SPECIALS) + 4


def probe_pairs(condition: Tensor, condition_lengths: Tensor | None) -> SequenceData:
    """Two short captions or translations of ``condition`` (two sequences on dim 1), as validation runs them."""
    first = len(SPECIALS)
    target = torch.tensor([[first, first + 1], [first + 1, EOS], [EOS, PAD]])
    return token_pairs(condition, condition_lengths, target, torch.tensor([3, 2]))


# --------------------------------------------------------------------------- decoding
Embed = Callable[[Tensor], Tensor]
Head = Callable[[Tensor], Tensor]


def _to_list(tokens: Tensor) -> list[list[int]]:
    """Rows of ids cut after the first ``<eos>`` (kept) and without padding."""
    out = []
    for row in tokens.tolist():
        cut = row.index(EOS) + 1 if EOS in row else len(row)
        out.append(row[:cut])
    return out


@torch.no_grad()
def greedy_decode(cell: Cell, state: State, embed: Embed, head: Head, *,
                  max_len: int) -> tuple[list[list[int]], Tensor]:
    """Feed back the most likely token each step until every sequence emits ``<eos>`` or ``max_len`` steps.

    Returns the token ids per sequence (``<eos>`` included when emitted) and their total log-probabilities.
    """
    batch = next(iter(state.values())).shape[0]
    device = next(iter(state.values())).device
    previous = torch.full((batch,), BOS, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    score = torch.zeros(batch, device=device)
    tokens = []
    stepper = Stepper(cell)
    for t in range(max_len):
        y, state = stepper.step(embed(previous), state, t)
        logp = torch.log_softmax(head(y), dim=-1)
        best = logp.argmax(-1)
        score = score + torch.where(finished, torch.zeros_like(score), logp.gather(1, best.unsqueeze(1)).squeeze(1))
        best = torch.where(finished, torch.full_like(best, PAD), best)
        tokens.append(best)
        finished = finished | (best == EOS)
        previous = best
        if bool(finished.all()):
            break
    return _to_list(torch.stack(tokens, dim=1)), score


@torch.no_grad()
def beam_decode(make_cell: Callable[[int], Cell], state: State, embed: Embed, head: Head, *, beam_size: int,
                max_len: int, length_penalty: float = 0.0) -> tuple[list[list[int]], Tensor]:
    """Beam search: keep the ``beam_size`` best partial sequences per source; stop at ``<eos>`` or ``max_len``.

    ``make_cell(k)`` returns the decoder cell for a batch whose rows are each repeated ``k`` times (an
    attention cell needs its memory repeated). Finished hypotheses keep their score; the winner maximises
    ``log p / ((5 + len) / 6) ** length_penalty`` (GNMT's normalisation; 0 = raw log-probability).
    Returns the best token ids per sequence and their raw log-probabilities.
    """
    k = beam_size
    first = next(iter(state.values()))
    batch, device = first.shape[0], first.device
    state = {name: value.repeat_interleave(k, dim=0) for name, value in state.items()}
    cell = make_cell(k)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    previous = torch.full((batch * k,), BOS, dtype=torch.long, device=device)
    finished = torch.zeros(batch * k, dtype=torch.bool, device=device)
    history = torch.zeros(batch * k, 0, dtype=torch.long, device=device)
    offsets = (torch.arange(batch, device=device) * k).unsqueeze(1)
    stepper = Stepper(cell)
    for t in range(max_len):
        y, new_state = stepper.step(embed(previous), state, t)
        logp = torch.log_softmax(head(y), dim=-1)
        vocab = logp.shape[-1]
        eos_only = torch.full_like(logp, float("-inf"))
        eos_only[:, EOS] = 0.0
        logp = torch.where(finished.unsqueeze(1), eos_only, logp)
        total = (scores.view(-1, 1) + logp).view(batch, k * vocab)
        scores, index = total.topk(k, dim=1)
        source = (offsets + torch.div(index, vocab, rounding_mode="floor")).view(-1)
        token = (index % vocab).view(-1)
        state = {name: value[source] for name, value in new_state.items()}
        was_finished = finished[source]
        history = torch.cat([history[source], torch.where(was_finished, PAD, token).unsqueeze(1)], dim=1)
        finished = was_finished | (token == EOS)
        previous = token
        if bool(finished.all()):
            break
    hyps = _to_list(history)
    lengths = torch.tensor([len(h) for h in hyps], dtype=scores.dtype, device=device).view(batch, k)
    ranked = scores / ((5 + lengths) / 6) ** length_penalty if length_penalty else scores
    best = ranked.argmax(dim=1)
    return [hyps[b * k + int(best[b])] for b in range(batch)], scores.gather(1, best.unsqueeze(1)).squeeze(1)


@torch.no_grad()
def generate(model: SequenceModel, condition: Tensor, lengths: Tensor | None = None, *, beam_size: int = 1,
             max_len: int = 50, length_penalty: float = 0.0) -> list[list[int]]:
    """Token ids a conditioned model generates for each condition: greedy (``beam_size`` 1) or beam search."""
    memory = model.encode(condition, lengths)
    state = model.initial(memory.encoded.shape[0], memory=memory)
    if beam_size <= 1:
        return greedy_decode(model.step_cell(memory), state, model.read_in, model.read_out, max_len=max_len)[0]
    return beam_decode(lambda k: model.step_cell(memory.repeat(k)), state, model.read_in, model.read_out,
                       beam_size=beam_size, max_len=max_len, length_penalty=length_penalty)[0]


# --------------------------------------------------------------------------- metrics
def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of hypotheses equal to their reference (after whitespace normalisation)."""
    if not references:
        return 0.0
    return sum(" ".join(h.split()) == " ".join(r.split()) for h, r in zip(hypotheses, references)) / len(references)


class MissingExtraError(StatesimError):
    """An optional dependency a scenario needs is not installed."""


def require_sacrebleu(scenario: str) -> Any:
    """The sacrebleu module, or a MissingExtraError naming the extra that installs it."""
    try:
        import sacrebleu
    except ImportError:
        raise MissingExtraError(f"the {scenario} scenario reports BLEU with sacrebleu, which is not installed. "
                                f"Install the seq2seq extra: pip install 'statesim[seq2seq]' (or pip install "
                                f"sacrebleu).") from None
    return sacrebleu


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) by sacrebleu with its defaults (13a tokenisation, exp smoothing)."""
    sacrebleu = require_sacrebleu("translation or captioning")
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)
