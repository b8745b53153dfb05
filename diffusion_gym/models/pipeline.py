"""`DiffusionModel`: the parts of a text-to-image diffusion pipeline that the env and the policy use.

One object for every family (`diffusion_gym.models.families`): Stable Diffusion 1.x/2.x and the
embedded models (a UNet), SDXL (a UNet and two text encoders), SD3/SD3.5 (an MMDiT transformer
and three text encoders) and FLUX.1 (a transformer and two). Parts a family does not have are
None; a pixel-space model (the embedded ones) has no VAE, and only `decode` sees that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import diffusers

from diffusion_gym.models.half import half_products

# The parts of a pipeline folder that are loaded, in model_index.json's names.
COMPONENTS = ("unet", "transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3", "scheduler", "vae")
REQUIRED_COMPONENTS = ("text_encoder", "tokenizer", "scheduler")
DENOISERS = ("unet", "transformer")
"""One of these is required too: the network that denoises."""


def _keep_in_float32(module: torch.nn.Module) -> None:
    """Put back in float32 the layers a transformers model keeps there (`_keep_in_fp32_modules`)."""
    names = getattr(module, "_keep_in_fp32_modules", None) or []
    for name, sub in module.named_modules():
        if any(part in names for part in name.split(".")):
            sub.to(torch.float32)


def first_parameter(module: torch.nn.Module) -> torch.nn.Parameter:
    """A network's first parameter, whose device and dtype stand for the network's: diffusers'
    `ModelMixin.device` and `.dtype` walk every module for them (thousands in a LoRA UNet,
    milliseconds a read), and they are read for every batch encoded or decoded and, by the
    policy, several times a denoising step."""
    return next(module.parameters())


@dataclass
class DiffusionModel:
    """A conditional denoiser with its text conditioning, noise schedule and (optional) decoder.

    Attributes:
        unet: the denoiser of a UNet family (`UNet2DConditionModel`), else None.
        transformer: the denoiser of SD3 (`SD3Transformer2DModel`) or FLUX
            (`FluxTransformer2DModel`), else None.
        text_encoder, tokenizer: the first text encoder and its tokenizer (CLIP).
        text_encoder_2, tokenizer_2, text_encoder_3, tokenizer_3: the others, where the family has
            them (SDXL: a second CLIP; SD3: a second CLIP and T5; FLUX: T5 second). SD3 may lack
            T5: its embeddings are then zeros, as diffusers does.
        scheduler: the diffusers scheduler the model was trained with (its config gives the noise
            schedule; samplers wrap it). A FlowMatch* scheduler makes it a flow-matching model.
        vae: the latent decoder (`AutoencoderKL`), or None for a pixel-space model.
        name: where the model came from (hub id, folder, "tiny-random", "embedded"); the
            registered ids' `defaults` and the policy's `SAMPLING` are looked up by it.
        sample_size: the latent (or pixel) height and width to sample at; None: the denoiser
            config's `sample_size` (FLUX's transformer has none: 128, its 1024-pixel default).
        pipeline_config: model_index.json's settings other than parts (SDXL's
            `force_zeros_for_empty_prompt`).
    """

    unet: torch.nn.Module | None = None
    text_encoder: torch.nn.Module | None = None
    tokenizer: object = None
    scheduler: object = None
    vae: torch.nn.Module | None = None
    name: str = ""
    transformer: torch.nn.Module | None = None
    text_encoder_2: torch.nn.Module | None = None
    tokenizer_2: object = None
    text_encoder_3: torch.nn.Module | None = None
    tokenizer_3: object = None
    sample_size: int | None = None
    pipeline_config: dict = field(default_factory=dict)
    prepared: bool = field(default=False, repr=False)
    """Set by `load_model` once it has frozen the networks (then it leaves them alone)."""

    def __post_init__(self) -> None:
        if (self.unet is None) == (self.transformer is None):
            raise ValueError("A DiffusionModel needs one denoiser: a unet or a transformer (not both, not neither).")
        missing = [part for part in REQUIRED_COMPONENTS if getattr(self, part) is None]
        if missing:
            raise ValueError(f"A DiffusionModel needs {list(REQUIRED_COMPONENTS)}; {missing} missing.")

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network that denoises: the UNet or the transformer."""
        return self.unet if self.unet is not None else self.transformer

    @denoiser.setter
    def denoiser(self, module: torch.nn.Module) -> None:
        if self.unet is not None:
            self.unet = module
        else:
            self.transformer = module

    @property
    def family(self):
        """The model's family (`diffusion_gym.models.families`), from the classes of its parts."""
        from diffusion_gym.models.families import family_of

        return family_of(self)

    @property
    def is_flow(self) -> bool:
        """Whether it is a flow-matching model (SD3, FLUX, the embedded flow model): its scheduler is a FlowMatch* one."""
        return type(self.scheduler).__name__.startswith("FlowMatch")

    @property
    def modules(self) -> list[torch.nn.Module]:
        """Every network it has (denoiser, text encoders, VAE)."""
        parts = (self.denoiser, self.text_encoder, self.text_encoder_2, self.text_encoder_3, self.vae)
        return [module for module in parts if module is not None]

    @property
    def device(self) -> torch.device:
        return first_parameter(self.denoiser).device

    @property
    def dtype(self) -> torch.dtype:
        return first_parameter(self.denoiser).dtype

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape of one x_t, (C, H, W): latents for a latent model, pixels for a pixel-space model."""
        return self.family.sample_shape(self)

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
        """Cast, then move, the networks in place (like `nn.Module.to`) and return self: a 12B
        transformer reaches the GPU in bf16, not in float32 first. What the libraries keep in
        float32 stays there in float16: a VAE with `force_upcast` (SDXL's overflows in float16,
        so its pipeline decodes in float32) and the layers a transformers model lists in
        `_keep_in_fp32_modules` (T5's `wo`)."""
        for module in self.modules:
            if dtype is not None and module.dtype != dtype:  # diffusers warns on every dtype cast
                if not (dtype == torch.float16 and module is self.vae and getattr(module.config, "force_upcast", False)):
                    module.to(dtype=dtype)
                    if dtype == torch.float16:
                        _keep_in_float32(module)
            module.to(device=device)
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
            config = self.vae.config
            mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
            if mean is not None and std is not None:  # a VAE with per-channel latent statistics, as its pipeline decodes them
                shape = (1, -1, 1, 1)
                latents = x0 * torch.tensor(std, device=x0.device).view(shape) / config.scaling_factor + torch.tensor(mean, device=x0.device).view(shape)
            else:
                latents = x0 / config.scaling_factor
            shift = getattr(config, "shift_factor", None)  # SD3's and FLUX's VAEs are shifted too
            if shift is not None:
                latents = latents + shift
            weight = first_parameter(self.vae)
            with half_products(weight.device, weight.dtype):
                images = self.vae.decode(latents.to(device=weight.device, dtype=weight.dtype)).sample
        images = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the model as a diffusers pipeline folder (model_index.json + one folder a part).

        `diffusion_gym.models.load_model(folder)` reads it back; a latent model's layout is its
        diffusers pipeline's (`StableDiffusionPipeline`, `StableDiffusionXLPipeline`,
        `StableDiffusion3Pipeline`, `FluxPipeline`), which reads it too where it has every part.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        index: dict[str, object] = {
            "_class_name": self.family.pipeline_class if self.vae is not None else "DiffusionGymPixelPipeline",
            "_diffusers_version": diffusers.__version__,
            **self.pipeline_config,
        }
        if self.sample_size is not None:
            index["diffusion_gym_sample_size"] = self.sample_size
        for part in COMPONENTS:
            component = getattr(self, part)
            if component is None:
                continue
            component.save_pretrained(folder / part)
            index[part] = [type(component).__module__.split(".")[0], type(component).__name__]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
