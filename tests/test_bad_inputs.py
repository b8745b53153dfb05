"""Bad inputs, one case each: the error's type, that it names the thing and the fix, and that
nothing was changed, written or lost. The cases follow the reliability issue's items."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from diffusion_gym import DiffusionPolicy, RewardError
from diffusion_gym.models import build_tiny_random, load_model
from tests.conftest import TINY, make_vec

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- broken model folders (item 6)
@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good") / "pipe"
    build_tiny_random().save_pretrained(folder)
    return folder


def broken_copy(good_folder, tmp_path, breaks):
    folder = tmp_path / "pipe"
    shutil.copytree(good_folder, folder)
    breaks(folder)
    return folder


def _edit_index(folder, edit):
    index = json.loads((folder / "model_index.json").read_text())
    edit(index)
    (folder / "model_index.json").write_text(json.dumps(index))


BROKEN_FOLDERS = {
    "no tokenizer folder": (lambda f: shutil.rmtree(f / "tokenizer"), ["tokenizer", "no tokenizer/ subfolder", "copy it in"]),
    "tokenizer without vocabulary": (
        lambda f: [p.unlink() for p in (f / "tokenizer").iterdir() if p.name != "tokenizer_config.json"],
        ["tokenizer", "unknown token", "copy tokenizer/"],
    ),
    "tokenizer_config without model_max_length": (
        lambda f: (f / "tokenizer" / "tokenizer_config.json").write_text(
            json.dumps({k: v for k, v in json.loads((f / "tokenizer" / "tokenizer_config.json").read_text()).items() if k != "model_max_length"})
        ),
        ["tokenizer", "model_max_length", "copy tokenizer/"],
    ),
    "unet weights missing": (
        lambda f: [p.unlink() for p in (f / "unet").iterdir() if p.suffix in (".safetensors", ".bin")],
        ["unet", "UNet2DConditionModel", "copy the part again"],
    ),
    "unet weights truncated": (
        lambda f: [p.write_bytes(p.read_bytes()[:1000]) for p in (f / "unet").iterdir() if p.suffix == ".safetensors"],
        ["unet", "copy the part again"],
    ),
    "unet config not JSON": (lambda f: (f / "unet" / "config.json").write_text("{not json"), ["unet", "copy the part again"]),
    "model_index.json not JSON": (lambda f: (f / "model_index.json").write_text('{"unet": ['), ["model_index.json", "not valid JSON", "save_pretrained"]),
    "unknown class": (lambda f: _edit_index(f, lambda i: i.update(unet=["diffusers", "UNet9000Model"])), ["unet", "UNet9000Model", "correct the name"]),
    "scheduler folder missing": (lambda f: shutil.rmtree(f / "scheduler"), ["scheduler", "no scheduler/ subfolder"]),
}


@pytest.mark.parametrize("case", BROKEN_FOLDERS)
def test_a_broken_model_folder_fails_at_load_naming_folder_part_and_fix(good_folder, tmp_path, case):
    breaks, needles = BROKEN_FOLDERS[case]
    folder = broken_copy(good_folder, tmp_path, breaks)
    with pytest.raises(ValueError) as error:
        load_model(str(folder), device="cpu")
    message = str(error.value)
    for needle in [str(folder) if "model_index" not in case else "model_index.json", *needles]:
        assert needle in message, f"{needle!r} not in {message!r}"


# ---------------------------------------------------------------- a reward that fails (item 4)
def raising_reward(images, prompts):
    raise RuntimeError("the scoring server is down")


def bare_array_reward(images, prompts):
    return np.ones(len(images))


def none_info_reward(images, prompts):
    return np.ones(len(images)), None


def nan_reward(images, prompts):
    return np.full(len(images), np.nan), {}


FAILING_REWARDS = {
    "raises": (raising_reward, ["'raising_reward'", "RuntimeError", "the scoring server is down", "take the same step again"]),
    "bare array": (bare_array_reward, ["'bare_array_reward'", "returned a ndarray", "fn(images, prompts) -> (rewards, info)"]),
    "info None": (none_info_reward, ["'none_info_reward'", "(rewards, NoneType)", "fn(images, prompts) -> (rewards, info)"]),
    "NaN rewards": (nan_reward, ["'nan_reward'", "finite rewards", "fn(images, prompts) -> (rewards, info)"]),
}


def _to_last_step(envs, policy, generator):
    obs, _ = envs.reset(seed=3)
    for _ in range(envs.unwrapped.num_steps - 1):
        obs, *_ = envs.step(policy.act(obs, generator=generator)[0])
    return obs, policy.act(obs, generator=generator)[0]


@pytest.mark.parametrize("case", FAILING_REWARDS)
def test_a_failing_reward_leaves_the_vector_env_where_it_was_and_keeps_the_images(case):
    reward_fn, needles = FAILING_REWARDS[case]
    envs = make_vec(num_envs=2, reward=reward_fn)
    policy = DiffusionPolicy.from_env(envs)
    obs, last_action = _to_last_step(envs, policy, torch.Generator().manual_seed(0))
    env = envs.unwrapped
    before = (env._step_index, env._x.clone(), list(env._episode_prompts))
    with pytest.raises(RewardError) as error:
        envs.step(last_action)
    for needle in needles:
        assert needle in str(error.value), f"{needle!r} not in {error.value}"
    assert error.value.images.shape == (2, *env.model.image_shape) and error.value.prompts == before[2]
    assert env._step_index == before[0] and torch.equal(env._x, before[1]) and env._episode_prompts == before[2]
    env.reward_fn = lambda images, prompts: (np.arange(len(images), dtype=float), {})  # fixed: the same step again
    _, reward, terminated, _, info = envs.step(last_action)
    assert terminated.all() and list(reward) == [0.0, 1.0]
    np.testing.assert_array_equal(info["images"], error.value.images)


def test_a_reward_error_survives_a_pipe_with_its_images():
    """An async vector env's worker sends the exception back pickled."""
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    error = pickle.loads(pickle.dumps(RewardError("The reward 'x' raised.", images, ["a", "b"])))
    assert isinstance(error, RewardError) and str(error) == "The reward 'x' raised." and error.prompts == ["a", "b"]
    np.testing.assert_array_equal(error.images, images)


