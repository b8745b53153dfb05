"""The model-based rewards inside the env: the task's default, the embedded stand-in, devices, and
reward computation overlapped with sampling."""

import threading
import time

import gymnasium as gym
import numpy as np
import torch

from diffusion_gym.rollout import rollout
from diffusion_gym.policy import DiffusionPolicy
from diffusion_gym.rewards import make_reward
from tests.conftest import TINY, run_episode
from tests.rewards.test_aesthetic import parts  # noqa: F401  (the fixture)


def test_the_alignment_task_on_the_embedded_model_scores_with_the_toy_world_judge():
    envs = gym.make_vec("DiffusionPromptAlignment-v0", num_envs=4, model="embedded", num_inference_steps=4)
    trace = run_episode(envs, DiffusionPolicy.from_env(envs))
    info, prompts = trace["info"], list(trace["obs"][0]["prompt"])
    expected, _ = make_reward("embedded_alignment_judge")(info["images"], prompts)
    np.testing.assert_allclose(trace["rewards"][-1], expected)
    assert set(info["reward_info"]) == {"recall", "gold"} and ((0 <= expected) & (expected <= 1 + 1e-6)).all()
    # the canonical-prompt BERTScore version stays available by name
    envs = gym.make_vec("DiffusionPromptAlignment-v0", num_envs=2, model="embedded", reward="embedded_alignment", prompts="toy_world")
    assert envs.unwrapped.reward_fn.__qualname__.startswith("alignment_reward")
    # an explicit reward wins over the stand-in
    envs = gym.make_vec("DiffusionPromptAlignment-v0", num_envs=2, model="embedded", reward="jpeg_compressibility")
    assert envs.unwrapped.reward_fn.__qualname__.startswith("jpeg_compressibility")


def test_the_aesthetic_task_runs_the_scorer_on_the_env_device(parts):  # noqa: F811
    clip, mlp_weights, _ = parts
    envs = gym.make_vec("DiffusionAesthetic-v0", num_envs=2, reward_kwargs={"clip_model": str(clip), "mlp_weights": str(mlp_weights)}, **TINY)
    scorer = envs.unwrapped.reward_fn.scorer
    assert scorer.device == torch.device("cpu")  # the env's device, passed to the factory
    trace = run_episode(envs, DiffusionPolicy.from_env(envs))
    np.testing.assert_allclose(trace["rewards"][-1], scorer(trace["info"]["images"]))


def test_overlapped_rewards_equal_inline_ones_and_run_while_the_next_batch_samples():
    events = []

    def slow_brightness(images, prompts):
        events.append(("reward start", time.perf_counter(), threading.get_ident()))
        time.sleep(0.3)
        events.append(("reward end", time.perf_counter(), threading.get_ident()))
        return images.mean(axis=(1, 2, 3)), {}

    def run(overlap: bool):
        envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=2, reward=slow_brightness, array_type="torch", **TINY)
        envs.reset(seed=3)
        policy = DiffusionPolicy.from_env(envs)
        act = policy.act
        policy.act = lambda *a, **k: (events.append(("act", time.perf_counter(), threading.get_ident())), act(*a, **k))[1]
        return rollout(envs, policy, num_batches=3, generator=torch.Generator().manual_seed(0), overlap_rewards=overlap)

    inline = run(False)
    events.clear()
    overlapped = run(True)
    torch.testing.assert_close(overlapped.rewards, inline.rewards)
    torch.testing.assert_close(overlapped.samples, inline.samples)
    first_start, first_end = [t for name, t, _ in events if name.startswith("reward")][:2]
    acts_during = [t for name, t, _ in events if name == "act" and first_start < t < first_end]
    assert acts_during, "the next batch must be sampled while the first is scored"
    assert {thread for name, _, thread in events if name.startswith("reward")} != {threading.get_ident()}
