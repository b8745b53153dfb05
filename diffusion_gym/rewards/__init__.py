"""Rewards: factories with one signature, in an explicit registry.

    reward_fn = make_reward("jpeg_compressibility")
    rewards, info = reward_fn(images, prompts)   # (N, H, W, 3) uint8, list[str] -> (N,), dict

Any callable with that signature can be passed where a reward name is accepted.
"""

from __future__ import annotations

from typing import Callable

from diffusion_gym.rewards.base import RewardFn, check_images
from diffusion_gym.rewards.jpeg import jpeg_compressibility, jpeg_incompressibility, jpeg_size_kb

REWARDS: dict[str, Callable[..., RewardFn]] = {
    "jpeg_compressibility": jpeg_compressibility,
    "jpeg_incompressibility": jpeg_incompressibility,
}


def make_reward(reward: str | RewardFn, **kwargs) -> RewardFn:
    """A reward function from a registered name (with factory options) or any callable.

    Raises:
        ValueError: an unknown name (the message lists the known ones) or a non-callable.
    """
    if callable(reward):
        if kwargs:
            raise ValueError("Reward options apply to a registered reward name, not to a callable.")
        return reward
    if not isinstance(reward, str) or reward not in REWARDS:
        raise ValueError(
            f"Unknown reward {reward!r}; registered rewards: {sorted(REWARDS)}. Or pass any callable "
            "fn(images: (N, H, W, 3) uint8 array, prompts: list[str]) -> (rewards (N,), info dict)."
        )
    return REWARDS[reward](**kwargs)


__all__ = ["REWARDS", "RewardFn", "check_images", "jpeg_compressibility", "jpeg_incompressibility", "jpeg_size_kb", "make_reward"]
