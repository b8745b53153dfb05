"""Flow-matching models (SD3, FLUX) as Gaussian policies: the schedule and the step they share.

diffusers' convention for these models (`FlowMatchEulerDiscreteScheduler`):

    (F1) x_σ = (1 − σ) x_0 + σ ε,            σ from 1 (noise) to 0 (data)
    (F2) the model predicts the velocity v = ε − x_0, so it implies the data and the noise
         x̂_0 = x_σ − σ v   and   x̂_1 = x_σ + (1 − σ) v
    (F3) the ODE step from σ to the next σ' < σ: x_σ' = x_σ + (σ' − σ) v

A sampler here replaces (F3) by a Gaussian x_σ' ~ N(mean, std² I): the file of each sampler
derives its mean and std (`flow_sde.py`, `cps.py`). A step whose std is 0 is an ODE step: it has
no density, so its log-prob is NaN, which no agent can train on without noticing. Steps outside
the sampler's stochastic window (`sde_window`, or a per-sample `stochastic` mask given to
`step`) are the ODE step (F3) itself: Flow-GRPO-Fast and MixGRPO sample only a window of the
trajectory and train only there.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffusion_gym.samplers.base import Reduce, SamplerStep, check_num_inference_steps, sample_or_score


def flow_match_scheduler(
    scheduler: SchedulerMixin, num_inference_steps: int, mu: float | None = None, sigmas: Sequence[float] | None = None
) -> FlowMatchEulerDiscreteScheduler:
    """A `FlowMatchEulerDiscreteScheduler` with an episode's timesteps set, made from `scheduler`'s
    config (the model's own scheduler is never changed), or `scheduler` itself when it already has
    these timesteps and no image-size shift. `mu` is the shift of a schedule that depends on the
    image size (FLUX: `use_dynamic_shifting`; diffusers' `calculate_shift(image_seq_len, ...)`);
    `sigmas` a pipeline's own σ grid before the shift (FLUX's linspace(1, 1/N, N)); None: the
    scheduler's. A ValueError for a step count or a scheduler these samplers cannot take."""
    num_inference_steps = check_num_inference_steps(num_inference_steps)
    if not type(scheduler).__name__.startswith("FlowMatch"):
        raise ValueError(
            f"A flow-matching sampler needs a flow-matching model (its scheduler a FlowMatch*Scheduler, as SD3's and FLUX's are); "
            f"this model's is {type(scheduler).__name__}. Use DDIMSampler for it."
        )
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler) and mu is None and sigmas is None and getattr(scheduler, "num_inference_steps", None) == num_inference_steps:
        return scheduler  # an env's, its timesteps set (and shifted) already
    if scheduler.config.get("use_dynamic_shifting", False) and mu is None:
        raise ValueError(
            "This scheduler shifts its schedule by the image size (use_dynamic_shifting=True, as FLUX's does): pass mu, "
            "diffusers' calculate_shift(image_seq_len, base_image_seq_len, max_image_seq_len, base_shift, max_shift)."
        )
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    if scheduler.config.invert_sigmas:
        raise ValueError("invert_sigmas=True runs the schedule from data to noise; use a scheduler config with invert_sigmas=False.")
    scheduler.set_timesteps(num_inference_steps, sigmas=None if sigmas is None else list(sigmas), mu=mu)
    return scheduler


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training pair of a flow model at noise level σ ((B,) or broadcastable): x_σ (F1) and
    the velocity target ε − x_0 (F2), each shaped like `x0`."""
    sigma = sigma.reshape(-1, *(1,) * (x0.ndim - 1)) if sigma.ndim == 1 else sigma
    return (1 - sigma) * x0 + sigma * noise, noise - x0


class FlowMatchSampler(ABC):
    """The skeleton of a flow-matching step as a Gaussian policy; a subclass gives `_std` and `_mean`.

    Args:
        scheduler: the model's scheduler (a FlowMatch* scheduler; `flow_match_scheduler`).
        num_inference_steps: sampler steps per episode.
        noise_level: the sampler's stochasticity, >= 0 (0: every step is an ODE step).
        sde_window: (first, stop): only the steps first, ..., stop − 1 of an episode are
            stochastic, the others are ODE steps; None: every step is stochastic.
        mu: the image-size shift of a FLUX-style schedule (`flow_match_scheduler`).
    """

    def __init__(
        self,
        scheduler: SchedulerMixin,
        num_inference_steps: int,
        noise_level: float,
        sde_window: tuple[int, int] | None = None,
        mu: float | None = None,
    ):
        if isinstance(noise_level, bool) or not isinstance(noise_level, (int, float, np.integer, np.floating)) or not math.isfinite(noise_level) or noise_level < 0:
            raise ValueError(f"noise_level must be a finite number >= 0 (0: deterministic ODE steps), got {noise_level!r}.")
        self.scheduler = flow_match_scheduler(scheduler, num_inference_steps, mu)
        self.num_inference_steps = int(num_inference_steps)
        self.noise_level = float(noise_level)
        if sde_window is not None:
            first, stop = sde_window
            if not 0 <= first < stop <= self.num_inference_steps:
                raise ValueError(f"sde_window must be (first, stop) with 0 <= first < stop <= {self.num_inference_steps} (the episode's steps), got {sde_window!r}.")
        self.sde_window = sde_window
        sigmas = self.scheduler.sigmas.to(torch.float32)
        if sigmas.shape[0] != self.num_inference_steps + 1 or not bool((sigmas[1:] < sigmas[:-1]).all()):
            raise ValueError(f"Expected {self.num_inference_steps + 1} decreasing sigmas from the scheduler, got {sigmas.tolist()}.")
        self._sigmas = {torch.device("cpu"): sigmas}  # per device: moved once, not every step
        spacing = (self.timesteps[:-1] - self.timesteps[1:]).min() if self.num_inference_steps > 1 else torch.tensor(float(self.num_train_timesteps))
        self._tolerance = 0.25 * float(spacing)

    @property
    def timesteps(self) -> torch.Tensor:
        """The model timesteps of one episode (σ × num_train_timesteps), descending, (N,) float32 on the CPU."""
        return self.scheduler.timesteps

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def sigmas(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """σ at every step of an episode and the final one, (N + 1,) float32, descending to 0."""
        device = torch.device(device)
        if device not in self._sigmas:
            self._sigmas[device] = self._sigmas[torch.device("cpu")].to(device)
        return self._sigmas[device]

    def step_index(self, timestep: torch.Tensor | float) -> torch.Tensor:
        """The index in the episode of each timestep, (B,) int64; a ValueError for a timestep that
        is not one of the episode's (`timesteps`)."""
        timestep = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)
        distance = (timestep.cpu()[:, None] - self.timesteps[None, :]).abs()
        distance, index = distance.min(dim=1)
        if bool((distance > self._tolerance).any()):
            raise ValueError(f"Timesteps {timestep[distance > self._tolerance].tolist()} are not this episode's; they are {self.timesteps.tolist()}.")
        return index.to(timestep.device)

    def previous_timestep(self, timestep: torch.Tensor | float) -> torch.Tensor:
        """The timestep the step from `timestep` lands on (0 after the last step), (B,) float32."""
        index = self.step_index(timestep)
        return self.sigmas(index.device)[index + 1] * self.num_train_timesteps

    def in_window(self, index: torch.Tensor) -> torch.Tensor:
        """Whether each step index lies in the stochastic window, (B,) bool."""
        if self.sde_window is None:
            return torch.ones_like(index, dtype=torch.bool)
        first, stop = self.sde_window
        return (index >= first) & (index < stop)

    def std(self, timestep: torch.Tensor | float) -> torch.Tensor:
        """The step's std, (B,) float32: 0 for an ODE step."""
        index = self.step_index(timestep)
        sigmas = self.sigmas(index.device)
        std = self._std(sigmas[index], sigmas[index + 1])
        return torch.where(self.in_window(index), std, torch.zeros_like(std))

    def relative_std(self, timestep: torch.Tensor | float) -> torch.Tensor:
        """The step's std over the largest of the episode's, (B,) float32 (0 for an ODE step): how
        much a step explores next to the noisiest. Agents skip steps where it is tiny
        (`min_step_std_ratio`), and so never train on an ODE step."""
        largest = self.std(self.timesteps).max()
        std = self.std(timestep)
        return std / largest.to(std.device) if float(largest) > 0 else torch.zeros_like(std)

    # ---------------------------------------------------------------- a subclass's
    @abstractmethod
    def _std(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        """The step's std from σ to σ', shaped like σ."""

    @abstractmethod
    def _mean(self, sample: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        """The step's mean from x_σ and the velocity, shaped like `sample`."""

    # ---------------------------------------------------------------- the step
    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | float,
        sample: torch.Tensor,
        prev_sample: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        reduce: Reduce = "sum",
        stochastic: torch.Tensor | None = None,
    ) -> SamplerStep:
        """One step from x_σ, sampling x_σ' or scoring a given one.

        Args:
            model_output: the (guided) velocity prediction at x_σ, (B, ...).
            timestep: the model timestep of x_σ (one of `timesteps`), a float or a (B,) tensor.
            sample: x_σ, (B, ...).
            prev_sample: x_σ' to score; if None it is sampled as mean + std · noise.
            noise: the standard normal noise to sample with, shaped like `sample`; drawn if None.
            generator: torch generator for the noise when `noise` is None.
            reduce: "sum" (exact) or "mean" over dimensions for the log-prob.
            stochastic: (B,) bool, which samples take a stochastic step here (a window chosen per
                episode); None: the steps in `sde_window`.

        Returns:
            `SamplerStep`; where the step is an ODE step, std is 0, prev_sample the ODE step (F3)
            and log_prob NaN.
        """
        batch = sample.shape[0]
        index = self.step_index(timestep).to(sample.device)
        if index.shape[0] == 1:
            index = index.expand(batch)
        elif index.shape[0] != batch:
            raise ValueError(f"timestep has {index.shape[0]} values for a batch of {batch}; give one, or one per sample.")
        view = (batch,) + (1,) * (sample.ndim - 1)
        sigmas = self.sigmas(sample.device)
        sigma, sigma_next = sigmas[index].view(view), sigmas[index + 1].view(view)
        velocity, sample = model_output.float(), sample.float()

        window = self.in_window(index) if stochastic is None else torch.as_tensor(stochastic, dtype=torch.bool, device=sample.device).expand(batch)
        std = torch.where(window.view(view), self._std(sigma, sigma_next), torch.zeros_like(sigma))
        mean = self._mean(sample, velocity, sigma, sigma_next)
        if stochastic is not None or self.sde_window is not None:  # some samples may step outside the window: (F3) there
            mean = torch.where(window.view(view), mean, sample + (sigma_next - sigma) * velocity)

        prev_sample, log_prob = sample_or_score(mean, std, prev_sample, noise, generator, reduce)
        return SamplerStep(prev_sample=prev_sample, mean=mean, std=std, log_prob=log_prob, pred_original_sample=sample - sigma * velocity)
