"""Coefficients-Preserving Sampling (Wang and Yu 2025, arXiv 2509.05952) with its exact log-prob.

In the notation of `flow_match.py` ((F1)–(F3)): a DDIM-like step for flow models. The model's
x̂_0 and x̂_1 (F2) are recombined at the next σ' with the noise split between the predicted noise
and fresh noise z, so that the coefficients of (F1) are kept exactly:

    (C1) std = σ' sin(a π / 2),                        noise level a in [0, 1]
    (C2) mean = (1 − σ') x̂_0 + √(σ'² − std²) x̂_1 = (1 − σ') x̂_0 + σ' cos(a π / 2) x̂_1
    (C3) x_σ' = mean + std z = (1 − σ') x̂_0 + σ' [cos(a π / 2) x̂_1 + sin(a π / 2) z]

When x̂_0 and x̂_1 are the true data and noise, x_σ' is exactly (1 − σ') x_0 + σ' ε' with ε'
standard normal, at any step size: no excess noise (the SDE's coarse steps add some). The last
step (σ' = 0) has std 0: it is the ODE step, without a log-prob. With a = 0 every step is (F3).

The log-prob is the exact density of N(mean, std² I). The reference implementation (flow_grpo,
`sde_type="cps"`) uses −mean((x_σ' − mean)²) instead: it drops the constants, which cancel in a
ratio, and the factor 1 / (2 std²), which does not. Its log-ratio between two policies is the
exact one times 2 std² / D (D: the latent's dimensions), so a clip range tuned there is not the
same clip here.
"""

from __future__ import annotations

import math

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffusion_gym.samplers.flow_match import FlowMatchSampler


class CPSSampler(FlowMatchSampler):
    """The coefficients-preserving step (C1)–(C3) as a Gaussian policy over x_σ'.

    Args:
        scheduler: the model's flow-matching scheduler.
        num_inference_steps: sampler steps per episode.
        noise_level: a in [0, 1]: the share sin(a π / 2) of σ' drawn fresh (the reference's 0.7).
        sde_window: (first, stop) of the stochastic steps (`FlowMatchSampler`); None: all.
        mu: the image-size shift of a FLUX-style schedule.
    """

    def __init__(
        self,
        scheduler: SchedulerMixin,
        num_inference_steps: int,
        noise_level: float = 0.7,
        sde_window: tuple[int, int] | None = None,
        mu: float | None = None,
    ):
        super().__init__(scheduler, num_inference_steps, noise_level, sde_window, mu)
        if self.noise_level > 1:
            raise ValueError(f"CPS's noise_level must be in [0, 1] (a = 1 draws all of σ' fresh), got {noise_level}.")

    def _std(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return sigma_next * math.sin(self.noise_level * math.pi / 2)  # (C1)

    def _mean(self, sample: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        pred_original = sample - sigma * velocity  # x̂_0 (F2)
        pred_noise = sample + (1 - sigma) * velocity  # x̂_1 (F2)
        return (1 - sigma_next) * pred_original + sigma_next * math.cos(self.noise_level * math.pi / 2) * pred_noise  # (C2)
