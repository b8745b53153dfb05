"""What a model family tells the rest of the project: how prompts become conditioning, how the
denoiser is called, the shape it samples at and how guidance works.

The env, the policy and the agents see a family only through `ModelFamily`: a new family is one
file with a subclass and a line in `FAMILIES` (`__init__.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from diffusion_gym.models.pipeline import DiffusionModel

Conditioning = dict[str, torch.Tensor]
"""A batch of prompts as the denoiser takes them: named tensors, each (B, ...)."""


class ModelFamily(ABC):
    """One family of text-to-image models (Stable Diffusion, SDXL, SD3, FLUX)."""

    name: str
    """Its key in `FAMILIES` and in `diffusion_gym.policy.SAMPLING`."""
    pipeline_class: str
    """The diffusers pipeline class whose folders hold it (model_index.json's `_class_name`)."""
    distilled_guidance: bool = False
    """Guidance is an input of the denoiser (FLUX.1-dev), not two passes combined (classifier-free)."""

    @abstractmethod
    def matches(self, model: "DiffusionModel") -> bool:
        """Whether `model`'s parts are this family's."""

    @abstractmethod
    def encode(self, model: "DiffusionModel", prompts: Sequence[str]) -> Conditioning:
        """The prompts' conditioning, each tensor (B, ...) on the denoiser's device and dtype."""

    def unconditional(self, model: "DiffusionModel") -> Conditioning:
        """The conditioning that classifier-free guidance contrasts with, (1, ...): the empty prompt's."""
        return self.encode(model, [""])

    @abstractmethod
    def predict(self, denoiser: torch.nn.Module, model: "DiffusionModel", x: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's output at x_t, (B, C, H, W) like `x`: ε, v or x_0 for a diffusion model
        (as its scheduler's prediction_type says), the velocity for a flow model.

        Args:
            denoiser: the model's denoiser or a copy of it (a policy's reference).
            x: x_t in the denoiser's dtype, (B, C, H, W).
            timesteps: (B,) model timesteps (int for diffusion models, float for flow models).
            cond: the conditioning of the B samples.
            guidance: (B,) the guidance input of a guidance-distilled model, else None.
        """

    def sample_shape(self, model: "DiffusionModel") -> tuple[int, int, int]:
        """(C, H, W) of one x_t: the denoiser's channels at `model.sample_size`, else its config's."""
        config = model.denoiser.config
        size = model.sample_size if model.sample_size is not None else config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (int(config.in_channels), int(height), int(width))

    def schedule(self, model: "DiffusionModel", num_inference_steps: int) -> dict:
        """What a flow model's pipeline gives `set_timesteps` beyond the step count: FLUX's shift
        mu and its own σ grid; {} for the scheduler's defaults."""
        return {}


def image_size_shift(scheduler_config, image_seq_len: int) -> float:
    """mu of a schedule shifted by the image size (`use_dynamic_shifting`): linear in the number of
    image tokens between (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift), as
    diffusers' `calculate_shift` (not imported: its module loads the FLUX pipeline and, with it,
    transformers' image processors and their warnings)."""
    c = scheduler_config
    slope = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
    return image_seq_len * slope + c.base_shift - slope * c.base_image_seq_len


def tokenize(tokenizer, prompts: Sequence[str], device: torch.device, max_length: int | None = None) -> torch.Tensor:
    """Token ids padded to `max_length` (None: the tokenizer's length), (B, L) on `device`."""
    max_length = tokenizer.model_max_length if max_length is None else max_length
    return tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids.to(device)


def t5_length(model: "DiffusionModel", default: int) -> int:
    """The T5 tokens a pipeline pads prompts to: model_index.json's `max_sequence_length` if it
    sets one, else the pipeline's default (SD3: 256, FLUX.1-dev: 512)."""
    return int(model.pipeline_config.get("max_sequence_length", default))


def clip_hidden_and_pooled(encoder: torch.nn.Module, tokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """A CLIP text encoder's penultimate hidden states (B, L, D) and its pooled output (B, P):
    the projected text embedding of a `CLIPTextModelWithProjection`, else the pooled state. SDXL
    and SD3 condition on these (their pipelines' `clip_skip=None`)."""
    out = encoder(tokenize(tokenizer, prompts, encoder.device), output_hidden_states=True)
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    return out.hidden_states[-2], pooled
