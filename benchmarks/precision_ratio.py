"""How far from 1 the first DDPO-IS importance ratio lands when sampling and training run in lower
precision. Before any update the policy that trains is the policy that sampled, so the exact
ratio π_θ(a|s) / π_old(a|s) is 1; what the recomputed log-probs differ by is rounding. A PPO
clip range smaller than that rounding clips samples for no reason (ddpo-pytorch's 1e-4 with
per-dimension mean log-probs; the paper's setting).

    python -m benchmarks.precision_ratio                  # tiny-random and the embedded model, fp32 and bf16 (CPU)
    python -m benchmarks.precision_ratio --device cuda    # adds fp16 (autocast needs CUDA)

For each model and precision it prints, over every step of a batch: |log-ratio| median, 99th
percentile and max, with log-probs summed over dimensions and averaged over them, and the share
of steps a clip range would clip at the first update.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tyro

import diffusion_gym  # noqa: F401  (registers the ids)
from diffusion_gym.rollout import rollout
from diffusion_gym.policy import DiffusionPolicy

CLIP_RANGES = (1e-4, 1e-3, 1e-2, 0.2)


@dataclass
class PrecisionRatioConfig:
    """The first DDPO-IS ratio under each precision."""

    models: tuple[str, ...] = ("tiny-random", "embedded")
    device: str = "cpu"
    num_envs: int = 8
    num_inference_steps: int = 10
    guidance_scale: float = 3.0
    output: Path | None = Path(__file__).parent / "results" / "precision_ratio.json"
    """Where the table goes; None: print only."""


PRECISIONS = {  # name: (dtype of the frozen weights, autocast dtype of the training pass or None)
    "fp32": ("float32", None),
    "bf16": ("bfloat16", "bfloat16"),
    "fp32 sampling, bf16 training": ("float32", "bfloat16"),
    "fp16": ("float16", "float16"),
    "fp32 sampling, fp16 training": ("float32", "float16"),
}


def first_ratios(model: str, precision: str, config: PrecisionRatioConfig) -> dict:
    """|log π_new − log π_old| for every step of one batch, sampled and recomputed as DDPO does
    in `precision` (`PRECISIONS`: the frozen weights' dtype, and the training pass's autocast:
    `DDPOConfig.mixed_precision`)."""
    dtype, autocast_dtype = PRECISIONS[precision]
    envs = gym.make_vec(
        "DiffusionCompressibility-v0", num_envs=config.num_envs, model=model, num_inference_steps=config.num_inference_steps,
        device=config.device, dtype=dtype, array_type="torch",
    )  # fmt: skip
    policy = DiffusionPolicy.from_env(envs, guidance_scale=config.guidance_scale)
    policy.enable_lora(rank=4, seed=0)  # B = 0: the policy is still the sampling one
    out = {}
    for reduce in ("sum", "mean"):  # DDPOConfig.log_prob_reduce: "mean" divides the sums by the dimensions
        dims = int(np.prod(policy.model.sample_shape)) if reduce == "mean" else 1
        envs.reset(seed=0)
        batch = rollout(envs, policy, num_batches=1, generator=torch.Generator().manual_seed(0))
        autocast = nullcontext() if autocast_dtype is None else torch.autocast(policy.device.type, dtype=getattr(torch, autocast_dtype))
        deltas = []
        with torch.no_grad(), autocast:
            for step in range(batch.log_probs.shape[1]):
                index = torch.arange(len(batch))
                steps = torch.full((len(batch),), step)
                new = policy(batch.observation(index, steps), action=batch.action(index, steps)).log_prob
                deltas.append(((new.float() - batch.log_probs[index, steps].float()) / dims).abs().cpu())
        delta = torch.cat(deltas).double().numpy()
        ratio_gap = np.abs(np.expm1(delta))
        out[reduce] = {
            "median": float(np.median(delta)), "p99": float(np.percentile(delta, 99)), "max": float(delta.max()),
            "clipped_share": {str(c): float((ratio_gap > c).mean()) for c in CLIP_RANGES},
        }  # fmt: skip
    return out


def main(config: PrecisionRatioConfig) -> dict:
    torch.manual_seed(0)
    precisions = [p for p in PRECISIONS if config.device.startswith("cuda") or "fp16" not in p]
    results = {model: {p: first_ratios(model, p, config) for p in precisions} for model in config.models}
    lines = ["| model | precision | log-probs | \\|log-ratio\\| median | p99 | max | " + " | ".join(f"share clipped at {c:g}" for c in CLIP_RANGES) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(CLIP_RANGES)]  # fmt: skip
    for model, by_precision in results.items():
        for precision, by_reduce in by_precision.items():
            for reduce, r in by_reduce.items():
                shares = " | ".join(f"{r['clipped_share'][str(c)]:.3f}" for c in CLIP_RANGES)
                lines.append(f"| {model} | {precision} | {reduce} | {r['median']:.2e} | {r['p99']:.2e} | {r['max']:.2e} | {shares} |")
    table = "\n".join(lines)
    print(table)
    if config.output is not None:
        config.output.parent.mkdir(parents=True, exist_ok=True)
        config.output.write_text(json.dumps({"config": {k: str(v) for k, v in vars(config).items()}, "results": results}, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main(tyro.cli(PrecisionRatioConfig))
