"""Gymnasium adapters: API-compliant environment, policy and observation filter that equal the engine."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import gymnasium as gym  # the statesim[gym] extra; the dev extra includes it, so CI runs these tests
from gymnasium.utils.env_checker import check_env

from _embed_models import make_model as _make_model
from statesim.embed import EmbedError, EmbeddedModel
from statesim.gym_env import ModelEnv, ModelObservationWrapper, ModelPolicy


def make_model(registry, cell: dict, input_size: int, output_size: int, initial_state: str = "zeros"):
    return _make_model(registry, cell, head="linear", output_size=output_size, input_size=input_size,
                       initial_state={"type": initial_state})


def test_model_env_passes_gymnasium_checker_and_equals_engine(builtin_host):
    """ModelEnv follows the Gymnasium API; its observations are the model's outputs on the actions."""
    model = make_model(builtin_host.registry, {"type": "gru", "hidden_size": 6}, 3, 2)
    env = ModelEnv(EmbeddedModel(model), max_episode_steps=15, action_low=-1.0, action_high=1.0,
                   reward_fn=lambda obs, act: -float(obs @ obs))
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, np.zeros(2, np.float32))
    actions = np.random.default_rng(0).uniform(-1, 1, (15, 3)).astype(np.float32)
    seen, rewards, truncated = [], [], False
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        seen.append(obs)
        rewards.append(reward)
        assert not terminated
    assert truncated and set(info["state"]) == {"h"}
    with torch.no_grad():
        truth = model(torch.from_numpy(actions)[:, None]).outputs[:, 0].numpy()
    np.testing.assert_allclose(np.stack(seen), truth, atol=1e-5)
    np.testing.assert_allclose(rewards, -(truth ** 2).sum(1), rtol=1e-5)


def test_model_env_seeded_random_initial_state_repeats(builtin_host):
    """reset(seed=s) makes a random initial-state policy repeatable without touching the global RNG."""
    model = make_model(builtin_host.registry, {"type": "lstm", "hidden_size": 4}, 2, 2, initial_state="random")
    env = ModelEnv(EmbeddedModel(model))
    before = torch.get_rng_state()
    first = env.reset(seed=3)[1]["state"]["h"]
    again = env.reset(seed=3)[1]["state"]["h"]
    other = env.reset(seed=4)[1]["state"]["h"]
    assert torch.equal(before, torch.get_rng_state())
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_model_policy_controls_a_gymnasium_env(builtin_host):
    """The controller side: Pendulum observations in, clipped torques out, equal to the engine on those observations."""
    env = gym.make("Pendulum-v1")
    model = make_model(builtin_host.registry, {"type": "lstm", "hidden_size": 8}, 3, 1)
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # large outputs, so the clipping to [-2, 2] is exercised
    policy = ModelPolicy.for_env(EmbeddedModel(model), env)
    obs, _ = env.reset(seed=0)
    policy.reset()
    observations, actions = [], []
    for _ in range(30):
        action = policy(obs)
        assert env.action_space.contains(action)
        observations.append(obs)
        actions.append(action)
        obs, *_ = env.step(action)
    with torch.no_grad():
        raw = model(torch.as_tensor(np.stack(observations), dtype=torch.float32)[:, None]).outputs[:, 0].numpy()
    np.testing.assert_allclose(np.stack(actions), np.clip(raw, -2.0, 2.0), atol=1e-5)
    assert np.any(np.abs(raw) > 2.0)
    with pytest.raises(EmbedError, match="flattens to 3 values"):
        ModelPolicy(EmbeddedModel(make_model(builtin_host.registry, {"type": "gru", "hidden_size": 3}, 2, 1)),
                    observation_space=env.observation_space)


def test_observation_wrapper_filters_observations(builtin_host):
    """ModelObservationWrapper shows the agent the model's output on the environment's raw observations."""
    raw_env = gym.make("Pendulum-v1")
    model = make_model(builtin_host.registry, {"type": "vanilla", "hidden_size": 5}, 3, 4)
    wrapped = ModelObservationWrapper(gym.make("Pendulum-v1"), EmbeddedModel(model))
    raw_obs, seen = [raw_env.reset(seed=1)[0]], [wrapped.reset(seed=1)[0]]
    for k in range(10):
        action = np.array([np.sin(k)], np.float32)
        raw_obs.append(raw_env.step(action)[0])
        seen.append(wrapped.step(action)[0])
    with torch.no_grad():
        truth = model(torch.as_tensor(np.stack(raw_obs), dtype=torch.float32)[:, None]).outputs[:, 0].numpy()
    np.testing.assert_allclose(np.stack(seen), truth, atol=1e-5)
    assert wrapped.observation_space.shape == (4,)
