"""The BPTT trainer against hand-written graphs, analytic gradients, torch.nn.utils and torch.optim.

Gradients are captured with ``optimizer.register_step_pre_hook``: exactly what the optimizer is about to use.
"""
import copy
import math

import pytest
import torch
from torch import nn

from statesim.builtin.cells import LinearCell, VanillaCell
from statesim.builtin.initial_states import Random, Zeros
from statesim.builtin.topologies import Unidirectional
from statesim.config import TrainingConfig
from statesim.data import DataSplits, SequenceData
from statesim.errors import TrainingError
from statesim.model import SequenceModel
from statesim.trainer import Interrupted, Trainer, lr_factor

DT = torch.float64


def _model(cell, head=None, initial=None):
    topology = Unidirectional(cell.input_size, lambda n: cell)
    return SequenceModel(topology, initial or Zeros(topology.state_spec), head).to(DT)


def _vanilla_model():
    return _model(VanillaCell(2, 3), head=nn.Linear(3, 2))


def _data(n=4, steps=6, f=2, o=2, lengths=None):
    x = torch.randn(steps, n, f, dtype=DT)
    y = torch.randn(steps, n, o, dtype=DT)
    return SequenceData(x, y, None if lengths is None else torch.as_tensor(lengths))


def _trainer(model, log=None, **cfg):
    cfg.setdefault("optimizer", "sgd")
    cfg.setdefault("log_every", 1)
    return Trainer(model, TrainingConfig(**cfg), log=log)


def _capture_grads(trainer):
    """Record the gradients each optimizer step receives (after clipping)."""
    seen: list[list[torch.Tensor]] = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append([p.grad.detach().clone() for p in trainer.params]))
    return seen


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


# --------------------------------------------------------------------------- full BPTT
def test_full_bptt_gradient_equals_a_hand_written_unrolled_graph():
    model = _vanilla_model()
    data = _data(lengths=[6, 4, 5, 2])
    cell, head = model.topology.cell, model.head
    W_ih, W_hh, b_ih, b_hh, W_y, b_y = (t.detach().clone().requires_grad_(True) for t in
                                        (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                                         head.weight, head.bias))
    # the lecture's unrolled network, written out:
    # h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), y_t = W_y h_t + b_y
    h = torch.zeros(4, 3, dtype=DT)
    total, count = 0.0, 0
    for t in range(6):
        h = torch.tanh(data.inputs[t] @ W_ih.T + b_ih + h @ W_hh.T + b_hh)
        y = h @ W_y.T + b_y
        for b in range(4):
            if t < data.lengths[b]:
                total = total + ((y[b] - data.targets[t, b]) ** 2).sum()
                count += 2
    loss = total / count
    loss.backward()

    records: list[dict] = []
    trainer = _trainer(model, log=records.append, steps=1, batch_size=4, lr=0.1)
    grads = _capture_grads(trainer)
    trainer.fit(DataSplits(data))
    assert records[0]["loss"] == pytest.approx(float(loss.detach()), rel=1e-12)
    for got, want in zip(grads[0], (W_ih.grad, W_hh.grad, b_ih.grad, b_hh.grad, W_y.grad, b_y.grad)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
    assert records[0]["grad_norm"] == pytest.approx(
        float(torch.cat([g.flatten() for g in grads[0]]).norm()), rel=1e-12)


# --------------------------------------------------------------------------- truncated BPTT
def _scalar_linear(a=0.75, b=0.625, c=0.875, d=0.8125):  # exact in float32 and float64
    return _model(LinearCell(1, 1, init={"A": [[a]], "B": [[b]], "C": [[c]], "D": [[d]]}))


def _probe(t, steps, mode, k1=None, k2=None):
    """d y_t / d x_s for every s, as the trainer computes it; plus the loss it logged for step t's chunk."""
    x = torch.randn(steps, 1, 1, dtype=DT)
    targets = torch.zeros(steps, 1, 1, dtype=DT)
    targets[t] = 1.0  # loss = sum(y * target): exactly y_t
    updates = 1 if mode == "full" else math.ceil(steps / k1)
    records: list[dict] = []
    model = _scalar_linear()
    seen: list[tuple[int, torch.Tensor]] = []
    forward = model.forward

    def instrumented(inputs, state=None, **kw):  # each unroll's inputs become a leaf we can read gradients from
        leaf = inputs.detach().requires_grad_(True)
        seen.append((kw.get("t0", 0), leaf))
        return forward(leaf, state, **kw)

    model.forward = instrumented
    trainer = _trainer(model, log=records.append, steps=updates, batch_size=1, lr=0.1,
                       bptt={"mode": mode, "k1": k1, "k2": k2})
    trainer.loss_fn = lambda out, tgt, mask: (out * tgt * mask.unsqueeze(-1)).sum()
    trainer.fit(DataSplits(SequenceData(x, targets)))
    assert len(seen) == updates
    grad = torch.zeros(steps, dtype=DT)
    for t0, leaf in seen:
        grad[t0:t0 + len(leaf)] += leaf.grad[:, 0, 0]
    logged = [r["loss"] for r in records if r["loss"] != 0.0]
    return grad, x[:, 0, 0], logged


def _closed_form(t, x, a=0.75, b=0.625, c=0.875, d=0.8125):
    """y_t = a x_t + b sum_{s<t} d^{t-1-s} c x_s, and its gradient wrt each x_s."""
    grad = torch.zeros(len(x), dtype=DT)
    grad[t] = a
    for s in range(t):
        grad[s] = b * d ** (t - 1 - s) * c
    return float((grad * x).sum()), grad


def test_full_bptt_reaches_back_to_the_first_step():
    steps = 7
    for t in (0, 3, 6):
        grad, x, logged = _probe(t, steps, "full")
        y_t, expected = _closed_form(t, x)
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)
        assert logged == [pytest.approx(y_t, rel=1e-12)]