def test_a_failing_reward_does_not_end_the_single_envs_episode():
    env = gym.make("DiffusionCompressibility-v0", reward=raising_reward, **TINY)
    policy = DiffusionPolicy.from_env(env)
    generator = torch.Generator().manual_seed(0)
    obs, _ = env.reset(seed=1)
    for _ in range(env.unwrapped.num_steps - 1):
        obs, _, terminated, _, _ = env.step(policy.act(obs, generator=generator)[0])
    action = policy.act(obs, generator=generator)[0]
    with pytest.raises(RewardError, match="raising_reward"):
        env.step(action)
    env.unwrapped.vector_env.reward_fn = lambda images, prompts: (np.ones(len(images)), {})
    _, reward, terminated, _, _ = env.step(action)  # not "the episode has ended": it had not
    assert terminated and reward == 1.0


# ---------------------------------------------------------------- async vectorization (item 5)
def test_the_async_vector_env_carries_prompts_observations_and_rewards_as_the_sync_one():
    traces = {}
    for mode, vector_kwargs in (("sync", {}), ("async", {"context": "spawn"})):  # (forking a process that has run torch can hang)
        envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=2, vectorization_mode=mode, vector_kwargs=vector_kwargs, prompts="toy_world", **TINY)
        obs, _ = envs.reset(seed=11)
        trace = [obs]
        rng = np.random.default_rng(0)
        for _ in range(TINY["num_inference_steps"]):
            obs, reward, terminated, _, _ = envs.step(rng.standard_normal(envs.action_space.shape).astype(np.float32))
            trace.append((obs, reward, terminated))
        envs.close()
        traces[mode] = trace
    sync, async_ = traces["sync"], traces["async"]
    assert tuple(async_[0]["prompt"]) == tuple(sync[0]["prompt"]) and all(len(p) > 3 and p[0] != "0" for p in sync[0]["prompt"])
    np.testing.assert_array_equal(async_[0]["x_t"], sync[0]["x_t"])
    for (obs_a, reward_a, done_a), (obs_s, reward_s, done_s) in zip(async_[1:], sync[1:]):
        assert tuple(obs_a["prompt"]) == tuple(obs_s["prompt"])
        np.testing.assert_array_equal(obs_a["timestep"], obs_s["timestep"])
        np.testing.assert_allclose(obs_a["x_t"], obs_s["x_t"])
        np.testing.assert_allclose(reward_a, reward_s)
        np.testing.assert_array_equal(done_a, done_s)
    assert sync[-1][2].all() and (sync[-1][1] != 0).all()


