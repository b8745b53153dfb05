"""The paper's prompt sets, shipped as package data."""

import pytest

from diffusion_gym.prompts import PROMPT_CHARSET, PROMPT_SETS, load_prompts


def test_the_papers_sets_have_the_papers_sizes():
    assert len(load_prompts("imagenet_animals")) == 398
    assert len(load_prompts("simple_animals")) == 45
    assert len(load_prompts("animal_activities")) == 45 * 3
    assert len(load_prompts("toy_world")) == 204 and len(load_prompts("toy_world_held_out")) == 36


def test_known_entries():
    imagenet = load_prompts("imagenet_animals")
    assert imagenet[0] == "tench" and imagenet[2] == "great white shark" and imagenet[-1] == "puffer"
    assert len(set(imagenet)) == 398
    activities = load_prompts("animal_activities")
    assert "a cat riding a bike" in activities and "an ant washing dishes" in activities and "a wolf playing chess" in activities


def test_every_shipped_prompt_fits_the_charset():
    for name in PROMPT_SETS:
        for prompt in load_prompts(name):
            assert prompt and set(prompt) <= set(PROMPT_CHARSET)


def test_bad_prompts_are_rejected():
    with pytest.raises(ValueError, match="known sets"):
        load_prompts("animals")
    with pytest.raises(ValueError, match="empty"):
        load_prompts([])
    with pytest.raises(ValueError, match="non-empty string"):
        load_prompts(["a cat", ""])
    with pytest.raises(ValueError, match="outside printable ASCII"):
        load_prompts(["a cat\n"])