@pytest.mark.parametrize("k1, k2", [(3, None), (3, 3), (3, 5), (2, 7), (4, 6), (1, 3)])
def test_truncated_bptt_cuts_exactly_where_documented(k1, k2):
    """The update for chunk [start, start + k1) backpropagates from start - (k2 - k1): d y_t/d x_s = 0 iff
    s < start + k1 - k2 (a short last chunk included).

    For a full chunk's last step that is ``t - s >= k2``; with k2 == k1 the cut is at the chunk border. The
    state is carried across chunks, so y_t itself equals the full forward value.
    """
    steps = 10
    window = k2 or k1
    for t in range(steps):
        grad, x, logged = _probe(t, steps, "truncated", k1, k2)
        y_t, full = _closed_form(t, x)
        begin = max((t // k1) * k1 + k1 - window, 0)
        expected = torch.where(torch.arange(steps) >= begin, full, torch.zeros_like(full))
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)
        assert torch.count_nonzero(grad[:begin]) == 0 and torch.count_nonzero(grad[begin:t + 1]) == t + 1 - begin
        assert logged == [pytest.approx(y_t, rel=1e-12)]


def test_truncated_with_one_chunk_equals_full_bptt_and_loss_from_step_masks_the_start():
    data = _data(lengths=[6, 4, 5, 3])
    grads = {}
    for mode in ("full", "truncated"):
        torch.manual_seed(3)
        model = _vanilla_model()
        if mode == "full":  # the loss over t >= 2 only, by hand, from the untrained model
            out = model(data.inputs, lengths=data.lengths).outputs.detach()
            mask = (torch.arange(6).unsqueeze(1) < data.lengths) & (torch.arange(6).unsqueeze(1) >= 2)
            expected = float(((out - data.targets) ** 2)[mask].mean())
        records: list[dict] = []
        trainer = _trainer(model, log=records.append, steps=1, batch_size=4, lr=0.1, loss_from_step=2,
                           bptt={"mode": mode, "k1": 6 if mode == "truncated" else None})
        grads[mode] = _capture_grads(trainer)
        trainer.fit(DataSplits(data))
        assert records[0]["loss"] == pytest.approx(expected, rel=1e-12)
    for a, b in zip(grads["full"][0], grads["truncated"][0]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_truncated_bptt_counts_one_update_per_chunk():
    records: list[dict] = []
    trainer = _trainer(_vanilla_model(), log=records.append, steps=7, batch_size=2, lr=0.01,
                       bptt={"mode": "truncated", "k1": 4})
    result = trainer.fit(DataSplits(_data(n=2, steps=10)))
    assert result.steps == 7 and [r["step"] for r in records] == list(range(1, 8))


def test_truncated_bptt_validates_whenever_an_eval_every_boundary_is_crossed():
    """Four updates per batch jump over most multiples of eval_every; each crossing still validates."""
    records: list[dict] = []
    x = torch.randn(20, 2, 2, dtype=DT)
    data = DataSplits(SequenceData(x, x.clone()), SequenceData(x[:, :1], x[:, :1].clone()))
    trainer = _trainer(_vanilla_model(), log=records.append, steps=24, batch_size=2, lr=0.01, eval_every=3,
                       bptt={"mode": "truncated", "k1": 5})
    trainer.fit(data)
    validated = [r["step"] for r in records if "val_loss" in r]
    # a batch ends at steps 4, 8, ..., 24; it crosses a multiple of 3 when floor(end/3) > floor((end-4)/3)
    assert validated == [end for end in range(4, 25, 4) if end // 3 > (end - 4) // 3] == [4, 8, 12, 16, 20, 24]


def _two_length_data(short=4, long=12, n_short=6, n_long=4):
    """Sequences of two lengths in one padded set: the short ones zero-padded to the long length."""
    x = torch.randn(long, n_short + n_long, 2, dtype=DT)
    x[short:, :n_short] = 0
    lengths = torch.tensor([short] * n_short + [long] * n_long)
    return SequenceData(x, x.clone(), lengths, trim=True)


def test_by_length_batching_keeps_each_batch_to_one_length_and_every_update_to_k1_steps():
    """batching: by_length + truncated BPTT at the short length: every forward runs k1 steps (never the padded
    long length), a long batch makes long/k1 updates, and an epoch holds every full batch of each length once."""
    data = _two_length_data()
    model = _vanilla_model()
    seen_steps: list[int] = []
    model.register_forward_pre_hook(lambda module, args: seen_steps.append(args[0].shape[0]))
    records: list[dict] = []
    trainer = _trainer(model, log=records.append, steps=14, batch_size=2, lr=0.01, batching="by_length",
                       bptt={"mode": "truncated", "k1": 4})
    batches = [trainer._next_batch(data) for _ in range(5)]  # one epoch: 3 short and 2 long batches
    assert sorted(b.steps for b in batches) == [4, 4, 4, 12, 12]
    assert all(b.lengths is None for b in batches)  # homogeneous batches run unpadded
    members = torch.cat(list(trainer.epoch_perm.split(2)))
    assert sorted(members.tolist()) == list(range(10))
    for chunk in trainer.epoch_perm.split(2):  # each batch is one length
        assert len(set(data.lengths[chunk].tolist())) == 1
    # the leftovers of each length (1 short, 4 long at batch 5) make a mixed batch: every sequence is seen
    few = _trainer(_vanilla_model(), steps=1, batch_size=5, batching="by_length")
    assert len(few._next_batch(data)) == 5 and sorted(few.epoch_perm.tolist()) == list(range(10))
    trainer.epoch_perm = None
    trainer.fit(DataSplits(data))
    assert trainer.step == 14 and len(seen_steps) == 14 and set(seen_steps) == {4}


def test_by_length_batching_gives_the_numbers_of_the_unpadded_sequences():
    """One update on a batch drawn from padded data equals one update on the same sequences stored unpadded."""
    torch.manual_seed(0)
    short, long = _data(n=2, steps=4), _data(n=2, steps=8)
    pad = torch.zeros(4, 2, 2, dtype=DT)
    padded = SequenceData(torch.cat([torch.cat([short.inputs, pad]), long.inputs], 1),
                          torch.cat([torch.cat([short.targets, pad]), long.targets], 1),
                          torch.tensor([4, 4, 8, 8]), trim=True)
    model = _vanilla_model()
    twin, before = copy.deepcopy(model), _params(model)
    trainer = _trainer(model, steps=1, batch_size=2, lr=0.1, batching="by_length")
    trainer.fit(DataSplits(padded))
    drawn = trainer.epoch_perm[:2]
    source, offset = (short, 0) if int(drawn[0]) < 2 else (long, 2)
    plain = _trainer(twin, steps=1, batch_size=2, lr=0.1)
    plain.fit(DataSplits(source.select(drawn - offset)))
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-15)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # the update did something


# --------------------------------------------------------------------------- clipping
def _reference_grads(model, data):
    """Gradients of the trainer's default loss (masked MSE) on a copy of the model."""
    twin = copy.deepcopy(model)
    out = twin(data.inputs).outputs
    ((out - data.targets) ** 2).mean().backward()
    return twin


@pytest.mark.parametrize("clip", [{"max_norm": 0.05}, {"max_value": 0.01}, {"max_value": 0.02, "max_norm": 0.03},
                                  {"max_norm": 100.0}])
def test_clipping_matches_torch_nn_utils_and_logs_the_norm_before_clipping(clip):
    model, data = _vanilla_model(), _data()
    twin = _reference_grads(model, data)
    params = [p for p in twin.parameters()]
    raw_norm = float(torch.cat([p.grad.flatten() for p in params]).norm())
    if "max_value" in clip:
        nn.utils.clip_grad_value_(params, clip["max_value"])
    if "max_norm" in clip:
        nn.utils.clip_grad_norm_(params, clip["max_norm"])
    records: list[dict] = []
    trainer = _trainer(model, log=records.append, steps=1, batch_size=4, lr=0.1, clip=clip)
    grads = _capture_grads(trainer)
    trainer.fit(DataSplits(data))
    for got, p in zip(grads[0], params):
        torch.testing.assert_close(got, p.grad, rtol=1e-9, atol=1e-14)
    post = float(torch.cat([g.flatten() for g in grads[0]]).norm())
    assert records[0]["grad_norm"] == pytest.approx(raw_norm, rel=1e-10)
    assert records[0]["grad_norm_clipped"] == pytest.approx(post, rel=1e-10)
    if "max_norm" in clip:
        assert post <= clip["max_norm"] * (1 + 1e-9)
    if "max_value" in clip:
        assert max(float(g.abs().max()) for g in grads[0]) <= clip["max_value"]
    assert records[0]["clipped"] == (post < raw_norm * (1 - 1e-9))


def test_adaptive_clipping_bounds_the_norm_by_a_multiple_of_its_running_mean():
    records: list[dict] = []
    trainer = _trainer(_vanilla_model(), log=records.append, steps=8, batch_size=4, lr=0.05,
                       clip={"adaptive": 0.5})
    grads = _capture_grads(trainer)
    trainer.fit(DataSplits(_data()))
    mean = None
    for record, g in zip(records, grads):
        before = record["grad_norm"]
        post = float(torch.cat([x.flatten() for x in g]).norm())
        if mean is None:
            assert post == pytest.approx(before, rel=1e-12)  # no history yet: nothing to compare with
        else:
            assert post == pytest.approx(min(before, 0.5 * mean), rel=1e-5)
        mean = before if mean is None else 0.95 * mean + 0.05 * before
    assert sum(r["clipped"] for r in records) >= 6


# --------------------------------------------------------------------------- optimizers and schedules
@pytest.mark.parametrize("name, cls, extra", [
    ("adam", torch.optim.Adam, {"weight_decay": 0.01}),
    ("adamw", torch.optim.AdamW, {"weight_decay": 0.1}),
    ("sgd", torch.optim.SGD, {"weight_decay": 0.01, "momentum": 0.9}),
])
def test_optimizers_apply_their_documented_update(name, cls, extra):
    model = _vanilla_model()
    start = _params(model)
    trainer = _trainer(model, steps=4, batch_size=4, lr=0.03, optimizer=name, **extra)
    assert type(trainer.optimizer) is cls
    grads = _capture_grads(trainer)
    trainer.fit(DataSplits(_data()))
    replay = [p.clone().requires_grad_(True) for p in start]
    reference = cls(replay, lr=0.03, **extra)
    for step_grads in grads:
        for p, g in zip(replay, step_grads):
            p.grad = g
        reference.step()
    for got, want in zip(model.parameters(), replay):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-13, atol=1e-15)


class BoundedRecurrence(VanillaCell):
    """IndRNN's kind of constraint: every recurrent weight within [-0.2, 0.2], projected after each update."""

    def constrain_parameters_(self):
        self.weight_hh.clamp_(-0.2, 0.2)


def test_a_cells_declared_projection_follows_every_update_and_keeps_the_gradient():
    torch.manual_seed(4)
    cell = BoundedRecurrence(2, 3)
    model = _model(cell, head=nn.Linear(3, 2))
    with torch.no_grad():
        cell.weight_hh.clamp_(-0.2, 0.2)
    start = _params(model)
    trainer = _trainer(model, steps=6, batch_size=4, lr=0.5)
    grads = _capture_grads(trainer)
    trainer.fit(DataSplits(_data()))
    bounded = next(i for i, p in enumerate(trainer.params) if p is cell.weight_hh)
    replay = [p.clone() for p in start]  # plain SGD, then the projection, written out
    for step_grads in grads:
        for p, g in zip(replay, step_grads):
            p -= 0.5 * g
        replay[bounded].clamp_(-0.2, 0.2)
    for got, want in zip(trainer.params, replay):
        torch.testing.assert_close(got.detach(), want, rtol=1e-13, atol=1e-15)
    weight = cell.weight_hh.detach()
    at_bound = weight.abs() == 0.2
    assert at_bound.any() and weight.abs().max() <= 0.2  # the updates pushed past the bound, and were projected
    # the gradient of an entry at its bound is not zero: the step itself never clamps
    assert any(bool((g[bounded][at_bound] != 0).any()) for g in grads[1:])


def test_a_model_without_trainable_parameters_is_refused_by_name():
    cell = LinearCell(2, 2, fixed=["A", "B", "C", "D"])
    with pytest.raises(TrainingError, match="job 'main': the model has no trainable parameter"):
        _trainer(_model(cell), steps=1)


def _expected_lr(s, lr, steps, kind, warmup=0, step_size=1000, gamma=0.5, min_lr=0.0):
    """The schedules written from their definitions (s counts updates from 0)."""
    warm = min(1.0, (s + 1) / warmup) if warmup else 1.0
    if kind == "constant":
        return lr * warm
    if kind == "step":
        return lr * warm * gamma ** (s // step_size)
    if kind == "exponential":
        return lr * warm * gamma ** (s / step_size)
    return warm * (min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * s / steps)))


