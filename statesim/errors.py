"""Errors statesim reports to users: each renders as a short paragraph that names the fix."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from statesim.config import ConfigIssue  # statesim.config imports this module


class StatesimError(Exception):
    """Base of every error the CLI turns into a message and a non-zero exit, without a traceback."""

    exit_code = 2


class ConfigError(StatesimError):
    """One or more problems in a scenario document; all of them are listed at once."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__(self.render())

    def render(self) -> str:
        """All issues, one paragraph each."""
        head = f"{len(self.issues)} problem(s) in the scenario:" if len(self.issues) > 1 else "Problem in the scenario:"
        return "\n".join([head] + [f"  - {issue}" for issue in self.issues])


class PluginError(StatesimError):
    """A plugin could not be loaded or clashes with another one."""


class CheckpointError(StatesimError):
    """A checkpoint is missing, truncated, corrupt or does not fit the model."""


class ShapeError(StatesimError, ValueError):
    """A cell received an input of the wrong shape, dtype or device."""


class TrainingError(StatesimError):
    """Training had to stop (non-finite loss under the abort policy, for instance)."""


class ForcingError(StatesimError, ValueError):
    """A clamp names a target the model does not have, or units outside the target's width."""


class UnknownNameError(StatesimError, KeyError):
    """A name that no plugin registered (a KeyError too, for lookups that expect one)."""

    def __str__(self) -> str:  # KeyError would quote the whole paragraph
        return str(self.args[0]) if self.args else ""


class EmbedError(StatesimError, ValueError):
    """The embedding API was called with something it cannot use (shape, state part, forcing target...)."""


class NotSteppableError(StatesimError, TypeError):
    """A model asked to advance one tick although its topology needs the whole sequence."""
