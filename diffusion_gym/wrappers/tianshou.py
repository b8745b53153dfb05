"""tianshou 2.x on the diffusion env: a vector-env adapter and an actor for
`ProbabilisticActorPolicy`, trained with tianshou's own `Reinforce` and `PPO`.

    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=8, model="embedded")
    venv = TianshouVectorEnv(envs)
    diffusion = DiffusionPolicy.from_env(envs); diffusion.enable_lora(rank=8)
    policy = make_policy(diffusion, venv)          # no action scaling or bounding
    algorithm = Reinforce(policy=policy, gamma=1.0, optim=AdamOptimizerFactory(lr=1e-3))

- Actions are x_{t-1} flattened to (C·H·W,); the actor returns the DDIM step's mean and its
  fixed std σ_t, the distribution is `Independent(Normal(mean, σ_t), 1)`, so tianshou's log-prob
  is `DiffusionPolicy.log_prob` (the exact sum).
- All episodes of the batch start and end together, so collect whole batches of episodes
  (`n_step` a multiple of num_envs × T); a partial step of some envs only is refused.
- Memory: tianshou's replay buffer keeps obs, obs_next and the action of every step, 3 × C·H·W
  float32 (36.9 kB per step for the embedded model); size it to one collection
  (`VectorReplayBuffer(num_envs × T × episodes, num_envs)`), which on-policy algorithms clear
  after each update.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from gymnasium.spaces import Box
from tianshou.algorithm.modelfree.reinforce import ProbabilisticActorPolicy
from tianshou.utils.net.common import AbstractContinuousActorProbabilistic
from torch import nn
from torch.distributions import Independent, Normal

from diffusion_gym.policy import DiffusionPolicy
from diffusion_gym.wrappers.observations import ACTION_BOUND, PromptIndexObservation


class TianshouVectorEnv:
    """A `DiffusionVectorEnv` as a tianshou vector env (the interface its `Collector` uses):
    prompt-index observations, flat actions, and per-env reset and step calls that must cover
    every env at once (the batch denoises in lockstep)."""

    is_async = False

    def __init__(self, envs):
        self.envs = envs if isinstance(envs, PromptIndexObservation) else PromptIndexObservation(envs)
        self.prompts = self.envs.prompts
        self.env_num = self.envs.num_envs
        self.sample_shape = self.envs.single_action_space.shape
        self.observation_space = self.envs.single_observation_space
        self.action_space = Box(-ACTION_BOUND, ACTION_BOUND, shape=(int(np.prod(self.sample_shape)),), dtype=np.float32)

    def __len__(self) -> int:
        return self.env_num

    def _check_all(self, env_id, what: str) -> None:
        ids = np.arange(self.env_num) if env_id is None else np.atleast_1d(np.asarray(env_id))
        if sorted(ids.tolist()) != list(range(self.env_num)):
            raise ValueError(
                f"The diffusion env {what}s all its {self.env_num} episodes together, got env ids {ids.tolist()}; "
                "collect with n_step a multiple of num_envs × num_inference_steps (not n_episode)."
            )

    def reset(self, env_id=None, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        self._check_all(env_id, "reset")
        obs, _ = self.envs.reset(seed=kwargs.get("seed"), options=kwargs.get("options"))
        return _rows(obs, self.env_num), np.array([{} for _ in range(self.env_num)], dtype=object)

    def step(self, action: np.ndarray, env_id=None):
        self._check_all(env_id, "step")
        actions = np.asarray(action, dtype=np.float32).reshape(self.env_num, *self.sample_shape)
        obs, rewards, terminated, truncated, info = self.envs.step(actions)
        infos = np.array([{} for _ in range(self.env_num)], dtype=object)
        return _rows(obs, self.env_num), rewards.astype(np.float32), terminated, truncated, infos

    def seed(self, seed: int | None = None) -> list[None]:
        self.envs.reset(seed=seed)
        return [None] * self.env_num

    def render(self, **kwargs: Any) -> list[Any]:
        return [self.envs.unwrapped.render()]

    def close(self) -> None:
        self.envs.close()


def _rows(obs: dict, n: int) -> np.ndarray:
    """A batched dict observation as tianshou stores it: an object array of per-env dicts."""
    return np.array([{key: value[i] for key, value in obs.items()} for i in range(n)], dtype=object)


class DiffusionActor(AbstractContinuousActorProbabilistic):
    """obs → ((mean, std), state): the DDIM step's Gaussian, flattened, from a `DiffusionPolicy`."""

    def __init__(self, diffusion_policy: DiffusionPolicy, prompts: Sequence[str]):
        super().__init__(output_dim=int(np.prod(diffusion_policy.model.sample_shape)))
        self.diffusion, self.prompts = diffusion_policy, list(prompts)

    def get_preprocess_net(self) -> nn.Module:
        return nn.Identity()

    def forward(self, obs, state=None, info=None) -> tuple[tuple[torch.Tensor, torch.Tensor], Any]:
        indices = np.asarray(obs["prompt_index"]).reshape(-1).astype(np.int64)
        x_t = torch.as_tensor(np.asarray(obs["x_t"]), dtype=torch.float32, device=self.diffusion.device)
        timesteps = torch.as_tensor(np.asarray(obs["timestep"]).reshape(-1), device=self.diffusion.device)
        step = self.diffusion.forward({"prompt": [self.prompts[i] for i in indices], "timestep": timesteps, "x_t": x_t})
        mean = step.mean.flatten(1)
        return (mean, step.std.reshape(-1, 1).expand_as(mean)), state


def gaussian(loc_scale: tuple[torch.Tensor, torch.Tensor]) -> Independent:
    """tianshou's dist_fn: a diagonal Gaussian over the flattened action."""
    loc, scale = loc_scale
    return Independent(Normal(loc, scale), 1)


def make_policy(diffusion_policy: DiffusionPolicy, venv: TianshouVectorEnv) -> ProbabilisticActorPolicy:
    """A `ProbabilisticActorPolicy` on the diffusion policy, with no action scaling or bounding."""
    return ProbabilisticActorPolicy(
        actor=DiffusionActor(diffusion_policy, venv.prompts),
        dist_fn=gaussian,
        action_space=venv.action_space,
        observation_space=venv.observation_space,
        action_scaling=False,
        action_bound_method=None,
    )


class TimestepCritic(nn.Module):
    """A learned value per timestep, V(t) (for PPO): the reward is terminal and the same for
    every step of an episode, so the prompt and x_t add little to a baseline at this scale."""

    def __init__(self, num_train_timesteps: int):
        super().__init__()
        self.values = nn.Embedding(num_train_timesteps, 1)
        nn.init.zeros_(self.values.weight)

    def forward(self, obs, **kwargs: Any) -> torch.Tensor:
        timesteps = torch.as_tensor(np.asarray(obs["timestep"]).reshape(-1), device=self.values.weight.device).long()
        return self.values(timesteps)