@pytest.mark.parametrize("schedule", [
    {"type": "constant"}, {"type": "constant", "warmup_steps": 4}, {"type": "step", "step_size": 3, "gamma": 0.1},
    {"type": "exponential", "step_size": 2, "gamma": 0.5}, {"type": "cosine", "min_lr": 0.01},
    {"type": "cosine", "warmup_steps": 3},
])
def test_learning_rate_schedules_follow_their_formula(schedule):
    records: list[dict] = []
    trainer = _trainer(_vanilla_model(), log=records.append, steps=10, batch_size=4, lr=0.2, schedule=schedule)
    trainer.fit(DataSplits(_data()))
    kw = {k: v for k, v in schedule.items() if k != "type"}
    kw["warmup"] = kw.pop("warmup_steps", 0)
    expected = [_expected_lr(s, 0.2, 10, schedule["type"], **kw) for s in range(10)]
    assert [r["lr"] for r in records] == pytest.approx(expected, rel=1e-12)
    factor = lr_factor(TrainingConfig(steps=10, lr=0.2, schedule=schedule))
    assert [0.2 * factor(s) for s in range(10)] == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- validation, early stopping
def test_early_stopping_restores_the_best_weights():
    """Train on y = x, validate on y = -x: A goes from -3 through the val optimum -1 towards 1."""
    model = _model(LinearCell(1, 1, init={"A": [[-3.0]], "B": [[0.0]], "C": [[0.0]], "D": [[0.0]]}))
    x = torch.randn(8, 16, 1, dtype=DT)
    xv = torch.randn(8, 8, 1, dtype=DT)
    data = DataSplits(SequenceData(x, x.clone()), SequenceData(xv, -xv))
    records: list[dict] = []
    snapshots: list[dict] = []

    def log(record):
        records.append(record)
        if "val_loss" in record:
            snapshots.append(copy.deepcopy(model.state_dict()))

    trainer = _trainer(model, log=log, steps=200, batch_size=16, lr=0.05, eval_every=2, early_stopping=3,
                       min_delta=1e-6)
    result = trainer.fit(data)
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    best, best_i, stale, stop_i = None, None, 0, None
    for i, v in enumerate(vals):
        if best is None or v < best - 1e-6:
            best, best_i, stale = v, i, 0
        else:
            stale += 1
        if stale >= 3:
            stop_i = i
            break
    assert result.stopped_early and stop_i == len(vals) - 1 and result.steps == 2 * len(vals)
    assert 0 < best_i < stop_i  # the validation curve went down, then up
    assert result.best_val_loss == pytest.approx(best, rel=1e-12)
    final = model.state_dict()
    for key in final:
        assert torch.equal(final[key], snapshots[best_i][key])
    assert not torch.equal(final["topology.cell.A"], snapshots[-1]["topology.cell.A"])
    assert trainer.evaluate(data.val) == pytest.approx(best, rel=1e-12)
    # each validation loss is the MSE of the weights it saw: y = A x on y = -x
    A = float(snapshots[best_i]["topology.cell.A"])
    assert best == pytest.approx(float(((A * xv + xv) ** 2).mean()), rel=1e-10)


