"""The environments: Gymnasium's contract, determinism, the terminal reward, and bad input."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from conftest import TINY, make_vec, run_episode
from diffusion_gym import ENV_IDS, DiffusionEnv, DiffusionPolicy, DiffusionVectorEnv, load_prompts
from diffusion_gym.rewards import REWARDS, jpeg_size_kb
from diffusion_gym.rollout import rollout


def mean_brightness(images, prompts):
    """A hand-checkable reward for the ids whose own reward needs large models (tested in tests/rewards)."""
    return images.mean(axis=(1, 2, 3)) / 255.0, {"brightness": images.mean(axis=(1, 2, 3))}


OFFLINE_KWARGS = {
    "DiffusionAesthetic-v0": {"reward": mean_brightness},
    "DiffusionCompressibility-v0": {},
    "DiffusionIncompressibility-v0": {},
    "DiffusionPromptAlignment-v0": {"reward": mean_brightness},
}


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_passes_on_every_id(env_id):
    env = gym.make(env_id, render_mode="rgb_array", **TINY, **OFFLINE_KWARGS[env_id])
    assert isinstance(env.unwrapped, DiffusionEnv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
        run_episode_single(env, seed=0)  # through gym.make's passive checker as well
    # latents and pixels are unbounded by design: the only warnings allowed are about that
    unexpected = [str(w.message) for w in caught if "infinity" not in str(w.message)]
    assert unexpected == []


def test_ids_show_every_default_per_model():
    paper = {
        "DiffusionAesthetic-v0": ("aesthetic", "simple_animals"),
        "DiffusionCompressibility-v0": ("jpeg_compressibility", "imagenet_animals"),
        "DiffusionIncompressibility-v0": ("jpeg_incompressibility", "imagenet_animals"),
        "DiffusionPromptAlignment-v0": ("prompt_alignment", "animal_activities"),
    }
    embedded = {
        "DiffusionAesthetic-v0": ("embedded_aesthetic", "toy_world"),
        "DiffusionCompressibility-v0": ("jpeg_compressibility", "toy_world"),
        "DiffusionIncompressibility-v0": ("jpeg_incompressibility", "toy_world"),
        "DiffusionPromptAlignment-v0": ("embedded_alignment_judge", "toy_world_paraphrases"),
    }
    for env_id in ENV_IDS:
        kwargs = gym.spec(env_id).kwargs
        assert set(kwargs) == {"model", "defaults"} and kwargs["model"] == "CompVis/stable-diffusion-v1-4"
        assert kwargs["defaults"]["*"] == {"reward": paper[env_id][0], "prompts": paper[env_id][1], "num_inference_steps": 50}
        assert kwargs["defaults"]["embedded"] == {"reward": embedded[env_id][0], "prompts": embedded[env_id][1], "num_inference_steps": 20}
        assert kwargs["defaults"]["embedded-flow"] == kwargs["defaults"]["embedded"]
    # a model without a row of its own (Stable Diffusion, tiny-random) is set up as the paper's was, and so acts
    env = gym.make("DiffusionIncompressibility-v0", model="tiny-random", device="cpu").unwrapped
    assert env.num_steps == 50 and env.prompts == load_prompts("imagenet_animals")
    policy = DiffusionPolicy.from_env(env)
    assert (policy.guidance_scale, policy.guidance_interval, policy.sampler.eta) == (5.0, None, 1.0)


def test_the_policy_takes_its_models_sampling_row_unless_told(tiny_model):
    assert DiffusionPolicy.from_env(make_vec()).guidance_interval is None  # a model without a row guides every step
    tiny_model.name = "embedded"  # looked up by name: the embedded model's row
    envs = make_vec(model=tiny_model)
    assert envs.unwrapped.num_steps == 3  # given; the row would say 20
    policy = DiffusionPolicy.from_env(envs)
    assert (policy.guidance_scale, policy.guidance_interval) == (3.0, (600, 999))
    assert DiffusionPolicy.from_env(envs, guidance_interval=[0, 999]).guidance_interval == (0, 999)
    assert DiffusionPolicy.from_env(envs, guidance_interval=None).guidance_interval is None


def test_reset_options_group_prompts_and_defer_the_reward():
    envs = make_vec(num_envs=4, prompts=["a cat", "a dog", "a fox", "an owl"])
    obs, _ = envs.reset(seed=0, options={"samples_per_prompt": 2})
    assert obs["prompt"][0] == obs["prompt"][1] and obs["prompt"][2] == obs["prompt"][3]
    again, _ = make_vec(num_envs=4, prompts=["a cat", "a dog", "a fox", "an owl"]).reset(seed=0, options={"samples_per_prompt": 2})
    assert again["prompt"] == obs["prompt"]
    np.testing.assert_array_equal(again["x_t"], obs["x_t"])
    policy = DiffusionPolicy.from_env(envs)
    terminal_rewards = []  # overlap_rewards resets with defer_reward and scores with env.score itself
    deferred = rollout(envs, policy, seed=1, generator=torch.Generator().manual_seed(0), overlap_rewards=True, on_step=lambda step: terminal_rewards.append(step["reward"]))
    np.testing.assert_array_equal(terminal_rewards[-1], 0.0)
    scored = rollout(envs, policy, seed=1, generator=torch.Generator().manual_seed(0))  # a reset without the option: the env scores
    np.testing.assert_array_equal(deferred.rewards.numpy(), scored.rewards.numpy())
    np.testing.assert_allclose(scored.rewards.numpy(), -jpeg_size_kb(scored.images), rtol=1e-6)


def test_make_vec_builds_one_batched_env_with_the_declared_autoreset_mode():
    envs = make_vec(num_envs=3)
    assert isinstance(envs, DiffusionVectorEnv) and envs.num_envs == 3
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, _ = envs.reset(seed=0)
    assert obs in envs.observation_space
    assert obs["x_t"].shape == (3, 4, 8, 8) and obs["x_t"].dtype == np.float32
    assert len(obs["prompt"]) == 3 and all(isinstance(p, str) for p in obs["prompt"])
    np.testing.assert_array_equal(obs["timestep"], envs.unwrapped.scheduler.timesteps[0].item())


def test_same_seed_same_observations_actions_and_rewards():
    runs = []
    for _ in range(2):
        envs = make_vec(num_envs=3)
        runs.append(run_episode(envs, DiffusionPolicy.from_env(envs), seed=7, policy_seed=11))
    a, b = runs
    for obs_a, obs_b in zip(a["obs"], b["obs"]):
        assert obs_a["prompt"] == obs_b["prompt"]
        np.testing.assert_array_equal(obs_a["timestep"], obs_b["timestep"])
        np.testing.assert_array_equal(obs_a["x_t"], obs_b["x_t"])
    for key in ("actions", "log_probs", "rewards"):
        for x, y in zip(a[key], b[key]):
            np.testing.assert_array_equal(x, y)
    other = run_episode(make_vec(num_envs=3), DiffusionPolicy.from_env(make_vec(num_envs=3)), seed=8)
    assert not np.array_equal(other["obs"][0]["x_t"], a["obs"][0]["x_t"])


def test_a_whole_episode_ends_with_the_reward_of_the_returned_images():
    envs = make_vec(num_envs=4)
    trace = run_episode(envs, DiffusionPolicy.from_env(envs))
    assert len(trace["actions"]) == envs.unwrapped.num_steps == 3
    for reward in trace["rewards"][:-1]:
        np.testing.assert_array_equal(reward, 0.0)
    images = trace["info"]["images"]
    assert images.shape == (4, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(trace["rewards"][-1], -jpeg_size_kb(images))
    np.testing.assert_array_equal(trace["info"]["reward_info"]["jpeg_kb"], jpeg_size_kb(images))
    # the final observation is x_0 itself, and the images are its decoding
    final = trace["obs"][-1]
    np.testing.assert_array_equal(final["timestep"], 0)
    np.testing.assert_array_equal(final["x_t"], trace["actions"][-1])
    np.testing.assert_array_equal(envs.unwrapped.model.decode(torch.from_numpy(final["x_t"])), images)


def test_a_custom_reward_sees_the_images_and_prompts():
    seen = {}

    def reward(images, prompts):
        seen["prompts"] = list(prompts)
        return np.arange(len(images), dtype=np.float64), {}

    envs = make_vec(num_envs=2, reward=reward)
    trace = run_episode(envs, DiffusionPolicy.from_env(envs))
    assert seen["prompts"] == list(trace["obs"][0]["prompt"])
    np.testing.assert_array_equal(trace["rewards"][-1], [0.0, 1.0])


def test_reset_options_fix_the_prompts():
    envs = make_vec(num_envs=2, prompts=["a cat", "a dog", "a fox"])
    obs, _ = envs.reset(seed=0, options={"prompts": ["a fox", "a cat"]})
    assert obs["prompt"] == ("a fox", "a cat")
    obs, _ = envs.reset(options={"prompts": "a dog"})
    assert obs["prompt"] == ("a dog", "a dog")
    with pytest.raises(ValueError, match="num_envs=2"):
        envs.reset(options={"prompts": ["a fox"]})
    with pytest.raises(ValueError, match="Unknown reset options"):
        envs.reset(options={"prompt": "a fox"})


def test_next_step_autoreset_starts_new_episodes():
    envs = make_vec(num_envs=2)
    trace = run_episode(envs, DiffusionPolicy.from_env(envs), seed=3)
    obs, reward, terminated, truncated, info = envs.step(np.full((2, 4, 8, 8), np.nan, dtype=np.float32))  # ignored
    np.testing.assert_array_equal(reward, 0.0)
    assert not terminated.any() and not truncated.any() and info == {}
    np.testing.assert_array_equal(obs["timestep"], envs.unwrapped.scheduler.timesteps[0].item())
    assert not np.array_equal(obs["x_t"], trace["obs"][0]["x_t"])


def test_torch_arrays_stay_on_the_device():
    envs = make_vec(num_envs=2, array_type="torch")
    policy = DiffusionPolicy.from_env(envs)
    obs, _ = envs.reset(seed=0)
    assert isinstance(obs["x_t"], torch.Tensor) and obs["x_t"].device == policy.device
    action, log_prob = policy.act(obs)
    assert isinstance(action, torch.Tensor) and isinstance(log_prob, torch.Tensor)
    obs, reward, terminated, _, _ = envs.step(action)
    assert envs.observation_space.contains(obs)
    state = obs["x_t"].clone()
    action.add_(1.0)  # the caller may reuse its tensor: the env's state is a copy of the action
    torch.testing.assert_close(envs.unwrapped._x, state, rtol=0, atol=0)
    assert isinstance(reward, torch.Tensor) and isinstance(terminated, torch.Tensor)
    numpy_trace = run_episode(make_vec(num_envs=2), DiffusionPolicy.from_env(make_vec(num_envs=2)), seed=5)
    torch_trace = run_episode(envs, policy, seed=5)
    np.testing.assert_allclose(torch_trace["rewards"][-1].numpy(), numpy_trace["rewards"][-1])


def test_single_env_is_a_view_of_the_vector_env():
    env = gym.make("DiffusionIncompressibility-v0", **TINY)
    envs = make_vec(num_envs=1, env_id="DiffusionIncompressibility-v0")
    single, batched = run_episode_single(env, seed=4), run_episode(envs, DiffusionPolicy.from_env(envs), seed=4)
    assert single["reward"] == pytest.approx(float(batched["rewards"][-1][0]))
    np.testing.assert_array_equal(single["images"], batched["info"]["images"][0])


def run_episode_single(env, seed):
    policy = DiffusionPolicy.from_env(env)
    generator = torch.Generator().manual_seed(0)
    obs, _ = env.reset(seed=seed)
    terminated = False
    while not terminated:
        action, _ = policy.act(obs, generator=generator)
        obs, reward, terminated, truncated, info = env.step(action)
        assert isinstance(reward, float) and isinstance(terminated, bool)
    return {"reward": reward, "images": info["images"]}


def test_render_shows_the_state_decoded_then_x0():
    envs = make_vec(num_envs=2, render_mode="rgb_array")
    policy = DiffusionPolicy.from_env(envs)
    obs, _ = envs.reset(seed=0)
    frames = envs.render()
    assert len(frames) == 2 and frames[0].shape == (16, 16, 3) and frames[0].dtype == np.uint8
    np.testing.assert_array_equal(np.stack(frames), envs.unwrapped.model.decode(torch.from_numpy(obs["x_t"])))
    trace = run_episode(envs, policy)
    np.testing.assert_array_equal(np.stack(envs.render()), trace["info"]["images"])


# ------------------------------------------------------------------ bad input
def started_env():
    envs = make_vec(num_envs=2)
    envs.reset(seed=0)
    envs.step(np.zeros((2, 4, 8, 8), dtype=np.float32))
    return envs


@pytest.mark.parametrize(
    "action, match",
    [
        (np.zeros((2, 4, 8), dtype=np.float32), r"shape \(2, 4, 8, 8\)"),
        (np.zeros((1, 4, 8, 8), dtype=np.float32), r"shape \(2, 4, 8, 8\)"),
        (np.zeros((2, 4, 8, 8), dtype=np.float64), "float32"),
        (torch.zeros((2, 4, 8, 8), dtype=torch.float16), "float32"),
        (np.full((2, 4, 8, 8), np.nan, dtype=np.float32), "NaN or infinite"),
        (np.full((2, 4, 8, 8), np.inf, dtype=np.float32), "NaN or infinite"),
        ([[0.0]], "numpy array or torch tensor"),
    ],
)
def test_bad_actions_are_rejected_and_leave_the_state_unchanged(action, match):
    envs = started_env()
    before = (envs.unwrapped._step_index, envs.unwrapped._x.clone(), envs.unwrapped._episode_prompts)
    with pytest.raises(ValueError, match=match):
        envs.step(action)
    assert envs.unwrapped._step_index == before[0] and envs.unwrapped._episode_prompts == before[2]
    assert torch.equal(envs.unwrapped._x, before[1])
    # and the env goes on as if nothing happened
    reference = started_env()
    good = np.ones((2, 4, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(envs.step(good)[0]["x_t"], reference.step(good)[0]["x_t"])


def test_single_env_rejects_a_batched_action():
    env = gym.make("DiffusionCompressibility-v0", **TINY)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(4, 8, 8\)"):
        env.step(np.zeros((1, 4, 8, 8), dtype=np.float32))


def test_step_before_reset_and_after_the_end():
    envs = make_vec(num_envs=2)
    with pytest.raises(ValueError, match="before reset"):
        envs.step(np.zeros((2, 4, 8, 8), dtype=np.float32))
    env = gym.make("DiffusionCompressibility-v0", **TINY)
    with pytest.raises(ValueError, match="before reset"):
        env.step(np.zeros((4, 8, 8), dtype=np.float32))
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros((4, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="call reset"):
        env.step(np.zeros((4, 8, 8), dtype=np.float32))


def test_unknown_reward_name_lists_the_known_ones():
    with pytest.raises(ValueError) as error:
        make_vec(reward="jpeg")
    assert all(name in str(error.value) for name in REWARDS)


def test_a_reward_of_the_wrong_shape_is_reported():
    envs = make_vec(num_envs=2, reward=lambda images, prompts: (np.zeros(3), {}))
    with pytest.raises(ValueError, match="2 finite rewards"):
        run_episode(envs, DiffusionPolicy.from_env(envs))


def test_a_model_that_cannot_be_found_says_how_to_pass_a_folder():
    with pytest.raises(ValueError, match="model='DIR'"):
        gym.make("DiffusionCompressibility-v0", model="someone/missing-model", device="cpu")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_envs": 0}, "num_envs"),
        ({"array_type": "jax"}, "array_type"),
        ({"render_mode": "human"}, "render_mode"),
        ({"prompts": "no-such-set"}, "known sets"),
    ],
)
def test_bad_env_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_vec(**kwargs)


def test_rollout_cuts_a_last_short_batch_of_fixed_prompts_and_refuses_a_wrong_batch_count():
    envs = make_vec(num_envs=2, prompts=["a cat", "a dog", "a fox"])
    policy = DiffusionPolicy.from_env(envs)
    batch = rollout(envs, policy, prompts=["a fox", "a cat", "a dog"], seed=0, generator=torch.Generator().manual_seed(0))
    assert batch.prompts == ["a fox", "a cat", "a dog"] and batch.samples.shape[:2] == (3, 4) and batch.rewards.shape == (3,)
    with pytest.raises(ValueError, match="fill 2 batches"):
        rollout(envs, policy, 3, prompts=["a fox", "a cat", "a dog"])
