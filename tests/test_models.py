"""Model loading: tiny-random, local pipeline folders (ours and diffusers' own layout), the hub."""

import time

import gymnasium as gym

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from diffusion_gym.models import DiffusionModel, build_tiny_random, load_model


def unet_output(model: DiffusionModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, *model.sample_shape, generator=generator)
    ids = model.tokenizer(["a red fox", "a cat"], padding="max_length", max_length=model.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return model.unet(x, torch.tensor([10, 500]), encoder_hidden_states=model.text_encoder(ids)[0]).sample


def test_tiny_random_is_a_small_stable_diffusion():
    model = load_model("tiny-random", device="cpu")
    assert type(model.unet).__name__ == "UNet2DConditionModel" and type(model.vae).__name__ == "AutoencoderKL"
    assert type(model.text_encoder).__name__ == "CLIPTextModel" and type(model.tokenizer).__name__ == "CLIPTokenizer"
    assert model.sample_shape == (4, 8, 8) and model.image_shape == (16, 16, 3)
    assert not any(p.requires_grad for p in model.unet.parameters())
    images = model.decode(torch.zeros(3, 4, 8, 8))
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8


def test_tiny_random_pixel_has_no_vae_and_its_images_are_its_samples():
    model = load_model("tiny-random-pixel", device="cpu")
    assert model.vae is None and model.sample_shape == (3, 16, 16) and model.image_shape == (16, 16, 3)
    x0 = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    np.testing.assert_array_equal(model.decode(x0)[0, 0, 0], [0, 128, 255])  # (x / 2 + 0.5) · 255, rounded


def test_tiny_random_weights_depend_only_on_the_seed():
    torch.manual_seed(123)
    a, b = build_tiny_random(seed=0), build_tiny_random(seed=0)
    torch.testing.assert_close(unet_output(a), unet_output(b))
    assert not torch.allclose(unet_output(a), unet_output(build_tiny_random(seed=1)))


def test_a_saved_folder_loads_back_to_the_same_model(tmp_path):
    model = build_tiny_random()
    model.save_pretrained(tmp_path / "pipe")
    loaded = load_model(str(tmp_path / "pipe"), device="cpu")
    torch.testing.assert_close(unet_output(loaded), unet_output(model))
    torch.testing.assert_close(torch.as_tensor(loaded.decode(torch.ones(1, 4, 8, 8))), torch.as_tensor(model.decode(torch.ones(1, 4, 8, 8))))


def test_a_folder_written_by_diffusers_stable_diffusion_pipeline_loads(tmp_path):
    """The real Stable Diffusion layout (with its safety checker slots empty) goes through the same path."""
    model = build_tiny_random()
    pipeline = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=model.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(tmp_path / "sd")
    loaded = load_model(str(tmp_path / "sd"), device="cpu")
    torch.testing.assert_close(unet_output(loaded), unet_output(model))
    assert loaded.vae is not None


def test_our_folder_is_readable_by_diffusers_too(tmp_path):
    build_tiny_random().save_pretrained(tmp_path / "pipe")
    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe", safety_checker=None, requires_safety_checker=False)
    assert pipeline.unet.config.sample_size == 8


def test_a_model_that_cannot_be_found_offline_says_how_to_pass_a_folder():
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        load_model("diffusion-gym-tests/no-such-model", device="cpu")
    assert time.perf_counter() - start < 10, "an unreachable hub must not be waited on"
    message = str(error.value)
    assert "no-such-model" in message and "model='DIR'" in message and "tiny-random" in message


def test_a_folder_without_model_index_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="model_index.json"):
        load_model(str(tmp_path), device="cpu")


def test_bad_device_and_dtype_are_rejected():
    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny-random", device="cpu", dtype="float64")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            load_model("tiny-random", device="cuda")


def test_an_unreachable_hub_fails_fast_with_the_reason(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.perf_counter()
    with pytest.raises(ValueError, match="no connection to the hub"):
        load_model("diffusion-gym-tests/no-such-model", device="cpu")
    assert time.perf_counter() - start < 10


def test_an_env_can_share_the_model_of_a_policy_in_training_without_freezing_it():
    from diffusion_gym.policy import DiffusionPolicy

    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=2, model="tiny-random", num_inference_steps=2, device="cpu")
    policy = DiffusionPolicy.from_env(envs)
    policy.enable_lora(rank=2)
    trainable = [n for n, p in policy.denoiser.named_parameters() if p.requires_grad]
    other = gym.make_vec("DiffusionCompressibility-v0", num_envs=2, model=policy.model, num_inference_steps=2, device="cpu")
    assert other.unwrapped.model is policy.model
    assert [n for n, p in policy.denoiser.named_parameters() if p.requires_grad] == trainable != []
    # a new model passed in is frozen, as a loaded one is
    fresh = build_tiny_random()
    assert not any(p.requires_grad for p in load_model(fresh, device="cpu").unet.parameters())
