"""`DiffusionPolicy`: a diffusion model's own denoiser seen as a Gaussian policy over x_{t-1}.

    π_θ(x_{t-1} | c, t, x_t) = N(μ_θ(x_t, c, t), σ_t² I)

μ comes from the sampler step (`diffusion_gym.samplers`) applied to the classifier-free-guided
noise prediction ε̂ = ε_u + w (ε_c − ε_u); σ_t from the sampler alone. The policy holds the UNet
(trainable: LoRA adapters through peft, or all of it), the frozen text encoder and its tokenizer,
the sampler and the guidance scale w. Observations are the environments' dicts
{"prompt", "timestep", "x_t"}, batched or single, numpy or torch; outputs follow the input's kind.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from diffusion_gym.models import DiffusionModel
from diffusion_gym.samplers import DDIMSampler, SamplerStep
from diffusion_gym.samplers.base import Reduce

DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


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


class DiffusionPolicy(nn.Module):
    """The Gaussian denoising policy of a text-to-image diffusion model.

    Args:
        model: the loaded model (`diffusion_gym.models.load_model`).
        sampler: the sampler that turns a noise prediction into the step's Gaussian; it fixes the
            timesteps of an episode, so it must be the environment's (see `from_env`).
        guidance_scale: classifier-free guidance weight w (1.0: conditional prediction only).
        guidance_interval: (low, high) model timesteps: guidance applies only at steps with
            low <= t <= high, and the other steps take the conditional prediction alone, one UNet
            pass instead of two (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval
            Improves Sample and Distribution Quality in Diffusion Models"). None: every step.
        reduce: how `act` and `log_prob` reduce the per-dimension log-density: "sum" (exact) or
            "mean" (ddpo-pytorch's convention).
    """

    def __init__(
        self,
        model: DiffusionModel,
        sampler: DDIMSampler,
        guidance_scale: float = 5.0,
        reduce: Reduce = "sum",
        guidance_interval: Sequence[int] | None = None,
    ):
        super().__init__()
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        self.model = model  # not a module: its networks register below (an env can share it: `gym.make(..., model=policy.model)`)
        self.unet = model.unet
        self.text_encoder = model.text_encoder.requires_grad_(False)
        self.tokenizer = model.tokenizer
        self.sampler = sampler
        self.guidance_scale = check_guidance_scale(guidance_scale)
        self.guidance_interval = check_guidance_interval(guidance_interval, sampler.num_train_timesteps)
        self.reduce: Reduce = reduce
        self._reference_unet: nn.Module | None = None  # a frozen copy of the start, for full fine-tuning's KL
        self._prompt_embeds: dict[str, torch.Tensor] = {}
        self._embeds_key: tuple[torch.device, torch.dtype] | None = None

    @classmethod
    def from_env(cls, env: Any, **kwargs: Any) -> "DiffusionPolicy":
        """The policy of an environment's model, sampler and guidance (shared, not copied:
        fine-tuning this policy changes what the environment renders).

        Args:
            env: a diffusion-gym env or vector env, wrapped or not.
            **kwargs: override `guidance_scale`, `guidance_interval` or `reduce`.
        """
        base = env.unwrapped
        base = getattr(base, "vector_env", base)
        if not all(hasattr(base, name) for name in ("model", "sampler", "guidance_scale")):
            raise ValueError(f"{type(env).__name__} is not a diffusion-gym environment; make one with gym.make('Diffusion...-v0').")
        kwargs.setdefault("guidance_scale", base.guidance_scale)
        kwargs.setdefault("guidance_interval", getattr(base, "guidance_interval", None))
        return cls(base.model, base.sampler, **kwargs)

    @property
    def device(self) -> torch.device:
        # one parameter's, not `unet.device`: diffusers walks every module for that (a LoRA UNet
        # has thousands), and this is read several times a step
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # ---------------------------------------------------------------- fine-tuning
    @property
    def finetuning(self) -> str | None:
        """"lora", "full" or None, read from the UNet (which policies of one env share)."""
        if getattr(self.unet, "peft_config", None):
            return "lora"
        if all(p.requires_grad for p in self.unet.parameters()):
            return "full"
        return None

    def enable_lora(
        self, rank: int = 4, alpha: float | None = None, target_modules: Sequence[str] = DEFAULT_LORA_TARGETS, seed: int = 0
    ) -> None:
        """Freeze the UNet and add LoRA adapters (peft) of the given rank to its attention layers.

        The adapters start at zero (B = 0), so the policy is unchanged until it is trained; A is
        drawn from `seed` alone (not the global RNG), so every process of a multi-process run,
        and every rerun, starts from the same adapters.
        """
        from peft import LoraConfig

        if self.finetuning == "lora":
            raise ValueError("LoRA adapters are already enabled on this policy.")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRA rank must be a positive int, got {rank!r}")
        names = [name for name, _ in self.unet.named_modules()]
        if not any(name == t or name.endswith("." + t) for t in target_modules for name in names):
            raise ValueError(
                f"No UNet module matches the LoRA targets {list(target_modules)}; a target is the last part of a module's name, "
                f"e.g. {sorted({n.rsplit('.', 1)[-1] for n in names if n.endswith(('to_q', 'to_k', 'conv1'))})} (the default: {list(DEFAULT_LORA_TARGETS)})."
            )
        self.unet.requires_grad_(False)
        config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(target_modules))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.unet.add_adapter(config)

    def enable_full_finetuning(self, keep_reference: bool = False) -> None:
        """Make every UNet parameter trainable (the text encoder stays frozen).

        Args:
            keep_reference: keep a frozen copy of the UNet as it is now, for `reference()` (a KL
                penalty toward the starting model); costs a second UNet in memory.
        """
        if self.finetuning == "lora":
            raise ValueError("This policy has LoRA adapters; full fine-tuning goes on a policy without them.")
        if keep_reference:
            # kept outside the module tree: not a parameter, not in state_dict()
            object.__setattr__(self, "_reference_unet", copy.deepcopy(self.unet).requires_grad_(False).eval())
        self.unet.requires_grad_(True)

    @contextmanager
    def reference(self) -> Iterator["DiffusionPolicy"]:
        """Within this block the policy is the model it started from: LoRA adapters disabled, or,
        for full fine-tuning, the copy kept by `enable_full_finetuning(keep_reference=True)`."""
        mode = self.finetuning
        if mode == "lora":
            self.unet.disable_adapters()
            try:
                yield self
            finally:
                self.unet.enable_adapters()
        elif mode == "full":
            if self._reference_unet is None:
                raise ValueError("No reference model: call enable_full_finetuning(keep_reference=True) before training.")
            live = self.unet
            self.unet = self._reference_unet
            try:
                yield self
            finally:
                self.unet = live
        else:
            yield self  # nothing is trained: the policy is its own reference

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should update (empty until LoRA or full fine-tuning is enabled)."""
        return [p for p in self.unet.parameters() if p.requires_grad]

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
            ids = self.tokenizer(
                missing, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
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
        reduce: Reduce | None = None,
    ) -> SamplerStep:
        """The step's Gaussian at a batch of observations; samples x_{t-1} if `action` is None,
        else scores `action`. Tensors in the result are batched torch tensors on the policy's
        device (differentiable unless called under `torch.no_grad`)."""
        prompts, timesteps, x_t, _ = self._unpack(obs)
        if action is not None:
            action = torch.as_tensor(action, device=self.device, dtype=torch.float32).reshape(x_t.shape)
        eps = self.predict_noise(x_t, timesteps, prompts)
        return self.sampler.step(eps, timesteps, x_t, prev_sample=action, generator=generator, reduce=reduce or self.reduce)

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

    def log_prob(self, obs: dict, action: torch.Tensor | np.ndarray, reduce: Reduce | None = None) -> torch.Tensor:
        """log π(action | obs), (B,) float32 torch tensor, differentiable w.r.t. the trainable parameters."""
        return self.forward(obs, action=action, reduce=reduce).log_prob

    def denoising_loss(
        self, x0: torch.Tensor, prompts: Sequence[str], timesteps: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The ordinary (conditional) diffusion training loss, one value per sample:
        ‖target − model(√ᾱ_t x_0 + √(1−ᾱ_t) ε, c, t)‖² averaged over dimensions, with the target
        ε, v or x_0 as the model predicts. Used by reward-weighted regression.

        Args:
            x0: clean samples, (B, C, H, W), in the model's sample space.
            prompts: B prompts.
            timesteps: (B,) training timesteps; drawn uniformly if None.
            generator: for the timesteps and the noise.

        Returns:
            (B,) float32, differentiable w.r.t. the trainable parameters.
        """
        x0 = x0.to(self.device, torch.float32)
        num_train = self.sampler.num_train_timesteps
        if timesteps is None:
            timesteps = torch.randint(0, num_train, (x0.shape[0],), generator=generator, device="cpu")
        timesteps = timesteps.to(self.device).long()
        noise = torch.randn(x0.shape, generator=generator, device="cpu").to(self.device)
        alpha = self.sampler.scheduler.alphas_cumprod.to(self.device)[timesteps].view(-1, 1, 1, 1).float()
        x_t = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
        prediction_type = self.sampler.scheduler.config.prediction_type
        target = {"epsilon": noise, "v_prediction": alpha.sqrt() * noise - (1 - alpha).sqrt() * x0, "sample": x0}[prediction_type]
        prediction = self.unet(x_t.to(self.dtype), timesteps, encoder_hidden_states=self.encode_prompts(list(prompts))).sample.float()
        return ((prediction - target) ** 2).mean(dim=(1, 2, 3))

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
