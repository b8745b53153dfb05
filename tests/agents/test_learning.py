"""Each algorithm learns: on a small task the reward after training beats the starting reward by
more than its noise (paired: the same prompts and initial noise before and after)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.buffer import collect
from agents.ddpo import DDPO, DDPOConfig
from agents.rwr import RWR, RWRConfig
from diffusion_gym import DiffusionPolicy


def brightness(images, prompts):
    """Mean pixel value in [0, 1]: smooth in x_0, so a few updates can move it."""
    return images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0, {}


def make(num_envs=16):
    envs = gym.make_vec(
        "DiffusionCompressibility-v0", num_envs=num_envs, model="tiny-random-pixel", num_inference_steps=3,
        guidance_scale=1.0, reward=brightness, prompts=["a cat", "a dog"], device="cpu", array_type="torch",
    )  # fmt: skip
    policy = DiffusionPolicy.from_env(envs)
    policy.enable_full_finetuning()
    return envs, policy


def evaluate(envs, policy, seed=1234):
    envs.reset(seed=seed)  # the same prompts and noise every time
    return collect(envs, policy, num_batches=4, generator=torch.Generator().manual_seed(seed)).rewards.numpy()


def assert_learns(envs, policy, agent, epochs):
    before = evaluate(envs, policy)
    envs.reset(seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        agent.update(collect(envs, policy, num_batches=1, generator=generator))
    after = evaluate(envs, policy)
    gain = after - before
    noise = 3 * gain.std(ddof=1) / np.sqrt(len(gain))
    assert gain.mean() > noise, f"reward {before.mean():.4f} -> {after.mean():.4f}, gain {gain.mean():.4f} <= 3 s.e. {noise:.4f}"


@pytest.mark.parametrize("estimator", ["sf", "is"])
def test_ddpo_learns(estimator):
    envs, policy = make()
    config = DDPOConfig(estimator=estimator, learning_rate=1e-3, train_batch_size=8, num_inner_epochs=2, clip_range=0.2, per_prompt_min_count=4)
    assert_learns(envs, policy, DDPO(policy, config), epochs=5)


@pytest.mark.parametrize("weighting", ["exp", "sparse"])
def test_rwr_learns(weighting):
    envs, policy = make()
    config = RWRConfig(weighting=weighting, beta=100.0, percentile=75, learning_rate=1e-3, train_batch_size=8, num_updates=8)
    assert_learns(envs, policy, RWR(policy, config), epochs=5)
