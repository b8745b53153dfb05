"""JPEG rewards against the files PIL writes, and the reward registry."""

import numpy as np
import pytest
from PIL import Image

from diffusion_gym.rewards import REWARDS, jpeg_size_kb, make_reward


def images(n=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    flat = np.full((n, size, size, 3), 128, dtype=np.uint8)
    flat[1:] = rng.integers(0, 256, size=(n - 1, size, size, 3), dtype=np.uint8)  # noise compresses badly
    return flat


def test_jpeg_size_equals_the_file_pil_writes_in_kb(tmp_path):
    batch = images()
    for i, image in enumerate(batch):
        Image.fromarray(image).save(tmp_path / f"{i}.jpg", format="JPEG", quality=95)
    on_disk = np.array([(tmp_path / f"{i}.jpg").stat().st_size / 1000 for i in range(len(batch))])
    np.testing.assert_array_equal(jpeg_size_kb(batch), on_disk)
    assert on_disk[0] < on_disk[1]  # the flat image is the smallest file


def test_compressibility_is_minus_the_size_and_incompressibility_plus():
    batch, prompts = images(), ["a"] * 4
    sizes = jpeg_size_kb(batch)
    rewards, info = make_reward("jpeg_compressibility")(batch, prompts)
    np.testing.assert_array_equal(rewards, -sizes)
    np.testing.assert_array_equal(info["jpeg_kb"], sizes)
    rewards, _ = make_reward("jpeg_incompressibility")(batch, prompts)
    np.testing.assert_array_equal(rewards, sizes)


def test_quality_is_a_factory_option():
    batch = images()
    low = make_reward("jpeg_incompressibility", quality=10)(batch, ["a"] * 4)[0]
    assert (low[1:] < jpeg_size_kb(batch)[1:]).all()


def test_registry_rejects_unknown_names_and_lists_the_known_ones():
    with pytest.raises(ValueError) as error:
        make_reward("aesthetik")
    for name in REWARDS:
        assert name in str(error.value)


def test_any_callable_is_a_reward():
    fn = lambda images, prompts: (np.zeros(len(images)), {})  # noqa: E731
    assert make_reward(fn) is fn


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), np.zeros((2, 8, 8, 4), np.uint8), [[0]]])
def test_bad_images_are_rejected(bad):
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\) uint8"):
        jpeg_size_kb(bad)
