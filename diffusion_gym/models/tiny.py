"""`tiny-random`: a tiny, randomly initialised Stable Diffusion built in code.

The same classes as Stable Diffusion v1.4 (`UNet2DConditionModel`, `AutoencoderKL`, a CLIP text
model and tokenizer, a DDIM schedule with SD's betas), small enough that tests and smoke runs need
no download and take milliseconds a step. Its samples are noise: it is for plumbing, not pictures.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from diffusion_gym.models.pipeline import DiffusionModel

TEXT_DIM = 32


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE tokenizers (GPT-2, CLIP) use."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = keep[:], 0
    for byte in range(256):
        if byte not in keep:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def tiny_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A real `CLIPTokenizer` whose vocabulary is the 256 bytes (with and without the end-of-word
    mark) and no merges: every prompt tokenizes, one token a character."""
    alphabet = byte_alphabet()
    vocab = {token: i for i, token in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=model_max_length)


def clip_text_encoder(tokenizer: CLIPTokenizer, width: int, intermediate: int, heads: int, layers: int) -> CLIPTextModel:
    """A randomly initialised `CLIPTextModel` sized for `tokenizer` (vocabulary, length, special tokens)."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=intermediate,
            num_attention_heads=heads,
            num_hidden_layers=layers,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_tiny_random(seed: int = 0, pixel_space: bool = False) -> DiffusionModel:
    """Build the tiny Stable Diffusion: 4×8×8 latents decoded to 16×16 RGB images, or with
    `pixel_space=True` a UNet on 3×16×16 pixels and no VAE (like the embedded model) that
    predicts x_0 clipped to [-1, 1]: its images are its samples, so rewards on them give
    learning tests a direct signal.

    The weights depend only on `seed` (the global torch RNG is left as it was).
    """
    tokenizer = tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = clip_text_encoder(tokenizer, width=TEXT_DIM, intermediate=37, heads=4, layers=2)
        unet = UNet2DConditionModel(
            sample_size=16 if pixel_space else 8,
            in_channels=3 if pixel_space else 4,
            out_channels=3 if pixel_space else 4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_DIM,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=32,
            sample_size=16,
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        # the pixel variant predicts x_0 itself, kept in the image range: its untrained samples stay
        # in [-1, 1] instead of saturating, so rewards on its images respond to the policy
        prediction_type="sample" if pixel_space else "epsilon",
        clip_sample=pixel_space,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    if pixel_space:
        vae = None
    for module in (unet, text_encoder, vae):
        if module is not None:
            module.eval()
    name = "tiny-random-pixel" if pixel_space else "tiny-random"
    return DiffusionModel(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, vae=vae, name=name)
