"""The Gaussian policy of one denoising step, and the one place its log-density is computed.

Every stochastic sampler here turns x_t into x_{t-1} ~ N(mean, std² I). Everything else in the
project (env, policy, agents, benchmarks) imports `gaussian_log_prob` and `SamplerStep` from
here instead of writing the density again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

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


def gaussian_kl(mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor, reduce: Reduce = "sum") -> torch.Tensor:
    """KL(N(mean_p, std² I) ‖ N(mean_q, std² I)) = ‖mean_p − mean_q‖² / (2 std²), one value per sample.

    Two denoising policies at the same step share σ_t (it depends on the schedule only), so the
    KL between them has this closed form. Shapes and `reduce` as in `gaussian_log_prob`.
    """
    return _reduce((mean_p - mean_q) ** 2 / (2 * std**2), reduce)
