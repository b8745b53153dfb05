"""Time one DDPO epoch (collect through the env + update) against the same UNet work run in
isolation: the sampling forward passes and the training forward/backward passes (on merged LoRA
weights, as the policy runs them; as many (sample, step) pairs a pass as the agent puts in one), on
tensors of the same shapes with nothing around them. Each round times one epoch and its isolated
passes back to back (which goes first alternating), so both see the same state of a shared
machine; prints the median of the rounds' ratios epoch / isolated (target <= 1.03), and their mean
with its standard error: on a shared machine with 2 threads single rounds spread by several
per cent, so a run needs many of them to resolve a few per cent.

    python -m benchmarks.ddpo_epoch_overhead                    # the embedded model on the CPU
    python -m benchmarks.ddpo_epoch_overhead --model tiny-random --num-inference-steps 20
    python -m benchmarks.ddpo_epoch_overhead --channels-last      # or --compile: the epoch with a lever
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass

import gymnasium as gym
import torch
import tyro

import diffusion_gym  # noqa: F401  (registers the ids)
from diffusion_gym.rollout import rollout
from agents.ddpo import DDPO, DDPOConfig
from diffusion_gym.policy import DiffusionPolicy


@dataclass
class EpochOverheadConfig:
    """DDPO epoch vs isolated UNet passes."""

    model: str = "embedded"
    """Model to time."""
    num_envs: int = 16
    """Sampling batch."""
    batches_per_epoch: int = 2
    """Sampling batches per epoch."""
    num_inference_steps: int = 10
    """Sampler steps."""
    guidance_scale: float = 3.0
    """Classifier-free guidance (2 UNet passes a step in sampling and training)."""
    train_batch_size: int = 16
    """DDPO minibatch."""
    estimator: str = "is"
    """DDPO estimator."""
    repeats: int = 15
    """Timed rounds (after one warm-up); the median of their ratios is reported."""
    compile: bool = False
    """torch.compile the UNet (`DiffusionPolicy.optimize`); it compiles in the warm-up round."""
    channels_last: bool = False
    """Channels-last UNet weights (`DiffusionPolicy.optimize`)."""


def isolated_passes(policy: DiffusionPolicy, config: EpochOverheadConfig, pass_pairs: list[int]) -> tuple[float, float]:
    """Seconds for the epoch's UNet forward passes (sampling) and forward/backward passes (training,
    `pass_pairs` (sample, step) pairs in each pass of a minibatch, as the agent splits it), alone,
    as the policy runs them (`DiffusionPolicy.passes`)."""
    unet, steps = policy.denoiser, config.num_inference_steps
    cfg = 2 if config.guidance_scale != 1.0 else 1
    channels, size = unet.config.in_channels, unet.config.sample_size
    rows = max(config.num_envs, *pass_pairs) * cfg
    embeds = policy.encode_prompts(["a large red circle on a flat background"] * rows)["encoder_hidden_states"]
    t = torch.full((rows,), 500, device=policy.device)
    x = torch.randn(rows, channels, size, size, device=policy.device)
    b = config.num_envs * cfg
    start = time.perf_counter()
    with torch.no_grad(), policy.passes(), torch.inference_mode():  # as `DiffusionPolicy.denoise` samples
        for _ in range(config.batches_per_epoch * steps):
            unet(x[:b], t[:b], encoder_hidden_states=embeds[:b])
    sampling = time.perf_counter() - start

    minibatches = config.num_envs * config.batches_per_epoch // config.train_batch_size
    passes = [pairs * cfg for pairs in pass_pairs]
    start = time.perf_counter()
    for _ in range(minibatches):
        for n in passes:
            with policy.passes():
                out = unet(x[:n], t[:n], encoder_hidden_states=embeds[:n]).sample
            out.mean().backward()
    training = time.perf_counter() - start
    for p in policy.trainable_parameters():
        p.grad = None
    return sampling, training


def main(config: EpochOverheadConfig) -> dict:
    envs = gym.make_vec(
        "DiffusionCompressibility-v0", num_envs=config.num_envs, model=config.model, num_inference_steps=config.num_inference_steps,
        device="cpu", array_type="torch",
    )  # fmt: skip
    policy = DiffusionPolicy.from_env(envs, guidance_scale=config.guidance_scale, guidance_interval=(0, 999))  # every step guided, as timed below
    policy.enable_lora(rank=8)
    policy.optimize(compile=config.compile, channels_last=config.channels_last)
    agent = DDPO(policy, DDPOConfig(estimator=config.estimator, train_batch_size=config.train_batch_size))
    envs.reset(seed=0)

    def epoch() -> float:
        start = time.perf_counter()
        agent.update(rollout(envs, policy, config.batches_per_epoch))
        return time.perf_counter() - start

    agent.update(batch := rollout(envs, policy, config.batches_per_epoch))  # warm-up round
    pass_pairs = agent.minibatch_pass_sizes(batch)
    isolated_passes(policy, config, pass_pairs)
    epochs, isolated = [], []
    for i in range(config.repeats):
        if i % 2 == 0:
            epochs.append(epoch())
        isolated.append(sum(isolated_passes(policy, config, pass_pairs)))
        if i % 2 == 1:
            epochs.append(epoch())
    ratios = [e / s for e, s in zip(epochs, isolated)]
    epoch_s, isolated_s, ratio = statistics.median(epochs), statistics.median(isolated), statistics.median(ratios)
    mean = statistics.mean(ratios)
    error = statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else float("nan")
    result = {
        "config": asdict(config), "epoch_seconds": epoch_s, "isolated_seconds": isolated_s, "round_ratios": ratios, "ratio": ratio,
        "mean_ratio": mean, "mean_ratio_standard_error": error,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    print(f"DDPO epoch {epoch_s:.2f} s, the same UNet passes alone {isolated_s:.2f} s (medians); ratio, median of "
          f"{len(ratios)} rounds: {ratio:.3f} ({min(ratios):.3f}–{max(ratios):.3f}); mean {mean:.3f} ± {error:.3f} (standard error)")
    return result


if __name__ == "__main__":
    main(tyro.cli(EpochOverheadConfig))