# ---------------------------------------------------------------- errors before any work (item 7)
def test_a_task_whose_reward_model_is_missing_fails_when_made_not_at_the_last_step():
    with pytest.raises(ValueError) as error:
        gym.make("DiffusionAesthetic-v0", **TINY)  # the real aesthetic reward: CLIP is not here (offline)
    assert "clip-vit-large-patch14" in str(error.value) and "clip_model='DIR'" in str(error.value)


def test_a_reward_model_path_that_does_not_exist_fails_even_with_a_hub(monkeypatch):
    from diffusion_gym.models import hub
    from diffusion_gym.rewards import make_reward

    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda timeout=3.0: None)  # a reachable hub would be asked for a hub id...
    with pytest.raises(ValueError, match=r"'/models/clpi-typo' does not exist \(it is a path, not a hub id\).*clip_model='DIR'"):
        make_reward("aesthetic", clip_model="/models/clpi-typo", mlp_weights=__file__)  # ...but not for a path


def test_settings_given_as_text_refuse_non_finite_numbers_and_bools_for_literals():
    from typing import Literal

    from diffusion_gym.coerce import coerce

    with pytest.raises(ValueError, match="max_minutes must be a finite number or None, got 'nan'"):
        coerce("nan", float | None, "max_minutes")
    with pytest.raises(ValueError, match="one of 1, 2"):
        coerce(True, Literal[1, 2], "x")
    assert coerce("2", Literal[1, 2], "x") == 2 and coerce("None", float | None, "m") is None


def test_reward_options_given_as_text_are_converted_or_refused_by_name():
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    from diffusion_gym.rewards import make_reward

    as_text, as_int, default = (make_reward("jpeg_compressibility", **kw)(images, ["a"] * 2)[0] for kw in ({"quality": "50"}, {"quality": 50}, {}))
    np.testing.assert_array_equal(as_text, as_int)
    assert not np.array_equal(as_text, default)
    with pytest.raises(ValueError, match=r"'jpeg_compressibility' has no options \['clip_model'\]; its options: \['quality'\]"):
        make_reward("jpeg_compressibility", clip_model="x")
    with pytest.raises(ValueError, match="jpeg_compressibility option 'quality' must be an int, got 'high'"):
        make_reward("jpeg_compressibility", quality="high")
    envs = make_vec(num_envs=1, reward_kwargs={"quality": "50"})
    assert envs.unwrapped.reward_fn(images[:1], ["a"])[0][0] == as_int[0]


