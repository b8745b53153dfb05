"""The figures the embedded model's four tasks are judged by, measured through the environments.

    python -m embedded_tools.evaluate_tasks          # writes benchmarks/results/embedded_tasks.json

For the starting model (the shipped weights, no fine-tuning), at two sampler settings: the
embedded training presets' (10 steps, no guidance: where fine-tuning starts) and the model's
own defaults (20 steps, guidance 3 at t >= 600):
- every task: the mean reward on its training prompts; each id runs a whole episode offline;
- aesthetic: the predictor's Pearson and Spearman correlation with the gold (the hidden taste) on
  samples never rated; the mean gold on the training prompts against the best and worst 10 % of
  ground-truth renders (where the start sits between them); the gold's correlation with JPEG size;
- alignment: the judge's mean on the paraphrased training and held-out prompts and on the
  canonical prompts; the gold judge's agreement with the training judge.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tyro

import diffusion_gym  # noqa: F401  (registers the ids)
from diffusion_gym.embedded import world
from embedded_tools.evaluate import sample
from diffusion_gym.embedded.taste import taste
from embedded_tools.train_aesthetic import rank_correlation
from diffusion_gym.policy import DiffusionPolicy
from diffusion_gym.prompts import load_prompts
from diffusion_gym.rewards import jpeg_size_kb, make_reward

TASK_IDS = ("DiffusionAesthetic-v0", "DiffusionCompressibility-v0", "DiffusionIncompressibility-v0", "DiffusionPromptAlignment-v0")
SETTINGS = {
    "presets (10 steps, no guidance)": {"num_inference_steps": 10, "guidance_scale": 1.0},
    "model defaults (20 steps, guidance 3 at t >= 600)": {},
}


@dataclass
class TasksEvalConfig:
    """Evaluation of the embedded tasks at the start of fine-tuning."""

    samples_per_prompt: int = 2
    """Samples per training prompt (the 204 of each task), each setting."""
    renders: int = 4000
    """Ground-truth renders for the taste's best and worst 10 %."""
    seed: int = 0
    """Seeds the renders and the sampling noise (the aesthetic predictor's test: seed + 2,000,000)."""
    output: Path = Path("benchmarks/results/embedded_tasks.json")
    """Where the figures go."""


def main(config: TasksEvalConfig) -> dict:
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    results: dict = {"threads": torch.get_num_threads()}

    renders = world.sample_batch(config.renders, rng, world.TRAIN).images
    render_taste = np.sort(taste(renders))
    decile = len(render_taste) // 10
    best, worst = float(render_taste[-decile:].mean()), float(render_taste[:decile].mean())
    results["aesthetic_renders"] = {"n": config.renders, "gold_best_10pct": best, "gold_worst_10pct": worst, "gold_mean": float(render_taste.mean())}

    aesthetic, judge, judge_gold = make_reward("embedded_aesthetic"), make_reward("embedded_alignment_judge"), make_reward("embedded_alignment_gold")
    for name, settings in SETTINGS.items():
        figures: dict = {}
        for env_id in TASK_IDS:
            steps = {k: v for k, v in settings.items() if k == "num_inference_steps"}
            envs = gym.make_vec(env_id, num_envs=64, model="embedded", device="cpu", **steps)
            policy = DiffusionPolicy.from_env(envs, **{k: v for k, v in settings.items() if k != "num_inference_steps"})

            def samples(prompts: list[str], seed: int) -> np.ndarray:
                return sample(envs, policy, prompts, seed=seed, desc=env_id.removeprefix("Diffusion").removesuffix("-v0"))

            prompts = [p for p in envs.unwrapped.prompts for _ in range(config.samples_per_prompt)]
            images = samples(prompts, config.seed)
            rewards, info = envs.unwrapped.score(images, prompts)
            figures[env_id] = {"reward_mean": float(rewards.mean()), "samples": len(images)}
            if env_id == "DiffusionAesthetic-v0":
                gold = info["gold"]
                test = samples(prompts, config.seed + 2_000_000)  # other noise than the rating set's (seeds 0 and 1,000,000)
                predicted, test_gold = aesthetic(test, prompts)[0], taste(test)
                figures[env_id].update(
                    gold_mean=float(gold.mean()),
                    start_position=(float(gold.mean()) - worst) / (best - worst),  # 0: the worst 10 %, 1: the best 10 %
                    predictor_pearson=float(np.corrcoef(predicted, test_gold)[0, 1]),
                    predictor_spearman=rank_correlation(predicted, test_gold),
                    gold_jpeg_pearson=float(np.corrcoef(gold, jpeg_size_kb(images))[0, 1]),
                )
            if env_id == "DiffusionPromptAlignment-v0":
                gold = info["gold"]
                figures[env_id].update(gold_mean=float(gold.mean()), judges_pearson=float(np.corrcoef(rewards, gold)[0, 1]), judges_mean_abs_difference=float(np.abs(rewards - gold).mean()))
                for split in ("toy_world_paraphrases_held_out", "toy_world"):
                    split_prompts = [p for p in load_prompts(split) for _ in range(config.samples_per_prompt)]
                    split_images = samples(split_prompts, config.seed)
                    figures[env_id][f"reward_mean_{split}"] = float(judge(split_images, split_prompts)[0].mean())
                    figures[env_id][f"gold_mean_{split}"] = float(judge_gold(split_images, split_prompts)[0].mean())
        results[name] = figures
    results["seconds"] = time.perf_counter() - start
    config.output.parent.mkdir(parents=True, exist_ok=True)
    config.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(tyro.cli(TasksEvalConfig))
