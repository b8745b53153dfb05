"""diffusion-gym-train: a smoke test on its printed numbers, bad configs, and SIGKILL + resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.ddpo import DDPOConfig
from agents.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TINY = ["--model", "tiny-random-pixel", "--num-inference-steps", "2", "--num-envs", "4", "--batches-per-epoch", "1",
        "--ddpo.train-batch-size", "4", "--ddpo.clip-range", "0.2", "--ddpo.log-prob-reduce", "sum", "--no-tensorboard", "--no-progress",
        "--reward", "jpeg_incompressibility", "--prompts", "toy_world", "--samples-per-prompt", "1"]  # fmt: skip


def cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "agents.train", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def metrics(folder):
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]


def test_cli_prints_the_reward_it_logged(tmp_path):
    out, err = cli("embedded-ddpo-is", *TINY, "--epochs", "2", "--output-dir", str(tmp_path)).communicate(timeout=300)
    assert err.count("Traceback") == 0, err[-2000:]
    assert "warn" not in err.lower() and "should be kept in float32" not in err, err[-2000:]  # nothing but our own output
    first, last, queries = re.search(r"ddpo-is: training batches' mean reward (-?\d+\.\d+) \(epoch 0\) -> (-?\d+\.\d+) \(epoch 1\) after (\d+) reward queries", out).groups()
    logged = metrics(tmp_path)
    assert int(queries) == 8 == logged[-1]["reward_queries"]
    assert float(first) == round(logged[0]["reward_mean"], 4) and float(last) == round(logged[-1]["reward_mean"], 4)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["algorithm"] == "ddpo-is" and config["ddpo"]["estimator"] == "is"
    assert (tmp_path / "final").is_dir()


def test_grpo_runs_on_a_flow_model_with_group_normalised_advantages(tmp_path):
    flow = [a if a != "tiny-random-pixel" else "tiny-random-pixel-flow" for a in TINY]
    flow[flow.index("--samples-per-prompt") + 1] = "2"
    out, err = cli("embedded-flow-grpo", *flow, "--epochs", "1", "--sde-window", "0", "1", "--output-dir", str(tmp_path)).communicate(timeout=300)
    assert err.count("Traceback") == 0, err[-2000:]
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["algorithm"], config["ddpo"]["estimator"], config["ddpo"]["per_prompt_buffer"], config["ddpo"]["per_prompt_min_count"]) == ("grpo", "is", 2, 2)
    assert config["sde_window"] == [0, 1] and config["model"] == "tiny-random-pixel-flow"
    assert metrics(tmp_path)[-1]["reward_queries"] == 4 and (tmp_path / "final").is_dir()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"algorithm": "ppo"}, "Unknown algorithm"),
        ({"ddpo": DDPOConfig(train_batch_size=5)}, "divisible"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"algorithm": "grpo", "samples_per_prompt": 1}, "samples_per_prompt must be >= 2"),
    ],
)
def test_bad_configs_fail_at_start(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)
    with pytest.raises(ValueError, match="ddpo.learning_rate must be > 0"):
        TrainConfig(ddpo=DDPOConfig(learning_rate=-1.0))


def test_cli_rejects_a_negative_learning_rate_before_any_work(tmp_path):
    out, err = cli("embedded-ddpo-is", *TINY, "--ddpo.learning-rate", "-0.001", "--output-dir", str(tmp_path)).communicate(timeout=120)
    assert "learning_rate must be > 0" in err
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    whole = tmp_path_factory.mktemp("whole")
    cli("embedded-ddpo-sf", *TINY, "--epochs", "6", "--output-dir", str(whole)).communicate(timeout=300)
    reference = metrics(whole)
    assert [r["epoch"] for r in reference] == list(range(6))
    return reference


@pytest.mark.parametrize("save_every, kill_after, checkpointed", [(4, 2, False), (2, 3, True)], ids=["before-first-checkpoint", "after-first-checkpoint"])
def test_a_killed_run_resumes_to_the_same_metrics_as_an_uninterrupted_one(uninterrupted, tmp_path, save_every, kill_after, checkpointed):
    """Killed (SIGKILL) after `kill_after` epochs were logged: before its first checkpoint the
    same command starts afresh, after it, it resumes; either way each epoch is logged once."""
    args = ["embedded-ddpo-sf", *TINY, "--epochs", "6", "--save-every", str(save_every), "--output-dir", str(tmp_path)]
    process = cli(*args)
    deadline = time.time() + 240
    while time.time() < deadline:
        if (tmp_path / "metrics.jsonl").exists() and len((tmp_path / "metrics.jsonl").read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert (tmp_path / "checkpoint.pt").exists() == checkpointed, "killed at another point than this case is about"
    assert kill_after <= len(metrics(tmp_path)) < 6
    out, err = cli(*args).communicate(timeout=300)
    assert ("resuming" in out) == checkpointed, err[-2000:]
    assert metrics(tmp_path) == uninterrupted


def test_the_gold_reference_is_logged_beside_the_reward(tmp_path):
    """On a task with a gold reference the run logs gold_mean per epoch: here the aesthetic task
    trained on its own gold, so that the two must be equal."""
    out, err = cli("embedded-ddpo-is", *TINY, "--epochs", "1", "--env-id", "DiffusionAesthetic-v0", "--reward", "embedded_aesthetic_gold", "--output-dir", str(tmp_path)).communicate(timeout=300)
    assert err.count("Traceback") == 0, err[-2000:]
    (logged,) = metrics(tmp_path)
    assert logged["gold_mean"] == pytest.approx(logged["reward_mean"], abs=1e-5) and 0 <= logged["gold_mean"] <= 10
