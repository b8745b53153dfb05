"""Stochastic DDIM (Song et al. 2021, eq. 12 and 16) with exact per-step log-probs.

Wraps diffusers' `DDIMScheduler` for its noise schedule (`alphas_cumprod`, `final_alpha_cumprod`),
its timestep spacing (`set_timesteps`, `timesteps`) and its config; only the step itself is
written here, because it must also return the Gaussian it samples from. With the same noise it
gives the same x_{t-1} as `DDIMScheduler.step(..., eta=eta, variance_noise=noise)`.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffusion_gym.samplers.base import Reduce, SamplerStep, check_num_inference_steps, sample_or_score


def ddim_scheduler(scheduler: SchedulerMixin, num_inference_steps: int) -> DDIMScheduler:
    """A `DDIMScheduler` with an episode's timesteps set: `scheduler` itself if it is one with
    these timesteps already (a policy shares its env's), else a new one made from its config (a
    model's own scheduler is never changed; Stable Diffusion ships a PNDM config, as ddpo-pytorch
    also does this). A ValueError for a step count or a config DDIM cannot take."""
    num_inference_steps = check_num_inference_steps(num_inference_steps)
    if isinstance(scheduler, DDIMScheduler) and scheduler.num_inference_steps == num_inference_steps:
        return scheduler
    scheduler = DDIMScheduler.from_config(scheduler.config)
    if scheduler.config.thresholding:
        raise ValueError("DDIMSampler does not support dynamic thresholding; use a scheduler config with thresholding=False.")
    if num_inference_steps > scheduler.config.num_train_timesteps:
        raise ValueError(f"num_inference_steps={num_inference_steps} exceeds the model's {scheduler.config.num_train_timesteps} training timesteps.")
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


class DDIMSampler:
    """The stochastic DDIM step as a Gaussian policy over x_{t-1}.

    Args:
        scheduler: any diffusers scheduler (`ddim_scheduler` turns it into a `DDIMScheduler`
            with these timesteps; an env's is shared, so the policy steps on the env's timesteps).
        num_inference_steps: sampler steps per episode (the paper: 50).
        eta: the DDIM stochasticity, in (0, 1] (the paper: 1.0). At 0 the step is deterministic
            and has no log-density; above 1 the DDIM mean is undefined.
    """

    def __init__(self, scheduler: SchedulerMixin, num_inference_steps: int, eta: float = 1.0):
        if isinstance(eta, bool) or not isinstance(eta, (int, float, np.integer, np.floating)):
            raise ValueError(f"eta must be a number in (0, 1], got {eta!r} ({type(eta).__name__}).")
        if not 0 < eta <= 1:
            raise ValueError(
                f"eta must be > 0 for a stochastic policy with a log-prob, and <= 1 for DDIM, got {eta}; "
                "eta=1.0 is the paper's setting (eta=0 is deterministic DDIM)."
            )
        self.scheduler = ddim_scheduler(scheduler, num_inference_steps)
        self.eta = float(eta)
        self.num_inference_steps = int(num_inference_steps)
        # per device, the step's scalars at every training timestep (`_coefficients`): made once, not every step
        self._tables: dict[torch.device, torch.Tensor] = {}
        last_std = self.std(self.timesteps[-1:])
        if not bool((last_std > 0).all()):
            raise ValueError(
                "The last DDIM step has std 0 with this scheduler config (set_alpha_to_one=True makes "
                "it deterministic), so its log-prob is undefined. Use a scheduler config with "
                "set_alpha_to_one=False, as Stable Diffusion's is."
            )

    @property
    def timesteps(self) -> torch.Tensor:
        """The model timesteps of one episode, descending, (num_inference_steps,) int64 on the CPU."""
        return self.scheduler.timesteps

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def previous_timestep(self, timestep: torch.Tensor) -> torch.Tensor:
        """The timestep the step from `timestep` lands on (negative after the last step)."""
        return timestep - self.num_train_timesteps // self.num_inference_steps

    def _coefficients(self, timestep: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The step's scalars at a (B,) batch of model timesteps, each (B,) float32 on the
        timestep's device: √ᾱ_t, √(1 − ᾱ_t), √ᾱ_prev, σ_t (eq. 16) and √(1 − ᾱ_prev − σ_t²), the
        scale of ε̂ in the mean (eq. 12). They depend on the schedule only, so they are computed
        once for every training timestep (the same float32 operations, value for value, as on a
        batch) and a step gathers its rows instead of repeating some twenty operations."""
        table = self._tables.get(timestep.device)
        if table is None:
            t = torch.arange(self.num_train_timesteps, device=timestep.device)
            alphas_cumprod = self.scheduler.alphas_cumprod.to(t.device, torch.float32)
            final_alpha_cumprod = torch.as_tensor(self.scheduler.final_alpha_cumprod, dtype=torch.float32, device=t.device)
            prev = self.previous_timestep(t)
            alpha_prod_t = alphas_cumprod[t]
            alpha_prod_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], final_alpha_cumprod)
            beta_prod_t = 1 - alpha_prod_t
            variance = (1 - alpha_prod_prev) / beta_prod_t * (1 - alpha_prod_t / alpha_prod_prev)
            std = self.eta * variance**0.5
            # for eta <= 1 the term under the root is >= 0; it is 0 in exact arithmetic when ᾱ_t = 0
            # (zero terminal SNR), where float32 rounding can make it slightly negative: clamp that
            direction_scale = (1 - alpha_prod_prev - std**2).clamp(min=0) ** 0.5
            table = self._tables[timestep.device] = torch.stack([alpha_prod_t**0.5, beta_prod_t**0.5, alpha_prod_prev**0.5, std, direction_scale])
        return table[:, timestep].unbind()

    def std(self, timestep: torch.Tensor) -> torch.Tensor:
        """σ_t = η · sqrt((1 − ᾱ_prev) / (1 − ᾱ_t) · (1 − ᾱ_t / ᾱ_prev)) (eq. 16), (B,) float32."""
        return self._coefficients(torch.as_tensor(timestep).long())[3]

    def relative_std(self, timestep: torch.Tensor) -> torch.Tensor:
        """σ_t over the largest σ of an episode's steps, (B,) float32: how much a step explores next
        to the noisiest. Agents may skip training on steps where it is tiny (`min_step_std_ratio`)."""
        return self.std(timestep) / self.std(self.timesteps).max().to(torch.as_tensor(timestep).device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | int,
        sample: torch.Tensor,
        prev_sample: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        reduce: Reduce = "sum",
    ) -> SamplerStep:
        """One DDIM step from x_t, sampling x_{t-1} or scoring a given one.

        Args:
            model_output: the (guided) model prediction at x_t, (B, C, H, W); ε, v or x_0 as the
                scheduler config's `prediction_type` says.
            timestep: the model timestep of x_t, an int or a (B,) tensor (samples may differ).
            sample: x_t, (B, C, H, W).
            prev_sample: x_{t-1} to score; if None it is sampled as mean + std · noise.
            noise: the standard normal noise to sample with, (B, C, H, W); drawn if None.
            generator: torch generator for the noise when `noise` is None.
            reduce: "sum" (exact) or "mean" over dimensions for the log-prob.
        """
        batch = sample.shape[0]
        timestep = torch.as_tensor(timestep, device=sample.device).long()
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        sqrt_alpha_t, sqrt_beta_t, sqrt_alpha_prev, std, direction_scale = (c.view(batch, 1, 1, 1) for c in self._coefficients(timestep))
        model_output = model_output.float()
        sample = sample.float()

        # 1. predicted x_0 and ε ("predicted x_0" of eq. 12)
        prediction_type = self.scheduler.config.prediction_type
        if prediction_type == "epsilon":
            pred_original_sample = (sample - sqrt_beta_t * model_output) / sqrt_alpha_t
            pred_epsilon = model_output
        elif prediction_type == "v_prediction":
            pred_original_sample = sqrt_alpha_t * sample - sqrt_beta_t * model_output
            pred_epsilon = sqrt_alpha_t * model_output + sqrt_beta_t * sample
        elif prediction_type == "sample":
            pred_original_sample = model_output
            pred_epsilon = (sample - sqrt_alpha_t * pred_original_sample) / sqrt_beta_t
        else:
            raise ValueError(f"Unsupported prediction_type {prediction_type!r}; expected epsilon, v_prediction or sample.")
        if self.scheduler.config.clip_sample:
            limit = self.scheduler.config.clip_sample_range
            pred_original_sample = pred_original_sample.clamp(-limit, limit)

        # 2. the mean: √ᾱ_prev · x̂_0 + √(1 − ᾱ_prev − σ_t²) · ε̂ (eq. 12 without the noise term), σ_t of eq. 16
        mean = sqrt_alpha_prev * pred_original_sample + direction_scale * pred_epsilon

        # 3. sample x_{t-1} = mean + σ_t z, or score the given one
        prev_sample, log_prob = sample_or_score(mean, std, prev_sample, noise, generator, reduce)
        return SamplerStep(
            prev_sample=prev_sample, mean=mean, std=std, log_prob=log_prob, pred_original_sample=pred_original_sample
        )
