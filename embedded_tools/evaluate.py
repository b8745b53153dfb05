"""The figures the embedded model is judged by, measured through the environment.

    python -m embedded_tools.evaluate                  # the shipped model, its defaults

Prints and writes (`--output-dir`, default outputs/embedded_eval/):
- the captioner's per-attribute accuracy on fresh ground-truth renders of held-out and of
  training combinations;
- the model's samples (through the env: DDIM, eta 1, the model's steps and guidance) read by the
  captioner: per-attribute accuracy against the prompt, on training and held-out prompts;
- the JPEG size (quality 95) of the samples per training prompt: the most and least compressible
  prompts, their ratio, and the mean;
- the time to sample 64 images, and the parameter counts;
- a sample grid (a row per prompt, the prompt beside it): samples.png.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tyro

import diffusion_gym  # noqa: F401  (registers the ids)
from diffusion_gym.embedded import world
from diffusion_gym.embedded.captioner import attribute_accuracy, load_captioner
from diffusion_gym.images import prompt_grid
from diffusion_gym.policy import DiffusionPolicy
from diffusion_gym.rewards import jpeg_size_kb
from diffusion_gym.rollout import rollout


@dataclass
class EvalConfig:
    """Evaluation of an embedded-world model."""

    model: str = "embedded"
    """The model to evaluate ("embedded" or a pipeline folder of the same world)."""
    captioner: Path | None = None
    """Captioner folder; None: the one shipped with the embedded model."""
    num_inference_steps: int | None = None
    """Sampler steps; None: the task's for the model."""
    guidance_scale: float | None = None
    """Classifier-free guidance; None: the policy's for the model."""
    guidance_interval: tuple[int, int] | None = None
    """Timesteps (low, high) that guidance applies to; None: the policy's for the model."""
    samples_per_prompt: int = 3
    """Samples drawn for each training and each held-out prompt."""
    renders: int = 2000
    """Ground-truth renders per split for the captioner's accuracy."""
    batch_size: int = 64
    """Episodes per batch (num_envs)."""
    seed: int = 0
    """Seeds renders, prompts order and sampling."""
    output_dir: Path = Path("outputs/embedded_eval")
    """Where results.json and samples.png go."""
    grid_prompts: int = 8
    """Rows of the sample grid (half training, half held-out prompts)."""


def sample(envs, policy: DiffusionPolicy, prompts: list[str], seed: int, desc: str = "sampling") -> np.ndarray:
    """One image per prompt, through the vector env in batches of `envs.num_envs`, (N, H, W, 3)
    uint8; the same prompts and seed give the same images. Not scored: callers score them as
    they need (`envs.unwrapped.score`)."""
    generator = torch.Generator(policy.device).manual_seed(seed)
    return rollout(envs, policy, prompts=prompts, seed=seed, generator=generator, score=False, keep_steps=False, progress=desc).images


