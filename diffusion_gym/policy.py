"""`DiffusionPolicy`: a diffusion model's own denoiser seen as a Gaussian policy over x_{t-1}.

    π_θ(x_{t-1} | c, t, x_t) = N(μ_θ(x_t, c, t), σ_t² I)

μ comes from the sampler step (`diffusion_gym.samplers`) applied to the classifier-free-guided
noise prediction ε̂ = ε_u + w (ε_c − ε_u); σ_t from the sampler alone. The policy is the actor: it
holds the UNet (trainable through `diffusion_gym.finetuning`), the frozen text encoder, the
sampler it builds on its env's scheduler, and how it acts (eta, the guidance scale w and
interval; defaults per model in `SAMPLING`). Observations are the environments' dicts
{"prompt", "timestep", "x_t"}, batched or single, numpy or torch; outputs follow the input's kind.
Log-probs are exact: the sum over dimensions (an agent that wants ddpo-pytorch's per-dimension
mean divides by the dimensions itself, `agents.ddpo.DDPOConfig.log_prob_reduce`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from diffusion_gym.finetuning import FineTuning
from diffusion_gym.models import DiffusionModel
from diffusion_gym.samplers import DDIMSampler, SamplerStep


@dataclass(frozen=True)
class Sampling:
    """How the policy acts."""

    eta: float = 1.0
    """DDIM stochasticity, in (0, 1] (the paper: 1.0)."""
    guidance_scale: float = 5.0
    """Classifier-free guidance weight w (1.0: the conditional prediction alone; the paper: 5.0)."""
    guidance_interval: tuple[int, int] | None = None
    """(low, high) model timesteps that guidance applies to (Kynkäänniemi et al. 2024, "Applying
    Guidance in a Limited Interval Improves Sample and Distribution Quality in Diffusion Models");
    the other steps take the conditional prediction alone, one UNet pass instead of two. None:
    every step."""


# The policy's defaults per model name ("*": any other model, the paper's setup). The embedded
# model guides with w = 3 at t >= 600 only (its first 8 of 20 steps; one UNet pass at the rest).
SAMPLING: dict[str, Sampling] = {"*": Sampling(), "embedded": Sampling(guidance_scale=3.0, guidance_interval=(600, 999))}


def check_guidance_scale(guidance_scale: float) -> float:
    """`guidance_scale` as a float, or a ValueError if it is not a finite number >= 0."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.integer, np.floating)):
        raise ValueError(f"guidance_scale must be a number >= 0 (1.0: no guidance), got {guidance_scale!r} ({type(guidance_scale).__name__}).")
    if not (np.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ValueError(f"guidance_scale must be a finite number >= 0 (1.0: no guidance), got {guidance_scale}")
    return float(guidance_scale)


def check_guidance_interval(guidance_interval: Sequence[int] | None, num_train_timesteps: int) -> tuple[int, int] | None:
    """`guidance_interval` as a (low, high) pair of model timesteps, None kept; a ValueError unless
    0 <= low <= high < num_train_timesteps."""
    if guidance_interval is None:
        return None
    try:
        low, high = (int(t) for t in guidance_interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be None or a (low, high) pair of timesteps, got {guidance_interval!r}") from None
    if not 0 <= low <= high < num_train_timesteps:
        raise ValueError(
            f"guidance_interval must satisfy 0 <= low <= high < {num_train_timesteps} (the model's training "
            f"timesteps), got {guidance_interval!r}; (0, {num_train_timesteps - 1}) guides every step."
        )
    return low, high


_NOT_GIVEN: Any = object()


class DiffusionPolicy(FineTuning, nn.Module):
    """The Gaussian denoising policy of a text-to-image diffusion model.

    Args:
        model: the loaded model (`diffusion_gym.models.load_model`).
        scheduler: the scheduler whose timesteps the episodes step on: the env's (`from_env`).
        num_inference_steps: the episode length, the env's.
        eta, guidance_scale, guidance_interval: how it acts (`Sampling`); not given: the model's
            row of `SAMPLING`, else its "*" row. guidance_interval=None guides every step.
    """

    def __init__(
        self,
        model: DiffusionModel,
        scheduler: Any,
        num_inference_steps: int,
        *,
        eta: float | None = None,
        guidance_scale: float | None = None,
        guidance_interval: Sequence[int] | None = _NOT_GIVEN,
    ):
        super().__init__()
        defaults = SAMPLING.get(model.name, SAMPLING["*"])
        self.model = model  # not a module: its networks register below (an env can share it: `gym.make(..., model=policy.model)`)
        self.unet = model.unet
        self.text_encoder = model.text_encoder.requires_grad_(False)
        self.sampler = DDIMSampler(scheduler, num_inference_steps, defaults.eta if eta is None else eta)
        self.guidance_scale = check_guidance_scale(defaults.guidance_scale if guidance_scale is None else guidance_scale)
        interval = defaults.guidance_interval if guidance_interval is _NOT_GIVEN else guidance_interval
        self.guidance_interval = check_guidance_interval(interval, self.sampler.num_train_timesteps)
        self._prompt_embeds: dict[str, torch.Tensor] = {}
        self._embeds_key: tuple[torch.device, torch.dtype] | None = None

    @classmethod
    def from_env(cls, env: Any, **sampling: Any) -> "DiffusionPolicy":
        """The policy of an environment's model on its scheduler's timesteps (the model is shared,
        not copied: fine-tuning this policy changes what an env that shares the model samples).

        Args:
            env: a diffusion-gym env or vector env, wrapped or not.
            **sampling: eta, guidance_scale, guidance_interval (`Sampling`); not given: the model's defaults.
        """
        base = env.unwrapped
        base = getattr(base, "vector_env", base)
        if not all(hasattr(base, name) for name in ("model", "scheduler", "num_steps")):
            raise ValueError(f"{type(env).__name__} is not a diffusion-gym environment; make one with gym.make('Diffusion...-v0').")
        unknown = sorted(set(sampling) - {f.name for f in fields(Sampling)})
        if unknown:
            hint = " (log-probs are exact sums; an agent's mean over dimensions is DDPOConfig.log_prob_reduce)" if "reduce" in unknown else ""
            raise ValueError(f"Unknown policy settings {unknown}; a policy takes eta, guidance_scale and guidance_interval{hint}.")
        return cls(base.model, base.scheduler, base.num_steps, **sampling)

    @property
    def device(self) -> torch.device:
        # one parameter's, not `unet.device`: diffusers walks every module for that (a LoRA UNet
        # has thousands), and this is read several times a step
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def optimize(self, compile: bool = False, channels_last: bool = False, compile_backend: str = "inductor") -> None:
        """How the UNet's passes run, not what they compute (results change by float rounding only).

        Args:
            compile: `torch.compile` the UNet (in place: parameter names, LoRA adapters and
                checkpoints are unchanged). The first sampling pass and the first training pass
                each compile a graph, a minute or more on a CPU (cached on disk for later runs);
                disabling the adapters for a KL reference compiles once more. It helps where
                per-operation overhead dominates a pass (small UNets), over runs long enough to
                repay the compilation.
            channels_last: keep the UNet's convolution weights in the channels-last memory
                format, which GPU convolution kernels in half precision prefer.
            compile_backend: `torch.compile`'s backend ("inductor" generates kernels; "aot_eager"
                only traces, for checking that a model compiles).

        Call it after `enable_lora` or `enable_full_finetuning` (a kept reference UNet is
        converted alike).
        """
        unets = [self.unet] + ([self._reference_unet] if self._reference_unet is not None else [])
        for unet in unets:
            if channels_last:
                unet.to(memory_format=torch.channels_last)
            if compile:
                unet.compile(backend=compile_backend)

    # ---------------------------------------------------------------- conditioning
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings, (B, L, D) in the UNet's dtype; each prompt is encoded once and cached
        (the text encoder is frozen)."""
        key = (self.device, self.dtype)
        if self._embeds_key != key:
            self._prompt_embeds.clear()
            self._embeds_key = key
        missing = sorted(set(prompts) - self._prompt_embeds.keys())
        if missing:
            ids = self.model.tokenizer(
                missing, padding="max_length", max_length=self.model.tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids
            embeds = self.text_encoder(ids.to(self.text_encoder.device))[0].to(device=self.device, dtype=self.dtype)
            self._prompt_embeds.update(zip(missing, embeds))
        return torch.stack([self._prompt_embeds[p] for p in prompts])

    def predict_noise(self, x_t: torch.Tensor, timesteps: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """The guided noise prediction ε̂ = ε_u + w (ε_c − ε_u), (B, C, H, W) float32.

        Where guidance does not apply (w = 1, or a timestep outside `guidance_interval`) it is ε_c.
        A batch that no sample guides takes one UNet pass; otherwise the conditional and
        unconditional passes run as one batch of 2B.
        """
        cond = self.encode_prompts(prompts)
        x_in = x_t.to(self.dtype)
        guided = self.guided(timesteps)
        if not guided.any():
            return self.unet(x_in, timesteps, encoder_hidden_states=cond).sample.float()
        uncond = self.encode_prompts([""]).expand_as(cond)
        eps = self.unet(
            torch.cat([x_in, x_in]), torch.cat([timesteps, timesteps]), encoder_hidden_states=torch.cat([uncond, cond])
        ).sample.float()
        eps_uncond, eps_cond = eps.chunk(2)
        eps_guided = eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)
        return eps_guided if guided.all() else torch.where(guided.view(-1, 1, 1, 1), eps_guided, eps_cond)

    def guided(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Whether classifier-free guidance applies at each of a (B,) batch of timesteps, (B,) bool."""
        timesteps = torch.as_tensor(timesteps)
        if self.guidance_scale == 1.0:
            return torch.zeros(timesteps.shape, dtype=torch.bool, device=timesteps.device)
        if self.guidance_interval is None:
            return torch.ones(timesteps.shape, dtype=torch.bool, device=timesteps.device)
        low, high = self.guidance_interval
        return (timesteps >= low) & (timesteps <= high)

    # ---------------------------------------------------------------- the policy
    def forward(
        self,
        obs: dict,
        action: torch.Tensor | np.ndarray | None = None,
        generator: torch.Generator | None = None,
    ) -> SamplerStep:
        """The step's Gaussian at a batch of observations; samples x_{t-1} if `action` is None,
        else scores `action`. Tensors in the result are batched torch tensors on the policy's
        device (differentiable unless called under `torch.no_grad`)."""
        prompts, timesteps, x_t, _ = self._unpack(obs)
        if action is not None:
            action = torch.as_tensor(action, device=self.device, dtype=torch.float32).reshape(x_t.shape)
        eps = self.predict_noise(x_t, timesteps, prompts)
        return self.sampler.step(eps, timesteps, x_t, prev_sample=action, generator=generator)

    @torch.no_grad()
    def act(self, obs: dict, generator: torch.Generator | None = None) -> tuple[Any, Any]:
        """Sample x_{t-1} for each observation.

        Returns:
            (action, log_prob): (B, C, H, W) float32 and (B,) float32, numpy if the observation's
            x_t is numpy, else torch on the policy's device; without the batch dimension for a
            single env's observation.
        """
        step = self.forward(obs, generator=generator)
        return self._like_obs(obs, step.prev_sample), self._like_obs(obs, step.log_prob)

    def log_prob(self, obs: dict, action: torch.Tensor | np.ndarray) -> torch.Tensor:
        """log π(action | obs), (B,) float32 torch tensor, differentiable w.r.t. the trainable parameters."""
        return self.forward(obs, action=action).log_prob

    # ---------------------------------------------------------------- observations
    def _unpack(self, obs: dict) -> tuple[list[str], torch.Tensor, torch.Tensor, bool]:
        """(prompts, timesteps (B,) int64, x_t (B, C, H, W) float32, is_single) on the policy's device."""
        try:
            prompt, timestep, x_t = obs["prompt"], obs["timestep"], obs["x_t"]
        except (KeyError, TypeError):
            raise ValueError("An observation is a dict with keys 'prompt', 'timestep' and 'x_t', as the environments return.") from None
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        x_t = torch.as_tensor(x_t, device=self.device, dtype=torch.float32)
        timesteps = torch.as_tensor(timestep, device=self.device).long().reshape(-1)
        if single:
            x_t = x_t.unsqueeze(0)
        if x_t.ndim != 4 or len(prompts) != x_t.shape[0] or timesteps.shape[0] != x_t.shape[0]:
            raise ValueError(
                f"Observation batch mismatch: {len(prompts)} prompts, {timesteps.shape[0]} timesteps, "
                f"x_t of shape {tuple(x_t.shape)} (expected (B, C, H, W))."
            )
        return prompts, timesteps, x_t, single

    @staticmethod
    def _like_obs(obs: dict, value: torch.Tensor) -> Any:
        if isinstance(obs["prompt"], str):
            value = value[0]
        return value.cpu().numpy() if isinstance(obs["x_t"], np.ndarray) else value
