"""Environments: the vector env is the implementation, the single env a 1-env view of it."""

from diffusion_gym.envs.diffusion_env import DiffusionEnv, DiffusionVectorEnv
from diffusion_gym.envs.registration import ENV_IDS, PAPER_DEFAULTS, TASKS, Task, register_envs

__all__ = ["DiffusionEnv", "DiffusionVectorEnv", "ENV_IDS", "PAPER_DEFAULTS", "TASKS", "Task", "register_envs"]
