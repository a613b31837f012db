"""Errors statesim reports to users: each renders as a short paragraph that names the fix."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from statesim.config import ConfigIssue  # statesim.config imports this module


class StatesimError(Exception):
    """Base of every error the CLI turns into a message and a non-zero exit, without a traceback.

    >>> import statesim
    >>> [issubclass(error, statesim.StatesimError) for error in (statesim.ShapeError, statesim.ConfigError)]
    [True, True]
    """

    exit_code = 2


class ConfigError(StatesimError):
    """One or more problems in a scenario document; all of them are listed at once.

    >>> import tempfile, statesim
    >>> from pathlib import Path
    >>> file = Path(tempfile.mkdtemp()) / "bad.yaml"
    >>> _ = file.write_text("scenario: {type: linear_system}\\ntrainng: {}\\n")
    >>> try:
    ...     statesim.load_config(file, statesim.build_plugin_host(autoload=False).registry)
    ... except statesim.ConfigError as error:
    ...     print(error)
    Problem in the scenario:
      - ...bad.yaml, line 2: `trainng`: unknown key 'trainng'. Did you mean 'training'? ...
    """

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__(self.render())

    def render(self) -> str:
        """All issues, one paragraph each."""
        head = f"{len(self.issues)} problem(s) in the scenario:" if len(self.issues) > 1 else "Problem in the scenario:"
        return "\n".join([head] + [f"  - {issue}" for issue in self.issues])


class PluginError(StatesimError):
    """A plugin could not be loaded or clashes with another one.

    >>> import statesim
    >>> from statesim.registry import Provided
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> clash = Provided(registry.get("cell", "lstm").record, "mine", "statesim-mine", "1.0")
    >>> try:
    ...     registry.add("cell", clash)
    ... except statesim.PluginError as error:
    ...     print(error)
    The cell name 'lstm' is registered twice: by plugin 'statesim.builtin.cells' (distribution statesim
    (built-in)) and by plugin 'mine' (distribution statesim-mine 1.0). Uninstall or block one of them
    (STATESIM_BLOCK_PLUGINS=mine), or rename the second one.
    """


class CheckpointError(StatesimError):
    """A checkpoint is missing, truncated, corrupt or does not fit the model.

    >>> import tempfile, statesim, statesim.embed
    >>> try:
    ...     statesim.embed.load(tempfile.mkdtemp())
    ... except statesim.CheckpointError as error:
    ...     print(error)
    /... holds no checkpoints (expected .../checkpoints/<job>/step_*.json). Is it a finished `statesim run` folder?
    """


class ShapeError(StatesimError, ValueError):
    """A cell received an input of the wrong shape, dtype or device (or a step returned a wrong state).

    >>> import torch, statesim
    >>> from statesim.builtin.cells import LSTMCell
    >>> try:
    ...     statesim.step(LSTMCell(2, hidden_size=3), torch.zeros(4, 5))
    ... except statesim.ShapeError as error:
    ...     print(error)
    LSTMCell: expected input of shape [B, input_size] with input_size=2, got shape [4, 5].
    """


class TrainingError(StatesimError):
    """Training had to stop (non-finite loss under the abort policy, for instance)."""


class ForcingError(StatesimError, ValueError):
    """A clamp names a target the model does not have, or units outside the target's width."""


class UnknownNameError(StatesimError, KeyError):
    """A name that no plugin registered (a KeyError too, for lookups that expect one)."""

    def __str__(self) -> str:  # KeyError would quote the whole paragraph
        return str(self.args[0]) if self.args else ""


class EmbedError(StatesimError, ValueError):
    """The embedding API was called with something it cannot use (shape, state part, forcing target...).

    >>> import statesim, statesim.embed
    >>> from statesim.config import validate_model
    >>> registry = statesim.build_plugin_host(autoload=False).registry
    >>> config = validate_model({"cell": {"type": "lstm", "hidden_size": 3}}, registry)
    >>> sim = statesim.embed.as_embedded(statesim.build_model(registry, config, input_size=2))
    >>> try:
    ...     sim.get_state("x")
    ... except statesim.embed.EmbedError as error:
    ...     print(error)
    'x' is not a state part of this model; its parts are: h, c.
    """


class NotSteppableError(StatesimError, TypeError):
    """A model asked to advance one tick although its topology needs the whole sequence."""
