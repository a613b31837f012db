"""Checkpoints: tensors in safetensors, everything else in a JSON sidecar; never pickle.

A checkpoint is a nested tree of dicts/lists whose leaves are tensors or JSON values (model weights,
optimizer and scheduler state, RNG states). Tensors go to ``NAME.safetensors`` under their tree path;
the tree's shape and the plain values go to ``NAME.json`` with the weights file's SHA-256, the step
and the config digest. The sidecar is published after the weights, so a sidecar always describes a
complete weights file. The sidecar carries a SHA-256 of its own content (``sidecar_sha256``) and is
schema-checked, so a flipped bit in a learning rate or a renamed key is detected like damaged weights;
loading verifies both checksums before trusting either file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from statesim.errors import CheckpointError
from statesim.fileio import atomic_write_bytes, atomic_write_json
from statesim.safepath import remove

FORMAT = "statesim-checkpoint/2"  # /2: the sidecar checksums itself
#: Deepest tree a sidecar may describe (model, optimizer, RNG trees are a handful of levels deep).
MAX_TREE_DEPTH = 64


class _Sidecar(BaseModel):
    """The schema of a sidecar; ``tree`` is checked by :func:`_check_tree`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    format: Literal["statesim-checkpoint/2"]
    step: int = Field(ge=0)
    config_digest: str
    weights: str
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    sidecar_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    meta: dict[str, Any]
    tree: dict[str, Any]


def _content_digest(data: dict[str, Any]) -> str:
    """SHA-256 of a sidecar's content without its own checksum (canonical JSON)."""
    body = {k: v for k, v in data.items() if k != "sidecar_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=True).encode()).hexdigest()


def _check_tree(node: Any, depth: int = 0) -> None:
    """Raise ValueError unless ``node`` is a well-formed skeleton of :func:`_flatten`."""
    if depth > MAX_TREE_DEPTH:
        raise ValueError(f"the tree nests deeper than {MAX_TREE_DEPTH} levels")
    if not isinstance(node, dict) or len(node) not in (1, 2):
        raise ValueError(f"a tree node must be a one-key mapping, got {type(node).__name__}")
    if "__tensor__" in node and len(node) == 1:
        if not isinstance(node["__tensor__"], str):
            raise ValueError("a tensor reference must be a string")
    elif "__dict__" in node and len(node) == 1:
        items = node["__dict__"]
        if not isinstance(items, list):
            raise ValueError("a dict node must hold a list of [key, value] pairs")
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))
                    and not isinstance(item[0], bool)):
                raise ValueError("a dict node must hold [str or int key, value] pairs")
            _check_tree(item[1], depth + 1)
    elif "__list__" in node and set(node) <= {"__list__", "tuple"}:
        if not isinstance(node["__list__"], list) or not isinstance(node.get("tuple", False), bool):
            raise ValueError("a list node must hold a list (and a boolean 'tuple')")
        for item in node["__list__"]:
            _check_tree(item, depth + 1)
    elif "__value__" in node and len(node) == 1:
        if not (node["__value__"] is None or isinstance(node["__value__"], (bool, int, float, str))):
            raise ValueError("a value node must hold a JSON scalar")
    else:
        raise ValueError(f"unknown tree node with keys {sorted(node)[:4]}")


