"""Observation and action adapters for RL libraries that cannot take a `Text` observation or
unbounded actions (stable-baselines3, tianshou).

`PromptIndexObservation` replaces the prompt string by its index in the env's prompt set and
gives the action space finite bounds, so wide (`ACTION_BOUND`) that clipping an action to them
never changes a sample of the policy; `t` and `x_t` are kept as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.spaces import Box, Dict, Discrete
from gymnasium.vector import VectorWrapper
from gymnasium.vector.utils import batch_space

# |x_{t-1}| stays within a few units (x_0 in [-1, 1] plus Gaussian noise of std <= 1): 1000 is
# hundreds of standard deviations away, so libraries that clip actions to bounds never clip one.
ACTION_BOUND = 1000.0


class PromptIndexObservation(VectorWrapper):
    """{"prompt": str, "timestep", "x_t"} → {"prompt_index": int64, "timestep", "x_t"} (numpy).

    The prompt set is the env's (`env.unwrapped.prompts`), fixed when the wrapper is made;
    `reset(options={"prompts": [...]})` still works for prompts of that set.
    """

    def __init__(self, env):
        super().__init__(env)
        base = env.unwrapped
        if base.array_type != "numpy":
            raise ValueError("PromptIndexObservation needs the env made with array_type='numpy' (the libraries take numpy arrays).")
        self.prompts: list[str] = list(base.prompts)
        self.prompt_to_index = {prompt: i for i, prompt in enumerate(self.prompts)}
        inner = base.single_observation_space
        self.single_observation_space = Dict({"prompt_index": Discrete(len(self.prompts)), "timestep": inner["timestep"], "x_t": inner["x_t"]})
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        shape = inner["x_t"].shape
        self.single_action_space = Box(-ACTION_BOUND, ACTION_BOUND, shape=shape, dtype=np.float32)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

    def observation(self, obs: dict) -> dict:
        try:
            indices = np.array([self.prompt_to_index[p] for p in obs["prompt"]], dtype=np.int64)
        except KeyError as error:
            raise ValueError(f"Prompt {error.args[0]!r} is not in the env's prompt set, so it has no index.") from None
        return {"prompt_index": indices, "timestep": np.asarray(obs["timestep"], dtype=np.int64), "x_t": obs["x_t"]}

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self.observation(obs), info

    def step(self, actions):
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        return self.observation(obs), rewards, terminated, truncated, info

    def prompt_observation(self, obs: dict) -> dict:
        """Back to the env's own observation (the prompt strings), for `DiffusionPolicy`."""
        indices = np.asarray(obs["prompt_index"]).reshape(-1).astype(np.int64)
        return {"prompt": [self.prompts[i] for i in indices], "timestep": obs["timestep"], "x_t": obs["x_t"]}
