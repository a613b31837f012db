"""Checkpoints: exact round trips of nested trees, detection of damaged files, fallback to a good one."""
import json
import math

import pytest
import torch

from statesim.checkpoint import latest_good_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from statesim.errors import CheckpointError


def _assert_same_tree(a, b):
    """Structural equality: same container types, same keys (and key types), bit-equal tensors."""
    if isinstance(a, dict):  # an OrderedDict (a state_dict) comes back as a plain dict
        assert type(b) is dict
    else:
        assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b) and [type(k) for k in a] == [type(k) for k in b]
        for key in a:
            _assert_same_tree(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_tree(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def _tree():
    return {
        "model": {"cell.weight_ih": torch.randn(4, 3, dtype=torch.float64), "scalar": torch.tensor(2.5)},
        "optimizer": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(3)}, 1: {}},
                      "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-8, "foreach": None,
                                        "amsgrad": False, "params": [0, 1]}]},
        "ints": torch.arange(5), "mask": torch.tensor([True, False]), "half": torch.ones(2, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 3), "noncontiguous": torch.randn(3, 4).T,
        "values": [1, 2.0, 1 / 3, None, "text", True, float("inf"), float("nan"), -0.0],
        "nested": ((1, (2, [3])), []), "": {"x": 1},
    }


def test_round_trip_of_a_nested_tree(tmp_path):
    tree = _tree()
    sidecar = save_checkpoint(tmp_path / "step_00000010", tree, step=10, config_digest="abc", meta={"job": "main"})
    assert sidecar == tmp_path / "step_00000010.json"
    assert (tmp_path / "step_00000010.safetensors").is_file()
    loaded, info = load_checkpoint(sidecar)
    _assert_same_tree(tree, loaded)
    assert (info.step, info.config_digest, info.meta) == (10, "abc", {"job": "main"})
    # loading by the weights path finds the sidecar too
    _assert_same_tree(tree, load_checkpoint(tmp_path / "step_00000010.safetensors")[0])


def test_the_sidecar_is_json_and_nothing_is_pickled(tmp_path):
    sidecar = save_checkpoint(tmp_path / "c", {"w": torch.ones(2), "n": 3}, step=1, config_digest="")
    data = json.loads(sidecar.read_text())
    assert data["format"].startswith("statesim-checkpoint/") and len(data["sha256"]) == 64
    assert b"\x80\x04" not in (tmp_path / "c.safetensors").read_bytes()[:2]  # not a pickle stream


def test_tied_and_viewed_tensors_round_trip(tmp_path):
    """A module with tied weights has one tensor under two names; views share storage too."""
    base = torch.randn(6)
    tree = {"a": base, "b": base, "view": base[2:],
            "model": torch.nn.Sequential(*[torch.nn.Linear(2, 2)] * 2).state_dict()}
    save_checkpoint(tmp_path / "c", tree, step=1, config_digest="")
    _assert_same_tree(tree, load_checkpoint(tmp_path / "c.json")[0])


def test_keys_that_spell_the_same_path_do_not_collide(tmp_path):
    tree = {"a/b": torch.ones(1), "a": {"b": torch.zeros(1)}, 1: torch.full((1,), 2.0), "1": torch.full((1,), 3.0)}
    save_checkpoint(tmp_path / "c", tree, step=1, config_digest="")
    _assert_same_tree(tree, load_checkpoint(tmp_path / "c.json")[0])


def test_unsupported_leaves_and_keys_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="cannot store a object"):
        save_checkpoint(tmp_path / "c", {"x": object()}, step=1, config_digest="")
    with pytest.raises(CheckpointError, match="keys must be str or int"):
        save_checkpoint(tmp_path / "c", {(1, 2): 1}, step=1, config_digest="")


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_weights_are_detected_with_the_file_named(tmp_path, damage):
    save_checkpoint(tmp_path / "step_00000005", {"w": torch.randn(50)}, step=5, config_digest="")
    weights = tmp_path / "step_00000005.safetensors"
    blob = weights.read_bytes()
    if damage == "flip":
        weights.write_bytes(blob[:-7] + bytes([blob[-7] ^ 0xFF]) + blob[-6:])
    elif damage == "truncate":
        weights.write_bytes(blob[: len(blob) // 2])
    else:
        weights.unlink()
    with pytest.raises(CheckpointError, match="step_00000005.safetensors"):
        load_checkpoint(tmp_path / "step_00000005.json")


def test_corrupt_sidecar_is_detected_with_the_file_named(tmp_path):
    sidecar = save_checkpoint(tmp_path / "step_00000005", {"w": torch.randn(5)}, step=5, config_digest="")
    sidecar.write_text(sidecar.read_text()[:40])
    with pytest.raises(CheckpointError, match="step_00000005.json"):
        load_checkpoint(sidecar)


def test_fallback_to_the_previous_good_checkpoint(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path / f"step_{step:08d}", {"w": torch.full((3,), float(step))}, step=step,
                        config_digest="d")
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"step_{s:08d}.json" for s in (10, 20, 30)]
    blob = (tmp_path / "step_00000030.safetensors").read_bytes()
    (tmp_path / "step_00000030.safetensors").write_bytes(blob[:-3])
    (tmp_path / "step_00000020.json").write_text("{not json")
    warnings: list[str] = []
    tree, info = latest_good_checkpoint(tmp_path, warnings.append)
    assert info.step == 10 and torch.equal(tree["w"], torch.full((3,), 10.0))
    assert len(warnings) == 2
    assert "step_00000030.safetensors" in warnings[0] and "step_00000020.json" in warnings[1]
    assert latest_good_checkpoint(tmp_path / "missing") is None


def test_list_checkpoints_orders_by_step_not_name(tmp_path):
    for step in (9, 100, 10):
        save_checkpoint(tmp_path / f"step_{step}", {"s": step}, step=step, config_digest="")
    (tmp_path / "step_latest.json").write_text("{}")  # not a step number: ignored
    assert [load_checkpoint(p)[1].step for p in list_checkpoints(tmp_path)] == [9, 10, 100]
