"""Subprocess smoke tests: each command runs as a user would run it and prints numbers we check."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run(*args, cwd=ROOT):
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_demo_prints_the_mean_reward_of_the_images_it_saves(tmp_path):
    out = run("-m", "diffusion_gym.demo", "--model", "tiny-random", "--num-envs", "3", "--num-inference-steps", "3", "--output-dir", str(tmp_path))
    mean_reward = float(re.search(r"mean reward: (-?\d+\.\d+) over 3 samples", out).group(1))
    saved = json.loads((tmp_path / "rewards.json").read_text())
    assert len(saved["rewards"]) == 3 and len(saved["prompts"]) == 3
    assert mean_reward == round(np.mean(saved["rewards"]), 4)
    # compressibility: each reward is minus the JPEG size the reward_info reports
    np.testing.assert_allclose(saved["rewards"], -np.asarray(saved["reward_info"]["jpeg_kb"]))
    grid = np.asarray(Image.open(tmp_path / "samples.png"))
    assert grid.shape[0] == 3 * (64 + 2)  # a row per sample, its prompt and reward beside it


def test_env_overhead_benchmark_prints_the_median_of_paired_ratios_with_both_times():
    out = run("-m", "benchmarks.env_overhead", "--num-envs", "2", "--num-inference-steps", "2", "--repeats", "3")
    result = json.loads(out[: out.rindex("}") + 1])
    assert result["env_seconds"] > 0 and result["direct_seconds"] > 0
    assert len(result["ratios"]) == 3 and all(r > 0 for r in result["ratios"])
    assert result["ratio"] == sorted(result["ratios"])[1]
    assert f"ratio {result['ratio']:.3f}" in out