# --------------------------------------------------------------------------- non-finite policies
def _nan_at(k, where="loss"):
    """The default masked MSE, poisoned on its k-th call (1-based): the loss itself, or only its gradient."""
    calls = {"n": 0}

    def loss_fn(out, tgt, mask):
        calls["n"] += 1
        if calls["n"] == k:
            if where == "loss":
                out = out * float("nan")
            else:
                out.register_hook(lambda g: g * float("nan"))
        w = mask.unsqueeze(-1).to(out.dtype)
        return ((out - tgt) ** 2 * w).sum() / (w.sum() * out.shape[-1])

    return loss_fn


def _run_with_nan(policy, where="loss", k=3, steps=6):
    model = _vanilla_model()
    records, snapshots = [], []

    def log(record):
        records.append(record)
        snapshots.append(_params(model))

    trainer = _trainer(model, log=log, steps=steps, batch_size=4, lr=0.05, nonfinite=policy, optimizer="adam")
    trainer.loss_fn = _nan_at(k, where)
    return model, trainer, records, snapshots


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_nonfinite_skip_leaves_weights_and_optimizer_untouched(where):
    model, trainer, records, snapshots = _run_with_nan("skip", where)
    result = trainer.fit(DataSplits(_data()))
    assert result.steps == 6 and result.nonfinite_steps == 1
    assert [bool(r.get("nonfinite")) for r in records] == [False, False, True, False, False, False]
    assert not math.isfinite(records[2]["grad_norm"])
    for before, after in zip(snapshots[1], snapshots[2]):
        assert torch.equal(before, after)
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[2], snapshots[3]))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # Adam took five real steps
    assert all(int(s["step"]) == 5 for s in trainer.optimizer.state.values())