def _flatten(tree: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, torch.Tensor):
        # A key with '/' in it, or an int key beside its string twin, can spell an existing path: number it.
        key, n = prefix or "_", 1
        while key in tensors:
            key, n = f"{prefix or '_'}#{n}", n + 1
        # safetensors refuses tensors that share storage (tied weights, views), so each leaf gets its own copy.
        tensors[key] = tree.detach().cpu().clone(memory_format=torch.contiguous_format)
        return {"__tensor__": key}
    if isinstance(tree, dict):
        return {"__dict__": [[_key(k), _flatten(v, f"{prefix}/{k}", tensors)] for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        return {"__list__": [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(tree)],
                "tuple": isinstance(tree, tuple)}
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return {"__value__": tree}
    raise CheckpointError(f"cannot store a {type(tree).__name__} in a checkpoint (only tensors and JSON values)")


def _key(key: Any) -> Any:
    if isinstance(key, (str, int)):
        return key
    raise CheckpointError(f"checkpoint dict keys must be str or int, got {type(key).__name__}")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__dict__" in node:
        return {k: _unflatten(v, tensors) for k, v in node["__dict__"]}
    if "__list__" in node:
        items = [_unflatten(v, tensors) for v in node["__list__"]]
        return tuple(items) if node.get("tuple") else items
    return node["__value__"]


@dataclass
class CheckpointInfo:
    """The sidecar of a checkpoint."""

    path: Path
    step: int
    config_digest: str
    meta: dict[str, Any]


def save_checkpoint(path: str | Path, tree: dict[str, Any], *, step: int, config_digest: str,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write ``path.safetensors`` then ``path.json``, each atomically. ``path`` has no suffix."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(tree, "", tensors)
    blob = save_safetensors(tensors)
    weights = atomic_write_bytes(path.with_suffix(".safetensors"), blob)
    sidecar = {"format": FORMAT, "step": step, "config_digest": config_digest,
               "weights": weights.name, "sha256": hashlib.sha256(blob).hexdigest(), "meta": meta or {},
               "tree": skeleton}
    # Round-trip through JSON first, so the checksum covers exactly what a reader will parse.
    sidecar = json.loads(json.dumps(sidecar, default=_json_value))
    sidecar["sidecar_sha256"] = _content_digest(sidecar)
    atomic_write_json(path.with_suffix(".json"), sidecar)
    return path.with_suffix(".json")


def _json_value(value: Any) -> Any:
    from statesim.fileio import _json_default

    return _json_default(value)


def _read_sidecar(sidecar: Path) -> dict[str, Any]:
    """Parse, checksum and schema-check a sidecar; any problem is a CheckpointError naming it."""
    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint sidecar {sidecar} is unreadable or corrupt ({why}). "
                               f"Delete it or resume from another checkpoint.")

    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise corrupt(str(exc)) from None
    except RecursionError:
        raise corrupt("it nests too deeply") from None
    if not isinstance(data, dict):
        raise corrupt(f"it holds a {type(data).__name__}, not a mapping")
    if data.get("format") != FORMAT:
        raise corrupt(f"format is {data.get('format')!r}, expected {FORMAT!r}; a checkpoint of an older "
                      f"statesim cannot be verified")
    try:
        _Sidecar.model_validate(data)
        _check_tree(data["tree"])
        matches = _content_digest(data) == data["sidecar_sha256"]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise corrupt(f"`{'.'.join(map(str, first['loc']))}`: {first['msg']}") from None
    except ValueError as exc:
        raise corrupt(f"malformed tree: {exc}") from None
    except RecursionError:
        raise corrupt("it nests too deeply") from None
    if not matches:
        raise corrupt("its content does not match its own SHA-256 (sidecar_sha256): it was edited or damaged")
    return data


def load_checkpoint(sidecar: str | Path,
                    map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], CheckpointInfo]:
    """Load and verify a checkpoint; a truncated or altered file raises a CheckpointError naming it."""
    sidecar = Path(sidecar)
    if sidecar.suffix == ".safetensors":
        sidecar = sidecar.with_suffix(".json")
    data = _read_sidecar(sidecar)
    info = CheckpointInfo(sidecar, data["step"], data["config_digest"], data["meta"])
    name = data.get("weights")
    # A sidecar only ever names a sibling file: an edited one must not make us read elsewhere.
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise CheckpointError(f"checkpoint sidecar {sidecar} names an invalid weights file {name!r}; "
                              f"it must be a .safetensors file in the same folder.")
    weights = sidecar.with_name(name)
    try:
        blob = weights.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint weights {weights} cannot be read ({exc}).") from None
    if hashlib.sha256(blob).hexdigest() != data.get("sha256"):
        raise CheckpointError(f"checkpoint {weights} is corrupt or truncated: its SHA-256 does not match the one "
                              f"recorded in {sidecar.name}. Resume from an earlier checkpoint.")
    try:
        tensors = load_safetensors(blob)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {weights} is not a valid safetensors file ({exc}).") from None
    tensors = {k: v.to(map_location) for k, v in tensors.items()}
    try:
        return _unflatten(data["tree"], tensors), info
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint sidecar {sidecar} has a malformed tree ({type(exc).__name__}: {exc}); "
                              f"resume from another checkpoint.") from None


def load_weights_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors parsed directly, anything else only via
    ``torch.load(weights_only=True)``."""
    import pickle

    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"weights file {path} cannot be read ({exc}).") from None
    if path.suffix == ".safetensors":
        try:
            return {k: v.to(map_location) for k, v in load_safetensors(blob).items()}
        except Exception as exc:
            raise CheckpointError(f"weights file {path} is not a valid safetensors file ({exc}).") from None
    import io

    try:
        # weights_only=True refuses every pickle opcode that could build or call arbitrary objects.
        loaded = torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"weights file {path} was refused: it is not a plain tensor file that loads with "
                              f"torch.load(weights_only=True) ({first}). statesim never unpickles arbitrary "
                              f"objects; re-save the weights with safetensors.") from None
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in loaded.items()):
        raise CheckpointError(f"weights file {path} does not hold a flat mapping of names to tensors.")
    return loaded


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Sidecars in ``folder``, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for sidecar in folder.glob("step_*.json"):
        try:
            found.append((int(sidecar.stem.split("_", 1)[1]), sidecar))
        except ValueError:
            continue
    return [p for _, p in sorted(found)]


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints, and drop weights files no sidecar describes (left by a kill)."""
    folder = Path(folder)
    for old in list_checkpoints(folder)[:-keep]:
        # Sidecar first: a kill in between leaves an orphan weights file, never a sidecar without weights.
        remove(old)
        remove(old.with_suffix(".safetensors"))
    for weights in folder.glob("step_*.safetensors"):
        if not weights.with_suffix(".json").exists():
            remove(weights)  # guarded: never through a link


def latest_good_checkpoint(folder: str | Path, warn: Any = None) -> tuple[dict[str, Any], CheckpointInfo] | None:
    """The newest checkpoint in ``folder`` that verifies; corrupt newer ones are reported through ``warn``."""
    for sidecar in reversed(list_checkpoints(folder)):
        try:
            return load_checkpoint(sidecar)
        except CheckpointError as exc:
            if warn is not None:
                warn(f"{exc} Falling back to the previous checkpoint.")
    return None
