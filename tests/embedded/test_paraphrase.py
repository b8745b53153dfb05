"""The toy world in other words: the comparator on hand-written prompt/caption pairs, and the
alignment task's prompt sets."""

import re

import numpy as np
import pytest

from diffusion_gym.embedded import world
from diffusion_gym.embedded.paraphrase import (
    HELD_OUT_SYNONYMS, HELD_OUT_TEMPLATES, LEXICON, MAX_TOKENS, TRAIN_TEMPLATES, build_prompt_sets, named_attributes, recall,
)  # fmt: skip
from diffusion_gym.prompts import load_prompts
from embedded_tools.model import build_tokenizer  # the tokenizer as the tool that trains the model builds it

CAPTION = "a small red circle on a flat background"


@pytest.mark.parametrize(
    "prompt, caption, expected",
    [
        (CAPTION, CAPTION, 1.0),
        ("a tiny crimson disc on a plain background", CAPTION, 1.0),  # synonyms
        ("on a blank background a little ruby dot", CAPTION, 1.0),  # word order
        ("plain background, small red disc", CAPTION, 1.0),
        ("a red circle on a flat background", "a large red circle on a flat background", 1.0),  # size not named: not asked for
        ("a tiny crimson disc on a plain background", "a small red circle on a noisy background", 0.75),  # one of four wrong
        ("a huge lime box on a grainy background", CAPTION, 0.0),
        ("a lemon wedge", "a large yellow square on a striped background", 0.5),  # two named, one shown
    ],
)
def test_recall_of_hand_written_pairs(prompt, caption, expected):
    assert recall(prompt, caption) == pytest.approx(expected)


def test_recall_of_an_uncertain_reading_is_the_mean_probability_of_what_the_prompt_names():
    reading = {
        "size": np.array([0.9, 0.1]),
        "colour": np.array([0.5, 0.2, 0.1, 0.1, 0.1, 0.0]),  # red 0.5
        "shape": np.array([0.0, 0.0, 1.0, 0.0]),  # a triangle
        "background": np.array([0.2, 0.2, 0.2, 0.2, 0.2]),
    }
    assert recall("a tiny crimson wedge", reading) == pytest.approx((0.9 + 0.5 + 1.0) / 3)
    assert recall("a big red circle on a noisy background", reading) == pytest.approx((0.1 + 0.5 + 0.0 + 0.2) / 4)


def test_a_prompt_naming_nothing_of_the_world_is_refused():
    with pytest.raises(ValueError, match="names no size, colour, shape or background"):
        recall("a dolphin riding a bike", CAPTION)
    with pytest.raises(ValueError, match="not a caption of the toy world"):
        recall(CAPTION, "a dolphin riding a bike")


def test_every_lexicon_word_names_one_value_and_every_value_has_synonyms():
    assert all(world.ATTRIBUTES[a].index(v) >= 0 for a, v in LEXICON.values())
    assert named_attributes("a little crimson dot on a checked background") == {
        "size": {"small"}, "colour": {"red"}, "shape": {"circle"}, "background": {"checkered"}
    }  # fmt: skip


def test_the_shipped_prompt_sets_are_what_the_script_writes():
    train, held_out = build_prompt_sets()
    assert load_prompts("toy_world_paraphrases") == train and load_prompts("toy_world_paraphrases_held_out") == held_out
    assert len(train) == len(world.TRAIN) == 204 and len(held_out) == 64


def test_every_paraphrase_names_its_combination_and_fits_the_text_encoder():
    tokenizer = build_tokenizer()
    train, held_out = load_prompts("toy_world_paraphrases"), load_prompts("toy_world_paraphrases_held_out")
    for combination, prompt in zip(world.TRAIN, train):
        assert named_attributes(prompt) == {a: {v} for a, v in zip(world.ATTRIBUTE_NAMES, combination)}, prompt
        assert prompt != world.caption(combination)  # never the generator's own caption
    for prompt in train + held_out:
        assert len(tokenizer.tokenize(prompt)) + 2 <= MAX_TOKENS, prompt  # with <|startoftext|> and <|endoftext|>: nothing is cut off
        assert all(len(values) == 1 for values in named_attributes(prompt).values()) and len(named_attributes(prompt)) == 4


def test_held_out_prompts_are_an_exam_no_training_prompt_prepared_for():
    train, held_out = load_prompts("toy_world_paraphrases"), load_prompts("toy_world_paraphrases_held_out")
    held_out_words = {w for values in HELD_OUT_SYNONYMS.values() for words in values.values() for w in words}

    def words(prompt):
        return set(re.findall(r"[a-z]+", prompt))

    def shape(prompt):  # the prompt's sentence shape: attribute words replaced by their slot
        return " ".join(f"{{{LEXICON[w][0]}}}" if w in LEXICON else "a" if w == "an" else w for w in re.findall(r"[a-z]+|[,:]", prompt))

    def template_shape(template):
        return " ".join(re.findall(r"\{\w+\}|[a-z]+|[,:]", template))

    assert not any(words(p) & held_out_words for p in train)
    train_shapes = {shape(p) for p in train}
    assert train_shapes <= {template_shape(t) for t in TRAIN_TEMPLATES}
    for prompt in held_out:
        assert (words(prompt) & held_out_words) or shape(prompt) in {template_shape(t) for t in HELD_OUT_TEMPLATES}, prompt
