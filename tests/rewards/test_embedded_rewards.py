"""The embedded tasks' offline rewards and their gold references: the alignment judge and its
independent gold judge, the aesthetic predictor and the hidden taste, inside the envs."""

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from diffusion_gym import DiffusionPolicy
from diffusion_gym.embedded import EMBEDDED_DIR, world
from diffusion_gym.embedded.aesthetic import load_predictor
from diffusion_gym.embedded.captioner import load_captioner
from diffusion_gym.embedded.paraphrase import named_attributes, recall
from diffusion_gym.embedded.taste import taste
from embedded_tools.train_aesthetic import rank_correlation, rate
from diffusion_gym.prompts import load_prompts
from diffusion_gym.rewards import make_reward
from tests.conftest import run_episode

ROOT = Path(__file__).resolve().parents[2]


def renders_of(prompts, seed=0):
    """Ground-truth renders of the combinations the prompts name (in any of their words)."""
    combinations = [tuple(next(iter(named_attributes(p)[a])) for a in world.ATTRIBUTE_NAMES) for p in prompts]
    return world.render(combinations, np.random.default_rng(seed))


@pytest.mark.parametrize(
    "env_id, reward, prompts",
    [
        ("DiffusionAesthetic-v0", "embedded_aesthetic", "toy_world"),
        ("DiffusionCompressibility-v0", "jpeg_compressibility", "toy_world"),
        ("DiffusionIncompressibility-v0", "jpeg_incompressibility", "toy_world"),
        ("DiffusionPromptAlignment-v0", "embedded_alignment_judge", "toy_world_paraphrases"),
    ],
)
def test_each_task_on_the_embedded_model_uses_its_offline_reward_and_prompts(env_id, reward, prompts):
    env = gym.make(env_id, model="embedded", device="cpu").unwrapped
    assert env.reward_fn.__qualname__.startswith(reward) and env.prompts == load_prompts(prompts)


def test_the_judge_is_the_comparator_on_the_captioners_reading():
    prompts = load_prompts("toy_world_paraphrases")[:48]
    images = renders_of(prompts)
    scores, info = make_reward("embedded_alignment_judge")(images, prompts)
    assert scores.shape == (48,) and scores.dtype == np.float64 and scores.mean() > 0.95  # true renders show what they name
    probabilities = load_captioner().probabilities(images[:1])
    assert scores[0] == pytest.approx(recall(prompts[0], {a: p[0] for a, p in probabilities.items()}))
    shuffled = make_reward("embedded_alignment_judge")(images, prompts[1:] + prompts[:1])[0]
    assert shuffled.mean() < scores.mean() - 0.3
    assert info["gold"].shape == (48,) and info["gold"].mean() > 0.95


def test_the_gold_judge_is_an_independently_trained_captioner():
    judge, gold = load_captioner(), load_captioner(EMBEDDED_DIR / "captioner_gold")
    assert judge.width != gold.width  # another architecture width, so no weight is shared
    first_judge, first_gold = next(judge.parameters()), next(gold.parameters())
    assert first_judge.shape != first_gold.shape
    images = world.sample_batch(200, np.random.default_rng(3), world.HELD_OUT).images
    assert (judge.read(images) == gold.read(images)).mean() > 0.97  # both read the world right


def test_the_aesthetic_predictor_gives_one_rating_per_image_on_the_rating_scale():
    images = world.sample_batch(64, np.random.default_rng(0), world.TRAIN).images
    predictor = load_predictor()
    scores = predictor(images)
    assert scores.shape == (64,) and scores.dtype == np.float64 and np.isfinite(scores).all()
    assert 0 <= scores.min() and scores.max() <= 11  # ratings are 1-10
    np.testing.assert_allclose(predictor(images[:5]), scores[:5], atol=1e-5)  # a batch scores as its items
    assert rank_correlation(scores, taste(images)) > 0.7  # it learned the taste
    rewards, info = make_reward("embedded_aesthetic")(images, [""] * 64)
    np.testing.assert_allclose(rewards, scores) and np.testing.assert_allclose(info["gold"], taste(images))


def test_ratings_are_the_raters_mean_of_clipped_rounded_scores():
    tastes = np.array([0.0, 4.9, 10.0, 20.0])
    np.testing.assert_allclose(rate(tastes, raters=3, noise=0.0, rng=np.random.default_rng(0)), [1.0, 5.0, 10.0, 10.0])
    noisy = rate(np.full(2000, 5.0), raters=5, noise=1.5, rng=np.random.default_rng(0))
    assert 1 <= noisy.min() and noisy.max() <= 10 and abs(noisy.mean() - 5.5) < 0.05 and 0.5 < noisy.std() < 0.8


def test_the_aesthetic_training_script_writes_a_loadable_predictor(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "embedded_tools.train_aesthetic", "--output-dir", str(tmp_path / "head"),
         "--ratings-file", str(tmp_path / "ratings.npz"), "--renders", "64", "--samples", "64", "--held-out-samples", "64",
         "--num-inference-steps", "2", "--steps", "20"],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held_out_pearson" in result.stdout
    ratings = np.load(tmp_path / "ratings.npz")
    assert ratings["images"].shape == (64 + 64 + 64, 32, 32, 3)  # renders, varied renders, samples
    assert ((1 <= ratings["ratings"]) & (ratings["ratings"] <= 10)).all()
    scores = load_predictor(tmp_path / "head")(ratings["images"][:4])
    assert scores.shape == (4,) and np.isfinite(scores).all()
    with pytest.raises(ValueError, match="train_aesthetic"):
        load_predictor(tmp_path / "nothing")


def test_a_whole_aesthetic_episode_reports_the_predicted_rating_and_its_gold():
    envs = gym.make_vec("DiffusionAesthetic-v0", num_envs=2, model="embedded", device="cpu", num_inference_steps=2)
    trace = run_episode(envs, DiffusionPolicy.from_env(envs))
    images, reward_info = trace["info"]["images"], trace["info"]["reward_info"]
    np.testing.assert_allclose(trace["rewards"][-1], load_predictor()(images), atol=1e-6)
    np.testing.assert_allclose(reward_info["gold"], taste(images))
