"""The hidden taste of the toy world: the gold that its aesthetic predictor learns from ratings.

LAION's aesthetic predictor was made from people's ratings of images; what those people liked is
unknown, so how far a model fine-tuned on the predictor has really improved cannot be measured.
In the toy world the raters' taste is this documented, deterministic function of the image, so
it can: `embedded_aesthetic_gold` is it, and `embedded_aesthetic` is a predictor learned from
noisy ratings of it (`diffusion_gym.embedded.aesthetic`).

The taste reads the image alone (never its prompt) in four parts, each in [0, 1]:

| part | what it likes | read from |
|---|---|---|
| contrast | the object standing out from its background by a moderate luminance step, ~30 % of the range: a light object wants a darker ground, a dark object a lighter one (the object's colour and the background's tone must suit each other) | the object's and the background's mean luma |
| calm | a background with tonal variety but little busy detail: a soft gradient best, then a plain ground; stripes, checks and noise much less | the background's luma std and mean step between neighbouring pixels |
| size | an object of about a sixth of the picture: neither the world's small objects nor its large ones | the object's area |
| placement | the object centred | the distance of the object's centroid from the image centre |

    contrast  = exp(-((|luma_object - luma_background| / 255 - 0.30) / 0.12)²)
    calm      = 0.25 + 0.75 · exp(-busy / 6) · (0.5 + 0.5 · (1 - exp(-(luma_std_background / 10)²)))
    size      = exp(-((area / image area - 0.16) / 0.08)²)
    placement = exp(-(centroid distance from the centre / 3 px)²)
    taste     = 10 · contrast^0.4 · calm^0.25 · size^0.2 · placement^0.15

A product, so that no one thing maximises it (a perfect background under a badly placed object
of the wrong size scores little), and skewed to the right: most images are middling, few are
excellent, so there is room above the starting model. Scores lie in [0, 10].

The object is found by colour: pixels within `MATCH_DISTANCE` of one of the world's six object
colours, kept where most of their 3×3 neighbourhood matches the same colour (the noisy
background's isolated pure-colour pixels do not), the colour with the most such pixels taken as
the object's. An image with no object scores 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffusion_gym.embedded import world
from diffusion_gym.images import check_images

OBJECT_PALETTE = np.array(list(world.OBJECT_RGB.values()), dtype=np.float32)  # (6, 3)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as JPEG's Y
MATCH_DISTANCE = 60.0
"""RGB distance within which a pixel counts as the object colour."""
MIN_OBJECT_PIXELS = 6
"""Fewer matching pixels than this: no object."""

# The preferences (see the module docstring).
CONTRAST_BEST, CONTRAST_WIDTH = 0.30, 0.12  # |luma(object) - luma(background)| / 255
AREA_BEST, AREA_WIDTH = 0.16, 0.08  # the object's share of the image
CENTRE_WIDTH = 3.0  # pixels
BUSY_SCALE = 6.0  # grey levels of mean neighbour step that cost a factor e
CALM_FLOOR = 0.25  # the busiest background still keeps this much of calm
RANGE_SCALE = 10.0  # grey levels of luma std that bring most of calm's tonal-variety part
EXPONENTS = {"contrast": 0.4, "calm": 0.25, "size": 0.2, "placement": 0.15}
PARTS = tuple(EXPONENTS)


@dataclass
class Reading:
    """What the taste reads in a batch of images (N each).

    Attributes:
        has_object: bool.
        area: the object's share of the image, in [0, 1].
        centre_distance: pixels from the object's centroid to the image centre.
        object_luma, background_luma: mean luma, 0-255.
        background_busy: mean absolute luma step between neighbouring background pixels.
        background_range: luma std of the background.
    """

    has_object: np.ndarray
    area: np.ndarray
    centre_distance: np.ndarray
    object_luma: np.ndarray
    background_luma: np.ndarray
    background_busy: np.ndarray
    background_range: np.ndarray


def _box3(x: np.ndarray) -> np.ndarray:
    """Sum over each pixel's 3×3 neighbourhood (zero outside), for (N, H, W) arrays."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    h, w = x.shape[1:]
    return sum(padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))


