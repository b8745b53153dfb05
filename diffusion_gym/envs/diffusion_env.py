"""Denoising as a Gymnasium environment: the vector env (primary) and its single-env view."""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium import logger
from gymnasium.spaces import Box, Dict, Discrete
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from diffusion_gym.envs.registration import PAPER_MODEL, TASKS
from diffusion_gym.envs.spaces import PromptText, TensorBox, TensorDiscrete
from diffusion_gym.models import DiffusionModel, load_model
from diffusion_gym.prompts import PROMPT_CHARSET, check_prompt, load_prompts
from diffusion_gym.rewards import RewardFn, check_reward, make_reward
from diffusion_gym.samplers import ddim_scheduler, flow_match_scheduler

ARRAY_TYPES = ("numpy", "torch")


class RewardError(ValueError):
    """The reward function raised, or returned something other than (rewards, info). The images
    and prompts it was given are on the error (`images`, `prompts`), so that nothing sampled is
    lost; raised from `step`, it leaves the env where it was, so the same step can be taken again."""

    def __init__(self, message: str, images: np.ndarray, prompts: list[str]):
        super().__init__(message)
        self.images, self.prompts = images, prompts

    def __reduce__(self):  # an async vector env's worker sends it through a pipe
        return type(self), (self.args[0], self.images, self.prompts)


def _reward_name(reward_fn: Any) -> str:
    """How a reward function is named in errors: its registered factory's name, or its own."""
    name = getattr(reward_fn, "__qualname__", None) or type(reward_fn).__name__
    return repr(name.removesuffix(".<locals>.reward"))


