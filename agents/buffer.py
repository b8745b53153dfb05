"""Trajectories collected through a diffusion-gym vector env: the one storage every agent uses."""

from __future__ import annotations

from dataclasses import dataclass

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
    """

    prompts: list[str]
    timesteps: torch.Tensor
    samples: torch.Tensor
    log_probs: torch.Tensor
    rewards: torch.Tensor
    images: np.ndarray

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
        )

    def nbytes(self) -> int:
        """Memory held by the tensors, in bytes."""
        return sum(t.element_size() * t.nelement() for t in (self.timesteps, self.samples, self.log_probs, self.rewards)) + self.images.nbytes


@torch.no_grad()
def collect(envs, policy: DiffusionPolicy, num_batches: int, generator: torch.Generator | None = None) -> Trajectories:
    """Run `num_batches` batches of episodes through the vector env with the policy.

    The env must return torch arrays (`array_type="torch"`), so nothing is copied between the
    env and the policy. Each batch starts with a seedless `reset()`: the env's own seeded RNG
    draws the prompts and the initial noise.

    Returns:
        num_batches × num_envs trajectories.
    """
    base = envs.unwrapped
    if base.array_type != "torch":
        raise ValueError("collect() needs the env made with array_type='torch' (no copies between env and policy).")
    parts = []
    for _ in range(num_batches):
        obs, _ = envs.reset()
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
        parts.append(
            Trajectories(
                prompts=prompts,
                timesteps=torch.stack(timesteps, dim=1),
                samples=torch.stack(samples, dim=1),
                log_probs=torch.stack(log_probs, dim=1),
                rewards=reward.float(),
                images=info["images"],
            )
        )
    return Trajectories.cat(parts)