def read(images: np.ndarray) -> Reading:
    """Segment the object and measure what the taste looks at, for (N, H, W, 3) uint8 images."""
    check_images(images)
    pixels = images.astype(np.float32)
    n, h, w, _ = images.shape
    distance = np.linalg.norm(pixels[..., None, :] - OBJECT_PALETTE, axis=-1)  # (N, H, W, 6)
    nearest = distance.argmin(-1)
    candidate = distance.min(-1) < MATCH_DISTANCE
    # a pixel of colour k stays if at least 5 of its 3×3 neighbourhood are candidates of colour k
    kept = np.zeros((len(OBJECT_PALETTE), n, h, w), dtype=bool)
    for k in range(len(OBJECT_PALETTE)):
        of_k = candidate & (nearest == k)
        kept[k] = of_k & (_box3(of_k.astype(np.float32)) >= 5)
    counts = kept.sum(axis=(2, 3))  # (6, N)
    colour = counts.argmax(0)
    mask = kept[colour, np.arange(n)]  # (N, H, W)
    has_object = counts.max(0) >= MIN_OBJECT_PIXELS

    luma = pixels @ LUMA  # (N, H, W)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    area = mask.sum(axis=(1, 2)).astype(np.float64)
    safe = np.maximum(area, 1)
    cy, cx = (mask * ys).sum(axis=(1, 2)) / safe, (mask * xs).sum(axis=(1, 2)) / safe
    object_luma = (mask * luma).sum(axis=(1, 2)) / safe

    background = _box3(mask.astype(np.float32)) == 0  # the object and a 1-pixel margin (its anti-aliased edge) left out
    bg_count = np.maximum(background.sum(axis=(1, 2)), 1)
    background_luma = (background * luma).sum(axis=(1, 2)) / bg_count
    background_range = np.sqrt((background * (luma - background_luma[:, None, None]) ** 2).sum(axis=(1, 2)) / bg_count)
    steps, pairs = np.zeros(n), np.zeros(n)
    for a, b, both in (
        (luma[:, 1:, :], luma[:, :-1, :], background[:, 1:, :] & background[:, :-1, :]),
        (luma[:, :, 1:], luma[:, :, :-1], background[:, :, 1:] & background[:, :, :-1]),
    ):
        steps += (np.abs(a - b) * both).sum(axis=(1, 2))
        pairs += both.sum(axis=(1, 2))
    return Reading(
        has_object=has_object,
        area=area / (h * w),
        centre_distance=np.hypot(cy - h / 2, cx - w / 2),
        object_luma=object_luma,
        background_luma=background_luma,
        background_busy=steps / np.maximum(pairs, 1),
        background_range=background_range,
    )


def parts(images: np.ndarray) -> dict[str, np.ndarray]:
    """Each part of the taste, (N,) float64 in [0, 1] (see the module docstring)."""
    r = read(images)
    contrast = np.abs(r.object_luma - r.background_luma) / 255.0
    found = r.has_object.astype(np.float64)
    return {
        "contrast": found * np.exp(-(((contrast - CONTRAST_BEST) / CONTRAST_WIDTH) ** 2)),
        "calm": CALM_FLOOR + (1 - CALM_FLOOR) * np.exp(-r.background_busy / BUSY_SCALE) * (0.5 + 0.5 * (1 - np.exp(-((r.background_range / RANGE_SCALE) ** 2)))),
        "size": found * np.exp(-(((r.area - AREA_BEST) / AREA_WIDTH) ** 2)),
        "placement": found * np.exp(-((r.centre_distance / CENTRE_WIDTH) ** 2)),
    }


def taste(images: np.ndarray) -> np.ndarray:
    """The hidden taste of each image, (N,) float64 in [0, 10]."""
    p = parts(images)
    return 10.0 * np.prod([p[name] ** EXPONENTS[name] for name in PARTS], axis=0)
