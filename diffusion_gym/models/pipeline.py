"""`DiffusionModel`: the parts of a text-to-image diffusion pipeline that the env and the policy use.

Stable Diffusion (latent space, with a VAE) and pixel-space models (no VAE, such as the embedded
default) are the same object; `vae is None` is the only difference, and only `decode` sees it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import diffusers

COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler", "vae")
REQUIRED_COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler")


@dataclass
class DiffusionModel:
    """A conditional denoiser with its text conditioning, noise schedule and (optional) decoder.

    Attributes:
        unet: the noise predictor ε_θ(x_t, c, t), a diffusers `UNet2DConditionModel`.
        text_encoder: a transformers text model whose last hidden state conditions the UNet.
        tokenizer: the text encoder's tokenizer.
        scheduler: the diffusers scheduler the model was trained with (its config gives the noise
            schedule; samplers wrap it).
        vae: the latent decoder (`AutoencoderKL`), or None for a pixel-space model.
        name: where the model came from (hub id, folder, "tiny-random", "embedded"); the
            registered ids' `defaults` and the policy's `SAMPLING` are looked up by it.
    """

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    vae: torch.nn.Module | None = None
    name: str = ""
    prepared: bool = field(default=False, repr=False)
    """Set by `load_model` once it has frozen the networks (then it leaves them alone)."""

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape of one x_t, (C, H, W): latents for Stable Diffusion, pixels for a pixel-space model."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (int(self.unet.config.in_channels), int(height), int(width))

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one decoded image, (H, W, 3)."""
        _, height, width = self.sample_shape
        return (height * self.vae_scale_factor, width * self.vae_scale_factor, 3)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "DiffusionModel":
        """Move the networks in place (like `nn.Module.to`) and return self."""
        for module in (self.unet, self.text_encoder, self.vae):
            if module is None:
                continue
            module.to(device=device)
            if dtype is not None and module.dtype != dtype:  # diffusers warns on every dtype cast
                module.to(dtype=dtype)
        return self

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> np.ndarray:
        """Decode final samples into images.

        Args:
            x0: (B, C, H, W) final samples (latents or pixels in [-1, 1]).

        Returns:
            (B, H, W, 3) uint8 images.
        """
        if self.vae is None:
            images = x0
        else:
            latents = (x0 / self.vae.config.scaling_factor).to(device=self.vae.device, dtype=self.vae.dtype)
            images = self.vae.decode(latents).sample
        images = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the model as a diffusers pipeline folder (model_index.json + one folder a part).

        `diffusion_gym.models.load_model(folder)` reads it back; with a VAE the layout is Stable
        Diffusion's, so `diffusers.StableDiffusionPipeline.from_pretrained` reads it too.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        index: dict[str, object] = {
            "_class_name": "StableDiffusionPipeline" if self.vae is not None else "DiffusionGymPixelPipeline",
            "_diffusers_version": diffusers.__version__,
        }
        for part in COMPONENTS:
            component = getattr(self, part)
            if component is None:
                continue
            component.save_pretrained(folder / part)
            index[part] = [type(component).__module__.split(".")[0], type(component).__name__]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
