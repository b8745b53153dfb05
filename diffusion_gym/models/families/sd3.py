"""Stable Diffusion 3 / 3.5 (Esser et al. 2024): an MMDiT (`SD3Transformer2DModel`) on a
rectified flow, conditioned on two CLIP text encoders and T5.

As `StableDiffusion3Pipeline`: the CLIP encoders' penultimate hidden states are concatenated,
zero-padded to T5's width and put before T5's tokens; the pooled projections of both CLIPs are
concatenated. T5 reads 256 tokens (the pipeline's `max_sequence_length`); without T5 (the
pipeline allows dropping it) its tokens are zeros. The schedule is the scheduler's own (SD3's is
shifted by 3 in its config), or, where the config shifts by the image size, shifted by the number
of patches as the pipeline does.
"""

from __future__ import annotations

from typing import Sequence

import torch

from diffusion_gym.models.families.base import Conditioning, ModelFamily, clip_hidden_and_pooled, image_size_shift, t5_length, tokenize


class SD3(ModelFamily):
    name = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"

    def matches(self, model) -> bool:
        return type(model.transformer).__name__ == "SD3Transformer2DModel"

    def encode(self, model, prompts: Sequence[str]) -> Conditioning:
        hidden_1, pooled_1 = clip_hidden_and_pooled(model.text_encoder, model.tokenizer, prompts)
        hidden_2, pooled_2 = clip_hidden_and_pooled(model.text_encoder_2, model.tokenizer_2, prompts)
        clip = torch.cat([hidden_1, hidden_2.to(hidden_1.device)], dim=-1)
        width = model.transformer.config.joint_attention_dim
        if model.text_encoder_3 is not None:
            t5 = model.text_encoder_3(tokenize(model.tokenizer_3, prompts, model.text_encoder_3.device, t5_length(model, 256)))[0].to(clip.device)
        else:
            t5 = torch.zeros(len(prompts), t5_length(model, 256), width, device=clip.device, dtype=clip.dtype)
        if clip.shape[-1] > t5.shape[-1]:
            raise ValueError(f"{model.name!r}: the CLIP embeddings ({clip.shape[-1]} wide) are wider than T5's ({t5.shape[-1]}); SD3 pads CLIP to T5's width.")
        hidden = torch.cat([torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1])), t5.to(clip.dtype)], dim=-2)
        pooled = torch.cat([pooled_1, pooled_2.to(pooled_1.device)], dim=-1)
        return {"encoder_hidden_states": hidden.to(model.device, model.dtype), "pooled_projections": pooled.to(model.device, model.dtype)}

    def predict(self, denoiser, model, x, timesteps, cond, guidance=None) -> torch.Tensor:
        return denoiser(
            hidden_states=x, timestep=timesteps, encoder_hidden_states=cond["encoder_hidden_states"], pooled_projections=cond["pooled_projections"]
        ).sample

    def schedule(self, model, num_inference_steps: int) -> dict:
        if not model.scheduler.config.get("use_dynamic_shifting", False):
            return {}
        _, height, width = self.sample_shape(model)
        patch = model.transformer.config.patch_size
        return {"mu": image_size_shift(model.scheduler.config, (height // patch) * (width // patch))}
