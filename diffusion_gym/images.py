"""Images as the package passes them ((N, H, W, 3) uint8 arrays): their checks, and grids for
people to look at (a row of samples per prompt, the prompt written beside it)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def prompt_grid(rows: list[tuple[str, np.ndarray]], tile: int = 64) -> Image.Image:
    """A row per (label, images) pair; images (K, H, W, 3) uint8 are scaled to tile×tile
    (nearest neighbour, so pixels stay visible) and the label is written to the left."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = 8 + max(int(measure.textlength(label, font=font)) for label, _ in rows)
    columns = max(len(images) for _, images in rows)
    grid = Image.new("RGB", (label_width + columns * (tile + 2), len(rows) * (tile + 2)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(rows):
        y = r * (tile + 2)
        draw.text((4, y + tile // 2 - 6), label, fill="black", font=font)
        for c, image in enumerate(images):
            grid.paste(Image.fromarray(image).resize((tile, tile), Image.NEAREST), (label_width + c * (tile + 2), y))
    return grid


def check_images(images: np.ndarray) -> None:
    """Raise ValueError unless `images` is a (N, H, W, 3) uint8 numpy array."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        described = f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}"
        raise ValueError(f"Rewards take images as a (N, H, W, 3) uint8 numpy array, got {described.strip()}.")


def check_image_list(images: np.ndarray | Sequence[np.ndarray], prompts: Sequence[str] | None = None) -> None:
    """Raise ValueError unless `images` is a (N, H, W, 3) uint8 array or a list of (H, W, 3) uint8
    arrays (which may differ in size), and, if `prompts` are given, one prompt per image."""
    if isinstance(images, np.ndarray):
        check_images(images)
    else:
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                described = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
                raise ValueError(f"Image {i} must be a (H, W, 3) uint8 numpy array, got {described.strip()}.")
    if prompts is not None and len(prompts) != len(images):
        raise ValueError(f"Got {len(images)} images and {len(prompts)} prompts; give one prompt per image.")
