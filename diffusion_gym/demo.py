"""`diffusion-gym-demo`: one batch of denoising episodes through the vector env, scored and saved.

    diffusion-gym-demo                                   # the embedded model, offline, seconds on a CPU
    diffusion-gym-demo --model CompVis/stable-diffusion-v1-4 --device cuda
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
from diffusion_gym.images import prompt_grid
from diffusion_gym.policy import DiffusionPolicy
from diffusion_gym.rollout import rollout


@dataclass
class DemoConfig:
    """Sample one batch of episodes with the model's own policy and report the rewards."""

    env_id: str = "DiffusionCompressibility-v0"
    """Registered environment id."""
    model: str = "embedded"
    """Hub id, local pipeline folder, "embedded" (shipped) or "tiny-random" (random, for plumbing)."""
    num_envs: int = 8
    """Episodes sampled in one batch."""
    num_inference_steps: int | None = None
    """Sampler steps per episode; None: the task's for the model (embedded: 20, else the paper's 50)."""
    guidance_scale: float | None = None
    """Classifier-free guidance weight; None: the policy's for the model (embedded: 3.0, else 5.0)."""
    guidance_interval: tuple[int, int] | None = None
    """Timesteps (low, high) that guidance applies to; None: the policy's for the model (embedded: (600, 999), else every step)."""
    seed: int = 0
    """Seeds the prompts, the initial noise and the policy's noise."""
    device: str = "auto"
    """"auto", "cpu" or "cuda"."""
    output_dir: Path = Path("outputs/demo")
    """Where the image grid (samples.png) and the rewards (rewards.json) go."""


def run(config: DemoConfig) -> dict:
    envs = gym.make_vec(config.env_id, num_envs=config.num_envs, model=config.model, num_inference_steps=config.num_inference_steps, device=config.device)
    sampling = {"guidance_scale": config.guidance_scale, "guidance_interval": config.guidance_interval}
    policy = DiffusionPolicy.from_env(envs, **{k: v for k, v in sampling.items() if v is not None})
    generator = torch.Generator(policy.device).manual_seed(config.seed)
    start = time.perf_counter()
    batch = rollout(envs, policy, seed=config.seed, generator=generator, keep_steps=False)
    seconds = time.perf_counter() - start

    config.output_dir.mkdir(parents=True, exist_ok=True)
    rewards = batch.rewards.numpy().astype(np.float64)
    rows = [(f"{r:+.3f}  {p}", image[None]) for r, p, image in zip(rewards, batch.prompts, batch.images)]
    prompt_grid(rows).save(config.output_dir / "samples.png")
    result = {
        "config": {k: str(v) for k, v in asdict(config).items()},
        "prompts": batch.prompts,
        "rewards": rewards.tolist(),
        "mean_reward": float(rewards.mean()),
        "reward_info": {k: v.tolist() for k, v in batch.reward_info.items()},
        "seconds": seconds,
    }
    (config.output_dir / "rewards.json").write_text(json.dumps(result, indent=2) + "\n")
    for prompt, r in zip(result["prompts"], result["rewards"]):
        print(f"  {r:+9.4f}  {prompt}")
    print(f"mean reward: {result['mean_reward']:.4f} over {config.num_envs} samples, {seconds:.2f} s")
    print(f"wrote {config.output_dir / 'samples.png'} and {config.output_dir / 'rewards.json'}")
    envs.close()
    return result


def main() -> None:
    run(tyro.cli(DemoConfig))


if __name__ == "__main__":
    main()
