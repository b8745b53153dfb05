"""diffusion-gym: the denoising process of a text-to-image diffusion model as a Gymnasium environment.

    import gymnasium as gym
    import diffusion_gym  # registers the ids

    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=8, model="tiny-random")
    policy = diffusion_gym.DiffusionPolicy.from_env(envs)
    obs, info = envs.reset(seed=0)
    while True:
        action, log_prob = policy.act(obs)
        obs, reward, terminated, truncated, info = envs.step(action)
        if terminated.all():
            break
"""

__version__ = "0.1.0"

from diffusion_gym.envs import ENV_IDS, DiffusionEnv, DiffusionVectorEnv, register_envs
from diffusion_gym.models import DiffusionModel, load_model
from diffusion_gym.policy import DiffusionPolicy
from diffusion_gym.prompts import PROMPT_SETS, load_prompts
from diffusion_gym.rewards import REWARDS, make_reward
from diffusion_gym.samplers import DDIMSampler, SamplerStep, gaussian_log_prob

register_envs()

__all__ = [
    "DDIMSampler",
    "DiffusionEnv",
    "DiffusionModel",
    "DiffusionPolicy",
    "DiffusionVectorEnv",
    "ENV_IDS",
    "PROMPT_SETS",
    "REWARDS",
    "SamplerStep",
    "gaussian_log_prob",
    "load_model",
    "load_prompts",
    "make_reward",
    "register_envs",
]
