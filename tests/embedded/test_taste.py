"""The hidden taste (the aesthetic task's gold) on hand-built images, its parts computed by hand."""

import numpy as np
import pytest

from diffusion_gym.embedded import world
from diffusion_gym.embedded.taste import parts, read, taste
from diffusion_gym.rewards import jpeg_size_kb

YELLOW = world.OBJECT_RGB["yellow"]  # luma 0.299 * 245 + 0.587 * 215 + 0.114 * 40 = 204.02


def square_on_flat(background_grey: int, top: int = 10, left: int = 10, side: int = 12, colour=YELLOW) -> np.ndarray:
    image = np.full((1, 32, 32, 3), background_grey, dtype=np.uint8)
    image[0, top : top + side, left : left + side] = colour
    return image


def test_a_centred_yellow_square_on_grey_scores_what_the_formula_gives_by_hand():
    image = square_on_flat(120)
    # the 3x3 clean-up drops the square's 4 corners (4 of their 9 neighbours match): 144 - 4 pixels
    area = 140 / 1024
    contrast = (204.02 - 120) / 255
    expected = {
        "contrast": np.exp(-(((contrast - 0.30) / 0.12) ** 2)),
        "calm": 0.25 + 0.75 * 1.0 * 0.5,  # a flat ground: no busy detail, no tonal variety
        "size": np.exp(-(((area - 0.16) / 0.08) ** 2)),
        "placement": 1.0,  # centroid (16, 16)
    }
    got = parts(image)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], [value], rtol=1e-4, err_msg=name)
    by_hand = 10 * expected["contrast"] ** 0.4 * expected["calm"] ** 0.25 * expected["size"] ** 0.2 * expected["placement"] ** 0.15
    np.testing.assert_allclose(taste(image), [by_hand], rtol=1e-4)
    assert 8 < by_hand < 9  # a well-made picture


def test_each_part_moves_the_taste_the_way_it_says():
    best = taste(square_on_flat(120))[0]
    assert taste(square_on_flat(120, top=13, left=14))[0] < best  # centroid 5 px off: placement exp(-(5/3)^2)
    np.testing.assert_allclose(parts(square_on_flat(120, top=13, left=14))["placement"], [np.exp(-((5 / 3) ** 2))], rtol=1e-4)
    assert taste(square_on_flat(190))[0] < 0.3 * best  # a ground as light as the object: no contrast
    assert taste(square_on_flat(120, top=4, left=4, side=24))[0] < best  # too big
    assert taste(square_on_flat(120, top=14, left=14, side=4))[0] < best  # too small


def test_a_busy_background_costs_calm_and_an_image_without_object_scores_zero():
    columns = np.where(np.arange(32) % 2 == 0, 100, 140).astype(np.uint8)  # stripes of 1 px
    image = np.broadcast_to(columns[None, None, :, None], (1, 32, 32, 3)).copy()
    # horizontal neighbours differ by 40, vertical ones by 0, as many pairs of each: mean step 20; luma std 20
    calm = 0.25 + 0.75 * np.exp(-20 / 6) * (0.5 + 0.5 * (1 - np.exp(-((20 / 10) ** 2))))
    np.testing.assert_allclose(parts(image)["calm"], [calm], rtol=1e-4)
    assert not read(image).has_object[0] and taste(image)[0] == 0


def test_the_object_is_found_on_a_noisy_background():
    rng = np.random.default_rng(0)
    image = (255 * (rng.random((1, 32, 32, 3)) < 0.5)).astype(np.uint8)  # the world's binary colour noise
    image[0, 10:22, 10:22] = world.OBJECT_RGB["white"]  # white: 1 noise pixel in 8 matches its colour
    reading = read(image)
    assert reading.has_object[0] and abs(reading.area[0] * 1024 - 140) <= 8 and reading.centre_distance[0] < 0.5
    assert reading.background_busy[0] > 50


def test_the_taste_is_not_jpeg_size_in_disguise():
    """Across backgrounds of every kind, |corr(taste, JPEG kB)| stays under 0.5 (the shipped
    model's samples are checked by `python -m embedded_tools.evaluate_tasks`)."""
    batch = world.sample_batch(400, np.random.default_rng(0), world.TRAIN)
    tastes = taste(batch.images)
    assert abs(np.corrcoef(tastes, jpeg_size_kb(batch.images))[0, 1]) < 0.5
    assert 0 <= tastes.min() and tastes.max() <= 10 and tastes.std() > 0.5


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        taste(np.zeros((1, 32, 32, 3), dtype=np.float32))
