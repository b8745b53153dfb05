"""FLUX.1 (Black Forest Labs 2024): a transformer (`FluxTransformer2DModel`) on a rectified flow
whose schedule shifts with the image size, conditioned on T5's tokens and CLIP's pooled output.

As `FluxPipeline`:
- the latents (C, H, W) enter as a sequence of 2×2 patches, (H/2 · W/2, 4C), with the position ids
  (0, row, column) of each patch and all-zero ids for the text tokens; the env and the policy
  keep them as (C, H, W), and `predict` packs and unpacks;
- the timestep enters as σ = t / 1000;
- FLUX.1-dev is guidance-distilled: the guidance scale is an input of the one pass
  (`guidance_embeds`), there is no unconditional pass; FLUX.1-schnell takes no guidance;
- T5 reads 512 tokens (the pipeline's `max_sequence_length`);
- the σ grid is linspace(1, 1/N, N), shifted by mu, which grows linearly with the number of
  patches (diffusers' `calculate_shift`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from diffusion_gym.models.families.base import Conditioning, ModelFamily, image_size_shift, t5_length, tokenize

DEFAULT_SAMPLE_SIZE = 128
"""Latent height and width when neither the model nor the transformer's config gives one (1024 pixels)."""


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents as (B, H/2 · W/2, 4C) tokens of 2×2 patches."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack`: (B, H/2 · W/2, 4C) tokens as (B, C, H, W) latents."""
    b, _, d = tokens.shape
    return tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, height, width)


def patch_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The (0, row, column) ids of the 2×2 patches, (H/2 · W/2, 3)."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class Flux(ModelFamily):
    name = "flux"
    pipeline_class = "FluxPipeline"
    distilled_guidance = True

    def matches(self, model) -> bool:
        return type(model.transformer).__name__ == "FluxTransformer2DModel"

    def encode(self, model, prompts: Sequence[str]) -> Conditioning:
        pooled = model.text_encoder(tokenize(model.tokenizer, prompts, model.text_encoder.device)).pooler_output
        hidden = model.text_encoder_2(tokenize(model.tokenizer_2, prompts, model.text_encoder_2.device, t5_length(model, 512)))[0]
        return {"encoder_hidden_states": hidden.to(model.device, model.dtype), "pooled_projections": pooled.to(model.device, model.dtype)}

    def predict(self, denoiser, model, x, timesteps, cond, guidance=None) -> torch.Tensor:
        _, _, height, width = x.shape
        text = cond["encoder_hidden_states"]
        if not denoiser.config.guidance_embeds:
            guidance = None  # FLUX.1-schnell: no guidance input
        elif guidance is not None:
            guidance = guidance.to(device=x.device, dtype=torch.float32)
        out = denoiser(
            hidden_states=pack(x), timestep=timesteps.to(x.dtype) / 1000, guidance=guidance, pooled_projections=cond["pooled_projections"],
            encoder_hidden_states=text, txt_ids=torch.zeros(text.shape[1], 3, device=x.device, dtype=x.dtype),
            img_ids=patch_ids(height, width, x.device, x.dtype),
        ).sample  # fmt: skip
        return unpack(out, height, width)

    def sample_shape(self, model) -> tuple[int, int, int]:
        size = model.sample_size or getattr(model.transformer.config, "sample_size", None) or DEFAULT_SAMPLE_SIZE
        if size % 2:
            raise ValueError(f"FLUX samples latents in 2×2 patches: sample_size must be even, got {size}.")
        return (int(model.transformer.config.in_channels) // 4, int(size), int(size))

    def schedule(self, model, num_inference_steps: int) -> dict:
        schedule = {"sigmas": np.linspace(1.0, 1 / num_inference_steps, num_inference_steps).tolist()}
        if model.scheduler.config.get("use_dynamic_shifting", False):
            _, height, width = self.sample_shape(model)
            schedule["mu"] = image_size_shift(model.scheduler.config, (height // 2) * (width // 2))
        return schedule
