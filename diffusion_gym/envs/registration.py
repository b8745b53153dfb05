"""The registered environment ids: one row a task, and every default an env takes.

Every id has a single-env `entry_point` and a `vector_entry_point` (like CartPole), so both
`gym.make(id)` and `gym.make_vec(id, num_envs=N)` (no sub-env copies: one batched env) work.
`gym.spec(id).kwargs` is what a user gets: the model, and per model the settings that are not
given to `make` (`defaults`: the model's own row if it has one, else "*", the paper's setup).
How the policy acts (eta, guidance) is not the env's: see `diffusion_gym.policy.SAMPLING`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym

# The paper's model and sampler steps (Stable Diffusion v1.4, 50 DDIM steps).
PAPER_MODEL = "CompVis/stable-diffusion-v1-4"
PAPER_STEPS = 50
# The embedded model's sampler steps (a 32×32 pixel model: 20 DDIM steps are enough).
EMBEDDED_STEPS = 20


@dataclass(frozen=True)
class Task:
    """One row of the table: an id, the paper's reward and prompts, and the embedded model's own
    (offline stand-ins where the paper's reward needs large models or its prompts name things the
    toy world does not have)."""

    id: str
    reward: str
    """Registered reward name (`diffusion_gym.rewards.REWARDS`)."""
    prompts: str
    """Registered prompt set (`diffusion_gym.prompts.PROMPT_SETS`)."""
    embedded: dict = field(default_factory=dict)
    """What `model="embedded"` (and "embedded-flow") uses instead: "reward", "prompts" (default: the toy world's
    prompts and the paper's reward)."""

    def defaults(self) -> dict[str, dict]:
        """The env settings per model name, "*" for any other model."""
        paper = {"reward": self.reward, "prompts": self.prompts, "num_inference_steps": PAPER_STEPS}
        embedded = {"reward": self.reward, "prompts": "toy_world", "num_inference_steps": EMBEDDED_STEPS, **self.embedded}
        return {"*": paper, "embedded": embedded, "embedded-flow": embedded}


TASKS = (
    Task("DiffusionAesthetic-v0", reward="aesthetic", prompts="simple_animals", embedded={"reward": "embedded_aesthetic"}),
    Task("DiffusionCompressibility-v0", reward="jpeg_compressibility", prompts="imagenet_animals"),
    Task("DiffusionIncompressibility-v0", reward="jpeg_incompressibility", prompts="imagenet_animals"),
    Task(
        "DiffusionPromptAlignment-v0", reward="prompt_alignment", prompts="animal_activities",
        embedded={"reward": "embedded_alignment_judge", "prompts": "toy_world_paraphrases"},
    ),  # fmt: skip
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
            kwargs={"model": PAPER_MODEL, "defaults": task.defaults()},
        )