def test_nonfinite_abort_raises_naming_the_step_and_keeps_the_last_good_weights():
    model, trainer, records, snapshots = _run_with_nan("abort")
    with pytest.raises(TrainingError, match="non-finite loss at step 3"):
        trainer.fit(DataSplits(_data()))
    assert len(records) == 2
    for kept, now in zip(snapshots[-1], model.parameters()):
        assert torch.equal(kept, now.detach())


def test_nonfinite_reduce_lr_halves_the_rate_and_skips_the_update():
    model, trainer, records, snapshots = _run_with_nan("reduce_lr", "gradient")
    result = trainer.fit(DataSplits(_data()))
    assert result.nonfinite_steps == 1
    assert [r["lr"] for r in records] == pytest.approx([0.05, 0.05, 0.05, 0.025, 0.025, 0.025], rel=1e-12)
    for before, after in zip(snapshots[1], snapshots[2]):
        assert torch.equal(before, after)


# --------------------------------------------------------------------------- checkpoint and resume
def _resume_setup(tmp_path, name):
    torch.manual_seed(1)
    model = _model(VanillaCell(2, 3), head=nn.Linear(3, 2), initial=Random({"h": (3,)}, scale=0.5))
    config = TrainingConfig(steps=8, batch_size=2, lr=0.02, optimizer="adam", checkpoint_every=4, eval_every=3,
                            schedule={"type": "cosine"}, clip={"adaptive": 2.0}, log_every=1)
    return model, config, tmp_path / name


