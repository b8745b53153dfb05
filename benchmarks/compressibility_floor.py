"""How far can compressibility go on the embedded model? Reference JPEG sizes to judge a run by.

A policy trained for compressibility on the embedded model learns to draw a uniform image.
What JPEG size is left then depends on the sampler's last steps:
with `min_step_std_ratio` > 0 the near-deterministic last steps get no gradient, so they stay
close to the starting model's, and they leave its denoising residue on the image. This script
measures, on the benchmark's evaluation prompts:

- `start`: the starting model's samples of those prompts with the benchmark's evaluation noise
  (what a `diffusion-gym-bench` grid reports as the start);
- `ground truth`: the world's own renders of those prompts, and the same objects on flat
  backgrounds (the cleanest image that still shows the prompt's object);
- `uniform`: a perfectly uniform image (the JPEG header and one flat block per 8×8 tile);
- `last k steps untrained`: uniform images in the world's background colours, noised to the
  level of the k-th step from the end and finished by the starting model's last k steps (the
  env's sampler, eta 1): what a policy that draws perfect uniform images everywhere it is
  trained would end at. The trained policy shares its LoRA weights between steps, so this is an
  estimate of where DDPO levels off, not a bound;
- `black, last k steps untrained`: the same from a black image. Its residue is clipped at 0
  wherever it would go below, so about half of it is gone: a policy that learns to draw black
  goes lower than one that draws the muted background colours.

    python -m benchmarks.compressibility_floor
    python -m benchmarks.compressibility_floor --num-inference-steps 20
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tyro

import diffusion_gym  # noqa: F401  (registers the ids)
from diffusion_gym.embedded import world
from embedded_tools.evaluate import sample
from diffusion_gym.policy import DiffusionPolicy
from diffusion_gym.rewards.jpeg import jpeg_size_kb


@dataclass
class FloorConfig:
    """Reference JPEG sizes for compressibility on the embedded model."""

    num_inference_steps: int = 10
    """Sampler steps (the `embedded-*` presets: 10)."""
    eval_prompts: int = 64
    """Training prompts, spread over the prompt set as the benchmark's evaluation picks them."""
    min_step_std_ratio: float = 0.2
    """The DDPO preset's: steps with σ_t below this fraction of the largest are not trained."""
    eval_seed: int = 1234
    """The benchmark's evaluation seed (`BenchConfig.eval_seed`), for the starting samples."""
    seed: int = 0
    """Seeds the renders and the noise of the uniform images."""
    output: Path | None = None
    """Also write the figures as JSON here."""


def _uniform_images(n: int) -> torch.Tensor:
    """(n, 3, 32, 32) uniform images in [-1, 1], the world's background colours in turn."""
    colours = torch.as_tensor(world.BACKGROUND_RGB)[torch.arange(n) % len(world.BACKGROUND_RGB)] / 127.5 - 1
    return colours[:, :, None, None].expand(n, 3, world.IMAGE_SIZE, world.IMAGE_SIZE).contiguous()


@torch.no_grad()
def _finish(policy: DiffusionPolicy, x: torch.Tensor, timesteps: torch.Tensor, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
    """Run the sampler's steps `timesteps` from x."""
    for t in timesteps:
        x = policy.sampler.step(policy.predict(x, t.expand(len(x)), prompts), t, x, generator=generator).prev_sample
    return x


def floor(config: FloorConfig) -> dict[str, float]:
    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=min(32, config.eval_prompts), model="embedded", num_inference_steps=config.num_inference_steps)
    policy = DiffusionPolicy.from_env(envs, guidance_scale=1.0)
    all_prompts = envs.unwrapped.prompts
    prompts = [all_prompts[i] for i in np.linspace(0, len(all_prompts) - 1, config.eval_prompts).round().astype(int)]  # as the benchmark's evaluation
    timesteps, sampler = policy.sampler.timesteps, policy.sampler
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    def kb(x: torch.Tensor) -> float:
        return float(jpeg_size_kb(policy.model.decode(x)).mean())

    combinations = [world.parse_caption(p) for p in prompts]
    figures = {
        "start": float(jpeg_size_kb(sample(envs, policy, prompts, seed=config.eval_seed)).mean()),
        "ground truth": float(jpeg_size_kb(world.render(combinations, rng)).mean()),
        "ground truth, flat backgrounds": float(jpeg_size_kb(world.render([(*c[:3], "flat") for c in combinations], rng)).mean()),
    }
    uniform = _uniform_images(len(prompts))
    figures["uniform"] = kb(uniform)
    for name, images in (("", uniform), ("black, ", -torch.ones_like(uniform))):
        for k in range(1, min(4, len(timesteps)) + 1):
            first = timesteps[len(timesteps) - k]
            noised = sampler.scheduler.add_noise(images, torch.randn(images.shape, generator=generator), first.expand(len(images)))
            figures[f"{name}last {k} steps untrained"] = kb(_finish(policy, noised, timesteps[len(timesteps) - k :], prompts, generator))

    relative = sampler.relative_std(timesteps)
    untrained = int((relative < config.min_step_std_ratio).sum())
    print(f"σ_t / max σ of the {len(timesteps)} steps: {', '.join(f'{float(r):.3f}' for r in relative)}")
    print(f"min_step_std_ratio {config.min_step_std_ratio}: the last {untrained} steps get no gradient\n")
    print("| images | mean JPEG (kB) | change from start |\n|---|---|---|")
    for name, value in figures.items():
        mark = "  ← this ratio's level" if name.endswith(f"last {untrained} steps untrained") else ""
        print(f"| {name} | {value:.3f} | {value / figures['start'] - 1:+.1%} |{mark}")
    if config.output:
        config.output.parent.mkdir(parents=True, exist_ok=True)
        config.output.write_text(json.dumps({"config": {**vars(config), "output": str(config.output)}, "untrained_steps": untrained, "kb": figures}, indent=1))
    return figures


def main() -> None:
    floor(tyro.cli(FloorConfig))


if __name__ == "__main__":
    main()
