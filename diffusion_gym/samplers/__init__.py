"""Samplers: one file per sampler, each a Gaussian policy over x_{t-1} with an exact log-prob.

The log-density itself lives once, in `base.gaussian_log_prob`.
"""

from diffusion_gym.samplers.base import SamplerStep, gaussian_kl, gaussian_log_prob
from diffusion_gym.samplers.ddim import DDIMSampler, ddim_scheduler

__all__ = ["DDIMSampler", "ddim_scheduler", "SamplerStep", "gaussian_kl", "gaussian_log_prob"]
