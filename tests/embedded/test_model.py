"""The embedded model's architecture and the training script (a few steps, not the full run)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from diffusion_gym import DiffusionPolicy
from diffusion_gym.embedded import world
from diffusion_gym.embedded.captioner import load_captioner
from diffusion_gym.models import load_model
from diffusion_gym.rollout import rollout
from embedded_tools.model import WORLD_WORDS, build_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def test_every_word_of_the_world_is_one_token_and_unknown_words_do_not_crash():
    tokenizer = build_tokenizer()
    for word in WORLD_WORDS:
        assert tokenizer.tokenize(word) == [word + "</w>"]
    assert len(tokenizer(world.TRAIN_PROMPTS[0]).input_ids) == 10  # <bos>, 8 words, <eos>
    ids = tokenizer(["a zebra riding a bike, on Mars!", ""], padding="max_length", max_length=16, truncation=True).input_ids
    assert all(len(row) == 16 for row in ids)


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    """Run the real training script for a few steps, as a user would."""
    folder = tmp_path_factory.mktemp("embedded")
    result = subprocess.run(
        [sys.executable, "-m", "embedded_tools.train", "--output-dir", str(folder), "--steps", "4",
         "--batch-size", "8", "--log-every", "1", "--save-every", "2", "--captioner.steps", "3"],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_training_script_writes_a_loadable_model_and_a_loss_log(trained_folder):
    log = [json.loads(line) for line in (trained_folder / "train_log.jsonl").read_text().splitlines()]
    diffusion_losses = [line["loss"] for line in log if line.get("model") == "diffusion" and "loss" in line]
    assert len(diffusion_losses) == 4 and all(np.isfinite(diffusion_losses))
    assert not (trained_folder / "checkpoint.pt").exists()  # removed once the run is complete
    model = load_model(str(trained_folder), device="cpu")
    assert model.vae is None and model.sample_shape == (3, 32, 32) and model.image_shape == (32, 32, 3)
    assert load_captioner(trained_folder / "captioner").read(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 4)


def test_the_trained_folder_runs_in_the_env(trained_folder):
    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=2, model=str(trained_folder), prompts="toy_world", num_inference_steps=3, device="cpu")
    batch = rollout(envs, DiffusionPolicy.from_env(envs), seed=0)
    assert batch.num_steps == 3 and batch.images.shape == (2, 32, 32, 3) and np.isfinite(batch.rewards.numpy()).all()
