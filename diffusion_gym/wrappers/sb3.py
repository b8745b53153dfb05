"""stable-baselines3 on the diffusion env: a VecEnv adapter and an ActorCriticPolicy whose Gaussian
is the `DiffusionPolicy`'s denoising step.

    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=8, model="embedded")
    vec_env = SB3VecEnv(envs)
    diffusion = DiffusionPolicy.from_env(envs); diffusion.enable_lora(rank=8)
    model = PPO(DiffusionActorCriticPolicy, vec_env, **ddpo_like_ppo_kwargs(vec_env, episodes_per_rollout=2),
                policy_kwargs=dict(diffusion_policy=diffusion, prompts=vec_env.prompts))
    model.learn(total_timesteps=...)

- Actions are x_{t-1} flattened to (C·H·W,), as SB3's Gaussian distributions expect; the mean
  and the fixed per-step std σ_t come from the DDIM step, so SB3's log-prob (a sum over the
  dimensions) is `DiffusionPolicy.log_prob` (the exact sum).
- The value head is zero (advantages are the returns), one learned number per timestep, or one
  per prompt (a learned stand-in for the baseline DDPO gets from its normaliser).
- DDPO's own advantages: `SB3VecEnv(envs, samples_per_prompt=8, reward_normalizer=
  PerPromptNormalizer(...))` draws each batch as num_envs / 8 prompts × 8 and hands PPO each
  terminal reward normalised by its prompt's statistics.
- `ddpo_like_ppo_kwargs`: gamma 1, GAE lambda 1 and whole episodes per rollout, so that PPO's
  update is DDPO-IS's in spirit (every step's advantage is the episode's normalised reward).
- Memory: SB3's rollout buffer holds `n_steps × num_envs` observations (x_t) and actions, each
  C·H·W float32: for the embedded model (3×32×32), 24.6 kB per step and env; keep it bounded
  with `n_steps` (one or two episodes) and `num_envs`.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from gymnasium.spaces import Box
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import CombinedExtractor
from stable_baselines3.common.vec_env.base_vec_env import VecEnv
from torch import nn

from diffusion_gym.policy import DiffusionPolicy
from diffusion_gym.wrappers.observations import ACTION_BOUND, PromptIndexObservation


class SB3VecEnv(VecEnv):
    """A `DiffusionVectorEnv` as an SB3 `VecEnv`: prompt indices, flat bounded actions, and SB3's
    same-step autoreset (the terminal observation goes to `infos[i]["terminal_observation"]`).

    All episodes of the batch start and end together, so the reset after a terminal step is the
    whole batch's.

    Args:
        envs: the diffusion vector env.
        samples_per_prompt: 1: every episode draws its own prompt; k > 1: every batch of episodes
            holds num_envs / k prompts k times each (the env's reset option "samples_per_prompt"), as
            DDPO samples.
        reward_normalizer: if given, `(prompts, rewards) -> rewards` applied to each batch's
            terminal rewards, e.g. `agents.normalizer.PerPromptNormalizer`: PPO then sees DDPO's
            per-prompt advantages as its rewards. The rewards before it are in
            `infos[i]["unnormalized_reward"]`.
    """

    def __init__(self, envs, samples_per_prompt: int = 1, reward_normalizer: Callable[[list[str], np.ndarray], np.ndarray] | None = None):
        self.envs = envs if isinstance(envs, PromptIndexObservation) else PromptIndexObservation(envs)
        self.prompts = self.envs.prompts
        if samples_per_prompt < 1 or self.envs.num_envs % samples_per_prompt:
            raise ValueError(f"samples_per_prompt must divide num_envs = {self.envs.num_envs}, got {samples_per_prompt}.")
        self.samples_per_prompt, self.reward_normalizer = samples_per_prompt, reward_normalizer
        self.sample_shape = self.envs.single_action_space.shape
        flat = Box(-ACTION_BOUND, ACTION_BOUND, shape=(int(np.prod(self.sample_shape)),), dtype=np.float32)
        self._seed: int | None = None
        self._actions: np.ndarray | None = None
        self._episode_prompts: list[str] = []
        super().__init__(self.envs.num_envs, self.envs.single_observation_space, flat)

    def reset(self) -> dict:
        obs = self._start(seed=self._seed, options=self._options[0] or None)
        self._seed, self._options = None, [{} for _ in range(self.num_envs)]
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs

    def _start(self, seed: int | None = None, options: dict | None = None) -> dict:
        """Reset the batch (the prompts grouped when asked and not given) and remember its prompts."""
        if options is None and self.samples_per_prompt > 1:
            options = {"samples_per_prompt": self.samples_per_prompt}
        obs, _ = self.envs.reset(seed=seed, options=options)
        self._episode_prompts = [self.prompts[i] for i in np.asarray(obs["prompt_index"]).reshape(-1)]
        return obs

    def seed(self, seed: int | None = None) -> Sequence[None]:
        self._seed = seed
        return [None] * self.num_envs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.float32).reshape(self.num_envs, *self.sample_shape)

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.envs.step(self._actions)
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if dones.all():
            unnormalized = np.asarray(rewards, dtype=np.float64)
            if self.reward_normalizer is not None:
                rewards = np.asarray(self.reward_normalizer(self._episode_prompts, unnormalized))
            for i in range(self.num_envs):
                infos[i]["terminal_observation"] = {key: value[i] for key, value in obs.items()}
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                infos[i]["reward_info"] = {key: value[i] for key, value in info.get("reward_info", {}).items() if hasattr(value, "__len__")}
                infos[i]["unnormalized_reward"] = float(unnormalized[i])
            obs = self._start()
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.envs.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.envs.unwrapped, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.envs.unwrapped, attr_name, value)

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
        return [getattr(self.envs.unwrapped, method_name)(*args, **kwargs)] * len(self._indices(indices))

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)


class DiffusionActorCriticPolicy(ActorCriticPolicy):
    """SB3 actor-critic whose actor is a `DiffusionPolicy` (its trainable parameters, LoRA or all,
    are the ones SB3 optimises).

    Args (through `policy_kwargs`):
        diffusion_policy: the policy, e.g. `DiffusionPolicy.from_env(envs)` with LoRA enabled.
        prompts: the env's prompt set (`SB3VecEnv.prompts`), to read prompt indices back.
        value_head: "zero" (V = 0: advantages are the returns), "timestep" (a learned V(t)) or
            "prompt" (a learned V(prompt), the baseline that removes how much the prompt alone
            sets the reward, as DDPO's per-prompt normalisation does).
        min_step_std_ratio: steps whose σ_t is below this fraction of the episode's largest give
            no gradient (their log-probs keep their values; see `agents.ddpo.DDPOConfig`). With
            PPO's summed log-probs, the last DDIM step (σ_t ≈ 0.006) otherwise dominates the
            gradient norm with noise, and SB3 clips that norm.
    """

    def __init__(
        self,
        observation_space,
        action_space,
        lr_schedule,
        diffusion_policy: DiffusionPolicy,
        prompts: Sequence[str],
        value_head: Literal["zero", "timestep", "prompt"] = "zero",
        min_step_std_ratio: float = 0.0,
        **kwargs: Any,
    ):
        if value_head not in ("zero", "timestep", "prompt"):
            raise ValueError(f"value_head must be 'zero', 'timestep' or 'prompt', got {value_head!r}.")
        if not 0 <= min_step_std_ratio <= 1:
            raise ValueError(f"min_step_std_ratio must be in [0, 1], got {min_step_std_ratio}.")
        self.min_step_std_ratio = min_step_std_ratio
        self._setup = (diffusion_policy, list(prompts), value_head)  # read by _build, during super().__init__
        kwargs.setdefault("features_extractor_class", CombinedExtractor)  # has no parameters; unused
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build(self, lr_schedule) -> None:
        self.diffusion, self.prompts, self.value_head = self._setup
        del self._setup
        self.action_dist = DiagGaussianDistribution(int(np.prod(self.action_space.shape)))
        if self.value_head == "timestep":
            self.values_per_timestep = nn.Embedding(self.diffusion.sampler.num_train_timesteps, 1)
            nn.init.zeros_(self.values_per_timestep.weight)
        if self.value_head == "prompt":
            self.values_per_prompt = nn.Embedding(len(self.prompts), 1)
            nn.init.zeros_(self.values_per_prompt.weight)
        trainable = [p for p in self.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("The DiffusionPolicy has nothing to train: call enable_lora() or enable_full_finetuning() first.")
        self.optimizer = self.optimizer_class(trainable, lr=lr_schedule(1), **self.optimizer_kwargs)

    def _distribution(self, obs: dict) -> DiagGaussianDistribution:
        indices = obs["prompt_index"].reshape(-1).long().tolist()
        timestep = obs["timestep"].reshape(-1).long()
        step = self.diffusion.forward({"prompt": [self.prompts[i] for i in indices], "timestep": timestep, "x_t": obs["x_t"]})
        mean = step.mean.flatten(1)
        if self.min_step_std_ratio > 0:
            quiet = self.diffusion.sampler.relative_std(timestep) < self.min_step_std_ratio
            mean = torch.where(quiet.to(mean.device)[:, None], mean.detach(), mean)
        log_std = step.std.reshape(-1, 1).log().expand_as(mean)
        return self.action_dist.proba_distribution(mean, log_std)

    def _values(self, obs: dict) -> torch.Tensor:
        if self.value_head == "zero":
            return torch.zeros(obs["x_t"].shape[0], 1, device=obs["x_t"].device)
        if self.value_head == "prompt":
            return self.values_per_prompt(obs["prompt_index"].reshape(-1).long())
        return self.values_per_timestep(obs["timestep"].reshape(-1).long())

    def forward(self, obs: dict, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        distribution = self._distribution(obs)
        actions = distribution.get_actions(deterministic=deterministic)
        return actions, self._values(obs), distribution.log_prob(actions)

    def evaluate_actions(self, obs: dict, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        distribution = self._distribution(obs)
        return self._values(obs), distribution.log_prob(actions), distribution.entropy()

    def get_distribution(self, obs: dict) -> DiagGaussianDistribution:
        return self._distribution(obs)

    def predict_values(self, obs: dict) -> torch.Tensor:
        return self._values(obs)


def ddpo_like_ppo_kwargs(vec_env: SB3VecEnv, episodes_per_rollout: int = 1, minibatches: int = 4) -> dict[str, Any]:
    """PPO settings under which its update is DDPO-IS's in spirit: no discounting (gamma 1), no
    bootstrapping (GAE lambda 1), whole episodes per rollout, advantages normalised per minibatch.
    The clip range is PPO's 0.2 on summed log-probs (DDPO's 1e-4 is on per-dimension means)."""
    n_steps = episodes_per_rollout * vec_env.envs.unwrapped.num_steps  # SB3VecEnv resets at once: T steps an episode
    rollout = n_steps * vec_env.num_envs
    if rollout % minibatches:
        raise ValueError(f"The rollout ({rollout} steps) must split into {minibatches} minibatches.")
    return dict(n_steps=n_steps, batch_size=rollout // minibatches, gamma=1.0, gae_lambda=1.0, n_epochs=1, normalize_advantage=True, ent_coef=0.0, vf_coef=0.5)
