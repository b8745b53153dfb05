"""Rewards: factories with one signature, in an explicit registry.

    reward_fn = make_reward("jpeg_compressibility")
    rewards, info = reward_fn(images, prompts)   # (N, H, W, 3) uint8, list[str] -> (N,), dict

Any callable with that signature can be passed where a reward name is accepted. Factories whose
rewards run a model take `device`; their models load on the first call, once per process, but
where they come from is checked when the reward is made, so a missing model fails before any
sampling.
"""

from __future__ import annotations

import inspect
import typing
from typing import Callable

import torch

from diffusion_gym.coerce import coerce
from diffusion_gym.rewards.aesthetic import AestheticScorer, aesthetic
from diffusion_gym.rewards.alignment import embedded_alignment, prompt_alignment
from diffusion_gym.rewards.base import RewardFn, check_images
from diffusion_gym.rewards.embedded import embedded_aesthetic, embedded_aesthetic_gold, embedded_alignment_gold, embedded_alignment_judge
from diffusion_gym.rewards.http import remote
from diffusion_gym.rewards.imagereward import imagereward
from diffusion_gym.rewards.jpeg import jpeg_compressibility, jpeg_incompressibility, jpeg_size_kb
from diffusion_gym.rewards.preference import clipscore, hpsv2, pickscore
from diffusion_gym.rewards.weighted import weighted

REWARDS: dict[str, Callable[..., RewardFn]] = {
    "jpeg_compressibility": jpeg_compressibility,
    "jpeg_incompressibility": jpeg_incompressibility,
    "aesthetic": aesthetic,
    "prompt_alignment": prompt_alignment,
    "embedded_alignment": embedded_alignment,
    "embedded_aesthetic": embedded_aesthetic,
    "embedded_aesthetic_gold": embedded_aesthetic_gold,
    "embedded_alignment_judge": embedded_alignment_judge,
    "embedded_alignment_gold": embedded_alignment_gold,
    "pickscore": pickscore,
    "clipscore": clipscore,
    "hpsv2": hpsv2,
    "imagereward": imagereward,
    "weighted": weighted,
    "remote": remote,
}


def check_reward(reward: object) -> None:
    """Raise ValueError unless `reward` is a registered name or a callable."""
    if not callable(reward) and not (isinstance(reward, str) and reward in REWARDS):
        raise ValueError(
            f"Unknown reward {reward!r}; registered rewards: {sorted(REWARDS)}. Or pass any callable "
            "fn(images: (N, H, W, 3) uint8 array, prompts: list[str]) -> (rewards (N,), info dict)."
        )


def make_reward(reward: str | RewardFn, device: str | torch.device | None = None, **kwargs) -> RewardFn:
    """A reward function from a registered name (with factory options) or any callable.

    Args:
        reward: a name in `REWARDS` or a callable `fn(images, prompts) -> (rewards, info)`.
        device: where a registered reward's models run, if its factory takes a device (an
            explicit `device` in `kwargs` wins); ignored for callables.
        kwargs: options of the registered factory; text (from a command line) is converted to
            the types the factory declares.

    Raises:
        ValueError: an unknown name (the message lists the known ones), a non-callable, or an
            option the factory does not take or of the wrong type.
    """
    check_reward(reward)
    if callable(reward):
        if kwargs:
            raise ValueError("Reward options apply to a registered reward name, not to a callable.")
        return reward
    factory = REWARDS[reward]
    parameters = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())  # e.g. weighted's "part.option"
    unknown = [] if takes_any else sorted(set(kwargs) - set(parameters))
    if unknown:
        raise ValueError(f"The reward {reward!r} has no options {unknown}; its options: {list(parameters) or 'none'}.")
    hints = typing.get_type_hints(factory)
    kwargs = {k: coerce(v, hints[k], f"{reward} option {k!r}") if isinstance(v, str) and k in hints else v for k, v in kwargs.items()}
    if device is not None and "device" in parameters:
        kwargs = {"device": str(device), **kwargs}
    return factory(**kwargs)


__all__ = [
    "REWARDS", "AestheticScorer", "RewardFn", "aesthetic", "check_images", "check_reward", "clipscore", "embedded_aesthetic",
    "embedded_aesthetic_gold", "embedded_alignment", "embedded_alignment_gold", "embedded_alignment_judge", "hpsv2", "imagereward",
    "jpeg_compressibility", "jpeg_incompressibility", "jpeg_size_kb", "make_reward", "pickscore", "prompt_alignment", "remote", "weighted",
]  # fmt: skip
