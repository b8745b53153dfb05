"""The Gaussian policy of one denoising step, and the one place its log-density is computed.

Every stochastic sampler here turns x_t into x_{t-1} ~ N(mean, std² I). Everything else in the
project (env, policy, agents, benchmarks) imports `gaussian_log_prob` and `SamplerStep` from
here instead of writing the density again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

Reduce = Literal["sum", "mean"]


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduce: Reduce = "sum") -> torch.Tensor:
    """Log-density of an isotropic Gaussian, one value per sample.

    Args:
        x: the sample, (B, ...).
        mean: the mean, same shape as `x`.
        std: the standard deviation, > 0, broadcastable to `x` (usually (B, 1, 1, 1)).
        reduce: "sum" over the non-batch dimensions gives the exact log-density; "mean" divides it
            by the number of dimensions (the convention of ddpo-pytorch and trl, which keeps
            probability ratios from overflowing on 16,384-dimensional latents).

    Returns:
        (B,) float tensor, in nats (per dimension with reduce="mean").
    """
    return _reduce(-((x - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI, reduce)


def _reduce(values: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    """Sum or mean over every dimension but the batch's."""
    dims = tuple(range(1, values.ndim))
    if reduce == "sum":
        return values.sum(dim=dims)
    if reduce == "mean":
        return values.mean(dim=dims)
    raise ValueError(f"reduce must be 'sum' (exact density) or 'mean' (per dimension), got {reduce!r}")


@dataclass
class SamplerStep:
    """One denoising step seen as a Gaussian policy: x_{t-1} ~ N(mean, std² I).

    Attributes:
        prev_sample: x_{t-1}, (B, C, H, W) float32; the given one when scoring an action.
        mean: the Gaussian mean, (B, C, H, W) float32.
        std: the Gaussian standard deviation, (B, 1, 1, 1) float32, > 0.
        log_prob: log π(x_{t-1} | x_t, c), (B,) float32 (sum or mean over dimensions).
        pred_original_sample: the model's prediction of x_0, (B, C, H, W) float32.
    """

    prev_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    log_prob: torch.Tensor
    pred_original_sample: torch.Tensor


def check_num_inference_steps(num_inference_steps: int) -> int:
    """`num_inference_steps` as an int, or a ValueError unless it is a positive int (not a bool)."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r} ({type(num_inference_steps).__name__}).")
    return int(num_inference_steps)


def sample_or_score(
    mean: torch.Tensor,
    std: torch.Tensor,
    prev_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    reduce: Reduce = "sum",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's action and its log-prob: x' = mean + std · noise (noise drawn if not given), or
    the given `prev_sample` to score. `std` is (B, 1, ..., 1). Where it is 0 the step is
    deterministic and has no density: its log-prob is NaN, so that nothing trains on it unnoticed.

    Returns:
        (x', log_prob): float32, like `mean`, and (B,).
    """
    if prev_sample is not None and noise is not None:
        raise ValueError("Pass prev_sample (to score it) or noise (to sample with it), not both.")
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
        prev_sample = mean + std * noise
    else:
        prev_sample = prev_sample.float()
    has_density = std > 0
    log_prob = gaussian_log_prob(prev_sample, mean, torch.where(has_density, std, torch.ones_like(std)), reduce=reduce)
    return prev_sample, torch.where(has_density.reshape(std.shape[0]), log_prob, torch.full_like(log_prob, float("nan")))


def gaussian_kl(mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor, reduce: Reduce = "sum") -> torch.Tensor:
    """KL(N(mean_p, std² I) ‖ N(mean_q, std² I)) = ‖mean_p − mean_q‖² / (2 std²), one value per sample.

    Two denoising policies at the same step share σ_t (it depends on the schedule only), so the
    KL between them has this closed form. Shapes and `reduce` as in `gaussian_log_prob`.
    """
    return _reduce((mean_p - mean_q) ** 2 / (2 * std**2), reduce)
