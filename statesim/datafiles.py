"""Data files a scenario reads (a corpus TSV): named in the config, hashed into its digest.

A params field typed :data:`DataPath` is a path the scenario reads. :func:`data_files` finds every such
field in a resolved config and returns each file's SHA-256, which :meth:`statesim.config.RunConfig.digest`
includes and ``run.json`` records, so a resume refuses a changed file by name instead of training on
different data (or failing deep inside with a size mismatch when a vocabulary grew).
"""
from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import BaseModel, BeforeValidator

from statesim.errors import StatesimError


class DataFile:
    """Marker in a field's metadata: the string is the path of a data file the scenario reads."""


#: How a data file an installed package ships is spelled as a string: ``package:NAME/RESOURCE``.
PACKAGE_PREFIX = "package:"


class PackageDataError(StatesimError):
    """A data path names a package that is not installed, or a resource the package does not ship."""


def _package_form(value: Any) -> Any:
    """``{package: NAME, resource: RESOURCE}`` as the string ``package:NAME/RESOURCE`` (what the config keeps)."""
    if isinstance(value, dict) and set(value) == {"package", "resource"}:
        return f"{PACKAGE_PREFIX}{value['package']}/{str(value['resource']).lstrip('/')}"
    if isinstance(value, dict):
        raise ValueError(f"a data path given as a mapping needs exactly the keys package and resource (got "
                         f"{', '.join(map(str, value)) or 'none'}); e.g. {{package: matplotlib, resource: "
                         f"mpl-data/sample_data/Stocks.csv}}")
    return value


#: A params field holding the path of a data file the scenario reads (relative to the working directory), or
#: a file an installed package ships: ``{package: NAME, resource: RESOURCE}`` or ``package:NAME/RESOURCE``.
DataPath = Annotated[str, BeforeValidator(_package_form), DataFile()]


def resolve(path: str) -> Path:
    """The file a data path names: itself, or (``package:NAME/RESOURCE``) the file inside the installed package."""
    if not path.startswith(PACKAGE_PREFIX):
        return Path(path)
    name, _, resource = path[len(PACKAGE_PREFIX):].partition("/")
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.submodule_search_locations is None:
        raise PackageDataError(f"data path '{path}': no installed package '{name}' to read '{resource}' from. "
                               f"Install it (pip install {name.split('.')[0]}) or fix the package key of "
                               f"scenario.path.")
    found = importlib.resources.files(name).joinpath(resource)
    # A package imported from a zip has no file to hash or to open with csv; only one on disk is accepted.
    if not isinstance(found, Path) or not found.exists():
        raise PackageDataError(f"data path '{path}': the package '{name}' (at {spec.submodule_search_locations[0]})"
                               f" ships no file '{resource}' on disk. Fix the resource key of scenario.path "
                               f"(a path inside the package's folder, '/'-separated).")
    return found


@lru_cache(maxsize=64)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes ("missing" when it cannot be read); cached by path, mtime and size.

    A folder (of data files, one sequence each) hashes the names and hashes of every file under it, so adding,
    removing, renaming or changing one changes the digest.
    """
    try:
        if path.startswith(PACKAGE_PREFIX):
            return file_sha256(str(resolve(path)))
        if Path(path).is_dir():
            digest = hashlib.sha256()
            for file in sorted(f for f in Path(path).rglob("*") if f.is_file()):
                digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(str(file))}\n".encode())
            return digest.hexdigest()
        stat = Path(path).stat()
        return _sha256(path, stat.st_mtime_ns, stat.st_size)
    except (OSError, PackageDataError):
        return "missing"


def _marked(metadata: list[Any], annotation: Any) -> bool:
    """True when a field is a :data:`DataPath` (also inside ``Optional``/unions)."""
    if any(isinstance(m, DataFile) for m in metadata):
        return True
    extra = getattr(annotation, "__metadata__", ())
    return any(isinstance(m, DataFile) for m in extra) or any(_marked([], arg) for arg in get_args(annotation))


def _paths(node: Any) -> list[str]:
    from statesim.config import ComponentSpec

    if isinstance(node, ComponentSpec):
        return _paths(node.params)
    if isinstance(node, BaseModel):
        found = []
        for name, field in type(node).model_fields.items():
            value = getattr(node, name)
            if isinstance(value, str) and _marked(field.metadata, field.annotation):
                found.append(value)
            else:
                found += _paths(value)
        return found
    if isinstance(node, (list, tuple)):
        return [p for item in node for p in _paths(item)]
    if isinstance(node, dict):
        return [p for item in node.values() for p in _paths(item)]
    return []


def data_files(config: BaseModel) -> dict[str, str]:
    """Every data file named in ``config`` (a resolved RunConfig) with its SHA-256."""
    return {path: file_sha256(path) for path in sorted(set(_paths(config)))}


def changed_files(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """One line per data file whose hash differs between ``recorded`` and ``current``."""
    lines = []
    for path in sorted(set(recorded) | set(current)):
        old, new = recorded.get(path, "(not used)"), current.get(path, "(not used)")
        if old != new:
            lines.append(f"{path}: sha256 {old[:16]} -> {new[:16]}")
    return lines
