"""Gymnasium adapters (``pip install statesim[gym]``): a trained model as an environment, a policy or a filter.

* :class:`ModelEnv`: the model *is* the environment (a learned simulator): action = model input,
  observation = model output, an optional reward function of both.
* :class:`ModelPolicy`: the model is the controller: environment observation in, action out, its
  recurrent state kept between calls and reset per episode.
* :class:`ModelObservationWrapper`: the model filters another environment's observations (a recurrent
  state estimator or feature extractor); the agent sees the model's output.

All three step an :class:`statesim.embed.EmbeddedModel` (the same numbers as the engine) for one agent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

try:
    import gymnasium as gym
    from gymnasium import spaces
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    from statesim.errors import StatesimError

    raise StatesimError("statesim.gym_env needs gymnasium: pip install 'statesim[gym]'.") from exc

from statesim.embed import EmbedError, EmbeddedModel, load

RewardFn = Callable[[np.ndarray, np.ndarray], float]


def _embedded(model: EmbeddedModel | str | Path, job: str | None) -> EmbeddedModel:
    if isinstance(model, EmbeddedModel):
        return model
    return load(model, job=job, batch_size=1)


def _box(size: int, low: float | np.ndarray, high: float | np.ndarray) -> spaces.Box:
    return spaces.Box(low=np.broadcast_to(np.asarray(low, np.float32), (size,)).copy(),
                      high=np.broadcast_to(np.asarray(high, np.float32), (size,)).copy(), dtype=np.float32)


def _reset_seeded(sim: EmbeddedModel, seed: int | None, initial_state: Any) -> None:
    """Reset one agent; a seed makes a random initial-state policy repeatable without touching global RNGs."""
    if seed is None:
        sim.reset(batch_size=1, initial_state=initial_state)
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sim.reset(batch_size=1, initial_state=initial_state)


class ModelEnv(gym.Env):
    """A trained model as a Gymnasium environment: ``action`` is the model's input, the observation its output.

    ``reward_fn(observation, action) -> float`` scores each step (0 without one); episodes are truncated
    after ``max_episode_steps``. The first observation of an episode is zeros (the model has produced
    nothing yet); ``info["state"]`` always holds the model's state parts.
    """

    metadata = {"render_modes": []}

    def __init__(self, model: EmbeddedModel | str | Path, *, job: str | None = None,
                 reward_fn: RewardFn | None = None, max_episode_steps: int | None = None,
                 action_low: float | np.ndarray = -np.inf, action_high: float | np.ndarray = np.inf,
                 initial_state: Any = None) -> None:
        self.sim = _embedded(model, job)
        self.reward_fn, self.max_episode_steps, self.initial_state = reward_fn, max_episode_steps, initial_state
        self.action_space = _box(self.sim.input_size, action_low, action_high)
        self.observation_space = _box(self.sim.output_size, -np.inf, np.inf)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode; ``options={"initial_state": ...}`` overrides the initial state for this episode."""
        super().reset(seed=seed)
        initial = (options or {}).get("initial_state", self.initial_state)
        _reset_seeded(self.sim, seed, initial)
        return np.zeros(self.sim.output_size, np.float32), {"state": self.sim.get_state()}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Feed ``action`` as the model input for one tick; the output is the observation."""
        action = np.asarray(action, np.float32).reshape(self.sim.input_size)
        observation = self.sim.step(action)
        reward = float(self.reward_fn(observation, action)) if self.reward_fn is not None else 0.0
        truncated = self.max_episode_steps is not None and self.sim.t >= self.max_episode_steps
        return observation, reward, False, truncated, {"state": self.sim.get_state()}


def _flat_size(space: spaces.Space) -> int:
    return int(spaces.flatdim(space))


class ModelPolicy:
    """A trained model as a recurrent controller for a Gymnasium environment: ``action = policy(observation)``.

    Observations are flattened (``gymnasium.spaces.flatten``) and must have the model's input size; the
    output is unflattened into ``action_space`` and, for a Box, clipped to its bounds. Call
    :meth:`reset` at the start of every episode.
    """

    def __init__(self, model: EmbeddedModel | str | Path, *, observation_space: spaces.Space | None = None,
                 action_space: spaces.Space | None = None, job: str | None = None, clip: bool = True,
                 initial_state: Any = None) -> None:
        self.sim = _embedded(model, job)
        self.observation_space, self.action_space = observation_space, action_space
        self.clip, self.initial_state = clip, initial_state
        for name, space, size in (("observation", observation_space, self.sim.input_size),
                                  ("action", action_space, self.sim.output_size)):
            if space is not None and _flat_size(space) != size:
                raise EmbedError(f"the {name} space flattens to {_flat_size(space)} values but the model's "
                                 f"{'input' if name == 'observation' else 'output'} size is {size}.")

    @classmethod
    def for_env(cls, model: EmbeddedModel | str | Path, env: gym.Env, **kwargs: Any) -> "ModelPolicy":
        """A policy checked against ``env``'s observation and action spaces."""
        return cls(model, observation_space=env.observation_space, action_space=env.action_space, **kwargs)

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: fresh controller state."""
        _reset_seeded(self.sim, seed, self.initial_state)

    def __call__(self, observation: Any) -> Any:
        """One control tick: observation in, action out."""
        if self.observation_space is not None:
            observation = spaces.flatten(self.observation_space, observation)
        output = self.sim.step(np.asarray(observation, np.float32).reshape(self.sim.input_size))
        if self.action_space is None:
            return output
        if isinstance(self.action_space, spaces.Box):
            action = output.reshape(self.action_space.shape).astype(self.action_space.dtype)
            return np.clip(action, self.action_space.low, self.action_space.high) if self.clip else action
        return spaces.unflatten(self.action_space, output)


class ModelObservationWrapper(gym.ObservationWrapper):
    """Pass another environment's observations through a trained model; the agent sees the model's output."""

    def __init__(self, env: gym.Env, model: EmbeddedModel | str | Path, *, job: str | None = None,
                 initial_state: Any = None) -> None:
        super().__init__(env)
        self.sim = _embedded(model, job)
        self.initial_state = initial_state
        if _flat_size(env.observation_space) != self.sim.input_size:
            raise EmbedError(f"the environment's observations flatten to {_flat_size(env.observation_space)} "
                             f"values but the model's input size is {self.sim.input_size}.")
        self.observation_space = _box(self.sim.output_size, -np.inf, np.inf)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Reset the environment and the model's state; the first observation already goes through the model."""
        _reset_seeded(self.sim, seed, self.initial_state)
        return super().reset(seed=seed, options=options)

    def observation(self, observation: Any) -> np.ndarray:
        """Step the model on one observation."""
        flat = spaces.flatten(self.env.observation_space, observation)
        return self.sim.step(np.asarray(flat, np.float32))
