"""A weighted mix of registered rewards, as Flow-GRPO trains on several at once.

    reward_fn = make_reward("weighted", rewards="pickscore=1,clipscore=0.5", normalize=True,
                            **{"pickscore.model": "/models/pickscore"})

reward = Σ_k w_k · r_k, where r_k is part k's reward, or with `normalize=True` its per-batch
standardisation (r_k − mean(r_k)) / std(r_k) (0 where a part's batch has no spread), so that
parts on different scales (PickScore ≈ 20, CLIPScore ≤ 2.5) weigh as their weights say. `info`
holds each part's raw rewards under its name, each part's own info under "name.key", and with
`normalize` the weighted sum of the raw parts under "unnormalized".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def parse_weights(rewards: str | dict[str, float]) -> dict[str, float]:
    """{"pickscore": 1.0, ...} from a dict or from text "pickscore=1,clipscore=0.5"."""
    if isinstance(rewards, str):
        pairs = [item.strip() for item in rewards.split(",") if item.strip()]
        if not pairs or not all("=" in pair for pair in pairs):
            raise ValueError(f"rewards must read 'name=weight,name=weight', got {rewards!r}.")
        try:
            rewards = {name.strip(): float(weight) for name, weight in (pair.split("=", 1) for pair in pairs)}
        except ValueError:
            raise ValueError(f"Every weight in rewards must be a number, got {rewards!r}.") from None
    if not isinstance(rewards, dict) or not rewards:
        raise ValueError(f"rewards must name at least one registered reward with its weight, got {rewards!r}.")
    bad = {name: w for name, w in rewards.items() if not np.isfinite(float(w))}
    if bad:
        raise ValueError(f"Weights must be finite numbers, got {bad}.")
    return {name: float(w) for name, w in rewards.items()}


def weighted(rewards: str | dict[str, float], normalize: bool = False, device: str | torch.device = "cpu", **part_options):
    """Reward = the weighted sum of registered rewards (see the module docstring).

    Args:
        rewards: {name: weight} or "name=weight,name=weight"; each name a registered reward.
        normalize: standardise each part within the batch before mixing.
        device: where the parts' models run.
        part_options: each part's options as "name.option" (e.g. "pickscore.model": "DIR").
    """
    from diffusion_gym.rewards import REWARDS, make_reward

    weights = parse_weights(rewards)
    if "weighted" in weights:
        raise ValueError("A weighted reward cannot contain 'weighted'; list its parts directly.")
    options: dict[str, dict] = {name: {} for name in weights}
    for key, value in part_options.items():
        name, _, option = key.partition(".")
        if name not in weights or not option:
            raise ValueError(f"Part options are named 'part.option' with a part of {sorted(weights)}, got {key!r}.")
        options[name][option] = value
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise ValueError(f"Unknown rewards {unknown} in the mix; registered: {sorted(REWARDS)}.")
    parts = {name: make_reward(name, device=device, **options[name]) for name in weights}

    def reward(images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict]:
        if normalize and len(images) < 2:
            raise ValueError("normalize=True standardises each part within the batch, which needs at least 2 images; use a vector env or normalize=False.")
        total, raw = np.zeros(len(images)), np.zeros(len(images))
        info: dict[str, np.ndarray] = {}
        for name, part in parts.items():
            values, part_info = part(images, prompts)
            values = np.asarray(values, dtype=np.float64)
            info[name] = values
            info.update({f"{name}.{key}": value for key, value in part_info.items()})
            raw += weights[name] * values
            if normalize:
                std = values.std()
                spread = std > 1e-9 * max(1.0, abs(values.mean()))  # rounding noise is no spread
                values = (values - values.mean()) / std if spread else np.zeros_like(values)
            total += weights[name] * values
        if normalize:
            info["unnormalized"] = raw
        return total, info

    reward.parts = parts
    return reward
