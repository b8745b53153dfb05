"""Environments: the vector env is the implementation, the single env a 1-env view of it.

The registration table imports only Gymnasium; the envs themselves (torch, the models) load on
first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from diffusion_gym.envs.registration import ENV_IDS, PAPER_MODEL, TASKS, Task, register_envs

_LAZY = {"DiffusionEnv", "DiffusionVectorEnv", "RewardError"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'diffusion_gym.envs' has no attribute {name!r}")
    return getattr(importlib.import_module("diffusion_gym.envs.diffusion_env"), name)


__all__ = ["DiffusionEnv", "DiffusionVectorEnv", "ENV_IDS", "PAPER_MODEL", "RewardError", "TASKS", "Task", "register_envs"]