def test_resume_continues_exactly(tmp_path):
    """8 steps straight == 4 steps, interrupt, fresh process state, restore, 4 more: bit for bit."""
    torch.manual_seed(0)
    data = DataSplits(_data(n=6, steps=5), _data(n=3, steps=5))

    model, config, folder = _resume_setup(tmp_path, "straight")
    torch.manual_seed(42)
    straight = Trainer(model, config, checkpoint_dir=folder)
    result = straight.fit(data)

    model_a, config, folder = _resume_setup(tmp_path, "resumed")
    torch.manual_seed(42)
    first = Trainer(model_a, config, checkpoint_dir=folder, should_stop=lambda: first.step >= 4)
    with pytest.raises(Interrupted):
        first.fit(data)
    assert first.step == 4

    torch.manual_seed(999)  # a different RNG stream and different initial weights: restore must bring all back
    model_b = _model(VanillaCell(2, 3), head=nn.Linear(3, 2), initial=Random({"h": (3,)}, scale=0.5))
    second = Trainer(model_b, config, checkpoint_dir=folder)
    resumed = second.fit(data, resume=True)

    assert resumed.steps == result.steps == 8
    assert list(resumed.losses) == list(result.losses) and len(result.losses) == 8
    assert resumed.best_val_loss == result.best_val_loss
    for (name, p), q in zip(model.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(p, q), name
    opt_a, opt_b = straight.optimizer.state_dict(), second.optimizer.state_dict()
    assert opt_a["param_groups"] == opt_b["param_groups"]
    for key in opt_a["state"]:
        for part in opt_a["state"][key]:
            assert torch.equal(opt_a["state"][key][part], opt_b["state"][key][part])
    assert straight.scheduler.last_epoch == second.scheduler.last_epoch == 8


# --------------------------------------------------------------------------- conditioned models (encoder-decoder)
def _conditioned(attention="additive", vocab=None, seed=0):
    """An encoder-decoder SequenceModel (source features or ids through the 'sequence' encoder), float64."""
    from statesim.config import validate_data
    from statesim.model import build_model
    from statesim.plugin_manager import build_plugin_host

    registry = build_plugin_host(autoload=False).registry
    config = validate_data({"scenario": {"type": "translation"},
                            "model": {"cell": {"type": "gru", "hidden_size": 4}, "initial_state": {"type": "encoded"},
                                      "topology": {"type": "encoder_decoder", "encoder": {"type": "bidirectional"},
                                                   "attention": attention, "attention_size": 3}}},
                           registry).model
    torch.manual_seed(seed)
    return build_model(registry, config, 2, 2, input_vocab=vocab,
                       encoder={"type": "sequence", "vocab": None, "size": 3}).to(DT)


def _conditioned_data(steps=6, n=3):
    gen = torch.Generator().manual_seed(4)
    return SequenceData(torch.randn(steps, n, 2, generator=gen, dtype=DT),
                        torch.randn(steps, n, 2, generator=gen, dtype=DT), torch.tensor([6, 4, 5]),
                        torch.randn(5, n, 3, generator=gen, dtype=DT), torch.tensor([5, 2, 4]))


@pytest.mark.parametrize("attention", ["none", "additive"])
def test_truncated_bptt_with_one_chunk_equals_full_bptt_for_an_encoder_decoder(attention):
    """k1 = k2 = T: the same gradient for every parameter, the encoder's and the initial-state map's included."""
    grads = {}
    for mode in ("full", "truncated"):
        model = _conditioned(attention)
        trainer = _trainer(model, steps=1, batch_size=3, lr=0.01,
                           bptt={"mode": mode, "k1": 6 if mode == "truncated" else None})
        seen = _capture_grads(trainer)
        trainer.fit(DataSplits(_conditioned_data()))
        grads[mode] = seen[0]
    names = [n for n, p in _conditioned(attention).named_parameters()]
    assert any(n.startswith("encoder.") for n in names) and any(n.startswith("initial_state.") for n in names)
    for name, a, b in zip(names, grads["full"], grads["truncated"]):
        assert a.abs().sum() > 0, name  # every parameter, encoder and policy included, receives a gradient
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)


@pytest.mark.parametrize("k1, k2", [(2, 2), (2, 3), (4, 6)])
def test_truncated_bptt_cuts_an_encoder_decoder_where_documented(k1, k2):
    """||dL_u/dx_t|| through the real trainer: non-zero exactly on the k2 steps update u's graph spans."""
    from statesim.diagnostics import bptt_horizon
    from statesim.data import mse_loss

    data = _conditioned_data(steps=8)
    data = SequenceData(data.inputs, data.targets, None, data.condition, data.condition_lengths)
    training = TrainingConfig(bptt={"mode": "truncated", "k1": k1, "k2": k2})
    rows = bptt_horizon(_conditioned("additive"), data, training, mse_loss)
    assert rows.shape == (math.ceil(8 / k1), 8)
    for u, row in enumerate(rows):
        start, stop = u * k1, min(u * k1 + k1, 8)
        begin = max(start + k1 - k2, 0)
        inside = torch.zeros(8, dtype=torch.bool)
        inside[begin:stop] = True
        assert torch.all(row[~inside] == 0), (u, row)
        assert torch.all(row[begin:stop] > 0), (u, row)
