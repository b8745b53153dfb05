"""The registered environment ids: one row a task, with the paper's defaults.

Every id has a single-env `entry_point` and a `vector_entry_point` (like CartPole), so both
`gym.make(id)` and `gym.make_vec(id, num_envs=N)` (no sub-env copies: one batched env) work.
Keyword arguments given to `make`/`make_vec` override these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym


@dataclass(frozen=True)
class Task:
    """One row of the table: an id and what differs between tasks."""

    id: str
    reward: str
    """Registered reward name (`diffusion_gym.rewards.REWARDS`)."""
    prompts: str
    """Registered prompt set (`diffusion_gym.prompts.PROMPT_SETS`)."""


# The paper's sampling setup (Stable Diffusion v1.4, 50 DDIM steps, eta 1, guidance 5). Steps and
# guidance apply unless given, or unless the model names its own (the embedded model does).
PAPER_DEFAULTS = {
    "model": "CompVis/stable-diffusion-v1-4",
    "num_inference_steps": 50,
    "guidance_scale": 5.0,
    "eta": 1.0,
}

TASKS = (
    Task("DiffusionAesthetic-v0", reward="aesthetic", prompts="simple_animals"),
    Task("DiffusionCompressibility-v0", reward="jpeg_compressibility", prompts="imagenet_animals"),
    Task("DiffusionIncompressibility-v0", reward="jpeg_incompressibility", prompts="imagenet_animals"),
    Task("DiffusionPromptAlignment-v0", reward="prompt_alignment", prompts="animal_activities"),
)

ENV_IDS = tuple(task.id for task in TASKS)


def register_envs() -> None:
    """Register every task id (idempotent)."""
    for task in TASKS:
        if task.id in gym.registry:
            continue
        gym.register(
            id=task.id,
            entry_point="diffusion_gym.envs.diffusion_env:DiffusionEnv",
            vector_entry_point="diffusion_gym.envs.diffusion_env:DiffusionVectorEnv",
            # our env raises a ValueError on step-before-reset itself, with a clearer message
            order_enforce=False,
            kwargs={"model": PAPER_DEFAULTS["model"], "eta": PAPER_DEFAULTS["eta"], "default_reward": task.reward, "default_prompts": task.prompts},
        )
