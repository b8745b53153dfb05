"""The toy world of the embedded model: one object on a background, rendered from a seed.

Every image is 32×32 RGB and shows one object with four attributes that its caption names:

    "a large red triangle on a striped background"
       size  colour shape       background

| attribute  | values |
|------------|--------|
| size       | small, large |
| colour     | red, green, blue, yellow, purple, white |
| shape      | circle, square, triangle, cross |
| background | flat, gradient, striped, checkered, noisy |

The background's own colours, the object's position and the stripes' period and direction vary
freely and are not in the caption. Backgrounds span a wide range of JPEG sizes (flat compresses
to a small file, noise to a large one), as photographs do, so compressibility and
incompressibility have room to move. The noise has every channel of every pixel fully off or on,
which JPEG compresses worse than Gaussian or uniform noise: a 32×32 JPEG at quality 95 of it
takes ~2.07 kB (uniform noise ~1.84), a flat image ~0.64 kB (mostly headers).

A fixed set of attribute combinations is held out (`HELD_OUT`): training never sees them, so
samples for them test compositional generalisation. Each held-out combination's attribute values
still appear in training, in other combinations.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
SUPERSAMPLE = 4  # shapes are drawn at 4x and averaged down, for anti-aliased edges

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "size": ("small", "large"),
    "colour": ("red", "green", "blue", "yellow", "purple", "white"),
    "shape": ("circle", "square", "triangle", "cross"),
    "background": ("flat", "gradient", "striped", "checkered", "noisy"),
}
ATTRIBUTE_NAMES = tuple(ATTRIBUTES)

OBJECT_RGB = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (40, 90, 230),
    "yellow": (245, 215, 40),
    "purple": (150, 60, 200),
    "white": (245, 245, 245),
}
# Background colours: muted, so that every object colour stands out on every background.
BACKGROUND_RGB = np.array(
    [(70, 70, 80), (110, 100, 90), (40, 60, 70), (90, 110, 100), (60, 50, 70), (120, 120, 130), (30, 30, 35), (100, 80, 60)],
    dtype=np.float32,
)
SIZE_RADIUS = {"small": 5.5, "large": 10.0}  # half-extent of the object in pixels
POSITION_JITTER = 4.0  # the object's centre moves up to this many pixels from the middle

Combination = tuple[str, str, str, str]  # (size, colour, shape, background)

ALL_COMBINATIONS: tuple[Combination, ...] = tuple(itertools.product(*ATTRIBUTES.values()))


def _held_out(combination: Combination) -> bool:
    """About one combination in seven is held out, spread so that no attribute value is lost."""
    size, colour, shape, background = (ATTRIBUTES[name].index(v) for name, v in zip(ATTRIBUTE_NAMES, combination))
    return (colour + 2 * shape + 3 * background + 5 * size) % 7 == 0


HELD_OUT: tuple[Combination, ...] = tuple(c for c in ALL_COMBINATIONS if _held_out(c))
TRAIN: tuple[Combination, ...] = tuple(c for c in ALL_COMBINATIONS if not _held_out(c))


def caption(combination: Combination) -> str:
    """"a large red triangle on a striped background"."""
    size, colour, shape, background = combination
    return f"a {size} {colour} {shape} on a {background} background"


def parse_caption(prompt: str) -> Combination | None:
    """The combination a caption names, or None if it is not a caption of this world."""
    words = prompt.strip().lower().split()
    if len(words) != 8 or words[0] != "a" or words[4:6] != ["on", "a"] or words[7] != "background":
        return None
    combination = (words[1], words[2], words[3], words[6])
    ok = all(value in ATTRIBUTES[name] for name, value in zip(ATTRIBUTE_NAMES, combination))
    return combination if ok else None


TRAIN_PROMPTS: tuple[str, ...] = tuple(caption(c) for c in TRAIN)
HELD_OUT_PROMPTS: tuple[str, ...] = tuple(caption(c) for c in HELD_OUT)


@dataclass
class Batch:
    """Rendered images with their ground truth.

    Attributes:
        images: (N, 32, 32, 3) uint8.
        labels: (N, 4) int64, the index of each attribute value, in `ATTRIBUTE_NAMES` order.
        prompts: N captions.
    """

    images: np.ndarray
    labels: np.ndarray
    prompts: list[str]


def labels_of(combinations: list[Combination]) -> np.ndarray:
    """(N, 4) int64 attribute indices of combinations."""
    return np.array([[ATTRIBUTES[n].index(v) for n, v in zip(ATTRIBUTE_NAMES, c)] for c in combinations], dtype=np.int64)


@dataclass(frozen=True)
class Variation:
    """Freedoms beyond the world's own draws, for image sets that must cover more than the world
    shows (the aesthetic task's ratings: a fine-tuned model strays from the world's palette)."""

    background_colours: bool = True
    """Background colours drawn uniformly from all of RGB instead of the world's muted palette."""
    object_colour_std: float = 20.0
    """Std, in grey levels, of Gaussian jitter on each channel of the object's colour."""
    size_scale: tuple[float, float] = (0.6, 1.4)
    """The object's half-extent is scaled by a factor drawn uniformly from this range."""
    position_jitter: float = 7.0
    """The object's centre moves up to this many pixels from the middle."""


