"""SDXL (Podell et al. 2023): a UNet conditioned on two CLIP text encoders, the second one's
pooled projection and the image's size and crop ("added time ids", section 2.2 of the paper).

As `StableDiffusionXLPipeline`: the encoders' penultimate hidden states, concatenated; the time
ids (original size, crop top-left, target size) = (H, W, 0, 0, H, W) of the image sampled; the
empty prompt's conditioning is zeros when model_index.json sets `force_zeros_for_empty_prompt`
(SDXL base does).
"""

from __future__ import annotations

from typing import Sequence

import torch

from diffusion_gym.models.families.base import Conditioning, ModelFamily, clip_hidden_and_pooled


class SDXL(ModelFamily):
    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"

    def matches(self, model) -> bool:
        return model.unet is not None and model.text_encoder_2 is not None

    def encode(self, model, prompts: Sequence[str]) -> Conditioning:
        hidden_1, _ = clip_hidden_and_pooled(model.text_encoder, model.tokenizer, prompts)
        hidden_2, pooled = clip_hidden_and_pooled(model.text_encoder_2, model.tokenizer_2, prompts)
        hidden = torch.cat([hidden_1, hidden_2.to(hidden_1.device)], dim=-1)
        return {"encoder_hidden_states": hidden.to(model.device, model.dtype), "text_embeds": pooled.to(model.device, model.dtype)}

    def unconditional(self, model) -> Conditioning:
        cond = self.encode(model, [""])
        if model.pipeline_config.get("force_zeros_for_empty_prompt", True):
            return {key: torch.zeros_like(value) for key, value in cond.items()}
        return cond

    def predict(self, denoiser, model, x, timesteps, cond, guidance=None) -> torch.Tensor:
        height, width, _ = model.image_shape
        time_ids = torch.tensor([height, width, 0, 0, height, width], device=x.device, dtype=x.dtype).expand(x.shape[0], 6)
        added = {"text_embeds": cond["text_embeds"], "time_ids": time_ids}
        return denoiser(x, timesteps, encoder_hidden_states=cond["encoder_hidden_states"], added_cond_kwargs=added).sample