class DiffusionVectorEnv(VectorEnv):
    """A batch of denoising episodes of a text-to-image diffusion model, stepped together.

    ## Description
    The denoising process of a diffusion model as an MDP (Black et al. 2023, "DDPO"): an episode
    starts from pure noise x_T for a prompt c and takes one action per sampler step, x_{t-1}, until
    the final sample x_0, which is decoded into an image and scored by a reward r(x_0, c). The
    transition is deterministic (the next state *is* the action); the stochastic policy is the
    model's own denoiser (`DiffusionPolicy.from_env(env)`, which owns how it acts: the sampler's
    eta, the guidance). The env owns the MDP: the model's sample space and decoder, the
    scheduler and its timesteps, the prompts and the reward. All `num_envs` episodes run in lock
    step, which is what makes batched denoising on one denoiser call per step possible.

    ## Action Space
    `Box(-inf, inf, (num_envs, C, H, W), float32)`: x_{t-1} for each sub-env, in the model's
    sample space (latents of shape (4, 64, 64) for Stable Diffusion, pixels in [-1, 1] for a
    pixel-space model). Actions must be float32 and finite.

    ## Observation Space
    A `Dict` of batched spaces:
    - "prompt": a tuple of `num_envs` strings (`Text`, printable ASCII);
    - "timestep": (num_envs,) int64, the model timestep of x_t (`Discrete(num_train_timesteps)`),
      0 once the episode has reached x_0; for a flow-matching model (SD3, FLUX, "embedded-flow")
      float32, 1000 σ (`Box(0, num_train_timesteps)`);
    - "x_t": (num_envs, C, H, W) float32, the current sample.
    With `array_type="torch"` "timestep" and "x_t" are torch tensors on the model's device,
    without copies (do not modify them in place), and so are rewards and flags.

    ## Rewards
    0 at every step but the last; at the last, r(x_0, prompt) from the reward function on the
    decoded images (uint8, (num_envs, H, W, 3)).

    ## Starting State
    Prompts drawn uniformly from the task's prompt set with the env's seeded RNG; x_T ~ N(0, I)
    from the same RNG. Same seed, same episode. `reset(options=...)` takes:
    - "prompts": a str or num_envs str, this reset's prompts;
    - "samples_per_prompt": k, num_envs / k prompts drawn, each k times in a row (DDPO's
      per-prompt reward statistics come from one batch; 1: as without the option);
    - "defer_reward": True: these episodes end with reward 0 and the caller scores
      `info["images"]` with `score(images, prompts)` itself (agents score in a worker thread while
      the next batch samples).

    ## Episode End
    `terminated` is True for all sub-envs after `num_inference_steps` steps; `info["images"]`
    then holds the decoded images and `info["reward_info"]` what the reward function reported.
    Episodes never truncate. Autoreset is `NEXT_STEP`: the step after the last one starts new
    episodes (its action is ignored, its reward is 0).

    ## Arguments
    - num_envs: episodes run in parallel (the batch size of the denoiser).
    - model: a hub id, a local diffusers pipeline folder, a model built in code or shipped
      (`diffusion_gym.models.BUILTIN_MODELS`: "embedded", "embedded-flow", "tiny-random",
      "tiny-random-sdxl", ...) or a `DiffusionModel`, of any family (Stable Diffusion, SDXL,
      SD3/SD3.5, FLUX.1; `diffusion_gym.models.families`).
    - reward: a registered reward name (`diffusion_gym.rewards.REWARDS`) or any callable
      `fn(images, prompts) -> (rewards, info)`; `reward_kwargs` go to a registered factory (and
      `device`, the env's, if the factory takes one and it is not given).
    - prompts: a registered prompt set name (`diffusion_gym.prompts.PROMPT_SETS`) or a list.
    - num_inference_steps: sampler steps, the episode length.
    - defaults: what reward, prompts and num_inference_steps are when not given, per model name
      ("*": any other model). The registered ids fill it (`gym.spec(id).kwargs["defaults"]`:
      the paper's reward, prompts and 50 steps; the embedded model's toy-world prompts, 20
      steps and offline stand-ins for the rewards that need large models). None: the
      DiffusionCompressibility-v0 row.
    - device, dtype: where and in which precision the networks run ("auto" picks CUDA if present).
    - array_type: "numpy" (default) or "torch" observations.
    - render_mode: None or "rgb_array" (the current state, decoded).

    ## Version History
    - v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        *,
        model: str | DiffusionModel = PAPER_MODEL,
        reward: str | RewardFn | None = None,
        prompts: str | Sequence[str] | None = None,
        num_inference_steps: int | None = None,
        defaults: dict[str, dict[str, Any]] | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        array_type: str = "numpy",
        render_mode: str | None = None,
        reward_kwargs: dict[str, Any] | None = None,
    ):
        self._init_kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__")}  # to pickle the env by remaking it
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        num_envs = int(num_envs)
        if array_type not in ARRAY_TYPES:
            raise ValueError(f"array_type must be one of {ARRAY_TYPES}, got {array_type!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.num_envs = num_envs
        self.array_type = array_type
        self.render_mode = render_mode
        # settings not given: the model's row of `defaults`, else its "*" row (all checked before the slow part)
        defaults = next(t for t in TASKS if t.id == "DiffusionCompressibility-v0").defaults() if defaults is None else defaults
        model_name = model.name if isinstance(model, DiffusionModel) else str(model)
        row = defaults.get(model_name, defaults["*"])
        reward = row["reward"] if reward is None else reward
        self.prompts = load_prompts(row["prompts"] if prompts is None else prompts)
        num_inference_steps = row["num_inference_steps"] if num_inference_steps is None else num_inference_steps
        check_reward(reward)
        self.model = load_model(model, device=device, dtype=dtype)
        self.reward_fn = make_reward(reward, device=self.model.device, **(reward_kwargs or {}))
        if self.model.is_flow:
            self.scheduler = flow_match_scheduler(self.model.scheduler, num_inference_steps, **self.model.family.schedule(self.model, num_inference_steps))
        else:
            self.scheduler = ddim_scheduler(self.model.scheduler, num_inference_steps)
        self.device = self.model.device
        self._defer_rewards = False

        sample_shape = self.model.sample_shape
        max_prompt_length = max(256, *(len(p) for p in self.prompts))
        tensors = array_type == "torch"  # spaces whose contains() takes the torch observations too
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        if self.model.is_flow:  # a flow model's timesteps are 1000 σ, real numbers in [0, 1000]
            timestep_space = (TensorBox if tensors else Box)(0.0, float(num_train_timesteps), shape=(), dtype=np.float32)
        else:
            timestep_space = (TensorDiscrete if tensors else Discrete)(num_train_timesteps)
        self.single_observation_space = Dict(
            {
                "prompt": PromptText(max_length=max_prompt_length, min_length=1, charset=PROMPT_CHARSET),
                "timestep": timestep_space,
                "x_t": (TensorBox if tensors else Box)(-np.inf, np.inf, shape=sample_shape, dtype=np.float32),
            }
        )
        self.single_action_space = Box(-np.inf, np.inf, shape=sample_shape, dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

        self._timesteps: list[float] = self.scheduler.timesteps.tolist()
        self._timestep_dtype = (np.float32, torch.float32) if self.model.is_flow else (np.int64, torch.int64)  # numpy, torch
        self._step_index: int | None = None  # None until the first reset
        self._x: torch.Tensor | None = None  # (num_envs, C, H, W) float32 on self.device
        self._episode_prompts: list[str] = []

    @property
    def num_steps(self) -> int:
        """Steps per episode (`num_inference_steps`)."""
        return len(self._timesteps)

    # ---------------------------------------------------------------- Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start new episodes; `options` (see the class docstring): "prompts", "samples_per_prompt", "defer_reward"."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an int or None, got {seed!r} (one seed seeds all sub-envs).")
        prompts, samples_per_prompt, defer_reward = self._read_options(options)  # checked before the RNG moves
        super().reset(seed=None if seed is None else int(seed))
        self._defer_rewards = defer_reward
        self._start_episodes(self._grouped_prompts(samples_per_prompt) if samples_per_prompt > 1 else prompts)
        return self._observation(), {}

    def step(self, actions: np.ndarray | torch.Tensor) -> tuple[dict, Any, Any, Any, dict]:
        """Take x_{t-1} for every sub-env; see the class docstring for what comes back."""
        self._check_started()
        if self._episode_over:  # NEXT_STEP autoreset: this step only starts new episodes
            self._start_episodes(None)
            zeros = np.zeros(self.num_envs)
            return self._observation(), self._out(zeros), self._out(zeros > 0), self._out(zeros > 0), {}
        return self._advance(self._check_action(actions, (self.num_envs, *self.model.sample_shape)))

    def render(self) -> tuple[np.ndarray, ...] | None:
        """The current state x_t of each sub-env, decoded: a tuple of (H, W, 3) uint8 images (at
        the end of an episode, x_0: the images the reward scored)."""
        if self.render_mode is None:
            logger.warn("render() was called with render_mode=None; make the env with render_mode='rgb_array'.")
            return None
        self._check_started()
        return tuple(self.model.decode(self._x))

    # ---------------------------------------------------------------- internals
    @property
    def _episode_over(self) -> bool:
        return self._step_index == self.num_steps

    def _check_started(self) -> None:
        if self._step_index is None:
            raise ValueError("step() or render() was called before reset(); call env.reset(seed=...) first.")

    def _read_options(self, options: dict[str, Any] | None) -> tuple[list[str] | None, int, bool]:
        """(this reset's fixed prompts or None, samples_per_prompt, defer_reward), checked."""
        options = options or {}
        known = ("prompts", "samples_per_prompt", "defer_reward")
        unknown = set(options) - set(known)
        if unknown:
            raise ValueError(
                f"Unknown reset options {sorted(unknown)}; the options are 'prompts' (a str or a list of num_envs str), "
                "'samples_per_prompt' (an int dividing num_envs) and 'defer_reward' (a bool)."
            )
        defer_reward = options.get("defer_reward", False)
        if not isinstance(defer_reward, (bool, np.bool_)):
            raise ValueError(f"options['defer_reward'] must be True or False, got {defer_reward!r}.")
        if "prompts" in options and "samples_per_prompt" in options:
            raise ValueError("Give options['prompts'] or options['samples_per_prompt'], not both: fixed prompts are not drawn.")
        if "samples_per_prompt" in options:
            k = options["samples_per_prompt"]
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or self.num_envs % k:
                raise ValueError(f"options['samples_per_prompt'] must be an int dividing num_envs = {self.num_envs}, got {k!r}.")
            return None, int(k), bool(defer_reward)
        return self._prompts_from_options(options), 1, bool(defer_reward)

    def _grouped_prompts(self, samples_per_prompt: int) -> list[str]:
        """num_envs / k prompts drawn with the env's RNG, each k times in a row."""
        chosen = self.np_random.choice(len(self.prompts), size=self.num_envs // samples_per_prompt)
        return [self.prompts[i] for i in chosen for _ in range(samples_per_prompt)]

    def _prompts_from_options(self, options: dict[str, Any]) -> list[str] | None:
        if "prompts" not in options:
            return None
        prompts = options["prompts"]
        if not isinstance(prompts, (str, list, tuple)):
            raise ValueError(f"options['prompts'] must be a str or a list of num_envs={self.num_envs} str, got {prompts!r}; leave it out to draw prompts from the env's set.")
        prompts = [prompts] * self.num_envs if isinstance(prompts, str) else list(prompts)
        if len(prompts) != self.num_envs:
            raise ValueError(f"options['prompts'] has {len(prompts)} prompts; give one str or a list of num_envs={self.num_envs}.")
        max_length = self.single_observation_space["prompt"].max_length
        for prompt in prompts:
            if len(check_prompt(prompt)) > max_length:
                raise ValueError(f"Prompt of {len(prompt)} characters is longer than this env's limit of {max_length}.")
        return prompts

    def _start_episodes(self, prompts: list[str] | None) -> None:
        if prompts is None:
            indices = self.np_random.integers(len(self.prompts), size=self.num_envs)
            prompts = [self.prompts[i] for i in indices]
        noise = self.np_random.standard_normal((self.num_envs, *self.model.sample_shape), dtype=np.float32)
        self._episode_prompts = prompts
        self._x = torch.from_numpy(noise).to(self.device) * getattr(self.scheduler, "init_noise_sigma", 1.0)  # a flow starts at σ = 1: x_T = ε
        self._step_index = 0

    def _check_action(self, action: Any, expected_shape: tuple[int, ...]) -> torch.Tensor:
        """The action as a float32 tensor on the env's device, or a ValueError saying what is wrong.
        Nothing about the env changes here."""
        if isinstance(action, torch.Tensor):
            kind, dtype = "torch tensor", action.dtype
            ok_dtype = dtype == torch.float32
        elif isinstance(action, np.ndarray):
            kind, dtype = "numpy array", action.dtype
            ok_dtype = dtype == np.float32
        else:
            raise ValueError(f"The action must be a float32 numpy array or torch tensor of shape {expected_shape}, got {type(action).__name__}.")
        if tuple(action.shape) != expected_shape:
            raise ValueError(f"The action must have shape {expected_shape} (x_{{t-1}}), got {kind} of shape {tuple(action.shape)}.")
        if not ok_dtype:
            raise ValueError(f"The action must be float32, got {kind} of dtype {dtype}; cast it with .astype(np.float32) or .float().")
        if isinstance(action, np.ndarray):
            x = torch.tensor(action, device=self.device)  # a copy: the caller may reuse its buffer
        else:
            x = action.detach().to(self.device, copy=True)  # a copy too: the next state must not change with the caller's tensor
        if not bool(torch.isfinite(x).all()):
            raise ValueError("The action has NaN or infinite values; the env state was left unchanged.")
        return x

    def _advance(self, x_prev: torch.Tensor) -> tuple[dict, Any, Any, Any, dict]:
        """Move every episode to the checked action x_{t-1}; score the episodes that end. The
        reward runs before anything moves: if it fails (`RewardError`), the env is as it was."""
        rewards = np.zeros(self.num_envs)
        infos: dict[str, Any] = {}
        if self._step_index + 1 == self.num_steps:
            images = self.model.decode(x_prev)
            try:
                rewards, reward_info = (rewards, {}) if self._defer_rewards else self.score(images, list(self._episode_prompts))
            except RewardError as error:
                message = f"{error.args[0]} The env was not advanced: fix the reward and take the same step again."
                raise RewardError(message, error.images, error.prompts) from error.__cause__
            mask = np.ones(self.num_envs, dtype=bool)
            infos = {"images": images, "_images": mask, "reward_info": reward_info, "_reward_info": mask}
        self._x = x_prev
        self._step_index += 1
        done = np.full(self.num_envs, self._episode_over)
        return self._observation(), self._out(rewards), self._out(done), self._out(np.zeros(self.num_envs, dtype=bool)), infos

    def score(self, images: np.ndarray, prompts: list[str]) -> tuple[np.ndarray, dict]:
        """The reward function on finished episodes, its output checked: ((N,) float64, info).

        Raises:
            RewardError: the reward raised, or returned something else; it carries the images.
        """
        name = _reward_name(self.reward_fn)
        signature = "fn(images, prompts) -> (rewards, info): an (N,) array of finite floats and a dict ({} for none)"
        try:
            result = self.reward_fn(images, prompts)
        except Exception as error:
            raise RewardError(
                f"The reward {name} raised {type(error).__name__}: {error}. The images and prompts it was given are on this error (.images, .prompts).",
                images, prompts,
            ) from error  # fmt: skip
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
            described = f"a {type(result).__name__}" + (f" of length {len(result)}" if isinstance(result, tuple) else "")
            if isinstance(result, tuple) and len(result) == 2:
                described = f"(rewards, {type(result[1]).__name__})"
            raise RewardError(f"The reward {name} returned {described}; a reward must be {signature}.", images, prompts)
        try:
            rewards = np.asarray(result[0], dtype=np.float64)
        except (TypeError, ValueError):
            rewards = np.asarray([np.nan])
        if rewards.shape != (len(images),) or not np.isfinite(rewards).all():
            raise RewardError(
                f"The reward {name} must return {len(images)} finite rewards, got {result[0]!r}; a reward must be {signature}.", images, prompts
            )
        return rewards, dict(result[1])

    def __getstate__(self) -> dict:
        """Pickled as its arguments and its episode's state; unpickling makes the env again (a
        model given by name is loaded again, a `DiffusionModel` travels whole; a registered reward
        is made again by its name, a reward function must itself pickle), then restores them."""
        rng = self._np_random
        return {
            "kwargs": self._init_kwargs, "rng": None if rng is None else rng.bit_generator.state, "seed": self._np_random_seed,
            "step_index": self._step_index, "x": None if self._x is None else self._x.cpu(), "prompts": list(self._episode_prompts),
        }  # fmt: skip

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state["kwargs"])
        if state["rng"] is not None:
            self._np_random = np.random.Generator(getattr(np.random, state["rng"]["bit_generator"])())
            self._np_random.bit_generator.state = state["rng"]
        self._np_random_seed = state["seed"]
        self._step_index, self._episode_prompts = state["step_index"], state["prompts"]
        self._x = None if state["x"] is None else state["x"].to(self.device)

    def _observation(self) -> dict[str, Any]:
        timestep = 0 if self._episode_over else self._timesteps[self._step_index]
        if self.array_type == "torch":
            timesteps = torch.full((self.num_envs,), timestep, dtype=self._timestep_dtype[1], device=self.device)
            return {"prompt": tuple(self._episode_prompts), "timestep": timesteps, "x_t": self._x}
        timesteps = np.full(self.num_envs, timestep, dtype=self._timestep_dtype[0])
        return {"prompt": tuple(self._episode_prompts), "timestep": timesteps, "x_t": self._x.cpu().numpy().copy()}

    def _out(self, array: np.ndarray) -> Any:
        """Rewards and flags as numpy, or as torch on the device with array_type="torch"."""
        return torch.as_tensor(array, device=self.device) if self.array_type == "torch" else array


class DiffusionEnv(gym.Env):
    """One denoising episode at a time: a 1-env view of `DiffusionVectorEnv`, same arguments.

    Observations, actions and infos are those of the vector env without the batch dimension; the
    reward is a float. There is no autoreset: after `terminated`, call `reset()`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, **kwargs: Any):
        self.vector_env = DiffusionVectorEnv(num_envs=1, render_mode=render_mode, **kwargs)
        self.observation_space = self.vector_env.single_observation_space
        self.action_space = self.vector_env.single_action_space
        self.render_mode = render_mode

    # the RNG is the vector env's, so seeding either seeds both
    @property
    def _np_random(self) -> np.random.Generator | None:  # type: ignore[override]
        return self.vector_env._np_random

    @_np_random.setter
    def _np_random(self, value: np.random.Generator | None) -> None:
        self.vector_env._np_random = value

    @property
    def _np_random_seed(self) -> int | None:  # type: ignore[override]
        return self.vector_env._np_random_seed

    @_np_random_seed.setter
    def _np_random_seed(self, value: int | None) -> None:
        self.vector_env._np_random_seed = value

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        obs, info = self.vector_env.reset(seed=seed, options=options)
        return _single(obs), _first(info)

    def step(self, action: np.ndarray | torch.Tensor) -> tuple[dict, float, bool, bool, dict]:
        env = self.vector_env
        env._check_started()
        if env._episode_over:
            raise ValueError("The episode has ended (terminated=True); call reset() before stepping again.")
        x_prev = env._check_action(action, env.model.sample_shape)
        obs, reward, terminated, truncated, info = env._advance(x_prev.unsqueeze(0))
        return _single(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), _first(info)

    def render(self) -> np.ndarray | None:
        frames = self.vector_env.render()
        return None if frames is None else frames[0]

    def close(self) -> None:
        self.vector_env.close()

    def __getattr__(self, name: str) -> Any:
        # model, scheduler, prompts, reward_fn, num_steps, score, ...: the vector env's
        if name.startswith("_") or name == "vector_env":
            raise AttributeError(name)
        return getattr(self.vector_env, name)


def _single(obs: dict) -> dict:
    """The first sub-env's observation; a flow model's float timestep as the 0-d array its `Box`
    holds (a numpy scalar would be cast with a warning)."""
    obs = _first(obs)
    if isinstance(obs["timestep"], np.floating):
        obs["timestep"] = np.asarray(obs["timestep"])
    return obs


def _first(batch: Any) -> Any:
    """The first sub-env's part of a batched observation or info dict (masks `_key` dropped)."""
    if isinstance(batch, dict):
        return {key: _first(value) for key, value in batch.items() if not key.startswith("_")}
    if isinstance(batch, (tuple, list, np.ndarray, torch.Tensor)):
        return batch[0]
    return batch
