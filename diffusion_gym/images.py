"""Image grids for people to look at: a row of samples per prompt, the prompt written beside it."""

from __future__ import annotations

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
