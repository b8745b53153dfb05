"""Trajectories collected through a diffusion-gym vector env: the one storage every agent uses."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from diffusion_gym.policy import DiffusionPolicy


@dataclass
class Trajectories:
    """A batch of B finished denoising episodes of T steps.

    Attributes:
        prompts: B prompts.
        timesteps: (B, T) int64 model timesteps of the states.
        samples: (B, T + 1, C, H, W) float32: x_T, ..., x_0; state k is samples[:, k], its
            action samples[:, k + 1] (stored once, not twice).
        log_probs: (B, T) float32 log π(action | state) under the policy that sampled them.
        rewards: (B,) float32 terminal rewards.
        images: (B, H, W, 3) uint8 decoded x_0 (what the reward saw).
        reward_info: the per-sample numbers the reward reported beside the reward ((B,) arrays,
            e.g. "gold" for the embedded tasks' gold references), for logging.
    """

    prompts: list[str]
    timesteps: torch.Tensor
    samples: torch.Tensor
    log_probs: torch.Tensor
    rewards: torch.Tensor
    images: np.ndarray
    reward_info: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[1]

    def observation(self, index: torch.Tensor, step: torch.Tensor | int) -> dict:
        """The observations of samples `index` at step `step` (an int or one per sample), as the env gives them."""
        step = torch.as_tensor(step, device=self.samples.device).expand(len(index))
        return {
            "prompt": [self.prompts[i] for i in index.tolist()],
            "timestep": self.timesteps[index, step],
            "x_t": self.samples[index, step],
        }

    def action(self, index: torch.Tensor, step: torch.Tensor | int) -> torch.Tensor:
        step = torch.as_tensor(step, device=self.samples.device).expand(len(index))
        return self.samples[index, step + 1]

    @staticmethod
    def cat(parts: list["Trajectories"]) -> "Trajectories":
        return Trajectories(
            prompts=[p for part in parts for p in part.prompts],
            timesteps=torch.cat([part.timesteps for part in parts]),
            samples=torch.cat([part.samples for part in parts]),
            log_probs=torch.cat([part.log_probs for part in parts]),
            rewards=torch.cat([part.rewards for part in parts]),
            images=np.concatenate([part.images for part in parts]),
            reward_info={k: np.concatenate([part.reward_info[k] for part in parts]) for k in set.intersection(*(set(part.reward_info) for part in parts))},
        )

    def nbytes(self) -> int:
        """Memory held by the tensors, in bytes."""
        return sum(t.element_size() * t.nelement() for t in (self.timesteps, self.samples, self.log_probs, self.rewards)) + self.images.nbytes


@torch.no_grad()
def collect(
    envs, policy: DiffusionPolicy, num_batches: int, generator: torch.Generator | None = None, overlap_rewards: bool = False, samples_per_prompt: int = 1
) -> Trajectories:
    """Run `num_batches` batches of episodes through the vector env with the policy.

    The env must return torch arrays (`array_type="torch"`), so nothing is copied between the
    env and the policy. Each batch starts with a seedless `reset()`: the env's own seeded RNG
    draws the prompts and the initial noise.

    Args:
        samples_per_prompt: 1: every episode draws its own prompt; k > 1: each batch holds
            num_envs / k prompts (drawn by the env's RNG) k times each, so that every prompt's
            reward statistics come from the same batch (with the normaliser's min_count <= k).
        overlap_rewards: score each batch in a worker thread while the next one is sampled (the
            rewards are the same; worth it when the reward runs a large model). Torch releases
            the GIL in its kernels, so the two proceed together.

    Returns:
        num_batches × num_envs trajectories.
    """
    base = envs.unwrapped
    if base.array_type != "torch":
        raise ValueError("collect() needs the env made with array_type='torch' (no copies between env and policy).")
    if samples_per_prompt < 1 or envs.num_envs % samples_per_prompt:
        raise ValueError(f"samples_per_prompt must divide num_envs = {envs.num_envs}, got {samples_per_prompt}.")
    parts, pending = [], []
    with ThreadPoolExecutor(max_workers=1) if overlap_rewards else nullcontext() as pool, base.deferred_rewards() if overlap_rewards else nullcontext():
        for _ in range(num_batches):
            obs, _ = envs.reset(options={"prompts": base.grouped_prompts(samples_per_prompt)} if samples_per_prompt > 1 else None)
            prompts = list(obs["prompt"])
            timesteps, samples, log_probs = [], [obs["x_t"]], []
            while True:
                timesteps.append(obs["timestep"])
                action, log_prob = policy.act(obs, generator=generator)
                obs, reward, terminated, _, info = envs.step(action)
                samples.append(action)
                log_probs.append(log_prob)
                if bool(terminated.all()):
                    break
            if overlap_rewards:
                pending.append(pool.submit(base.score, info["images"], prompts))
            parts.append(
                Trajectories(
                    prompts=prompts,
                    timesteps=torch.stack(timesteps, dim=1),
                    samples=torch.stack(samples, dim=1),
                    log_probs=torch.stack(log_probs, dim=1),
                    rewards=reward.float(),
                    images=info["images"],
                    reward_info=per_sample(info["reward_info"], len(prompts)),
                )
            )
        for part, future in zip(parts, pending):  # overlap: the scores, once they are done
            rewards, reward_info = future.result()
            part.rewards = torch.as_tensor(rewards, dtype=torch.float32, device=part.rewards.device)
            part.reward_info = per_sample(reward_info, len(part))
    return Trajectories.cat(parts)


def per_sample(reward_info: dict, n: int) -> dict[str, np.ndarray]:
    """The entries of a reward's info that hold one number per sample, as (n,) float64 arrays."""
    kept = {}
    for key, value in reward_info.items():
        value = np.asarray(value) if not isinstance(value, torch.Tensor) else value.detach().cpu().numpy()
        if value.shape == (n,) and np.issubdtype(value.dtype, np.number):
            kept[key] = value.astype(np.float64)
    return kept
