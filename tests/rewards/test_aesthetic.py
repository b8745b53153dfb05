"""The LAION aesthetic predictor, with a tiny random CLIP and a random MLP in the published layout."""

import time

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_gym.rewards import AestheticScorer, make_reward
from diffusion_gym.rewards.aesthetic import AestheticMLP
from tests.rewards.tiny_models import tiny_clip

# The keys of sac+logos+ava1-l14-linearMSE.pth (Linear layers at 0, 2, 4, 6, 7 of `layers`).
PUBLISHED_KEYS = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """(CLIP folder, MLP weights file, the MLP's state dict written in the published layout)."""
    folder = tmp_path_factory.mktemp("aesthetic")
    clip = tiny_clip(folder / "clip")
    torch.manual_seed(1)
    state = {}
    dims = [(1024, 12), (128, 1024), (64, 128), (16, 64), (1, 16)]
    for index, (out_dim, in_dim) in zip((0, 2, 4, 6, 7), dims):
        state[f"layers.{index}.weight"] = torch.randn(out_dim, in_dim) / in_dim**0.5
        state[f"layers.{index}.bias"] = torch.randn(out_dim) * 0.1
    assert set(state) == PUBLISHED_KEYS
    torch.save(state, folder / "sac+logos+ava1-l14-linearMSE.pth")
    return clip, folder / "sac+logos+ava1-l14-linearMSE.pth", state


def hand_written_scores(clip_folder, state, images) -> np.ndarray:
    """Preprocess (resize the short side to 32 bicubic, centre-crop 32, scale, normalise), embed
    with the vision tower and projection, L2-normalise, then the MLP as matrix products."""
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(clip_folder).eval()
    pixels = []
    for image in images:
        h, w = image.shape[:2]
        scale = 32 / min(h, w)
        size = (max(32, int(w * scale)), max(32, int(h * scale)))  # (width, height)
        resized = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC), dtype=np.float64)
        top, left = (resized.shape[0] - 32) // 2, (resized.shape[1] - 32) // 2
        crop = resized[top : top + 32, left : left + 32] / 255
        pixels.append(((crop - OPENAI_MEAN) / OPENAI_STD).transpose(2, 0, 1))
    pixels = torch.tensor(np.stack(pixels), dtype=torch.float32)
    with torch.no_grad():
        pooled = clip.vision_model(pixel_values=pixels).pooler_output
        e = clip.visual_projection(pooled).double()
    x = e / e.norm(dim=-1, keepdim=True)
    for index in (0, 2, 4, 6, 7):  # dropouts are identities at evaluation
        x = x @ state[f"layers.{index}.weight"].double().T + state[f"layers.{index}.bias"].double()
    return x.squeeze(-1).numpy()


def test_scores_equal_a_hand_written_forward_pass_for_images_of_mixed_sizes(parts):
    clip, mlp_weights, state = parts
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in ((32, 32, 3), (40, 64, 3), (75, 50, 3), (33, 97, 3))]
    scorer = AestheticScorer(clip_model=str(clip), mlp_weights=mlp_weights)
    scores = scorer(images)
    expected = hand_written_scores(clip, state, images)
    assert scores.shape == (4,) and np.ptp(expected) > 1e-3  # distinct images, distinct scores
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)


def test_the_reward_scores_a_batch_and_the_mlp_has_the_published_layout(parts):
    clip, mlp_weights, state = parts
    assert set(AestheticMLP(12).state_dict()) == PUBLISHED_KEYS
    images = np.random.default_rng(1).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    reward_fn = make_reward("aesthetic", clip_model=str(clip), mlp_weights=str(mlp_weights), batch_size=2)
    rewards, info = reward_fn(images, ["a cat"] * 5)
    np.testing.assert_allclose(rewards, hand_written_scores(clip, state, list(images)), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(info["aesthetic"], rewards)


def test_models_load_lazily_but_missing_ones_fail_when_the_reward_is_made(parts, tmp_path):
    clip, mlp_weights, _ = parts
    reward_fn = make_reward("aesthetic", clip_model=str(clip), mlp_weights=str(mlp_weights))
    assert "models" not in vars(reward_fn.scorer), "nothing loads before the first call"
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        make_reward("aesthetic", clip_model="diffusion-gym-tests/no-such-clip")
    assert time.perf_counter() - start < 10, "an unreachable hub must not be waited on"
    assert "no-such-clip" in str(error.value) and "clip_model='DIR'" in str(error.value)
    with pytest.raises(ValueError, match="do not exist"):
        AestheticScorer(clip_model=str(clip), mlp_weights=tmp_path / "missing.pth")


def test_bad_images_are_rejected(parts):
    clip, mlp_weights, _ = parts
    scorer = AestheticScorer(clip_model=str(clip), mlp_weights=mlp_weights)
    with pytest.raises(ValueError, match="uint8"):
        scorer([np.zeros((32, 32, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match="uint8"):
        scorer(np.zeros((2, 32, 32), dtype=np.uint8))
