"""The benchmark runner on a one-cell, tiny-budget grid: the files it writes and their numbers."""

import dataclasses
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from benchmarks.run import PRESETS, VARIANTS, BenchConfig, Evaluator, cell_config, run, tables
from diffusion_gym import DiffusionPolicy
from diffusion_gym.prompts import load_prompts
from diffusion_gym.rewards import make_reward

TINY_TRAIN = {"num_envs": 4, "batches_per_epoch": 1, "samples_per_prompt": 2, "num_inference_steps": 3, "ddpo": {"per_prompt_min_count": 2, "train_batch_size": 4}}


def test_a_one_cell_grid_writes_results_tables_curves_and_grids(tmp_path, capsys):
    config = BenchConfig(
        tasks=("DiffusionCompressibility-v0",), algorithms=("ddpo-is",), seeds=(0,), budget=8, eval_every=1,
        eval_prompts=4, train=TINY_TRAIN, output_dir=tmp_path / "bench",
    )  # fmt: skip
    results = run(config)
    out = tmp_path / "bench"
    for name in ("results.json", "table.md", "curves.png", "samples/DiffusionCompressibility-v0.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["versions"]["torch"] and saved["config"]["budget"] == 8
    (cell,) = saved["cells"]
    assert cell["reward_queries"] == 8 and cell["train_seconds"] > 0
    # evaluation points: the start, then after each of the 2 epochs
    assert [e["reward_queries"] for e in cell["evaluations"]] == [0, 4, 8]
    start, end = cell["evaluations"][0], cell["evaluations"][-1]
    # compressibility's reward is -JPEG kB: the two evaluation numbers agree
    assert end["eval_train_reward"] == pytest.approx(-end["eval_train_jpeg_kb"])
    assert 0 <= end["eval_train_faithfulness"] <= 1 and "eval_held_out_reward" in end
    # every prompt's reward (the paired evaluation noise) and the backgrounds the captioner reads (the strategy found)
    assert np.mean(end["eval_train_rewards"]) == pytest.approx(end["eval_train_reward"]) and len(end["eval_train_rewards"]) == 4
    assert sum(end[f"eval_train_background_{b}"] for b in ("flat", "gradient", "striped", "checkered", "noisy")) == pytest.approx(1.0)
    assert start == {"reward_queries": 0, **saved["start"]["DiffusionCompressibility-v0"]}
    # the table shows the starting model first, then the algorithm's final figure
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| starting model") or line.startswith("| DDPO-IS")]
    assert rows[0] == f"| starting model | {start['eval_train_reward']:.4f} |"
    assert rows[1] == f"| DDPO-IS | {end['eval_train_reward']:.4f} |"
    assert "gain, held-out prompts" in table and table in capsys.readouterr().out
    assert np.isfinite(results["cells"][0]["evaluations"][-1]["eval_held_out_reward"])

    # a re-run skips the finished cell: nothing is trained again
    mtime = (out / "cells/DiffusionCompressibility-v0/ddpo-is/seed0/summary.json").stat().st_mtime
    again = run(config)
    assert again["cells"] == json.loads(json.dumps(results["cells"]))
    assert (out / "cells/DiffusionCompressibility-v0/ddpo-is/seed0/summary.json").stat().st_mtime == mtime


def test_bad_grids_are_refused():
    with pytest.raises(ValueError, match="Unknown algorithms"):
        BenchConfig(algorithms=("ppo",))
    with pytest.raises(ValueError, match="Unknown tasks"):
        BenchConfig(tasks=("DiffusionNope-v0",))
    assert set(PRESETS) == {"quick", "cpu", "paper"}


def test_a_variant_runs_its_algorithm_with_its_overrides_on_top_of_the_grids():
    config = BenchConfig(algorithms=("ddpo-is", "ddpo-is-kl"), train={"ddpo": {"clip_range": 5e-3}})
    plain = cell_config(config, "DiffusionCompressibility-v0", "ddpo-is", 1)
    kl = cell_config(config, "DiffusionCompressibility-v0", "ddpo-is-kl", 1)
    assert kl.algorithm == "ddpo-is" and kl.ddpo.estimator == "is"
    assert plain.ddpo.kl_coef == 0 and kl.ddpo.kl_coef == VARIANTS["ddpo-is-kl"][1]["ddpo"]["kl_coef"] > 0
    assert kl.ddpo.clip_range == plain.ddpo.clip_range == 5e-3  # the grid's overrides reach the variant too
    assert dataclasses.replace(kl.ddpo, kl_coef=0.0) == plain.ddpo
    assert kl.output_dir.parts[-2:] == ("ddpo-is-kl", "seed1") and plain.output_dir.parts[-2:] == ("ddpo-is", "seed1")


def test_the_alignment_task_is_evaluated_on_its_held_out_paraphrases_with_its_gold(tmp_path):
    """The embedded alignment task: held-out prompts are its own held-out set ("auto"), and every
    evaluation carries the gold judge beside the reward and faithfulness read in any wording."""
    config = BenchConfig(tasks=("DiffusionPromptAlignment-v0",), algorithms=("ddpo-is",), budget=4, eval_prompts=4, train=TINY_TRAIN, output_dir=tmp_path / "b")
    train_config = cell_config(config, "DiffusionPromptAlignment-v0", "ddpo-is", 0)
    envs = gym.make_vec("DiffusionPromptAlignment-v0", num_envs=1, model="embedded", device="cpu", **train_config.env_kwargs())
    evaluator = Evaluator(config, train_config, DiffusionPolicy.from_env(envs))
    assert set(evaluator.splits["held_out"]) <= set(load_prompts("toy_world_paraphrases_held_out"))
    metrics, images = evaluator(DiffusionPolicy.from_env(envs))
    rewards, info = make_reward("embedded_alignment_judge")(images["train"], evaluator.splits["train"])
    assert metrics["eval_train_reward"] == pytest.approx(rewards.mean()) and metrics["eval_train_gold"] == pytest.approx(info["gold"].mean())
    assert 0 <= metrics["eval_held_out_faithfulness"] <= 1 and "eval_held_out_gold" in metrics
    table = tables({"start": {"DiffusionPromptAlignment-v0": metrics}, "cells": []})
    assert "Gold reference" in table and f"{metrics['eval_train_gold']:.4f}" in table


def test_the_committed_quick_table_starts_from_the_shipped_model(tmp_path):
    """benchmarks/results/quick was made with the code and weights shipped now: its starting-model
    evaluation (the table's first row, every prompt's reward) is what the shipped model gives
    today on the same prompts and noise."""
    from benchmarks.run import start_of_task

    committed = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "quick" / "results.json").read_text())
    config = PRESETS["quick"][1]
    assert committed["config"]["tasks"] == list(config.tasks) and committed["config"]["eval_prompts"] == config.eval_prompts
    for task in config.tasks:
        fresh, _ = start_of_task(config, task, tmp_path)
        saved = committed["start"][task]
        np.testing.assert_allclose(fresh["eval_train_rewards"], saved["eval_train_rewards"], rtol=0, atol=0.01, err_msg=task)  # a pixel rounding the other way moves a JPEG by bytes
        assert fresh["eval_train_reward"] == pytest.approx(saved["eval_train_reward"], abs=1e-3)


def test_two_workers_run_the_cells_side_by_side_to_the_same_results(tmp_path):
    config = BenchConfig(
        tasks=("DiffusionIncompressibility-v0",), algorithms=("ddpo-is", "rwr-exp"), seeds=(0,), budget=4, eval_every=1,
        eval_prompts=4, held_out_prompts=None, train=TINY_TRAIN, output_dir=tmp_path / "one",
    )  # fmt: skip
    alone = run(config)
    together = run(dataclasses.replace(config, workers=2, output_dir=tmp_path / "two"))
    assert [(c["algorithm"], c["reward_queries"]) for c in together["cells"]] == [("ddpo-is", 4), ("rwr-exp", 4)]
    for a, b in zip(alone["cells"], together["cells"]):  # one thread a worker: the kernels may round differently
        assert b["evaluations"][-1]["eval_train_reward"] == pytest.approx(a["evaluations"][-1]["eval_train_reward"], abs=0.01)
    assert (tmp_path / "two" / "table.md").is_file()
