"""Offline counterparts of the paper's learned rewards, on the embedded model's toy world.

Each comes with a **gold** reference that training never sees, so that over-optimisation (the
proxy rising while what it stands for does not) is a number. Every reward reports its gold in
`info["gold"]`, one value per image, beside the reward itself; the golds are also registered as
rewards of their own (to train on the gold directly, as an upper bound).

| reward | stands in for | gold |
|---|---|---|
| `embedded_aesthetic` | the LAION aesthetic predictor: a small head on a frozen image embedding (the toy-world captioner's), trained on noisy 1-10 ratings of a hidden taste | `embedded_aesthetic_gold`: the hidden taste itself (`diffusion_gym.embedded.taste`) |
| `embedded_alignment_judge` | LLaVA + BERTScore: the captioner reads the image, a comparator that knows the synonyms of `diffusion_gym.embedded.paraphrase` scores how much of the prompt it shows | `embedded_alignment_gold`: the same comparator on a second, independently trained captioner |

Models load on the first call, once per process.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffusion_gym.rewards.base import RewardFn, check_images


# ---------------------------------------------------------------- prompt alignment
@functools.lru_cache(maxsize=None)
def _captioner(folder: str | None, device: str):
    from diffusion_gym.embedded.captioner import load_captioner

    return load_captioner(folder).to(device)


def _gold_captioner_folder() -> str:
    from diffusion_gym.embedded import EMBEDDED_DIR

    return str(EMBEDDED_DIR / "captioner_gold")


def judge(images: np.ndarray, prompts: Sequence[str], captioner) -> np.ndarray:
    """The recall of each prompt by what `captioner` reads in its image, (N,) float64 in [0, 1]
    (`diffusion_gym.embedded.paraphrase.recall` on the captioner's probabilities)."""
    from diffusion_gym.embedded.paraphrase import recall

    check_images(images)
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts; the judge needs one prompt per image.")
    probabilities = captioner.probabilities(images)
    return np.array([recall(p, {a: probs[i] for a, probs in probabilities.items()}) for i, p in enumerate(prompts)], dtype=np.float64)


def embedded_alignment_judge(captioner: str | Path | None = None, gold: bool = True, device: str | torch.device = "cpu") -> RewardFn:
    """Prompt alignment on the toy world in any wording: the captioner's reading of each image,
    scored against its prompt by the synonym-aware comparator (expected recall, in [0, 1]).

    Args:
        captioner: folder of the judging captioner; None: the one shipped with the embedded model.
        gold: also report the gold judge's score in `info["gold"]`.
        device: where the captioners run.
    """
    folder = None if captioner is None else str(captioner)

    def reward(images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict]:
        scores = judge(images, prompts, _captioner(folder, str(device)))
        info = {"recall": scores}
        if gold:
            info["gold"] = judge(images, prompts, _captioner(_gold_captioner_folder(), str(device)))
        return scores, info

    return reward


def embedded_alignment_gold(device: str | torch.device = "cpu") -> RewardFn:
    """The gold judge of prompt alignment: the same comparator on the second captioner, trained
    independently (another seed and width), which the training judge never sees."""

    def reward(images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict]:
        scores = judge(images, prompts, _captioner(_gold_captioner_folder(), str(device)))
        return scores, {"gold": scores}

    return reward


# ---------------------------------------------------------------- aesthetic quality
@functools.lru_cache(maxsize=None)
def _predictor(folder: str | None, device: str):
    from diffusion_gym.embedded.aesthetic import load_predictor

    return load_predictor(folder).to(device)


def embedded_aesthetic(predictor: str | Path | None = None, gold: bool = True, device: str | torch.device = "cpu") -> RewardFn:
    """Aesthetic quality on the toy world: the rating the toy world's aesthetic predictor gives
    each image (about 1-10, as LAION's predictor).

    Args:
        predictor: folder of the predictor's head; None: the one shipped with the embedded model.
        gold: also report the hidden taste in `info["gold"]` (0-10).
        device: where the predictor runs.
    """
    from diffusion_gym.embedded.taste import taste

    folder = None if predictor is None else str(predictor)

    def reward(images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict]:
        check_images(images)
        scores = _predictor(folder, str(device))(images)
        info = {"aesthetic": scores}
        if gold:
            info["gold"] = taste(images)
        return scores, info

    return reward


def embedded_aesthetic_gold() -> RewardFn:
    """The toy world's hidden taste itself (0-10): what its aesthetic predictor was trained to predict."""
    from diffusion_gym.embedded.taste import taste

    def reward(images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict]:
        scores = taste(images)
        return scores, {"gold": scores}

    return reward
