"""Time a full episode through the vector env against the same policy's denoising loop run
directly (no env): same model, batch, steps, noise and reward. Prints the median of the rounds'
ratios env / direct (target <= 1.02).

    python -m benchmarks.env_overhead                   # tiny-random on the CPU
    python -m benchmarks.env_overhead --model CompVis/stable-diffusion-v1-4 --device cuda --num-envs 8 --num-inference-steps 50
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
import tyro

import diffusion_gym  # noqa: F401  (registers the ids)
from diffusion_gym.policy import DiffusionPolicy
from diffusion_gym.rollout import rollout


@dataclass
class OverheadConfig:
    """Env episode vs direct loop timing."""

    env_id: str = "DiffusionCompressibility-v0"
    """Registered environment id."""
    model: str = "tiny-random"
    """Model to time."""
    num_envs: int = 8
    """Batch size (episodes in parallel)."""
    num_inference_steps: int = 20
    """Sampler steps per episode."""
    device: str = "auto"
    """"auto", "cpu" or "cuda"."""
    array_type: str = "numpy"
    """Observation arrays of the env: "numpy" or "torch"."""
    repeats: int = 15
    """Timed rounds (after one warm-up), each an env episode and a direct one; the median of the
    rounds' ratios is reported (a pair shares the machine's drift, which separate medians do not)."""


def direct_episode(envs, policy: DiffusionPolicy, seed: int) -> np.ndarray:
    """The same episode without the env: prompts and noise drawn as the env draws them, the
    policy stepped on tensors, the final sample decoded and scored."""
    base = envs.unwrapped
    rng = np.random.default_rng(seed)
    prompts = [base.prompts[i] for i in rng.integers(len(base.prompts), size=base.num_envs)]
    x = torch.from_numpy(rng.standard_normal((base.num_envs, *base.model.sample_shape), dtype=np.float32)).to(policy.device)
    generator = torch.Generator(policy.device).manual_seed(seed)
    with torch.no_grad():  # each pass merges its LoRA weights as `act`'s do (`denoise`)
        for t in base.scheduler.timesteps.tolist():
            timesteps = torch.full((base.num_envs,), t, device=policy.device)
            x = policy({"prompt": prompts, "timestep": timesteps, "x_t": x}, generator=generator).prev_sample
    rewards, _ = base.reward_fn(base.model.decode(x), prompts)
    return np.asarray(rewards)


def env_episode(envs, policy: DiffusionPolicy, seed: int) -> np.ndarray:
    batch = rollout(envs, policy, seed=seed, generator=torch.Generator(policy.device).manual_seed(seed), keep_steps=False)
    return batch.rewards.cpu().numpy()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(config: OverheadConfig) -> dict:
    envs = gym.make_vec(
        config.env_id,
        num_envs=config.num_envs,
        model=config.model,
        num_inference_steps=config.num_inference_steps,
        device=config.device,
        array_type=config.array_type,
    )
    policy = DiffusionPolicy.from_env(envs)
    times: dict[str, list[float]] = {"env": [], "direct": []}
    rewards = {}
    for i in range(config.repeats + 1):
        # alternate the two, and which goes first, so that drift in the machine's speed hits both alike
        pair = (("env", env_episode), ("direct", direct_episode))
        for name, episode in pair if i % 2 == 0 else pair[::-1]:
            _sync(policy.device)
            start = time.perf_counter()
            rewards[name] = episode(envs, policy, seed=i)
            _sync(policy.device)
            if i > 0:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    if not np.allclose(rewards["env"], rewards["direct"]):
        raise RuntimeError(f"The env and the direct loop disagree: {rewards}; the timing would compare different work.")
    env_s, direct_s = statistics.median(times["env"]), statistics.median(times["direct"])
    ratios = [e / d for e, d in zip(times["env"], times["direct"])]
    ratio = statistics.median(ratios)
    result = {"config": asdict(config), "env_seconds": env_s, "direct_seconds": direct_s, "ratio": ratio, "ratios": ratios}
    print(json.dumps(result, indent=2))
    print(f"env episode {env_s * 1000:.1f} ms, direct loop {direct_s * 1000:.1f} ms (medians); ratio {ratio:.3f} "
          f"(median of {len(ratios)} paired rounds, {min(ratios):.3f} to {max(ratios):.3f})")
    return result


if __name__ == "__main__":
    main(tyro.cli(OverheadConfig))
