"""Tiny, randomly initialised models of every family, built in code.

- `tiny-random`: the classes of Stable Diffusion v1.4 (`UNet2DConditionModel`, `AutoencoderKL`, a
  CLIP text model and tokenizer, a DDIM schedule with SD's betas);
- `tiny-random-sdxl`: SDXL's (a UNet with added time ids, `CLIPTextModel` and
  `CLIPTextModelWithProjection`);
- `tiny-random-sd3`: SD3's (`SD3Transformer2DModel`, two `CLIPTextModelWithProjection`,
  `T5EncoderModel`, `FlowMatchEulerDiscreteScheduler` with shift 3);
- `tiny-random-flux`: FLUX.1-dev's (`FluxTransformer2DModel` with the guidance input,
  `CLIPTextModel`, `T5EncoderModel`, a schedule shifted by the image size).
Small enough that tests and smoke runs need no download and take milliseconds a step. Their
samples are noise: they are for plumbing, not pictures. The weights depend only on the seed (the
global torch RNG is left as it was).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import string

from diffusers import AutoencoderKL, DDIMScheduler, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

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


def tiny_t5_tokenizer(model_max_length: int = 32) -> T5Tokenizer:
    """A real `T5Tokenizer` (a unigram model) whose vocabulary is the printable characters, alone
    and word-initial: every ASCII prompt tokenizes."""
    chars = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)] + [(c, -2.0) for c in chars] + [("▁" + c, -1.5) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def t5_text_encoder(tokenizer: T5Tokenizer, width: int) -> T5EncoderModel:
    """A randomly initialised 2-layer `T5EncoderModel` of the given width for `tokenizer`."""
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2, num_heads=width // 8, pad_token_id=0, eos_token_id=1))


def tiny_vae(latent_channels: int, shift_factor: float | None = None) -> AutoencoderKL:
    """A 2-level `AutoencoderKL`: latents at half the image's size."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=latent_channels, norm_num_groups=32, sample_size=16,
        shift_factor=shift_factor, scaling_factor=1.5 if shift_factor is not None else 0.18215,
    )  # fmt: skip


def clip_text_encoder(tokenizer: CLIPTokenizer, width: int, intermediate: int, heads: int, layers: int, projection_dim: int | None = None) -> CLIPTextModel:
    """A randomly initialised `CLIPTextModel` sized for `tokenizer` (vocabulary, length, special
    tokens); with `projection_dim` a `CLIPTextModelWithProjection` (SDXL's second, SD3's)."""
    cls, extra = (CLIPTextModel, {}) if projection_dim is None else (CLIPTextModelWithProjection, {"projection_dim": projection_dim})
    return cls(
        CLIPTextConfig(
            **extra,
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


def build_tiny_random(seed: int = 0, pixel_space: bool = False, flow: bool = False) -> DiffusionModel:
    """Build the tiny Stable Diffusion: 4×8×8 latents decoded to 16×16 RGB images, or with
    `pixel_space=True` a UNet on 3×16×16 pixels and no VAE (like the embedded model) that
    predicts x_0 clipped to [-1, 1]: its images are its samples, so rewards on them give
    learning tests a direct signal. With `flow=True` as well, the same UNet is a flow-matching
    model (a `FlowMatchEulerDiscreteScheduler`, velocity prediction): the flow samplers' and
    GRPO's learning tests run on it.

    The weights depend only on `seed` (the global torch RNG is left as it was).
    """
    if flow and not pixel_space:
        raise ValueError("The tiny flow model is a pixel-space one: pass pixel_space=True with flow=True (tiny-random-sd3 is a latent flow model).")
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
    if flow:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    if pixel_space:
        vae = None
    name = ("tiny-random-pixel-flow" if flow else "tiny-random-pixel") if pixel_space else "tiny-random"
    return _in_eval_mode(DiffusionModel(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, vae=vae, name=name))


def build_tiny_sdxl(seed: int = 0) -> DiffusionModel:
    """A tiny SDXL: 4×8×8 latents, two CLIP encoders (the second's pooled projection and the time
    ids enter through `addition_embed_type="text_time"`), a DDIM schedule with SDXL's betas."""
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = clip_text_encoder(tokenizer, width=TEXT_DIM, intermediate=37, heads=4, layers=2)
        text_encoder_2 = clip_text_encoder(tokenizer_2, width=TEXT_DIM, intermediate=37, heads=4, layers=2, projection_dim=TEXT_DIM)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=TEXT_DIM + 6 * 8,
            cross_attention_dim=2 * TEXT_DIM, norm_num_groups=32,
        )  # fmt: skip
        vae = tiny_vae(latent_channels=4)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    return _in_eval_mode(DiffusionModel(
        unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        scheduler=scheduler, vae=vae, name="tiny-random-sdxl", pipeline_config={"force_zeros_for_empty_prompt": True},
    ))  # fmt: skip


def build_tiny_sd3(seed: int = 0) -> DiffusionModel:
    """A tiny SD3: an `SD3Transformer2DModel` on 4×8×8 latents, two CLIP encoders with projections
    and T5 (64 wide, SD3's joint attention width), SD3's flow schedule (shift 3)."""
    tokenizer, tokenizer_2, tokenizer_3 = tiny_clip_tokenizer(), tiny_clip_tokenizer(), tiny_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = clip_text_encoder(tokenizer, width=TEXT_DIM, intermediate=37, heads=4, layers=2, projection_dim=TEXT_DIM)
        text_encoder_2 = clip_text_encoder(tokenizer_2, width=TEXT_DIM, intermediate=37, heads=4, layers=2, projection_dim=TEXT_DIM)
        text_encoder_3 = t5_text_encoder(tokenizer_3, width=2 * TEXT_DIM)
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
            joint_attention_dim=2 * TEXT_DIM, caption_projection_dim=32, pooled_projection_dim=2 * TEXT_DIM, pos_embed_max_size=16,
        )  # fmt: skip
        vae = tiny_vae(latent_channels=4, shift_factor=0.0609)
    return _in_eval_mode(DiffusionModel(
        transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, name="tiny-random-sd3",
        pipeline_config={"max_sequence_length": 32},
    ))  # fmt: skip


def build_tiny_flux(seed: int = 0) -> DiffusionModel:
    """A tiny FLUX.1-dev: a `FluxTransformer2DModel` with the guidance input on 4×8×8 latents (16
    tokens of 2×2 patches), CLIP's pooled output and T5, FLUX's schedule shifted by the image size."""
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = clip_text_encoder(tokenizer, width=TEXT_DIM, intermediate=37, heads=4, layers=2)
        text_encoder_2 = t5_text_encoder(tokenizer_2, width=TEXT_DIM)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM, guidance_embeds=True, axes_dims_rope=(4, 4, 8),
        )  # fmt: skip
        vae = tiny_vae(latent_channels=4, shift_factor=0.1159)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return _in_eval_mode(DiffusionModel(
        transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        scheduler=scheduler, vae=vae, name="tiny-random-flux", sample_size=8, pipeline_config={"max_sequence_length": 32},
    ))  # fmt: skip


def _in_eval_mode(model: DiffusionModel) -> DiffusionModel:
    """`model` with its networks in eval mode (no dropout), as a loaded pipeline's are."""
    for module in model.modules:
        module.eval()
    return model
