"""The one signature every reward shares.

A reward function takes a batch of images and their prompts and returns one reward per image and
an info dict: `fn(images (N, H, W, 3) uint8, prompts: list[str]) -> (rewards (N,) float, info)`.
A reward factory takes keyword options and returns such a function; heavy models are loaded
inside the factory (lazily, once), never at import.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

RewardFn = Callable[[np.ndarray, Sequence[str]], tuple[np.ndarray, dict]]


def check_images(images: np.ndarray) -> None:
    """Raise ValueError unless `images` is a (N, H, W, 3) uint8 numpy array."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        described = f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}"
        raise ValueError(f"Rewards take images as a (N, H, W, 3) uint8 numpy array, got {described.strip()}.")


def check_image_list(images: np.ndarray | Sequence[np.ndarray]) -> None:
    """Raise ValueError unless `images` is a (N, H, W, 3) uint8 array or a list of (H, W, 3) uint8
    arrays (which may differ in size)."""
    if isinstance(images, np.ndarray):
        check_images(images)
        return
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            described = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
            raise ValueError(f"Image {i} must be a (H, W, 3) uint8 numpy array, got {described.strip()}.")
