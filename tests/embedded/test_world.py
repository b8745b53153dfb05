"""The toy world: deterministic renders, captions, splits, and the JPEG spread of its backgrounds."""

import numpy as np
import pytest

from diffusion_gym.embedded import world
from diffusion_gym.rewards import jpeg_size_kb


def test_same_seed_same_renders():
    a = world.sample_batch(16, np.random.default_rng(3))
    b = world.sample_batch(16, np.random.default_rng(3))
    np.testing.assert_array_equal(a.images, b.images)
    assert a.prompts == b.prompts
    assert a.images.shape == (16, 32, 32, 3) and a.images.dtype == np.uint8


def test_captions_round_trip_and_labels_match():
    for combination in world.ALL_COMBINATIONS:
        assert world.parse_caption(world.caption(combination)) == combination
    assert world.caption(("large", "red", "triangle", "striped")) == "a large red triangle on a striped background"
    assert world.parse_caption("a large red zebra on a striped background") is None
    batch = world.sample_batch(8, np.random.default_rng(0))
    for prompt, labels in zip(batch.prompts, batch.labels):
        assert world.labels_of([world.parse_caption(prompt)])[0].tolist() == labels.tolist()


def test_held_out_combinations_are_unseen_but_their_values_are_not():
    assert set(world.TRAIN).isdisjoint(world.HELD_OUT)
    assert len(world.TRAIN) + len(world.HELD_OUT) == len(world.ALL_COMBINATIONS) == 240
    for i, name in enumerate(world.ATTRIBUTE_NAMES):
        held_values = {c[i] for c in world.HELD_OUT}
        assert held_values <= {c[i] for c in world.TRAIN}, name
    batch = world.sample_batch(500, np.random.default_rng(1))
    assert set(batch.prompts) <= set(world.TRAIN_PROMPTS)


def test_object_colour_is_where_the_shape_is():
    """A large red square on a flat background: the centre pixel is red, a corner is background."""
    image = world.render([("large", "red", "square", "flat")], np.random.default_rng(0))[0]
    centre = image[14:18, 14:18].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(centre, world.OBJECT_RGB["red"], atol=1)
    corner = image[0, 0].astype(float)
    assert min(np.abs(corner - c).sum() for c in world.BACKGROUND_RGB) < 1


def test_backgrounds_span_more_than_a_factor_two_in_jpeg_size():
    rng = np.random.default_rng(0)
    flat = jpeg_size_kb(world.render([("small", "purple", "triangle", "flat")] * 20, rng)).mean()
    noisy = jpeg_size_kb(world.render([("small", "yellow", "circle", "noisy")] * 20, rng)).mean()
    assert noisy / flat > 2.0
    by_background = [
        jpeg_size_kb(world.render([("large", "red", "circle", bg)] * 20, rng)).mean() for bg in world.ATTRIBUTES["background"]
    ]
    assert by_background == sorted(by_background)  # flat < gradient < striped < checkered < noisy


@pytest.mark.parametrize("bad", [("huge", "red", "circle", "flat"), ("small", "red", "hexagon", "flat"), ("small", "red", "circle", "plaid")])
def test_unknown_attribute_values_are_rejected(bad):
    with pytest.raises((ValueError, KeyError)):
        world.render([bad], np.random.default_rng(0))


def test_a_variation_draws_more_than_the_world_and_none_leaves_the_world_as_it_is():
    combination = [("large", "red", "square", "flat")] * 200
    plain = world.render(combination, np.random.default_rng(0))
    np.testing.assert_array_equal(plain, world.render(combination, np.random.default_rng(0), variation=None))
    varied = world.render(combination, np.random.default_rng(0), variation=world.Variation())
    corners = varied[:, 0, 0].astype(float)  # a flat background's colour
    palette = world.BACKGROUND_RGB
    off_palette = np.linalg.norm(corners[:, None] - palette[None], axis=-1).min(axis=1) > 10
    assert off_palette.mean() > 0.9 and corners.max() > 200  # colours from all of RGB, light ones too
    red = np.array(world.OBJECT_RGB["red"], dtype=float)
    object_area = (np.linalg.norm(varied.astype(float) - red, axis=-1) < 60).sum(axis=(1, 2))
    assert object_area.std() > 3 * (np.linalg.norm(plain.astype(float) - red, axis=-1) < 60).sum(axis=(1, 2)).std()  # sizes vary
