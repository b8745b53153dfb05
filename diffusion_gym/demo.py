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
from tqdm import tqdm

from diffusion_gym.images import prompt_grid
from diffusion_gym.policy import DiffusionPolicy


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
    """Sampler steps per episode; None: the model's default (embedded: 20), else the paper's 50."""
    guidance_scale: float | None = None
    """Classifier-free guidance weight; None: the model's default (embedded: 3.0), else 5.0."""
    guidance_interval: tuple[int, int] | None = None
    """Timesteps (low, high) that guidance applies to; None: the model's default, else every step."""
    seed: int = 0
    """Seeds the prompts, the initial noise and the policy's noise."""
    device: str = "auto"
    """"auto", "cpu" or "cuda"."""
    output_dir: Path = Path("outputs/demo")
    """Where the image grid (samples.png) and the rewards (rewards.json) go."""


def run(config: DemoConfig) -> dict:
    envs = gym.make_vec(
        config.env_id,
        num_envs=config.num_envs,
        model=config.model,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        guidance_interval=config.guidance_interval,
        device=config.device,
    )
    policy = DiffusionPolicy.from_env(envs)
    generator = torch.Generator(policy.device).manual_seed(config.seed)
    obs, _ = envs.reset(seed=config.seed)
    start = time.perf_counter()
    for _ in tqdm(range(envs.unwrapped.num_steps), desc="denoising", unit="step"):
        action, _ = policy.act(obs, generator=generator)
        obs, reward, terminated, _, info = envs.step(action)
    seconds = time.perf_counter() - start
    assert terminated.all(), "the episode should end after num_inference_steps steps"

    config.output_dir.mkdir(parents=True, exist_ok=True)
    rows = [(f"{r:+.3f}  {p}", image[None]) for r, p, image in zip(np.asarray(reward), obs["prompt"], info["images"])]
    prompt_grid(rows).save(config.output_dir / "samples.png")
    result = {
        "config": {k: str(v) for k, v in asdict(config).items()},
        "prompts": list(obs["prompt"]),
        "rewards": [float(r) for r in reward],
        "mean_reward": float(np.mean(reward)),
        "reward_info": {k: np.asarray(v).tolist() for k, v in info["reward_info"].items()},
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