# ---------------------------------------------------------------- smaller ones (item 9)
def test_the_env_pickles_and_unpickles_mid_episode():
    envs = make_vec(num_envs=2, prompts="toy_world")
    obs, _ = envs.reset(seed=2)
    action = np.random.default_rng(0).standard_normal(envs.action_space.shape).astype(np.float32)
    envs.step(action)
    copy = pickle.loads(pickle.dumps(envs.unwrapped))
    (a, *_), (b, *_) = envs.step(action), copy.step(action)
    assert a["prompt"] == b["prompt"]
    np.testing.assert_array_equal(a["x_t"], b["x_t"])
    np.testing.assert_array_equal(envs.reset()[0]["prompt"], copy.reset()[0]["prompt"])  # the RNG came along too


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        ({"num_inference_steps": "3"}, ["num_inference_steps", "'3'"]),
        ({"prompts": ["   "]}, ["prompt", "visible character", "'   '"]),
    ],
)
def test_bad_env_settings_are_named(kwargs, needles):
    with pytest.raises(ValueError) as error:
        make_vec(num_envs=1, **kwargs)
    for needle in needles:
        assert needle in str(error.value), f"{needle!r} not in {error.value}"


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        ({"guidance_scale": "5"}, ["guidance_scale must be a number", "'5'", "str"]),
        ({"eta": "1"}, ["eta", "'1'"]),
        ({"guidance_interval": (0, 5000)}, ["guidance_interval", "(0, 999) guides every step"]),
        ({"reduce": "mean"}, ["Unknown policy settings ['reduce']", "DDPOConfig.log_prob_reduce"]),
    ],
)
def test_bad_policy_settings_are_named(kwargs, needles):
    with pytest.raises(ValueError) as error:
        DiffusionPolicy.from_env(make_vec(num_envs=1), **kwargs)
    for needle in needles:
        assert needle in str(error.value), f"{needle!r} not in {error.value}"


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"samples_per_prompt": 3}, "must be an int dividing num_envs = 2"),
        ({"samples_per_prompt": 2, "prompts": "a cat"}, "not both"),
        ({"defer_reward": "yes"}, "must be True or False"),
        ({"seeds": 1}, "Unknown reset options ['seeds']"),
    ],
)
def test_bad_reset_options_are_named_and_leave_the_rng_alone(options, needle):
    envs, again = make_vec(num_envs=2), make_vec(num_envs=2)
    envs.reset(seed=0), again.reset(seed=0)
    with pytest.raises(ValueError) as error:
        envs.reset(options=options)
    assert needle in str(error.value)
    np.testing.assert_array_equal(envs.reset()[0]["x_t"], again.reset()[0]["x_t"])


def test_a_prompt_set_of_none_lists_the_sets():
    from diffusion_gym.prompts import PROMPT_SETS, load_prompts

    with pytest.raises(ValueError) as error:
        load_prompts(None)
    assert "got None" in str(error.value) and all(name in str(error.value) for name in PROMPT_SETS)


def test_numpy_integers_are_taken_where_ints_are():
    envs = make_vec(num_envs=np.int64(2), num_inference_steps=np.int64(3))
    obs, _ = envs.reset(seed=np.int64(7))
    again, _ = make_vec(num_envs=2).reset(seed=7)
    assert envs.num_envs == 2 and envs.unwrapped.num_steps == 3
    np.testing.assert_array_equal(obs["x_t"], again["x_t"])
    with pytest.raises(ValueError, match="seed must be an int or None"):
        envs.reset(seed=True)


def test_a_bad_prompts_option_is_named_and_leaves_the_episode():
    envs = make_vec(num_envs=2)
    obs, _ = envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"options\['prompts'\] must be a str or a list"):
        envs.reset(options={"prompts": 5})
    with pytest.raises(ValueError, match="visible character"):
        envs.reset(options={"prompts": ["a cat", " "]})
    np.testing.assert_array_equal(envs.unwrapped._x.numpy(), obs["x_t"])


# ---------------------------------------------------------------- noise and weight (item 10)
def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_import_is_light_and_gym_make_still_works():
    result = _python(
        "import sys, diffusion_gym\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft', 'accelerate') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "import gymnasium as gym\n"
        "env = gym.make('DiffusionCompressibility-v0', model='tiny-random', num_inference_steps=2, device='cpu')\n"
        "obs, _ = env.reset(seed=0)\n"
        "assert obs['x_t'].shape == env.unwrapped.model.sample_shape and diffusion_gym.DiffusionPolicy is not None\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_an_embedded_episode_prints_nothing():
    result = _python(
        "import gymnasium as gym, diffusion_gym\n"
        "envs = gym.make_vec('DiffusionCompressibility-v0', num_envs=2, model='embedded', device='cpu')\n"
        "policy = diffusion_gym.DiffusionPolicy.from_env(envs)\n"
        "obs, _ = envs.reset(seed=0)\n"
        "done = False\n"
        "while not done:\n"
        "    obs, reward, terminated, truncated, info = envs.step(policy.act(obs)[0])\n"
        "    done = terminated.all()\n"
        "assert reward.shape == (2,) and (reward != 0).all()\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "" and result.stderr == "", (result.stdout + result.stderr)[-3000:]
