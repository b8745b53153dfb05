"""Per-prompt reward normalisation: the advantage estimate of DDPO.

Each prompt keeps a running buffer of its most recent rewards. A reward's advantage is
(r − mean) / (std + eps) with the mean and std of its prompt's buffer, or of the whole batch
while the prompt has fewer than `min_count` rewards; it is then clipped to ±clip.

The buffer's length matters while the policy improves. Rewards kept from a prompt's earlier
visits come from an older, worse policy: they pull its mean back, so every new sample of the
prompt gets a positive advantage, and the gap between visits inflates the std that the
within-batch differences are divided by. With `buffer_size` equal to the samples a batch draws
per prompt (and `min_count` the same), each prompt is normalised within its own batch, as GRPO
(Shao et al., 2024) does (a prompt drawn twice for one batch gets the statistics of its later
draw's samples).
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np


def within_prompt_std(prompts: Sequence[str], rewards: np.ndarray) -> float:
    """The mean over a batch's prompts of the std of that prompt's rewards in the batch (prompts
    drawn once count as 0): how far apart a prompt's samples score, which the normaliser divides by."""
    rewards = np.asarray(rewards, dtype=np.float64)
    groups: dict[str, list[float]] = {}
    for prompt, reward in zip(prompts, rewards):
        groups.setdefault(prompt, []).append(reward)
    return float(np.mean([np.std(values) for values in groups.values()]))


class PerPromptNormalizer:
    """Running per-prompt reward statistics.

    Args:
        buffer_size: rewards kept per prompt (the most recent).
        min_count: rewards a prompt needs before its own statistics are used.
        clip: advantages are clipped to [-clip, clip].
        eps: added to the std.
    """

    def __init__(self, buffer_size: int = 32, min_count: int = 16, clip: float = 5.0, eps: float = 1e-6):
        if buffer_size < 1 or not 1 <= min_count <= buffer_size:
            raise ValueError(f"Need buffer_size >= 1 and 1 <= min_count <= buffer_size, got {buffer_size}, {min_count}.")
        if clip <= 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        self.buffer_size, self.min_count, self.clip, self.eps = buffer_size, min_count, clip, eps
        self.buffers: dict[str, deque] = {}

    def __call__(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        """Add the batch's rewards to the buffers, then return their clipped advantages, (B,)."""
        rewards = np.asarray(rewards, dtype=np.float64)
        if len(prompts) != len(rewards):
            raise ValueError(f"{len(prompts)} prompts for {len(rewards)} rewards.")
        for prompt, reward in zip(prompts, rewards):
            self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size)).append(reward)
        batch_mean, batch_std = rewards.mean(), rewards.std()
        advantages = np.empty_like(rewards)
        for i, (prompt, reward) in enumerate(zip(prompts, rewards)):
            buffer = self.buffers[prompt]
            mean, std = (np.mean(buffer), np.std(buffer)) if len(buffer) >= self.min_count else (batch_mean, batch_std)
            advantages[i] = (reward - mean) / (std + self.eps)
        return np.clip(advantages, -self.clip, self.clip)

    def state_dict(self) -> dict:
        return {"buffers": {prompt: list(buffer) for prompt, buffer in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {prompt: deque(values, maxlen=self.buffer_size) for prompt, values in state["buffers"].items()}
