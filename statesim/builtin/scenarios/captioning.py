"""Scenario ``captioning``: the lecture's image captioning, CNN features as the RNN's initial state.

Synthetic 32x32 images hold one or two coloured shapes (circle, square, triangle in red, green, blue or
yellow). Two shapes sit side by side or one above the other, and the caption names the left (or top) one
first: ``a red circle left of a blue square``, ``a green triangle above a yellow circle``; one shape is
``a blue square``. A small CNN (the model's conditioning encoder ``cnn``) encodes the image; the
``encoded`` initial-state policy turns that encoding into the LSTM decoder's state (``h_0``, ``c_0``), and
the decoder generates the caption word by word. The model is one :class:`~statesim.model.SequenceModel`,
trained by the shared trainer and rebuilt from its checkpoint like any other.
Reported on held-out images: caption exact match and BLEU (greedy and beam), and a PNG grid of test
images with generated and true captions.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from statesim.builtin.seq2seq import (PROBE_VOCAB, Vocab, corpus_bleu, exact_match, generate, pad_ids,
                                      probe_pairs, require_sacrebleu, token_pairs)
from statesim.config import RunConfig
from statesim.data import DataSplits, SequenceData, cross_entropy_loss
from statesim.hookimpl import hookimpl
from statesim.model import Encoder, EncoderParams, Memory, SequenceModel
from statesim.registry import Registration
from statesim.scenario import Probe, RunContext, Scenario, ScenarioParams

COLOURS = {"red": (1.0, 0.15, 0.15), "green": (0.15, 0.9, 0.2), "blue": (0.2, 0.35, 1.0), "yellow": (1.0, 0.9, 0.1)}
SHAPES = ("circle", "square", "triangle")
SIZE = 32


def draw_shape(image: np.ndarray, shape: str, colour: str, cy: float, cx: float, radius: float) -> None:
    """Paint one filled shape centred at (cy, cx) into ``image [H, W, 3]``."""
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]] + 0.5
    if shape == "circle":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    elif shape == "square":
        mask = (np.abs(yy - cy) <= radius * 0.85) & (np.abs(xx - cx) <= radius * 0.85)
    else:  # apex up: inside when below the apex and within the widening sides
        top, bottom = cy - radius, cy + radius
        half = (yy - top) / (2 * radius) * radius
        mask = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)
    image[mask] = COLOURS[colour]


def make_image(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One random image and its true caption."""
    image = np.zeros((SIZE, SIZE, 3), dtype=np.float32)
    n = int(rng.integers(1, 3))
    picks = [(SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]) for _ in range(n)]
    radius = float(rng.uniform(4.5, 6.5))
    if n == 1:
        cy, cx = rng.uniform(8, 24, size=2)
        draw_shape(image, picks[0][0], picks[0][1], cy, cx, radius)
        return image, f"a {picks[0][1]} {picks[0][0]}"
    horizontal = bool(rng.integers(2))
    near, far = rng.uniform(6.5, 10), rng.uniform(22, 25.5)
    side = rng.uniform(8, 24, size=2)
    centres = [(side[0], near), (side[1], far)] if horizontal else [(near, side[0]), (far, side[1])]
    for (shape, colour), (cy, cx) in zip(picks, centres):
        draw_shape(image, shape, colour, cy, cx, radius)
    relation = "left of" if horizontal else "above"
    (s1, c1), (s2, c2) = picks
    return image, f"a {c1} {s1} {relation} a {c2} {s2}"


def make_dataset(count: int, seed: int, vocab: Vocab | None = None) -> tuple[SequenceData, list[str], Vocab]:
    """``count`` random images (the condition, ``[1, N, 3, 32, 32]``) with their captions as ids, the caption
    strings and the vocabulary."""
    rng = np.random.default_rng(seed)
    pictures, texts = zip(*(make_image(rng) for _ in range(count)))
    vocab = vocab or Vocab.from_sequences(t.split() for t in texts)
    ids, lengths = pad_ids([vocab.encode(t.split()) for t in texts], eos=True)
    images = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).contiguous()
    return token_pairs(images.unsqueeze(0), None, ids, lengths), list(texts), vocab


class CNNParams(EncoderParams):
    channels: int = Field(16, gt=0, description="channels of the first conv layer (doubled after)")
    features: int = Field(64, gt=0, description="size of the image encoding")


class CNNEncoder(Encoder):
    """Three conv-batchnorm-ReLU-pool blocks (32 -> 4 pixels) and a linear layer to ``features``."""

    Params = CNNParams

    def __init__(self, channels: int = 16, features: int = 64) -> None:
        super().__init__()
        c = channels
        self.features = features
        # Batch norm: the images are mostly black, and without it the CNN's features start nearly equal for
        # every image, so the decoder first learns the caption prior and the image is ignored for long.
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * c * 16, features))

    @classmethod
    def from_config(cls, params: Any, registry: Any, cell_factory: Any, topology_spec: Any) -> "CNNEncoder":
        if topology_spec is not None:
            from statesim.errors import StatesimError

            raise StatesimError("the 'cnn' encoder summarises an image into one vector; the model's topology "
                                "expects a source sequence to encode. Use a decoder topology (unidirectional or "
                                "stacked).")
        return cls(params.channels, params.features)

    @property
    def encoded_size(self) -> int:
        return self.features

    def forward(self, condition: Tensor, lengths: Tensor | None = None) -> Memory:
        """Images ``[1, B, 3, H, W]`` (or ``[B, 3, H, W]``) -> their encodings."""
        images = condition[0] if condition.dim() == 5 else condition
        return Memory(self.net(images))


