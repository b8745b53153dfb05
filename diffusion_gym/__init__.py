"""diffusion-gym: the denoising process of a text-to-image diffusion model as a Gymnasium environment.

    import gymnasium as gym
    import diffusion_gym  # registers the ids

    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=8, model="tiny-random")
    policy = diffusion_gym.DiffusionPolicy.from_env(envs)
    obs, info = envs.reset(seed=0)
    action, log_prob = policy.act(obs)  # x_{t-1} and its exact log-prob
    obs, reward, terminated, truncated, info = envs.step(action)

Whole batches of episodes: `diffusion_gym.rollout.rollout(envs, policy)`.

Importing the package registers the ids and nothing heavier: torch, diffusers and transformers
load when an env, a policy or a model is first made (or one of the names below first used).
"""

from __future__ import annotations

import importlib
from typing import Any

from diffusion_gym.envs.registration import ENV_IDS, register_envs

__version__ = "0.1.0"

register_envs()

# The public names, each imported from its module on first use.
_LAZY = {
    "DDIMSampler": "diffusion_gym.samplers",
    "SamplerStep": "diffusion_gym.samplers",
    "gaussian_log_prob": "diffusion_gym.samplers",
    "DiffusionEnv": "diffusion_gym.envs.diffusion_env",
    "DiffusionVectorEnv": "diffusion_gym.envs.diffusion_env",
    "RewardError": "diffusion_gym.envs.diffusion_env",
    "DiffusionModel": "diffusion_gym.models",
    "load_model": "diffusion_gym.models",
    "DiffusionPolicy": "diffusion_gym.policy",
    "SAMPLING": "diffusion_gym.policy",
    "Trajectories": "diffusion_gym.rollout",
    "PROMPT_SETS": "diffusion_gym.prompts",
    "load_prompts": "diffusion_gym.prompts",
    "REWARDS": "diffusion_gym.rewards",
    "make_reward": "diffusion_gym.rewards",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'diffusion_gym' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["ENV_IDS", "register_envs", *sorted(_LAZY)]
