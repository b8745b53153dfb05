"""Samplers: one file per sampler, each a Gaussian policy over the next latent with an exact log-prob.

`ddim.py` for diffusion models (Stable Diffusion and its UNets); `flow_sde.py` (Flow-GRPO's and
DanceGRPO's SDE) and `cps.py` (coefficients-preserving sampling) for flow-matching models (SD3,
FLUX), on the schedule and step skeleton of `flow_match.py`. The log-density itself lives once,
in `base.gaussian_log_prob`.
"""

from diffusion_gym.samplers.base import SamplerStep, gaussian_kl, gaussian_log_prob
from diffusion_gym.samplers.cps import CPSSampler
from diffusion_gym.samplers.ddim import DDIMSampler, ddim_scheduler
from diffusion_gym.samplers.flow_match import FlowMatchSampler, flow_match_scheduler, noised
from diffusion_gym.samplers.flow_sde import FlowSDESampler

__all__ = [
    "CPSSampler",
    "DDIMSampler",
    "FlowMatchSampler",
    "FlowSDESampler",
    "SamplerStep",
    "ddim_scheduler",
    "flow_match_scheduler",
    "gaussian_kl",
    "gaussian_log_prob",
    "noised",
]
