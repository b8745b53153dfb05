"""Reward-weighted regression (Lee et al. 2023, as the DDPO paper runs it), iterated.

Each iteration samples a large batch, weights each final sample by its reward, and fine-tunes
with the ordinary denoising loss weighted per sample:

    L = E_i[ w_i · ‖target − model(√ᾱ_t x_0,i + √(1−ᾱ_t) ε, c_i, t)‖² ]

- "exp" weights: w_i ∝ exp(β r_i), normalised to mean 1 over the batch (β = 0.2 in the paper);
- "sparse" weights: w_i = 1[r_i ≥ C], C the `percentile`-th percentile of the batch's rewards
  (filtered fine-tuning; the paper keeps the top 10%).
Minibatches are drawn uniformly from the samples with w_i > 0. RWR ignores the sequential
structure of denoising (it optimises an ELBO of x_0), which is the paper's explanation for DDPO
beating it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from agents.distributed import average_gradients, gather_prompts_and_rewards
from diffusion_gym.policy import DiffusionPolicy
from diffusion_gym.rollout import Trajectories
from diffusion_gym.samplers import noised


@dataclass
class RWRConfig:
    """RWR hyperparameters (defaults: the paper's)."""

    weighting: Literal["exp", "sparse"] = "exp"
    """"exp": w ∝ exp(beta · r); "sparse": w = 1[r >= percentile]."""
    beta: float = 0.2
    """Inverse temperature of the exponential weights."""
    percentile: float = 90.0
    """Reward percentile a sample must reach to be kept by sparse weights."""
    learning_rate: float = 3e-4
    """AdamW learning rate."""
    adam_weight_decay: float = 1e-4
    """AdamW weight decay."""
    train_batch_size: int = 128
    """Samples per gradient step."""
    num_updates: int = 400
    """Gradient steps per iteration (per batch of samples)."""
    max_grad_norm: float = 1.0
    """Gradient norm clip."""

    def check(self, prefix: str = "") -> None:
        """Raise ValueError for a setting out of range, named with `prefix` ("ddpo." inside a
        `TrainConfig`). Run by `RWR` and by `TrainConfig`, not at construction: a command line
        parser constructs this before the whole config, and would name it by its internal path."""
        checks = [
            (self.weighting in ("exp", "sparse"), f"weighting must be 'exp' or 'sparse', got {self.weighting!r}"),
            (self.beta > 0, f"beta must be > 0, got {self.beta}"),
            (0 <= self.percentile < 100, f"percentile must be in [0, 100), got {self.percentile}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.train_batch_size >= 1 and self.num_updates >= 1, "train_batch_size and num_updates must be >= 1"),
            (self.max_grad_norm > 0, "max_grad_norm must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(prefix + message)


def denoising_loss(
    policy: DiffusionPolicy, x0: torch.Tensor, prompts: Sequence[str], timesteps: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The ordinary (conditional) training loss of the policy's denoiser, one value per sample:
    ‖target − model(x_t, c, t)‖² averaged over dimensions. For a diffusion model x_t is the
    scheduler's forward noising of x_0 (`add_noise`) and the target ε, v (`get_velocity`) or x_0
    as the model predicts; for a flow model x_σ = (1 − σ) x_0 + σ ε with σ uniform, t = 1000 σ,
    and the target the velocity ε − x_0 (`diffusion_gym.samplers.flow_match`, (F1)–(F2)).

    Args:
        x0: clean samples, (B, C, H, W), in the model's sample space.
        prompts: B prompts.
        timesteps: (B,) training timesteps; drawn uniformly if None.
        generator: for the timesteps and the noise.

    Returns:
        (B,) float32, differentiable w.r.t. the trainable parameters.
    """
    scheduler = policy.sampler.scheduler
    x0 = x0.to(policy.device, torch.float32)
    num_train_timesteps, flow = scheduler.config.num_train_timesteps, policy.model.is_flow
    if timesteps is None:  # drawn before the noise
        shape = (x0.shape[0],)
        timesteps = torch.rand(shape, generator=generator) * num_train_timesteps if flow else torch.randint(0, num_train_timesteps, shape, generator=generator)
    timesteps = timesteps.to(policy.device)
    noise = torch.randn(x0.shape, generator=generator, device="cpu").to(policy.device)
    if flow:
        timesteps = timesteps.float()
        x_t, target = noised(x0, noise, timesteps / num_train_timesteps)
    else:
        timesteps = timesteps.long()
        x_t = scheduler.add_noise(x0, noise, timesteps)
        prediction_type = scheduler.config.prediction_type
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"Unsupported prediction_type {prediction_type!r}; expected epsilon, v_prediction or sample.")
        target = noise if prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, timesteps) if prediction_type == "v_prediction" else x0
    guidance = torch.full((x0.shape[0],), policy.guidance_scale, device=policy.device) if policy.family.distilled_guidance else None
    prediction = policy.denoise(x_t, timesteps, policy.encode_prompts(list(prompts)), guidance)
    return ((prediction - target) ** 2).mean(dim=(1, 2, 3))


def rwr_weights(rewards: np.ndarray, config: RWRConfig) -> np.ndarray:
    """Per-sample weights (N,) from rewards (N,), as the module docstring defines them."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if config.weighting == "exp":
        logits = config.beta * rewards
        weights = np.exp(logits - logits.max())  # the max cancels in the normalisation
        return weights / weights.mean()
    return (rewards >= np.percentile(rewards, config.percentile)).astype(np.float64)


class RWR:
    """Reward-weighted regression on a `DiffusionPolicy` (LoRA or full fine-tuning enabled)."""

    def __init__(self, policy: DiffusionPolicy, config: RWRConfig, generator: torch.Generator | None = None):
        config.check()
        self.policy, self.config = policy, config
        self.parameters = policy.trainable_parameters()
        if not self.parameters:
            raise ValueError("The policy has nothing to train: call policy.enable_lora(rank) or policy.enable_full_finetuning() first.")
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.learning_rate, weight_decay=config.adam_weight_decay)
        self.generator = generator or torch.Generator().manual_seed(0)

    def update(self, batch: Trajectories) -> dict[str, float]:
        """One iteration of weighted fine-tuning on `batch`; returns mean loss and diagnostics."""
        all_prompts, all_rewards, mine = gather_prompts_and_rewards(batch.prompts, batch.rewards)
        weights = torch.as_tensor(rwr_weights(all_rewards.cpu().numpy(), self.config)[mine], dtype=torch.float32)
        candidates = torch.nonzero(weights > 0).flatten()
        if len(candidates) == 0:  # this process holds none of the kept samples: contribute zero gradients
            candidates = torch.arange(len(batch))
            weights = torch.zeros(len(batch))
        x0 = batch.samples[:, -1]
        losses, grad_norms = [], []
        for _ in range(self.config.num_updates):
            pick = torch.randint(len(candidates), (min(self.config.train_batch_size, len(candidates)),), generator=self.generator)
            index = candidates[pick]
            per_sample = denoising_loss(self.policy, x0[index], [batch.prompts[i] for i in index.tolist()], generator=self.generator)
            loss = (weights[index].to(per_sample.device) * per_sample).mean()
            loss.backward()
            average_gradients(self.parameters)
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return {"loss": float(np.mean(losses)), "grad_norm": float(np.mean(grad_norms)), "kept_fraction": float((weights > 0).float().mean())}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
