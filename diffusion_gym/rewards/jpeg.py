"""JPEG compressibility and incompressibility, as in the paper.

The image is saved by PIL as JPEG at quality 95; the reward is its size in kB (1 kB = 1000
bytes), negated for compressibility.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

from diffusion_gym.rewards.base import RewardFn, check_images


def jpeg_size_kb(images: np.ndarray, quality: int = 95) -> np.ndarray:
    """JPEG file size of each image.

    Args:
        images: (N, H, W, 3) uint8.
        quality: PIL's JPEG quality (the paper: 95).

    Returns:
        (N,) float64 sizes in kB (1000 bytes).
    """
    check_images(images)
    sizes = np.empty(len(images), dtype=np.float64)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        sizes[i] = buffer.tell() / 1000
    return sizes


def jpeg_compressibility(quality: int = 95) -> RewardFn:
    """Reward = −(JPEG size in kB): smaller files score higher."""

    def reward(images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict]:
        sizes = jpeg_size_kb(images, quality)
        return -sizes, {"jpeg_kb": sizes}

    return reward


def jpeg_incompressibility(quality: int = 95) -> RewardFn:
    """Reward = +(JPEG size in kB): larger files score higher."""

    def reward(images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict]:
        sizes = jpeg_size_kb(images, quality)
        return sizes, {"jpeg_kb": sizes}

    return reward
