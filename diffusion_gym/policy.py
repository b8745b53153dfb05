"""`DiffusionPolicy`: a diffusion model's own denoiser seen as a Gaussian policy over x_{t-1}.

    π_θ(x_{t-1} | c, t, x_t) = N(μ_θ(x_t, c, t), σ_t² I)

μ comes from the sampler step (`diffusion_gym.samplers`) applied to the guided prediction
ε̂ = ε_u + w (ε_c − ε_u) (classifier-free guidance; for a flow model the velocity; a
guidance-distilled FLUX takes w as an input of one pass instead); σ_t from the sampler alone. The
sampler follows the model: stochastic DDIM for a diffusion model, an SDE sampler (Flow-GRPO's by
default) for a flow-matching model (`SAMPLERS`). The policy is the actor: it holds the denoiser
(a UNet or a transformer, trainable through `diffusion_gym.finetuning`), the frozen text
encoders, the sampler it builds on its env's scheduler, and how it acts (the sampler and its
noise, the guidance scale w and interval; defaults per model and per family in `SAMPLING`). Observations are the environments' dicts
{"prompt", "timestep", "x_t"}, batched or single, numpy or torch; outputs follow the input's kind.
Log-probs are exact: the sum over dimensions (an agent that wants ddpo-pytorch's per-dimension
mean divides by the dimensions itself, `agents.ddpo.DDPOConfig.log_prob_reduce`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from diffusion_gym.finetuning import FineTuning
from diffusion_gym.models import DiffusionModel
from diffusion_gym.models.pipeline import first_parameter
from diffusion_gym.models.attention import use_fastest_attention
from diffusion_gym.models.convolution import use_lean_frozen_convolutions
from diffusion_gym.models.half import half_products
from diffusion_gym.models.families import Conditioning
from diffusion_gym.samplers import CPSSampler, DDIMSampler, FlowSDESampler, SamplerStep

# The samplers a policy can act with: DDIM for diffusion models, the rest for flow-matching models.
SAMPLERS = {
    "ddim": "stochastic DDIM (Song et al. 2021), the DDPO paper's: diffusion models",
    "flow-grpo": "Flow-GRPO's SDE, σ-dependent noise a √(σ / (1 − σ)): flow models",
    "dance-grpo": "DanceGRPO's SDE, constant noise η: flow models",
    "cps": "coefficients-preserving sampling: flow models",
}


@dataclass(frozen=True)
class Sampling:
    """How the policy acts."""

    eta: float = 1.0
    """DDIM stochasticity, in (0, 1] (the paper: 1.0)."""
    sampler: str | None = None
    """One of `SAMPLERS`; None: "ddim" for a diffusion model, "flow-grpo" for a flow model."""
    noise_level: float | None = None
    """A flow sampler's noise: a for "flow-grpo" and "cps", η for "dance-grpo"; None: the
    sampler's default (0.7, 0.3, 0.7, the reference implementations')."""
    sde_window: tuple[int, int] | None = None
    """(first, stop): only a flow sampler's steps first, ..., stop − 1 are stochastic, the rest
    ODE steps without a log-prob that no agent trains on (Flow-GRPO-Fast); None: every step."""
    sde_window_size: int | None = None
    """A stochastic window of this many steps whose start is drawn for each batch of episodes,
    within the episode's first half (Flow-GRPO-Fast's `sde_window_range`, (0, N/2): the steps
    that explore most; a window longer than that starts at 0); None: `sde_window`."""
    guidance_scale: float = 5.0
    """Classifier-free guidance weight w (1.0: the conditional prediction alone; the paper: 5.0)."""
    guidance_interval: tuple[int, int] | None = None
    """(low, high) model timesteps that guidance applies to (Kynkäänniemi et al. 2024, "Applying
    Guidance in a Limited Interval Improves Sample and Distribution Quality in Diffusion Models");
    the other steps take the conditional prediction alone, one denoiser pass instead of two. None:
    every step."""


# The policy's defaults per model name, then per family, then "*" (any other model: the paper's
# setup). The embedded models guide with w = 3 at t >= 600 only (their first 8 of 20 steps; one
# denoiser pass at the rest). SD3 as Flow-GRPO samples it (w = 4.5); FLUX.1-dev with its distilled
# guidance at 3.5 (its pipeline's default).
SAMPLING: dict[str, Sampling] = {
    "*": Sampling(),
    "embedded": Sampling(guidance_scale=3.0, guidance_interval=(600, 999)),
    "embedded-flow": Sampling(guidance_scale=3.0, guidance_interval=(600, 1000)),
    "sd3": Sampling(guidance_scale=4.5),
    "flux": Sampling(guidance_scale=3.5),
}


def sampling_defaults(model: DiffusionModel) -> Sampling:
    """The model's row of `SAMPLING`, else its family's, else "*"."""
    return SAMPLING.get(model.name) or SAMPLING.get(model.family.name) or SAMPLING["*"]


def check_guidance_scale(guidance_scale: float) -> float:
    """`guidance_scale` as a float, or a ValueError if it is not a finite number >= 0."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.integer, np.floating)):
        raise ValueError(f"guidance_scale must be a number >= 0 (1.0: no guidance), got {guidance_scale!r} ({type(guidance_scale).__name__}).")
    if not (np.isfinite(guidance_scale) and guidance_scale >= 0):
        raise ValueError(f"guidance_scale must be a finite number >= 0 (1.0: no guidance), got {guidance_scale}")
    return float(guidance_scale)


def check_guidance_interval(guidance_interval: Sequence[int] | None, max_timestep: int) -> tuple[int, int] | None:
    """`guidance_interval` as a (low, high) pair of model timesteps, None kept; a ValueError unless
    0 <= low <= high <= max_timestep (a diffusion model's num_train_timesteps − 1, a flow model's
    num_train_timesteps)."""
    if guidance_interval is None:
        return None
    try:
        low, high = (int(t) for t in guidance_interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval must be None or a (low, high) pair of timesteps, got {guidance_interval!r}") from None
    if not 0 <= low <= high <= max_timestep:
        raise ValueError(
            f"guidance_interval must satisfy 0 <= low <= high <= {max_timestep} (the model's timesteps), "
            f"got {guidance_interval!r}; (0, {max_timestep}) guides every step."
        )
    return low, high


def make_sampler(model: DiffusionModel, scheduler: Any, num_inference_steps: int, settings: Sampling) -> DDIMSampler | FlowSDESampler | CPSSampler:
    """The sampler `settings` name for `model` on `scheduler`'s timesteps, or a ValueError saying which fit the model."""
    name = settings.sampler or ("flow-grpo" if model.is_flow else "ddim")
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; the samplers are {SAMPLERS}.")
    if (name == "ddim") == model.is_flow:
        kind = "a flow-matching model (its scheduler is a FlowMatch* one)" if model.is_flow else "a diffusion model"
        fits = [n for n in SAMPLERS if (n == "ddim") != model.is_flow]
        raise ValueError(f"sampler={name!r} does not fit {model.name!r}, {kind}; use one of {fits}.")
    flow_only = {"noise_level": settings.noise_level, "sde_window": settings.sde_window, "sde_window_size": settings.sde_window_size}
    if name == "ddim":
        given = sorted(key for key, value in flow_only.items() if value is not None)
        if given:
            raise ValueError(f"{given} set a flow sampler's noise; the DDIM sampler's is eta.")
        return DDIMSampler(scheduler, num_inference_steps, settings.eta)
    if settings.sde_window is not None and settings.sde_window_size is not None:
        raise ValueError("Give sde_window (a fixed window) or sde_window_size (a window drawn per batch), not both.")
    window = settings.sde_window  # a drawn window is the policy's (`DiffusionPolicy._stochastic`), not the sampler's
    if settings.sde_window_size is not None and not (isinstance(settings.sde_window_size, int) and 1 <= settings.sde_window_size <= num_inference_steps):
        raise ValueError(f"sde_window_size must be an int in [1, {num_inference_steps}] (the episode's steps), got {settings.sde_window_size!r}.")
    if name == "cps":
        return CPSSampler(scheduler, num_inference_steps, 0.7 if settings.noise_level is None else settings.noise_level, window)
    return FlowSDESampler(scheduler, num_inference_steps, settings.noise_level, "flow-grpo" if name == "flow-grpo" else "constant", window)



class DiffusionPolicy(FineTuning, nn.Module):
    """The Gaussian denoising policy of a text-to-image diffusion or flow-matching model.

    Args:
        model: the loaded model (`diffusion_gym.models.load_model`).
        scheduler: the scheduler whose timesteps the episodes step on: the env's (`from_env`).
        num_inference_steps: the episode length, the env's.
        **sampling: how it acts (the fields of `Sampling`: eta, sampler, noise_level,
            sde_window, sde_window_size, guidance_scale, guidance_interval); not given: the
            model's row of `SAMPLING` (`sampling_defaults`). guidance_interval=None guides every step.
    """

    def __init__(self, model: DiffusionModel, scheduler: Any, num_inference_steps: int, **sampling: Any):
        super().__init__()
        unknown = sorted(set(sampling) - {f.name for f in fields(Sampling)})
        if unknown:
            hint = " (log-probs are exact sums; an agent's mean over dimensions is DDPOConfig.log_prob_reduce)" if "reduce" in unknown else ""
            raise ValueError(f"Unknown policy settings {unknown}; a policy takes {[f.name for f in fields(Sampling)]}{hint}.")
        defaults = sampling_defaults(model)
        given = {key: value for key, value in sampling.items() if value is not None or key == "guidance_interval"}
        settings = replace(defaults, **given)
        self.model = model  # not a module: its networks register below (an env can share it: `gym.make(..., model=policy.model)`)
        self.family = model.family
        self.denoiser = model.denoiser
        use_fastest_attention(self.denoiser)  # SDPA, but the explicit attention on a CPU with half-precision matrix instructions (its backward is faster there)
        use_lean_frozen_convolutions(self.denoiser)  # a frozen convolution keeps the weight for its backward, not its input
        self.text_encoders = nn.ModuleList([m.requires_grad_(False) for m in (model.text_encoder, model.text_encoder_2, model.text_encoder_3) if m is not None])
        self.sampler = make_sampler(model, scheduler, num_inference_steps, settings)
        self.sde_window_size = settings.sde_window_size
        self._window_start: torch.Tensor | None = None  # this batch's drawn window (sde_window_size)
        self.guidance_scale = check_guidance_scale(settings.guidance_scale)
        max_timestep = self.sampler.num_train_timesteps - (0 if model.is_flow else 1)
        self.guidance_interval = check_guidance_interval(settings.guidance_interval, max_timestep)
        if self.family.distilled_guidance and self.guidance_interval is not None:
            raise ValueError(f"{model.name!r} takes its guidance as an input of every pass (guidance-distilled); guidance_interval does not apply: leave it None.")
        self._prompt_embeds: dict[str, Conditioning] = {}
        self._unconditional_embeds: Conditioning | None = None
        self._embeds_key: tuple[torch.device, torch.dtype] | None = None
        self._last_conditioning: tuple[tuple, Conditioning, Conditioning | None] | None = None  # (prompts and cache key, cond, guided 2B)

    @classmethod
    def from_env(cls, env: Any, **sampling: Any) -> "DiffusionPolicy":
        """The policy of an environment's model on its scheduler's timesteps (the model is shared,
        not copied: fine-tuning this policy changes what an env that shares the model samples).

        Args:
            env: a diffusion-gym env or vector env, wrapped or not.
            **sampling: the fields of `Sampling`; not given: the model's defaults.
        """
        base = env.unwrapped
        base = getattr(base, "vector_env", base)
        if not all(hasattr(base, name) for name in ("model", "scheduler", "num_steps")):
            raise ValueError(f"{type(env).__name__} is not a diffusion-gym environment; make one with gym.make('Diffusion...-v0').")
        return cls(base.model, base.scheduler, base.num_steps, **sampling)

    @property
    def device(self) -> torch.device:
        return first_parameter(self.denoiser).device  # not `denoiser.device` (`first_parameter` says why)

    @property
    def dtype(self) -> torch.dtype:
        return first_parameter(self.denoiser).dtype

    def optimize(self, compile: bool = False, channels_last: bool = False, compile_backend: str = "inductor") -> None:
        """How the denoiser's passes run, not what they compute (results change by float rounding only).

        Args:
            compile: `torch.compile` the denoiser (in place: parameter names, LoRA adapters and
                checkpoints are unchanged). The first sampling pass and the first training pass
                each compile a graph, a minute or more on a CPU (cached on disk for later runs);
                disabling the adapters for a KL reference compiles once more. It helps where
                per-operation overhead dominates a pass (small denoisers), over runs long enough
                to repay the compilation.
            channels_last: keep the denoiser's convolution weights in the channels-last memory
                format, which GPU convolution kernels in half precision prefer.
            compile_backend: `torch.compile`'s backend ("inductor" generates kernels; "aot_eager"
                only traces, for checking that a model compiles).

        Call it after `enable_lora` or `enable_full_finetuning` (a kept reference is converted alike).
        """
        denoisers = [self.denoiser] + ([self._reference_denoiser] if self._reference_denoiser is not None else [])
        for denoiser in denoisers:
            if channels_last:
                denoiser.to(memory_format=torch.channels_last)
            if compile:
                denoiser.compile(backend=compile_backend)

    # ---------------------------------------------------------------- conditioning
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """The prompts' conditioning as the denoiser takes it (`diffusion_gym.models.families`):
        named tensors, each (B, ...) in the denoiser's dtype; each prompt is encoded once and
        cached (the text encoders are frozen)."""
        self._renew_cache()
        missing = sorted(set(prompts) - self._prompt_embeds.keys())
        if missing:
            with half_products(self.device, self.dtype):
                encoded = self.family.encode(self.model, missing)
            for i, prompt in enumerate(missing):
                self._prompt_embeds[prompt] = {name: value[i] for name, value in encoded.items()}
        first = self._prompt_embeds[prompts[0]]
        return {name: torch.stack([self._prompt_embeds[p][name] for p in prompts]) for name in first}

    def _batch_conditioning(self, prompts: Sequence[str], with_unconditional: bool = False) -> Conditioning:
        """The prompts' conditioning (`encode_prompts`), or with `with_unconditional` the
        unconditional one and it stacked for one guided pass of 2B. The last batch's is kept: an
        episode's batch asks for the same prompts at every step."""
        self._renew_cache()
        key = (tuple(prompts), self._embeds_key)
        if self._last_conditioning is None or self._last_conditioning[0] != key:
            self._last_conditioning = (key, self.encode_prompts(prompts), None)
        key, cond, both = self._last_conditioning
        if not with_unconditional:
            return cond
        if both is None:
            both = {name: torch.cat([uncond, cond[name]]) for name, uncond in self._unconditional(len(prompts)).items()}
            self._last_conditioning = (key, cond, both)
        return both

    def _unconditional(self, batch: int) -> Conditioning:
        """The conditioning classifier-free guidance contrasts with (the family's: the empty
        prompt's, or SDXL's zeros), for `batch` samples; computed once (`_batch_conditioning` has renewed the
        cache already)."""
        if self._unconditional_embeds is None:
            with torch.no_grad(), half_products(self.device, self.dtype):
                self._unconditional_embeds = {name: value[0] for name, value in self.family.unconditional(self.model).items()}
        return {name: value.expand(batch, *value.shape) for name, value in self._unconditional_embeds.items()}

    def _renew_cache(self) -> None:
        """Empty the cached conditioning when the denoiser has moved to another device or dtype."""
        key = (self.device, self.dtype)
        if self._embeds_key != key:
            self._prompt_embeds.clear()
            self._unconditional_embeds = None
            self._embeds_key = key

    @contextmanager
    def passes(self) -> Iterator[None]:
        """How the denoiser's passes run, every one of `denoise`'s: on merged LoRA weights
        (`merged_lora`), and in a half precision that a CPU has no matrix instructions for, with
        the linear layers and convolutions on float32 kernels (`diffusion_gym.models.half`). What
        they compute is the plain pass's, to float rounding. Enter it inside autocast, not around
        it (it reads whether a half-precision autocast is on)."""
        weight = first_parameter(self.denoiser)  # read once a pass (`first_parameter` says why)
        with self.merged_lora(), half_products(weight.device, weight.dtype):
            yield

    def denoise(self, x_t: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's output at x_t under `cond`, one pass, (B, C, H, W) float32: ε, v or x_0
        for a diffusion model (its scheduler's prediction_type), the velocity for a flow model.

        Without gradients the pass runs in inference mode, which spares every operation autograd's
        bookkeeping (version counters, view tracking); its output is returned as a normal tensor,
        so that it may enter a later pass with gradients."""
        with self.passes(), torch.inference_mode(not torch.is_grad_enabled()):
            out = self.family.predict(self.denoiser, self.model, x_t.to(self.dtype), timesteps, cond, guidance)
        if out.is_inference():  # a new, normal tensor: a backward cannot keep an inference tensor
            return out.clone() if out.dtype == torch.float32 else out.float()
        return out.float()

    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """The guided prediction that the sampler steps with, (B, C, H, W) float32.

        Classifier-free guidance: ε_u + w (ε_c − ε_u); where it does not apply (w = 1, or a
        timestep outside `guidance_interval`) it is ε_c. A batch that no sample guides takes one
        pass; otherwise the conditional and unconditional passes run as one batch of 2B. A
        guidance-distilled model (FLUX.1-dev) takes w as an input of its one pass.
        """
        cond = self._batch_conditioning(prompts)
        if self.family.distilled_guidance:
            return self.denoise(x_t, timesteps, cond, guidance=torch.full((x_t.shape[0],), self.guidance_scale, device=x_t.device))
        guided = self.guided(timesteps)
        if not guided.any():
            return self.denoise(x_t, timesteps, cond)
        both = self._batch_conditioning(prompts, with_unconditional=True)
        out_uncond, out_cond = self.denoise(torch.cat([x_t, x_t]), torch.cat([timesteps, timesteps]), both).chunk(2)
        out_guided = out_uncond + self.guidance_scale * (out_cond - out_uncond)
        return out_guided if guided.all() else torch.where(guided.view(-1, 1, 1, 1), out_guided, out_cond)

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
        device (differentiable unless called under `torch.no_grad`).

        A flow sampler's step outside its stochastic window is the ODE step (std 0, log-prob
        NaN). An action is always scored as a stochastic step: agents train only on the steps
        that had a log-prob when they were sampled."""
        prompts, timesteps, x_t, _ = self._unpack(obs)
        if action is not None:
            action = torch.as_tensor(action, device=self.device, dtype=torch.float32).reshape(x_t.shape)
        prediction = self.predict(x_t, timesteps, prompts)
        if isinstance(self.sampler, DDIMSampler):
            return self.sampler.step(prediction, timesteps, x_t, prev_sample=action, generator=generator)
        if action is None:
            stochastic = self._stochastic(timesteps, generator)
        else:  # scored as a stochastic step: a mask only where a fixed window would make it an ODE step
            stochastic = None if self.sampler.sde_window is None else torch.ones(x_t.shape[0], dtype=torch.bool)
        return self.sampler.step(prediction, timesteps, x_t, prev_sample=action, generator=generator, stochastic=stochastic)

    def _stochastic(self, timesteps: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        """Which samples step stochastically at these timesteps: None (the sampler's `sde_window`),
        or with `sde_window_size` the window drawn for this batch at its first step."""
        if self.sde_window_size is None:
            return None
        index = self.sampler.step_index(timesteps).cpu()
        if self._window_start is None or bool((index == 0).any()):
            last_start = max(0, self.sampler.num_inference_steps // 2 - self.sde_window_size)  # windows inside the first half
            self._window_start = torch.randint(0, last_start + 1, (1,), generator=generator, device="cpu" if generator is None else generator.device).cpu()
        return (index >= self._window_start) & (index < self._window_start + self.sde_window_size)

    @torch.no_grad()
    def act(self, obs: dict, generator: torch.Generator | None = None) -> tuple[Any, Any]:
        """Sample x_{t-1} for each observation.

        Returns:
            (action, log_prob): (B, C, H, W) float32 and (B,) float32, numpy if the observation's
            x_t is numpy, else torch on the policy's device; without the batch dimension for a
            single env's observation. log_prob is NaN at a flow sampler's ODE steps.
        """
        step = self.forward(obs, generator=generator)
        return self._like_obs(obs, step.prev_sample), self._like_obs(obs, step.log_prob)

    def log_prob(self, obs: dict, action: torch.Tensor | np.ndarray) -> torch.Tensor:
        """log π(action | obs), (B,) float32 torch tensor, differentiable w.r.t. the trainable parameters."""
        return self.forward(obs, action=action).log_prob

    # ---------------------------------------------------------------- observations
    def _unpack(self, obs: dict) -> tuple[list[str], torch.Tensor, torch.Tensor, bool]:
        """(prompts, timesteps (B,) int64, or float32 for a flow model, x_t (B, C, H, W) float32, is_single) on the policy's device."""
        try:
            prompt, timestep, x_t = obs["prompt"], obs["timestep"], obs["x_t"]
        except (KeyError, TypeError):
            raise ValueError("An observation is a dict with keys 'prompt', 'timestep' and 'x_t', as the environments return.") from None
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        x_t = torch.as_tensor(x_t, device=self.device, dtype=torch.float32)
        timesteps = torch.as_tensor(timestep, device=self.device)
        timesteps = (timesteps.long() if isinstance(self.sampler, DDIMSampler) else timesteps.float()).reshape(-1)
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
