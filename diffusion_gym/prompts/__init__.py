"""Prompt sets: the paper's, shipped as package data, behind an explicit registry.

| name              | prompts | the paper's task |
|-------------------|---------|------------------|
| imagenet_animals  | the 398 animal classes of ImageNet-1k (classes 0-397), first WordNet lemma | (in)compressibility |
| simple_animals    | 45 common animals | aesthetic quality |
| animal_activities | "a(n) [animal] [activity]" for the 45 animals and 3 activities (135) | prompt alignment |
| toy_world         | the embedded model's training captions (204) | all tasks, on the embedded model |
| toy_world_held_out| captions of the 36 combinations the embedded model never saw | generalisation |
| toy_world_paraphrases | the training combinations in synonyms and sentence shapes the embedded model never saw (204) | prompt alignment, on the embedded model |
| toy_world_paraphrases_held_out | 64 more, each in words or a template no training paraphrase uses | alignment's generalisation |
"""

from __future__ import annotations

import string
from functools import cache
from importlib import resources
from typing import Callable, Sequence

# Characters a prompt may use: printable ASCII without tabs and line breaks. This is the charset
# of the environments' `Text` observation space.
PROMPT_CHARSET = "".join(c for c in string.printable if c not in "\t\n\r\x0b\x0c")


@cache
def _read_lines(filename: str) -> tuple[str, ...]:
    text = resources.files("diffusion_gym.prompts").joinpath("data", filename).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def with_article(noun: str) -> str:
    """"a fox", "an owl": the indefinite article by the first letter (right for every animal here)."""
    return f"{'an' if noun[0].lower() in 'aeiou' else 'a'} {noun}"


def imagenet_animals() -> list[str]:
    return list(_read_lines("imagenet_animals.txt"))


def simple_animals() -> list[str]:
    return list(_read_lines("simple_animals.txt"))


def animal_activities() -> list[str]:
    return [f"{with_article(animal)} {activity}" for animal in simple_animals() for activity in _read_lines("activities.txt")]


def toy_world() -> list[str]:
    from diffusion_gym.embedded.world import TRAIN_PROMPTS

    return list(TRAIN_PROMPTS)


def toy_world_held_out() -> list[str]:
    from diffusion_gym.embedded.world import HELD_OUT_PROMPTS

    return list(HELD_OUT_PROMPTS)


def toy_world_paraphrases() -> list[str]:
    return list(_read_lines("toy_world_paraphrases.txt"))


def toy_world_paraphrases_held_out() -> list[str]:
    return list(_read_lines("toy_world_paraphrases_held_out.txt"))


PROMPT_SETS: dict[str, Callable[[], list[str]]] = {
    "imagenet_animals": imagenet_animals,
    "simple_animals": simple_animals,
    "animal_activities": animal_activities,
    "toy_world": toy_world,
    "toy_world_held_out": toy_world_held_out,
    "toy_world_paraphrases": toy_world_paraphrases,
    "toy_world_paraphrases_held_out": toy_world_paraphrases_held_out,
}


# Each set that has one, and the set of prompts it never trains on (for generalisation).
HELD_OUT_SETS: dict[str, str] = {"toy_world": "toy_world_held_out", "toy_world_paraphrases": "toy_world_paraphrases_held_out"}


def held_out_set(prompts: Sequence[str]) -> str | None:
    """The name of the held-out set of a registered prompt set given by its prompts, or None."""
    prompts = list(prompts)
    for name, held_out in HELD_OUT_SETS.items():
        if prompts == PROMPT_SETS[name]():
            return held_out
    return None


def load_prompts(prompts: str | Sequence[str]) -> list[str]:
    """The prompts of a registered set (by name) or a list of prompts, checked.

    Raises:
        ValueError: unknown set name, an empty list, an empty prompt, or a character outside
            `PROMPT_CHARSET`.
    """
    if prompts is None or not isinstance(prompts, (str, Sequence)) or isinstance(prompts, bytes):
        raise ValueError(f"prompts must be a prompt set name ({sorted(PROMPT_SETS)}) or a list of prompts, got {prompts!r}.")
    if isinstance(prompts, str):
        if prompts not in PROMPT_SETS:
            raise ValueError(
                f"Unknown prompt set {prompts!r}; known sets: {sorted(PROMPT_SETS)}. "
                "Or pass a list of prompts, e.g. prompts=['a red fox']."
            )
        return PROMPT_SETS[prompts]()
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; pass a prompt set name or a non-empty list of strings.")
    for prompt in prompts:
        check_prompt(prompt)
    return prompts


def check_prompt(prompt: object) -> str:
    """Return `prompt` if it is a non-empty string of `PROMPT_CHARSET` characters, else raise ValueError."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"A prompt must be a non-empty string with at least one visible character, got {prompt!r}.")
    bad = sorted(set(prompt) - set(PROMPT_CHARSET))
    if bad:
        raise ValueError(f"Prompt {prompt!r} has characters outside printable ASCII: {bad}.")
    return prompt
