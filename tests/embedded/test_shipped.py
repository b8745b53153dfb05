"""The shipped embedded model: loads offline in every id, passes check_env, and is pretrained."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from diffusion_gym import ENV_IDS, DiffusionPolicy, load_prompts
from diffusion_gym.embedded import world
from diffusion_gym.embedded.captioner import attribute_accuracy, load_captioner
from diffusion_gym.models import load_model
from diffusion_gym.policy import SAMPLING
from diffusion_gym.rollout import rollout


def test_the_embedded_model_has_its_own_row_of_env_and_policy_defaults():
    model = load_model("embedded", device="cpu")
    assert model.vae is None and model.sample_shape == (3, 32, 32)
    row = gym.spec("DiffusionCompressibility-v0").kwargs["defaults"]["embedded"]
    assert row["num_inference_steps"] <= 20
    env = gym.make("DiffusionCompressibility-v0", model="embedded", device="cpu").unwrapped
    assert env.prompts == load_prompts("toy_world") and env.num_steps == row["num_inference_steps"]
    policy = DiffusionPolicy.from_env(env)
    expected = SAMPLING["embedded"]
    assert (policy.guidance_scale, policy.guidance_interval, policy.sampler.eta) == (expected.guidance_scale, expected.guidance_interval, expected.eta)
    assert (expected.guidance_scale, expected.guidance_interval, expected.eta) == (3.0, (600, 999), 1.0)


def test_the_embedded_flow_model_is_the_same_networks_as_a_flow_with_the_same_defaults():
    model = load_model("embedded-flow", device="cpu")
    assert model.is_flow and model.vae is None and model.sample_shape == (3, 32, 32)
    assert type(model.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and model.family.name == "stable-diffusion"
    for env_id in ENV_IDS:
        defaults = gym.spec(env_id).kwargs["defaults"]
        assert defaults["embedded-flow"] == defaults["embedded"]
    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=2, model="embedded-flow", device="cpu")
    policy = DiffusionPolicy.from_env(envs)
    assert type(policy.sampler).__name__ == "FlowSDESampler" and policy.sampler.diffusion == "flow-grpo"
    assert (policy.guidance_scale, policy.guidance_interval) == (3.0, (600, 1000))
    assert envs.unwrapped.single_observation_space["timestep"].dtype == np.float32


@pytest.mark.parametrize("model", ["embedded", "embedded-flow"])
def test_make_vec_runs_offline_with_the_policy_from_the_env(model):
    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=8, model=model, device="cpu")
    batch = rollout(envs, DiffusionPolicy.from_env(envs), seed=0)
    assert batch.num_steps == envs.unwrapped.num_steps and batch.images.shape == (8, 32, 32, 3)
    assert torch.isfinite(batch.log_probs).all() and (batch.rewards < 0).all()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_every_task_runs_a_whole_episode_offline_and_passes_check_env(env_id):
    env = gym.make(env_id, model="embedded", device="cpu")  # the task's own offline reward and prompts
    policy = DiffusionPolicy.from_env(env)
    obs, _ = env.reset(seed=0)
    for step in range(env.unwrapped.num_steps):
        obs, reward, terminated, truncated, info = env.step(policy.act(obs)[0])
        assert terminated == (step == env.unwrapped.num_steps - 1) and not truncated
    assert np.isfinite(reward) and reward != 0 and info["images"].shape == (32, 32, 3)
    short = gym.make(env_id, model="embedded", device="cpu", num_inference_steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(short.unwrapped)
    assert [str(w.message) for w in caught if "infinity" not in str(w.message)] == []


@pytest.mark.parametrize("model", ["embedded", "embedded-flow"])
def test_samples_show_what_their_prompts_say(model):
    """A quick quality check (the full evaluation is embedded_tools/evaluate.py): 32
    samples of 8 training prompts, read back by the captioner; the flow model's with Flow-GRPO's SDE."""
    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=32, model=model, device="cpu")
    policy = DiffusionPolicy.from_env(envs)
    prompts = [world.TRAIN_PROMPTS[i] for i in range(0, len(world.TRAIN_PROMPTS), 26)][:8] * 4
    images = rollout(envs, policy, prompts=prompts, seed=1, generator=torch.Generator().manual_seed(1), keep_steps=False).images
    accuracy = attribute_accuracy(load_captioner().read(images), world.labels_of([world.parse_caption(p) for p in prompts]))
    assert min(accuracy.values()) >= 0.75, accuracy
