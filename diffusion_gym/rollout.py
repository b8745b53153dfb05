"""`rollout`: batches of denoising episodes through a diffusion-gym vector env, the one episode
loop of the project (the agents collect with it, the evaluations, the demo, the benchmarks and the
tests sample with it), and `Trajectories`, what it returns.

It uses only the public Gymnasium API: `reset(seed, options)` and `step`, with the env's reset
options for grouped prompts ("samples_per_prompt"), fixed prompts ("prompts") and rewards scored by
the caller ("defer_reward", then the env's public `score`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm


@dataclass
class Trajectories:
    """A batch of B finished denoising episodes of T steps.

    Attributes:
        prompts: B prompts.
        rewards: (B,) float32 terminal rewards.
        images: (B, H, W, 3) uint8 decoded x_0 (what the reward saw).
        reward_info: the per-sample numbers the reward reported beside the reward ((B,) arrays,
            e.g. "gold" for the embedded tasks' gold references), for logging.
        timesteps: (B, T) model timesteps of the states: int64, float32 for a flow model (None if the steps were not kept).
        samples: (B, T + 1, C, H, W) float32: x_T, ..., x_0; state k is samples[:, k], its
            action samples[:, k + 1] (stored once, not twice; None if the steps were not kept).
        log_probs: (B, T) float32 log π(action | state) under the policy that sampled them, NaN
            at a flow sampler's ODE steps (None if the steps were not kept).
    """

    prompts: list[str]
    rewards: torch.Tensor
    images: np.ndarray
    reward_info: dict[str, np.ndarray] = field(default_factory=dict)
    timesteps: torch.Tensor | None = None
    samples: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[1]

    def observation(self, index: torch.Tensor, step: torch.Tensor | int) -> dict:
        """The observations of samples `index` at step `step` (an int or one per sample), as the env gives them."""
        step = torch.as_tensor(step, device=self.samples.device).expand(len(index))
        return {
            "prompt": [self.prompts[i] for i in index.tolist()],
            "timestep": self.timesteps[index, step],
            "x_t": self.samples[index, step],
        }

    def action(self, index: torch.Tensor, step: torch.Tensor | int) -> torch.Tensor:
        step = torch.as_tensor(step, device=self.samples.device).expand(len(index))
        return self.samples[index, step + 1]

    def __getitem__(self, index: slice) -> "Trajectories":
        """The episodes `index` selects (a slice), every field alike."""
        def part(value):
            return None if value is None else value[index]

        return Trajectories(
            prompts=self.prompts[index], rewards=self.rewards[index], images=self.images[index],
            reward_info={k: v[index] for k, v in self.reward_info.items()},
            timesteps=part(self.timesteps), samples=part(self.samples), log_probs=part(self.log_probs),
        )  # fmt: skip

    @staticmethod
    def cat(parts: list["Trajectories"]) -> "Trajectories":
        def joined(name: str) -> torch.Tensor | None:
            values = [getattr(part, name) for part in parts]
            return None if any(v is None for v in values) else torch.cat(values)

        return Trajectories(
            prompts=[p for part in parts for p in part.prompts],
            rewards=torch.cat([part.rewards for part in parts]),
            images=np.concatenate([part.images for part in parts]),
            reward_info={k: np.concatenate([part.reward_info[k] for part in parts]) for k in set.intersection(*(set(part.reward_info) for part in parts))},
            timesteps=joined("timesteps"),
            samples=joined("samples"),
            log_probs=joined("log_probs"),
        )

    def nbytes(self) -> int:
        """Memory held by the arrays, in bytes."""
        tensors = [t for t in (self.timesteps, self.samples, self.log_probs, self.rewards) if t is not None]
        return sum(t.element_size() * t.nelement() for t in tensors) + self.images.nbytes


@torch.no_grad()
def rollout(
    envs: Any,
    policy: Any,
    num_batches: int | None = None,
    *,
    prompts: Sequence[str] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    samples_per_prompt: int = 1,
    overlap_rewards: bool = False,
    score: bool = True,
    keep_steps: bool = True,
    progress: str | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> Trajectories:
    """Run batches of `envs.num_envs` episodes with `policy.act` and return them.

    Args:
        envs: a diffusion-gym vector env (numpy or torch observations; torch copies nothing).
        policy: anything with `act(obs, generator) -> (action, log_prob)` (`DiffusionPolicy`).
        num_batches: batches to run; None: 1, or as many as `prompts` fill (the only number they allow).
        prompts: fixed prompts, one episode each, in order (the last batch is filled up with its
            last prompt, then cut); None: the env draws them.
        seed: batch b resets the env with seed + b × num_envs (prompts and initial noise); None:
            the env's running RNG goes on.
        generator: the policy's noise.
        samples_per_prompt: k > 1: each batch holds num_envs / k drawn prompts, k times each, so
            that every prompt's reward statistics come from one batch.
        overlap_rewards: score each batch in a worker thread while the next one samples (the
            rewards are the same; worth it when the reward runs a large model). Torch releases
            the GIL in its kernels, so the two proceed together.
        score: False: nothing is scored (rewards 0, the env's "defer_reward"), for a caller that
            scores the images itself or needs only the images.
        keep_steps: keep every step's timestep, sample and log-prob (training needs them); False
            keeps prompts, images and rewards only.
        progress: a progress bar over batches with this label; None: none.
        on_step: called after every env step with the transition, a dict of "obs", "action",
            "log_prob", "reward", "terminated", "info" and "next_obs" as the env and the policy
            gave them (to watch an episode step by step).

    Returns:
        The episodes, batch after batch (with fixed prompts, exactly one per prompt).
    """
    n = envs.num_envs
    if samples_per_prompt < 1 or n % samples_per_prompt:
        raise ValueError(f"samples_per_prompt must divide num_envs = {n}, got {samples_per_prompt}.")
    if overlap_rewards and not score:
        raise ValueError("overlap_rewards scores in a worker thread; with score=False nothing is scored: give one or the other.")
    if prompts is not None:
        if samples_per_prompt > 1:
            raise ValueError("Give fixed prompts or samples_per_prompt > 1, not both.")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts is empty; give at least one prompt, or None to let the env draw them.")
        needed = -(-len(prompts) // n)
        if num_batches not in (None, needed):
            raise ValueError(f"{len(prompts)} fixed prompts fill {needed} batches of {n}, not num_batches={num_batches}; leave num_batches out.")
        num_batches = needed
    num_batches = 1 if num_batches is None else num_batches
    parts, pending = [], []
    with ThreadPoolExecutor(max_workers=1) if overlap_rewards else nullcontext() as pool:
        for b in tqdm(range(num_batches), desc=progress, unit="batch", disable=progress is None):
            options: dict[str, Any] = {"defer_reward": True} if overlap_rewards or not score else {}
            if prompts is not None:
                chunk = prompts[b * n : (b + 1) * n]
                options["prompts"] = chunk + [chunk[-1]] * (n - len(chunk))
            elif samples_per_prompt > 1:
                options["samples_per_prompt"] = samples_per_prompt
            obs, _ = envs.reset(seed=None if seed is None else seed + b * n, options=options or None)
            batch_prompts = list(obs["prompt"])
            timesteps, samples, log_probs = [], [obs["x_t"]], []
            while True:
                action, log_prob = policy.act(obs, generator=generator)
                if keep_steps:
                    timesteps.append(obs["timestep"])
                    samples.append(action)
                    log_probs.append(log_prob)
                next_obs, reward, terminated, _, info = envs.step(action)
                if on_step is not None:
                    on_step({"obs": obs, "action": action, "log_prob": log_prob, "reward": reward, "terminated": terminated, "info": info, "next_obs": next_obs})
                obs = next_obs
                if bool(terminated.all()):
                    break
            if overlap_rewards:
                pending.append(pool.submit(envs.unwrapped.score, info["images"], batch_prompts))
            part = Trajectories(
                prompts=batch_prompts, rewards=torch.as_tensor(reward).float(), images=info["images"], reward_info=per_sample(info["reward_info"], n)
            )
            if keep_steps:
                part.timesteps, part.samples, part.log_probs = (_stack(values) for values in (timesteps, samples, log_probs))
            parts.append(part)
        for part, future in zip(parts, pending):  # overlap: the scores, once they are done
            rewards, reward_info = future.result()
            part.rewards = torch.as_tensor(rewards, dtype=torch.float32, device=part.rewards.device)
            part.reward_info = per_sample(reward_info, n)
    batch = Trajectories.cat(parts)
    return batch if prompts is None else batch[: len(prompts)]  # the filling of a last, short batch goes


def _stack(values: list) -> torch.Tensor:
    """A step's arrays (numpy or torch) stacked along a new step axis, (B, T, ...)."""
    return torch.stack([torch.as_tensor(v) for v in values], dim=1)


def per_sample(reward_info: dict, n: int) -> dict[str, np.ndarray]:
    """The entries of a reward's info that hold one number per sample, as (n,) float64 arrays."""
    kept = {}
    for key, value in reward_info.items():
        value = np.asarray(value) if not isinstance(value, torch.Tensor) else value.detach().cpu().numpy()
        if value.shape == (n,) and np.issubdtype(value.dtype, np.number):
            kept[key] = value.astype(np.float64)
    return kept
