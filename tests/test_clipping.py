"""Gradient clipping of the shared trainer: bounds hold, the reported norm is the pre-clip norm, adaptive
follows its mean."""
import math

import pytest
import torch
from torch import nn

from statesim.config import TrainingConfig
from statesim.data import DataSplits, SequenceData
from statesim.trainer import Trainer, clip_gradients


def _params_with_grads(seed: int, scale: float) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.zeros(shape)) for shape in [(3, 4), (5,), (2, 2, 2)]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * scale
    return params


def _norm(params, p=2.0) -> float:
    return float(torch.cat([q.grad.flatten() for q in params]).norm(p))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_clip_by_global_norm_bounds_the_norm_and_reports_the_pre_clip_norm(seed, scale):
    params = _params_with_grads(seed, scale)
    truth = _norm(params)
    before, after = clip_gradients(params, max_norm=1.0, max_value=None)
    assert before == pytest.approx(truth, rel=1e-6)
    assert after == pytest.approx(_norm(params), rel=1e-6)
    assert _norm(params) <= 1.0 + 1e-5
    if truth <= 1.0:
        assert after == pytest.approx(truth, rel=1e-6)  # below the bound nothing changes


@pytest.mark.parametrize("seed", range(5))
def test_clip_by_value_bounds_every_element(seed):
    params = _params_with_grads(seed, 3.0)
    truth = _norm(params)
    before, _ = clip_gradients(params, max_norm=None, max_value=0.5)
    assert before == pytest.approx(truth, rel=1e-6)
    assert max(float(p.grad.abs().max()) for p in params) <= 0.5


def test_clip_with_another_p_norm():
    params = _params_with_grads(0, 2.0)
    truth = _norm(params, 1.0)
    before, after = clip_gradients(params, max_norm=2.0, max_value=None, norm_type=1.0)
    assert before == pytest.approx(truth, rel=1e-6) and _norm(params, 1.0) <= 2.0 + 1e-5


def _train(clip: dict, steps: int = 30) -> list[dict]:
    torch.manual_seed(0)
    model_cfg = {"cell": {"type": "vanilla", "hidden_size": 8}}
    from statesim.config import validate_model
    from statesim.model import build_model
    from statesim.plugin_manager import build_plugin_host

    host = build_plugin_host(autoload=False)
    config = validate_model(model_cfg, host.registry)
    model = build_model(host.registry, config, 2, 1)
    gen = torch.Generator().manual_seed(1)
    data = SequenceData(torch.randn(12, 64, 2, generator=gen) * 3, torch.randn(12, 64, 1, generator=gen) * 3)
    records: list[dict] = []
    trainer = Trainer(model, TrainingConfig(steps=steps, batch_size=16, lr=0.05, log_every=1, clip=clip),
                      log=records.append)
    trainer.fit(DataSplits(data))
    return [r for r in records if "grad_norm" in r]


def test_trainer_records_pre_and_post_clip_norms():
    records = _train({"max_norm": 0.5})
    assert any(r["clipped"] for r in records)
    for r in records:
        assert r["grad_norm_clipped"] <= 0.5 + 1e-5
        assert r["clipped"] == (r["grad_norm"] > 0.5 + 1e-6)
        if not r["clipped"]:
            assert r["grad_norm_clipped"] == pytest.approx(r["grad_norm"])


def test_adaptive_clipping_follows_the_running_mean_of_pre_clip_norms():
    factor = 1.1
    records = _train({"adaptive": factor})
    mean = None
    clipped = 0
    for r in records:
        if mean is not None:
            bound = factor * mean
            assert r["grad_norm_clipped"] <= bound * (1 + 1e-5)
            if r["grad_norm"] > bound * (1 + 1e-6):
                clipped += 1
                assert r["clipped"] and r["grad_norm_clipped"] == pytest.approx(bound, rel=1e-5)
        else:
            assert not r["clipped"]  # no history yet: the first update is never clipped
        # The running mean is an exponential average (0.95) of the pre-clip norms of finite updates.
        mean = r["grad_norm"] if mean is None else 0.95 * mean + 0.05 * r["grad_norm"]
    assert clipped > 0
    assert records[-1]["clipped_total"] == sum(r["clipped"] for r in records)


def test_adaptive_and_fixed_bounds_combine_to_the_smaller():
    records = _train({"adaptive": 10.0, "max_norm": 0.2})
    assert all(r["grad_norm_clipped"] <= 0.2 + 1e-5 for r in records)
    assert all(math.isfinite(r["grad_norm"]) for r in records)
