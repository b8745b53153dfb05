"""Shared fixtures: everything runs on the tiny random Stable Diffusion, on the CPU, offline."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the suite must never wait on the network
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="diffusion-gym-tests-hf-")  # nor find models this machine happens to cache

import gymnasium as gym
import pytest
import torch

import diffusion_gym  # noqa: F401  (registers the ids)
from diffusion_gym.models import build_tiny_random, load_model
from diffusion_gym.rollout import rollout

torch.set_num_threads(min(2, torch.get_num_threads()))

TINY = dict(model="tiny-random", num_inference_steps=3, device="cpu")


@pytest.fixture
def tiny_model():
    """A fresh tiny-random model, loaded (frozen, on the CPU) as load_model does; tests may add adapters to it."""
    return load_model(build_tiny_random(), device="cpu")


def make_vec(num_envs=2, env_id="DiffusionCompressibility-v0", **kwargs):
    return gym.make_vec(env_id, num_envs=num_envs, **{**TINY, **kwargs})


def run_episode(envs, policy, seed=0, policy_seed=0):
    """One episode through a vector env (`rollout`), watched step by step: lists of obs (the
    first and every next one), actions, log-probs, rewards, and the last info."""
    trace = {"obs": [], "actions": [], "log_probs": [], "rewards": []}

    def record(step: dict) -> None:
        if not trace["obs"]:
            trace["obs"].append(step["obs"])
        trace["obs"].append(step["next_obs"])
        trace["actions"].append(step["action"])
        trace["log_probs"].append(step["log_prob"])
        trace["rewards"].append(step["reward"])
        trace["info"] = step["info"]

    rollout(envs, policy, seed=seed, generator=torch.Generator().manual_seed(policy_seed), keep_steps=False, on_step=record)
    return trace
