"""Stable Diffusion 1.x/2.x and models shaped like it (tiny-random, the embedded models): a
`UNet2DConditionModel` conditioned on one CLIP text encoder's last hidden state."""

from __future__ import annotations

from typing import Sequence

import torch

from diffusion_gym.models.families.base import Conditioning, ModelFamily, tokenize


class StableDiffusion(ModelFamily):
    name = "stable-diffusion"
    pipeline_class = "StableDiffusionPipeline"

    def matches(self, model) -> bool:
        return model.unet is not None and model.text_encoder_2 is None

    def encode(self, model, prompts: Sequence[str]) -> Conditioning:
        hidden = model.text_encoder(tokenize(model.tokenizer, prompts, model.text_encoder.device))[0]
        return {"encoder_hidden_states": hidden.to(model.device, model.dtype)}

    def predict(self, denoiser, model, x, timesteps, cond, guidance=None) -> torch.Tensor:
        return denoiser(x, timesteps, encoder_hidden_states=cond["encoder_hidden_states"]).sample