def render(combinations: list[Combination], rng: np.random.Generator, variation: Variation | None = None) -> np.ndarray:
    """Render one image per combination; everything the caption leaves open is drawn from `rng`
    (and, with a `variation`, more than the world itself varies).

    Returns:
        (N, 32, 32, 3) uint8.
    """
    images = np.empty((len(combinations), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, (size, colour, shape, background) in enumerate(combinations):
        rgb = np.array(OBJECT_RGB[colour], dtype=np.float32)
        if variation is None:
            canvas = _background(background, rng)
            alpha = _shape_mask(shape, SIZE_RADIUS[size], rng)[..., None]
        else:
            palette = rng.uniform(0, 255, size=(2, 3)).astype(np.float32) if variation.background_colours else BACKGROUND_RGB
            canvas = _background(background, rng, palette)
            radius = SIZE_RADIUS[size] * rng.uniform(*variation.size_scale)
            alpha = _shape_mask(shape, radius, rng, variation.position_jitter)[..., None]
            rgb = np.clip(rgb + rng.normal(0, variation.object_colour_std, size=3), 0, 255).astype(np.float32)
        canvas = canvas * (1 - alpha) + rgb * alpha
        images[i] = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return images


def sample_batch(n: int, rng: np.random.Generator, combinations: tuple[Combination, ...] = TRAIN, variation: Variation | None = None) -> Batch:
    """`n` renders of combinations drawn uniformly from `combinations`."""
    chosen = [combinations[i] for i in rng.integers(len(combinations), size=n)]
    return Batch(images=render(chosen, rng, variation), labels=labels_of(chosen), prompts=[caption(c) for c in chosen])


# ---------------------------------------------------------------- drawing
def _grid(scale: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in pixel units on a grid `scale` times finer."""
    ticks = (np.arange(IMAGE_SIZE * scale, dtype=np.float32) + 0.5) / scale
    return np.meshgrid(ticks, ticks, indexing="ij")


_FINE_Y, _FINE_X = _grid(SUPERSAMPLE)
_Y, _X = _grid()


def _shape_mask(shape: str, radius: float, rng: np.random.Generator, jitter: float = POSITION_JITTER) -> np.ndarray:
    """Coverage in [0, 1] of each pixel by the shape, (32, 32) float32."""
    cy, cx = IMAGE_SIZE / 2 + rng.uniform(-jitter, jitter, size=2)
    dy, dx = _FINE_Y - cy, _FINE_X - cx
    if shape == "circle":
        inside = dy**2 + dx**2 <= radius**2
    elif shape == "square":
        half = radius * 0.85  # a square of the circle's area would look bigger; this matches by eye
        inside = (np.abs(dy) <= half) & (np.abs(dx) <= half)
    elif shape == "triangle":  # pointing up, base at the bottom
        top, bottom = -radius, radius * 0.8
        width_at = (dy - top) / (bottom - top) * radius * 1.1
        inside = (dy >= top) & (dy <= bottom) & (np.abs(dx) <= width_at)
    elif shape == "cross":
        arm = radius * 0.38
        inside = ((np.abs(dy) <= radius) & (np.abs(dx) <= arm)) | ((np.abs(dx) <= radius) & (np.abs(dy) <= arm))
    else:
        raise ValueError(f"Unknown shape {shape!r}; known: {ATTRIBUTES['shape']}")
    fine = inside.astype(np.float32)
    return fine.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE).mean(axis=(1, 3))


def _background(kind: str, rng: np.random.Generator, palette: np.ndarray = BACKGROUND_RGB) -> np.ndarray:
    """(32, 32, 3) float32 background in [0, 255], its colours drawn from `palette` ((K, 3), K >= 2)."""
    first, second = palette[rng.choice(len(palette), size=2, replace=False)]
    if kind == "flat":
        return np.broadcast_to(first, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * (_X - 16) + np.sin(angle) * (_Y - 16)) / 32 + 0.5
        ramp = np.clip(ramp, 0, 1)[..., None]
        return first * (1 - ramp) + _contrast(first, second) * ramp
    if kind == "striped":
        period = rng.integers(4, 9)
        coordinate = _Y if rng.random() < 0.5 else _X
        on = ((coordinate.astype(np.int64) // (period // 2)) % 2).astype(np.float32)[..., None]
        return first * (1 - on) + _contrast(first, second) * on
    if kind == "checkered":
        cell = rng.integers(2, 5)
        on = (((_Y.astype(np.int64) // cell) + (_X.astype(np.int64) // cell)) % 2).astype(np.float32)[..., None]
        return first * (1 - on) + _contrast(first, second) * on
    if kind == "noisy":  # each channel of each pixel fully off or on (see the module docstring)
        return 255.0 * (rng.random((IMAGE_SIZE, IMAGE_SIZE, 3)) < 0.5).astype(np.float32)
    raise ValueError(f"Unknown background {kind!r}; known: {ATTRIBUTES['background']}")


def _contrast(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The second colour of a pattern or gradient, pushed away from the first so that it shows
    (two palette colours can be close: a gradient between them would pass for flat)."""
    direction = 1.0 if first.mean() < 100 else -1.0
    return np.clip(second + direction * 60, 0, 255)
