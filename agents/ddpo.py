"""DDPO: policy gradients on the denoising MDP (Black et al. 2023), with both estimators.

- "sf", score function (REINFORCE): ∇J = E[Σ_t ∇ log π(a_t | s_t) · A]. One gradient step per
  batch of fresh samples: all of it is accumulated into that step.
- "is", importance sampling with PPO's clipped trust region:
  minimise E[max(−A ρ_t, −A clip(ρ_t, 1 − ε, 1 + ε))], ρ_t = π(a_t | s_t) / π_old(a_t | s_t),
  with several updates (minibatches × inner epochs) per batch.

The SF loss is written −A · exp(log π − stop_grad(log π)): its value is −A and its gradient
−A ∇ log π, so at ρ = 1 both estimators give the same loss and the same gradient.
The advantage A is the reward normalised per prompt (`PerPromptNormalizer`), the same for every
step of an episode. Steps whose σ_t is tiny next to the episode's largest can be left out of
training (`min_step_std_ratio`): the noise of their gradient grows as 1/σ_t. An optional
per-step KL penalty toward the starting model uses the closed form for two Gaussians with the
same σ_t.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch

from agents.distributed import average_gradients, gather_prompts_and_rewards
from agents.normalizer import PerPromptNormalizer, within_prompt_std
from diffusion_gym.policy import DiffusionPolicy
from diffusion_gym.rollout import Trajectories
from diffusion_gym.samplers import gaussian_kl


# A pass of the automatic `DDPOConfig.steps_per_pass` holds at most this many latent values
# ((sample, step) pairs × 2 for guidance × C × H × W), and never less than one step of the
# minibatch: 24 pairs of 4×8×8 latents (the 80 pairs of 8 samples × 10 steps go as 4 passes of
# 20); one step a pass for Stable Diffusion's 4×64×64 latents whatever the batch, and for the
# embedded model's 3×32×32 from a train batch of 2.
AUTO_PASS_LATENT_VALUES = 12288


@dataclass
class DDPOConfig:
    """DDPO hyperparameters (defaults: ddpo-pytorch's LoRA settings for Stable Diffusion)."""

    estimator: Literal["sf", "is"] = "is"
    """"sf": score function, one step per batch; "is": importance sampling with clipping."""
    learning_rate: float = 3e-4
    """AdamW learning rate."""
    adam_weight_decay: float = 1e-4
    """AdamW weight decay (its betas and epsilon: torch's defaults, as ddpo-pytorch's)."""
    train_batch_size: int = 8
    """Samples per minibatch (one forward/backward per sampler step)."""
    gradient_accumulation_steps: int = 1
    """Minibatches per optimizer step ("is"; "sf" accumulates the whole batch into one step)."""
    num_inner_epochs: int = 1
    """Passes over each batch of samples ("is" only)."""
    log_prob_reduce: Literal["sum", "mean"] = "mean"
    """How a step's log-prob reduces over the sample's dimensions: "sum" (the exact log-density) or
    "mean" (ddpo-pytorch's and trl's: the sum over the number of dimensions, which scales every
    log-ratio down as much, so `clip_range` must be as small)."""
    clip_range: float = 1e-4
    """ε of the trust region on ρ ("is"); with "mean" log-probs ρ − 1 is tiny, and so is ε."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to ±this."""
    per_prompt_buffer: int = 32
    """Rewards kept per prompt for its statistics (the paper's running buffer). Set to the samples
    per prompt of a batch to normalise each prompt within its batch: no stale statistics from an
    older policy (`agents.normalizer`)."""
    per_prompt_min_count: int = 16
    """Rewards a prompt needs before its own statistics replace the batch's."""
    timestep_fraction: float = 1.0
    """Fraction of each episode's steps trained on (a random subset per sample)."""
    min_step_std_ratio: float = 0.0
    """Steps whose policy std σ_t is below this fraction of the episode's largest σ_t are never
    trained on (0: every step is). A step's log-prob gradient is (ε/σ_t)·∂μ/∂θ: its noise grows
    as 1/σ_t while its expected value does not, so near-deterministic steps can drown the others."""
    max_grad_norm: float = 1.0
    """Gradient norm clip."""
    kl_coef: float = 0.0
    """Weight of the per-step KL penalty toward the starting model (0: off)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast for the training forward pass ("fp16" on CUDA only)."""
    steps_per_pass: int | None = None
    """How many sampler steps of a minibatch a denoiser pass (forward and backward) may hold: a
    minibatch's (sample, step) pairs go through the fewest passes of at most steps_per_pass ×
    train_batch_size pairs, split as evenly as they go (`DDPO.pass_sizes`). The update does not
    depend on it (each pair's loss is computed as in a pass of its own; float rounding aside): it
    trades memory (activations of more pairs at once) for fewer, larger passes. None: in float32
    training, as many pairs as keep a pass within `AUTO_PASS_LATENT_VALUES` latent values and
    at least a step's worth (train_batch_size pairs), so only small latents, whose passes cost
    mostly per-operation overhead, group steps; under mixed precision a step's worth a pass
    (autocast keeps half-precision copies of the activations it casts, so a grouped pass costs
    more memory there)."""

    def check(self, prefix: str = "") -> None:
        """Raise ValueError for a setting out of range, named with `prefix` ("ddpo." inside a
        `TrainConfig`). Run by `DDPO` and by `TrainConfig`, not at construction: a command line
        parser constructs this before the whole config, and would name it by its internal path."""
        checks = [
            (self.estimator in ("sf", "is"), f"estimator must be 'sf' or 'is', got {self.estimator!r}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.train_batch_size >= 1, f"train_batch_size must be >= 1, got {self.train_batch_size}"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (self.num_inner_epochs >= 1, "num_inner_epochs must be >= 1"),
            (self.log_prob_reduce in ("sum", "mean"), f"log_prob_reduce must be 'sum' or 'mean', got {self.log_prob_reduce!r}"),
            (self.clip_range > 0, f"clip_range must be > 0, got {self.clip_range}"),
            (0 < self.timestep_fraction <= 1, f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}"),
            (0 <= self.min_step_std_ratio <= 1, f"min_step_std_ratio must be in [0, 1], got {self.min_step_std_ratio}"),
            (self.max_grad_norm > 0, "max_grad_norm must be > 0"),
            (self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}"),
            (self.mixed_precision in ("no", "bf16", "fp16"), f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}"),
            (self.steps_per_pass is None or self.steps_per_pass >= 1, f"steps_per_pass must be None (automatic) or >= 1, got {self.steps_per_pass}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(prefix + message)


def grpo_config(group_size: int, **changes) -> DDPOConfig:
    """GRPO as Flow-GRPO (Liu et al. 2025) and DanceGRPO (Xue et al. 2025) run it, which DDPO-IS
    expresses with these settings:

    - group-normalised advantages: a batch holds `group_size` samples of each prompt (the env's
      `samples_per_prompt`) and each reward is normalised by its own group's mean and std, with
      nothing kept from older batches (per_prompt_buffer = per_prompt_min_count = group_size);
    - the clipped ratio on per-dimension log-probs, clip range 1e-4 (Flow-GRPO's);
    - a per-step KL toward the reference model, kl_coef 0.04 (Flow-GRPO's β for GenEval), in the
      closed form for two Gaussians of the same σ_t (`gaussian_kl`);
    - training only the stochastic window: steps sampled without a log-prob (a flow sampler's ODE
      steps, `Sampling.sde_window` / `sde_window_size`) are never trained on (`DDPO.trainable_steps`).

    Flow-GRPO divides by the std of the whole batch (`global_std`); this divides by the group's,
    as GRPO (Shao et al. 2024) and DanceGRPO do.

    Args:
        group_size: samples per prompt in each batch, >= 2.
        **changes: other `DDPOConfig` fields (learning_rate, kl_coef, ...).
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"GRPO normalises each prompt's rewards within its group: group_size must be an int >= 2, got {group_size!r}.")
    settings = dict(estimator="is", log_prob_reduce="mean", clip_range=1e-4, kl_coef=0.04, per_prompt_buffer=group_size, per_prompt_min_count=group_size)
    return DDPOConfig(**{**settings, **changes})


def ddpo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, estimator: str, clip_range: float) -> tuple[torch.Tensor, dict]:
    """The DDPO surrogate (to minimise), averaged over a batch of (state, action) pairs, and its
    diagnostics (approx_kl, clipfrac) as 0-d tensors on the batch's device: reading them
    (`.item()`) waits for the device, so the update reads them once, after its last pass.

    Args:
        log_prob: (B,) log π_θ(a | s), differentiable.
        old_log_prob: (B,) log π_old(a | s) recorded when sampling.
        advantages: (B,).
    """
    if estimator == "sf":
        ratio = torch.exp(log_prob - log_prob.detach())  # 1 in value, ∇ log π in gradient
        loss = -(advantages * ratio).mean()
    else:
        ratio = torch.exp(log_prob - old_log_prob)
        unclipped = -advantages * ratio
        clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
        loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        true_ratio = torch.exp(log_prob - old_log_prob)
        info = {
            "approx_kl": 0.5 * ((log_prob - old_log_prob) ** 2).mean(),
            "clipfrac": ((true_ratio - 1).abs() > clip_range).float().mean(),
        }
    return loss, info


class DDPO:
    """DDPO-SF or DDPO-IS on a `DiffusionPolicy` (LoRA or full fine-tuning must be enabled).

    `update(trajectories)` does one epoch of optimisation on a batch collected with
    `diffusion_gym.rollout` by the same policy.
    """

    def __init__(self, policy: DiffusionPolicy, config: DDPOConfig, generator: torch.Generator | None = None):
        config.check()
        self.policy, self.config = policy, config
        self.parameters = policy.trainable_parameters()
        if not self.parameters:
            raise ValueError("The policy has nothing to train: call policy.enable_lora(rank) or policy.enable_full_finetuning() first.")
        if config.mixed_precision == "fp16" and policy.device.type != "cuda":
            raise ValueError("mixed_precision='fp16' needs a CUDA device; use 'bf16' or 'no' on the CPU.")
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=config.learning_rate, weight_decay=config.adam_weight_decay
        )
        self.normalizer = PerPromptNormalizer(config.per_prompt_buffer, config.per_prompt_min_count, clip=config.adv_clip_max)
        self.generator = generator or torch.Generator().manual_seed(0)
        self.scaler = torch.amp.GradScaler("cuda") if config.mixed_precision == "fp16" else None

    def advantages(self, batch: Trajectories) -> torch.Tensor:
        """Per-prompt normalised, clipped advantages (B,), with every process's rewards in the statistics."""
        all_prompts, all_rewards, mine = gather_prompts_and_rewards(batch.prompts, batch.rewards)
        advantages = self.normalizer(all_prompts, all_rewards.cpu().numpy())[mine]
        return torch.as_tensor(advantages, dtype=torch.float32, device=batch.samples.device)

    def update(self, batch: Trajectories) -> dict[str, float]:
        """One epoch of DDPO on `batch`; returns mean diagnostics (loss, approx_kl, clipfrac, kl,
        grad_norm), the mean |advantage| and the within-prompt reward std of this process's batch."""
        config, policy = self.config, self.policy
        advantages = self.advantages(batch)
        num_samples = len(batch)
        valid = self.trainable_steps(batch)
        steps_trained = self._steps_trained(valid)
        minibatches_per_epoch = -(-num_samples // config.train_batch_size)
        accumulate = minibatches_per_epoch if config.estimator == "sf" else config.gradient_accumulation_steps
        inner_epochs = 1 if config.estimator == "sf" else config.num_inner_epochs
        autocast = (
            torch.autocast(policy.device.type, dtype=torch.bfloat16 if config.mixed_precision == "bf16" else torch.float16)
            if config.mixed_precision != "no"
            else nullcontext()
        )
        # per pass: each diagnostic's sum over the pass's pairs (0-d tensors, read at the end)
        sums: dict[str, list[torch.Tensor]] = {"loss": [], "approx_kl": [], "clipfrac": [], "kl": []}
        pairs, grad_norms = 0, []
        dims = batch.samples[0, 0].numel() if config.log_prob_reduce == "mean" else 1  # the policy's log-probs are sums

        for _ in range(inner_epochs):
            order = torch.randperm(num_samples, generator=self.generator)
            steps_of = self._draw_steps(valid, steps_trained)  # each sample trains on its own random subset of steps, in random order
            for m in range(minibatches_per_epoch):
                index = order[m * config.train_batch_size : (m + 1) * config.train_batch_size]
                # the minibatch's (sample, step) pairs, step-major, split into passes
                all_rows, all_steps = index.repeat(steps_trained), steps_of[index].T.reshape(-1)
                sizes = self.pass_sizes(len(index), steps_trained, batch.samples[0, 0].numel())
                for rows, steps in zip(all_rows.split(sizes), all_steps.split(sizes)):
                    obs, action = batch.observation(rows, steps), batch.action(rows, steps)
                    with autocast:
                        out = policy(obs, action=action)
                    # each pair's loss as if it had a pass of its own: the surrogate is a mean over pairs
                    loss, info = ddpo_loss(out.log_prob / dims, batch.log_probs[rows, steps] / dims, advantages[rows], config.estimator, config.clip_range)
                    if config.kl_coef > 0:
                        with torch.no_grad(), policy.reference(), autocast:
                            reference_mean = policy(obs, action=action).mean
                        kl = gaussian_kl(out.mean, reference_mean, out.std, reduce=config.log_prob_reduce).mean()
                        loss = loss + config.kl_coef * kl
                        sums["kl"].append(kl.detach() * len(rows))
                    for key, value in (("loss", loss.detach()), ("approx_kl", info["approx_kl"]), ("clipfrac", info["clipfrac"])):
                        sums[key].append(value * len(rows))
                    pairs += len(rows)
                    scaled = loss * len(rows) / (steps_trained * config.train_batch_size * accumulate)
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                if (m + 1) % accumulate == 0 or m == minibatches_per_epoch - 1:
                    grad_norms.append(self._step())
        means = {key: (torch.stack(values).sum() / pairs).item() for key, values in sums.items() if values}
        means["grad_norm"] = torch.stack(grad_norms).mean().item()
        spread = within_prompt_std(batch.prompts, batch.rewards.cpu().numpy())
        return {"advantage_abs": advantages.abs().mean().item(), "reward_std_within_prompt": spread, **means}

    def trainable_steps(self, batch: Trajectories) -> torch.Tensor:
        """Which steps of each episode are trained on, (B, T) bool: those that had a log-prob when
        sampled (not a flow sampler's ODE steps) and whose σ_t >= min_step_std_ratio × the
        episode's largest (every episode shares the schedule)."""
        relative = self.policy.sampler.relative_std(batch.timesteps[0].cpu())
        by_step = (relative >= self.config.min_step_std_ratio) & (relative > 0)
        return by_step[None, :] & torch.isfinite(batch.log_probs.cpu())

    def _steps_trained(self, valid: torch.Tensor) -> int:
        """How many steps of each episode a pass trains on: `timestep_fraction` of the fewest any
        episode has (a ValueError if an episode has none)."""
        fewest = int(valid.sum(dim=1).min())
        if fewest == 0:
            raise ValueError(
                "An episode has no step to train on: every step is an ODE step (no log-prob) or has σ_t below "
                f"min_step_std_ratio={self.config.min_step_std_ratio} of the largest; widen the policy's sde_window or lower min_step_std_ratio."
            )
        return max(1, round(fewest * self.config.timestep_fraction))

    def pairs_per_pass(self, latent_values: int) -> int:
        """The most (sample, step) pairs a denoiser pass holds, for latents of `latent_values`
        values: `steps_per_pass` × train batch, or with None (float32 training) as many as keep a
        pass (pairs × 2 for guidance × one latent) within `AUTO_PASS_LATENT_VALUES`, and at least
        a step's worth, train batch pairs (just that under mixed precision)."""
        config = self.config
        if config.steps_per_pass is not None:
            return config.steps_per_pass * config.train_batch_size
        if config.mixed_precision != "no":
            return config.train_batch_size
        return max(config.train_batch_size, AUTO_PASS_LATENT_VALUES // (2 * latent_values))

    def pass_sizes(self, samples: int, steps_trained: int, latent_values: int) -> list[int]:
        """How many (sample, step) pairs each denoiser pass of a minibatch of `samples` samples ×
        `steps_trained` steps holds, for latents of `latent_values` values: the fewest passes of
        at most `pairs_per_pass`, as even as they go (80 pairs at most 24 a pass: 20, 20, 20, 20,
        where whole steps within the same limit would take 24, 24, 24, 8)."""
        pairs = samples * steps_trained
        passes = -(-pairs // self.pairs_per_pass(latent_values))
        return [pairs // passes + (1 if i < pairs % passes else 0) for i in range(passes)]

    def minibatch_pass_sizes(self, batch: Trajectories) -> list[int]:
        """`pass_sizes` of a full minibatch of `batch`, as `update` runs it (for benchmarks that
        replay its denoiser passes)."""
        return self.pass_sizes(self.config.train_batch_size, self._steps_trained(self.trainable_steps(batch)), batch.samples[0, 0].numel())

    def _draw_steps(self, valid: torch.Tensor, steps_trained: int) -> torch.Tensor:
        """Each sample's steps to train on in one pass, (B, steps_trained) indices in random order."""
        if bool((valid == valid[:1]).all()):  # every episode has the same steps (a fixed schedule and window)
            shared = torch.nonzero(valid[0]).flatten()
            return shared[torch.stack([torch.randperm(len(shared), generator=self.generator) for _ in range(len(valid))])[:, :steps_trained]]
        # windows drawn per batch of episodes: random priorities, the valid steps first
        return torch.where(valid, torch.rand(valid.shape, generator=self.generator), 2.0).argsort(dim=1)[:, :steps_trained]

    def _step(self) -> torch.Tensor:
        """Average gradients over processes, clip, step, zero; returns the pre-clip gradient norm (0-d)."""
        average_gradients(self.parameters)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "normalizer": self.normalizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.generator.set_state(state["generator"])