def main(config: EvalConfig) -> dict:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    captioner = load_captioner(config.captioner)
    results: dict = {"config": {k: str(v) for k, v in asdict(config).items()}}

    # 1. the captioner on ground truth it never saw (held-out combinations, fresh renders)
    results["captioner"] = {}
    for split, combinations in (("held_out", world.HELD_OUT), ("train", world.TRAIN)):
        batch = world.sample_batch(config.renders, rng, combinations)
        results["captioner"][split] = attribute_accuracy(captioner.read(batch.images), batch.labels)

    # 2. samples through the env with the model's own defaults
    steps = {} if config.num_inference_steps is None else {"num_inference_steps": config.num_inference_steps}
    sampling = {k: v for k, v in (("guidance_scale", config.guidance_scale), ("guidance_interval", config.guidance_interval)) if v is not None}
    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=config.batch_size, model=config.model, device="cpu", **steps)
    policy = DiffusionPolicy.from_env(envs, **sampling)
    base = envs.unwrapped
    unet_params = sum(p.numel() for p in base.model.unet.parameters())
    text_params = sum(p.numel() for p in base.model.text_encoder.parameters())
    results["parameters"] = {"unet": unet_params, "text_encoder": text_params, "total": unet_params + text_params}
    results["sampling"] = {
        "num_inference_steps": base.num_steps, "guidance_scale": policy.guidance_scale, "guidance_interval": policy.guidance_interval,
        "sampler": type(policy.sampler).__name__, "noise": getattr(policy.sampler, "eta", getattr(policy.sampler, "noise_level", None)),
    }  # fmt: skip

    samples = {}
    for split, prompts in (("train", world.TRAIN_PROMPTS), ("held_out", world.HELD_OUT_PROMPTS)):
        prompt_list = [p for p in prompts for _ in range(config.samples_per_prompt)]
        images = sample(envs, policy, prompt_list, seed=config.seed + (0 if split == "train" else 10_000), desc=f"{split} prompts")
        labels = world.labels_of([world.parse_caption(p) for p in prompt_list])
        samples[split] = (prompt_list, images)
        read = captioner.read(images)
        results[f"samples_{split}"] = {
            "n": len(images),
            "attribute_accuracy": attribute_accuracy(read, labels),
            "all_four_right": float((read == labels).all(axis=1).mean()),
        }

    # 3. JPEG sizes per training prompt
    prompt_list, images = samples["train"]
    sizes = jpeg_size_kb(images)
    per_prompt = {p: float(sizes[[q == p for q in prompt_list]].mean()) for p in world.TRAIN_PROMPTS}
    ordered = sorted(per_prompt.items(), key=lambda kv: kv[1])
    truth = jpeg_size_kb(world.render([world.parse_caption(p) for p in prompt_list], rng))
    results["jpeg_kb"] = {
        "most_compressible_prompt": ordered[0],
        "least_compressible_prompt": ordered[-1],
        "ratio_least_to_most": ordered[-1][1] / ordered[0][1],
        "mean_over_train_prompts": float(np.mean(list(per_prompt.values()))),
        "ground_truth_mean": float(truth.mean()),
        "per_background": {
            bg: float(sizes[[world.parse_caption(p)[3] == bg for p in prompt_list]].mean()) for bg in world.ATTRIBUTES["background"]
        },
    }

    # 4. time to sample 64 images (one batch of 64, the model's steps and guidance)
    timing_envs = envs if envs.num_envs == 64 else gym.make_vec("DiffusionCompressibility-v0", num_envs=64, model=config.model, device="cpu", **steps)
    start = time.perf_counter()
    sample(timing_envs, DiffusionPolicy.from_env(timing_envs, **sampling), list(world.TRAIN_PROMPTS[:64]), seed=config.seed, desc="timing")
    results["seconds_to_sample_64"] = time.perf_counter() - start
    results["torch_threads"] = torch.get_num_threads()

    # 5. the grid: half training prompts, half held-out, six samples each
    half = config.grid_prompts // 2
    grid_prompts = [world.TRAIN_PROMPTS[i] for i in rng.choice(len(world.TRAIN_PROMPTS), half, replace=False)]
    grid_prompts += [world.HELD_OUT_PROMPTS[i] for i in rng.choice(len(world.HELD_OUT_PROMPTS), config.grid_prompts - half, replace=False)]
    grid_images = sample(envs, policy, [p for p in grid_prompts for _ in range(6)], seed=config.seed + 20_000, desc="grid")
    rows = [(p + (" (held out)" if p in world.HELD_OUT_PROMPTS else ""), grid_images[6 * i : 6 * i + 6]) for i, p in enumerate(grid_prompts)]
    config.output_dir.mkdir(parents=True, exist_ok=True)
    prompt_grid(rows).save(config.output_dir / "samples.png")

    (config.output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "config"}, indent=2))
    return results


if __name__ == "__main__":
    main(tyro.cli(EvalConfig))
