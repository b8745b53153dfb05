"""The SDE of Flow-GRPO (Liu et al. 2025, arXiv 2505.05470) and of DanceGRPO (Xue et al. 2025,
arXiv 2505.07818): a flow model's ODE turned into a stochastic step with the same marginals, and
its exact Gaussian log-prob.

Derivation, in the notation of `flow_match.py` ((F1)–(F3)); time runs from σ = 1 to 0, dσ < 0.

    (S1) The ODE dx = v dσ moves the marginals p_σ of (F1). For any diffusion g(σ), the reverse
         SDE  dx = [v − ½ g² ∇log p_σ(x)] dσ + g dw̄  has the same marginals (Fokker–Planck:
         the extra drift's flux, −½ g² p ∇log p = −½ g² ∇p, cancels the diffusion's ½ g² Δp).
    (S2) From (F1), ∇log p_σ(x) = −E[ε | x_σ = x] / σ, estimated by the model as −x̂_1 / σ with
         x̂_1 = x + (1 − σ) v (F2).
    (S3) One Euler–Maruyama step from σ to σ' < σ:
             mean = x + [v + g² / (2σ) · (x + (1 − σ) v)] (σ' − σ),    std = g √(σ − σ').
    (S4) The diffusion:
         - "flow-grpo": g = a √(σ / (1 − σ)), noise level a (the reference's default 0.7); at σ = 1,
           where it is infinite, the denominator takes the episode's second σ, as the reference does;
         - "constant": g = η (DanceGRPO; the reference's default η = 0.3).
    With the noise level at 0 the step is the ODE step (F3).

The log-prob is the exact density of N(mean, std² I) (`gaussian_log_prob`); the references
average it over dimensions, which is `reduce="mean"` here.

Where the marginals are kept only approximately: (S3) is a discretisation, exact as the steps
shrink. Near σ = 1, where the flow-grpo g² grows as 1 / (1 − σ), the first steps stay off for any
step count: on Gaussian data the first step's variance exceeds the true one by about a⁴ / 4
(`tests/test_flow_samplers.py` computes it by hand). The constant-η diffusion has no such
singularity.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffusion_gym.samplers.flow_match import FlowMatchSampler

Diffusion = Literal["flow-grpo", "constant"]
DEFAULT_NOISE_LEVELS = {"flow-grpo": 0.7, "constant": 0.3}


class FlowSDESampler(FlowMatchSampler):
    """The flow-matching SDE step (S3) as a Gaussian policy over x_σ'.

    Args:
        scheduler: the model's flow-matching scheduler.
        num_inference_steps: sampler steps per episode.
        noise_level: a for "flow-grpo", η for "constant" (None: 0.7 and 0.3, the references').
        diffusion: "flow-grpo" (g = a √(σ / (1 − σ))) or "constant" (g = η, DanceGRPO).
        sde_window: (first, stop) of the stochastic steps (`FlowMatchSampler`); None: all.
        mu: the image-size shift of a FLUX-style schedule.
    """

    def __init__(
        self,
        scheduler: SchedulerMixin,
        num_inference_steps: int,
        noise_level: float | None = None,
        diffusion: Diffusion = "flow-grpo",
        sde_window: tuple[int, int] | None = None,
        mu: float | None = None,
    ):
        if diffusion not in DEFAULT_NOISE_LEVELS:
            raise ValueError(f"diffusion must be one of {tuple(DEFAULT_NOISE_LEVELS)}, got {diffusion!r}.")
        self.diffusion = diffusion
        super().__init__(scheduler, num_inference_steps, DEFAULT_NOISE_LEVELS[diffusion] if noise_level is None else noise_level, sde_window, mu)

    def diffusion_coefficient(self, sigma: torch.Tensor) -> torch.Tensor:
        """g(σ) of (S4), shaped like σ."""
        if self.diffusion == "constant":
            return torch.full_like(sigma, self.noise_level)
        second = self.sigmas(sigma.device)[1]
        return self.noise_level * (sigma / (1 - torch.where(sigma >= 1, second, sigma))) ** 0.5

    def _std(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return self.diffusion_coefficient(sigma) * (sigma - sigma_next) ** 0.5  # (S3)

    def _mean(self, sample: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        g = self.diffusion_coefficient(sigma)
        return sample + (velocity + g**2 / (2 * sigma) * (sample + (1 - sigma) * velocity)) * (sigma_next - sigma)  # (S3)