class CaptioningParams(ScenarioParams):
    train_images: int = Field(6000, gt=0, description="generated training images")
    val_images: int = Field(300, ge=0, description="generated validation images")
    test_images: int = Field(500, gt=0, description="generated held-out test images")
    channels: int = Field(16, gt=0, description="channels of the first conv layer (doubled after)")
    features: int = Field(64, gt=0, description="size of the CNN's image encoding")
    embed_size: int = Field(16, gt=0, description="size of the word embeddings")
    beam_size: int = Field(3, ge=1, description="beam width")
    grid: int = Field(4, ge=1, le=8, description="the PNG shows grid x grid test images")


class Captioning(Scenario[CaptioningParams]):
    """Train CNN + LSTM captioner on synthetic shapes; report exact match and BLEU; save a captioned grid."""

    Params = CaptioningParams
    needs = frozenset({"stepping"})  # captions are decoded one word at a time (greedy and beam search)
    supplies = frozenset({"encoding"})  # the model is built with the image's CNN encoder (no source sequence)

    def build(self, ctx: RunContext, vocab: int) -> SequenceModel:
        """The captioner: reads caption words, conditioned on the image (the encoded policy's unset
        ``encoded_size`` is the CNN's feature size)."""
        p = self.params
        return ctx.build_model(None, p.embed_size, vocab, input_vocab=vocab,
                               encoder={"type": "cnn", "channels": p.channels, "features": p.features})

    def probes(self, config: RunConfig) -> list[Probe]:
        """The captioner on two blank images ``[1, 2, 3, 32, 32]`` and two short captions."""
        images = torch.zeros(1, 2, 3, 32, 32)
        return [Probe("model", lambda ctx: self.build(ctx, PROBE_VOCAB), probe_pairs(images, None))]

    def run(self, ctx: RunContext) -> dict[str, Any]:
        require_sacrebleu("captioning")  # before training, not after it
        p = self.params
        seed = ctx.config.seed
        train, _, vocab = make_dataset(p.train_images, seed)
        val = make_dataset(p.val_images, seed + 1, vocab)[0] if p.val_images else None
        test, test_texts, _ = make_dataset(p.test_images, seed + 2, vocab)
        model = self.build(ctx, len(vocab))
        trained = ctx.train(model, DataSplits(train, val, test), loss_fn=cross_entropy_loss)
        model.eval()
        assert test.lengths is not None and test.condition is not None  # make_dataset sets both
        max_len = int(test.lengths.max()) + 3
        results: dict[str, Any] = {"data": {"train": p.train_images, "test": p.test_images, "vocab": len(vocab)},
                                   "parameters": sum(x.numel() for x in model.parameters()),
                                   "final_train_loss": trained.final_loss, "best_val_loss": trained.best_val_loss}
        generated = {}
        for name, beam in (("greedy", 1), (f"beam{p.beam_size}", p.beam_size)):
            started = time.perf_counter()
            hyps = []
            for start in range(0, len(test), 256):
                images = test.condition[:, start:start + 256].to(ctx.device)
                ids = generate(model, images, beam_size=beam, max_len=max_len)
                hyps += [" ".join(vocab.decode(row)) for row in ids]
            generated[name] = hyps
            results[name] = {"exact_match": exact_match(hyps, test_texts), "bleu": corpus_bleu(hyps, test_texts)}
            ctx.decode_seconds[name] = time.perf_counter() - started  # a wall time: run.json, not results.json
        results["examples"] = [{"true": t, "greedy": g} for t, g in zip(test_texts[:8], generated["greedy"])]
        if ctx.plots_enabled:
            self._grid(ctx, test.condition[0], test_texts, generated["greedy"])
        return results

    def _grid(self, ctx: RunContext, images: Tensor, truth: list[str], hyps: list[str]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = self.params.grid
        fig, axes = plt.subplots(n, n, figsize=(3.2 * n, 3.6 * n))
        for i, ax in enumerate(axes.flat):
            ax.imshow(images[i].permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            ok = hyps[i] == truth[i]
            ax.set_title(f"gen: {hyps[i]}\ntrue: {truth[i]}", fontsize=8, color="green" if ok else "red")
        fig.suptitle("held-out images: generated (greedy) vs true captions; green = exact match")
        fig.tight_layout()
        ctx.save_plot(fig, "captions")


@hookimpl
def statesim_scenarios() -> list[Registration]:
    """Register the scenario."""
    return [Registration("captioning", Captioning, CaptioningParams,
                         "CNN encoding as the LSTM decoder's initial state: caption synthetic shape images")]


@hookimpl
def statesim_encoders() -> list[Registration]:
    """Register the image encoder."""
    return [Registration("cnn", CNNEncoder, CNNParams, "a small CNN: image [B, 3, 32, 32] -> one encoding "
                                                       "(the captioning scenario's conditioning encoder)")]
