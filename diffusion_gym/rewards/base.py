"""The one signature every reward shares.

A reward function takes a batch of images and their prompts and returns one reward per image and
an info dict: `fn(images (N, H, W, 3) uint8, prompts: list[str]) -> (rewards (N,) float, info)`.
A reward factory takes keyword options and returns such a function; heavy models are loaded
inside the factory (lazily, once), never at import.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from diffusion_gym.images import check_image_list, check_images

RewardFn = Callable[[np.ndarray, Sequence[str]], tuple[np.ndarray, dict]]

__all__ = ["RewardFn", "check_image_list", "check_images"]
