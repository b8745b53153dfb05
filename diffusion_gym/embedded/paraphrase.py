"""The toy world in other words: synonyms, sentence shapes, and a comparator that reads them.

The embedded model was trained on one caption template with one word per attribute value
("a large red triangle on a striped background"). Its tokenizer has a token for each of those
words only: any other word reaches the text encoder as bytes it never saw, and a sentence in
another order puts the known words where it never saw them. The paper's alignment prompts were
scenes Stable Diffusion could not draw well, judged by a VLM that understood more language than
the generator. This module gives the toy world the same gap:

- a lexicon of synonyms for each attribute value ("tiny" for small, "ruby" for red, "disc" for
  circle, "grainy" for noisy ...) and sentence shapes other than the training one, each split
  into those that training prompts use and those used only by held-out prompts (the paper's
  "taking an exam" test: `HELD_OUT_SYNONYMS`, `HELD_OUT_TEMPLATES`);
- the alignment task's prompt sets built from them (`build_prompt_sets`, shipped as
  `toy_world_paraphrases` and `toy_world_paraphrases_held_out`; every prompt fits the text
  encoder's 16 tokens, so that nothing it names is cut off);
- `named_attributes`, which finds the attribute values a prompt names in any of these words, and
  `recall`, which scores how much of a prompt a reading of an image shows.

    named_attributes("on a plain background a tiny ruby disc")
    # {"background": {"flat"}, "size": {"small"}, "colour": {"red"}, "shape": {"circle"}}
    recall("on a plain background a tiny ruby disc", "a small red circle on a noisy background")
    # 0.75: three of the four attributes the prompt names are shown

    python -m diffusion_gym.embedded.paraphrase      # writes the prompt sets into diffusion_gym/prompts/data/
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from diffusion_gym.embedded import world

# Words for each attribute value besides its own name: (used in training prompts, held out).
# Every word names exactly one value of one attribute.
SYNONYMS: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "size": {
        "small": (("tiny",), ("little", "mini")),
        "large": (("big",), ("huge", "giant")),
    },
    "colour": {
        "red": (("ruby",), ("crimson", "scarlet")),
        "green": (("lime",), ("jade", "emerald")),
        "blue": (("azure",), ("navy", "cobalt")),
        "yellow": (("gold",), ("lemon", "canary")),
        "purple": (("violet",), ("lilac", "plum")),
        "white": (("snowy",), ("ivory", "pearl")),
    },
    "shape": {
        "circle": (("disc",), ("dot", "orb")),
        "square": (("box",), ("block", "tile")),
        "triangle": (("wedge",), ("delta", "pyramid")),
        "cross": (("plus",), ("crux", "rood")),
    },
    "background": {
        "flat": (("plain",), ("blank", "bare")),
        "gradient": (("faded",), ("shaded", "ombre")),
        "striped": (("lined",), ("stripy", "banded")),
        "checkered": (("checked",), ("chess", "plaid")),
        "noisy": (("grainy",), ("static", "speckled")),
    },
}

# Sentence shapes; the first is the generator's own. Slots: {size} {colour} {shape} {background}.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} on a {background} background",
    "on a {background} background a {size} {colour} {shape}",
    "a {colour} {shape}, {size}, on a {background} background",
    "{background} background, {size} {colour} {shape}",
)
HELD_OUT_TEMPLATES: tuple[str, ...] = (
    "a {size} {shape} on a {background} background, {colour}",
    "{size} {colour} {shape} on {background}",
)

TRAIN_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {a: {v: pair[0] for v, pair in values.items()} for a, values in SYNONYMS.items()}
"""The synonyms training prompts use."""
HELD_OUT_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {a: {v: pair[1] for v, pair in values.items()} for a, values in SYNONYMS.items()}
"""Synonyms that appear in no training prompt."""

LEXICON: dict[str, tuple[str, str]] = {
    word: (attribute, value)
    for attribute, values in world.ATTRIBUTES.items()
    for value in values
    for word in (value, *SYNONYMS[attribute][value][0], *SYNONYMS[attribute][value][1])
}
"""Every word the comparator knows -> (attribute, value)."""


def _check_lexicon() -> None:
    words = [w for a, values in SYNONYMS.items() for v, pair in values.items() for w in (v, *pair[0], *pair[1])]
    duplicated = sorted({w for w in words if words.count(w) > 1})
    if duplicated:
        raise ValueError(f"Lexicon words name more than one value: {duplicated}")
    if set(SYNONYMS) != set(world.ATTRIBUTES) or any(set(SYNONYMS[a]) != set(world.ATTRIBUTES[a]) for a in SYNONYMS):
        raise ValueError("SYNONYMS must cover exactly the world's attributes and values.")


_check_lexicon()

_WORD = re.compile(r"[a-z]+")


def named_attributes(prompt: str) -> dict[str, set[str]]:
    """The attribute values a prompt names, in any word of the lexicon, in any order.

    Returns:
        {attribute: {values}} for the attributes the prompt names (usually one value each);
        attributes it does not name are absent.
    """
    named: dict[str, set[str]] = {}
    for word in _WORD.findall(prompt.lower()):
        if word in LEXICON:
            attribute, value = LEXICON[word]
            named.setdefault(attribute, set()).add(value)
    return named


Reading = Mapping[str, np.ndarray]
"""What a judge saw in one image: for each attribute, the probability of each of its values
((n_values,) in `world.ATTRIBUTES` order, summing to 1). A caption is the certain case."""


def reading_of_caption(caption: str) -> dict[str, np.ndarray]:
    """The certain reading of a caption of the world's own form ("a small red circle on a flat background")."""
    combination = world.parse_caption(caption)
    if combination is None:
        raise ValueError(f"{caption!r} is not a caption of the toy world (\"a SIZE COLOUR SHAPE on a BACKGROUND background\").")
    return {
        attribute: np.eye(len(world.ATTRIBUTES[attribute]))[world.ATTRIBUTES[attribute].index(value)]
        for attribute, value in zip(world.ATTRIBUTE_NAMES, combination)
    }


def recall(prompt: str, reading: Reading | str) -> float:
    """How much of the prompt the image shows, in [0, 1] (as BERTScore recall: the fraction of
    the prompt that the description covers): the mean, over the attribute values the prompt
    names, of the probability the reading gives each.

    Args:
        prompt: a prompt in any of the lexicon's words and any word order.
        reading: what a judge read in the image (`Reading`), or a caption of the world's form.

    Raises:
        ValueError: the prompt names no attribute of the toy world.
    """
    if isinstance(reading, str):
        reading = reading_of_caption(reading)
    named = named_attributes(prompt)
    if not named:
        raise ValueError(f"The prompt {prompt!r} names no size, colour, shape or background of the toy world; the judge cannot score it.")
    scores = [float(reading[attribute][world.ATTRIBUTES[attribute].index(value)]) for attribute, values in named.items() for value in values]
    return float(np.mean(scores))


# ---------------------------------------------------------------- the prompt sets
MAX_TOKENS = 16
"""The embedded text encoder's context, <|startoftext|> and <|endoftext|> included: a word it has
no token for costs a token per byte or byte pair, and what does not fit is cut off."""


def paraphrase(template: str, words: Sequence[str]) -> str:
    """Fill a template with one word per attribute (in `world.ATTRIBUTE_NAMES` order), "a" made
    "an" before a vowel."""
    text = template.format(**dict(zip(world.ATTRIBUTE_NAMES, words)))
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def generate(
    combinations: Sequence[world.Combination],
    templates: Sequence[str],
    synonyms: Mapping[str, Mapping[str, Sequence[str]]],
    rewordings: Sequence[int],
    rng: np.random.Generator,
    token_count,
) -> list[str]:
    """One paraphrase per combination: a template drawn from `templates`, and a number drawn from
    `rewordings` of its attributes named by a synonym drawn from `synonyms` (the others by
    their own names); drawn again until it fits `MAX_TOKENS` (`token_count(prompt)`)."""
    prompts = []
    for combination in combinations:
        for _ in range(1000):
            template = templates[int(rng.integers(len(templates)))]
            reworded = set(rng.choice(len(world.ATTRIBUTE_NAMES), size=int(rng.choice(rewordings)), replace=False).tolist())
            words = [
                synonyms[a][v][int(rng.integers(len(synonyms[a][v])))] if i in reworded else v
                for i, (a, v) in enumerate(zip(world.ATTRIBUTE_NAMES, combination))
            ]
            prompt = paraphrase(template, words)
            if token_count(prompt) <= MAX_TOKENS:
                break
        else:
            raise ValueError(f"No paraphrase of {combination} fits in {MAX_TOKENS} tokens.")
        prompts.append(prompt)
    return prompts


TRAIN_FILE, HELD_OUT_FILE = "toy_world_paraphrases.txt", "toy_world_paraphrases_held_out.txt"


def build_prompt_sets(seed: int = 0) -> tuple[list[str], list[str]]:
    """The alignment task's prompt sets, as shipped in `diffusion_gym/prompts/data/`:

    - training (204): one paraphrase of each training combination, in a training sentence shape
      other than the generator's own, with no or one of its attributes in a training synonym;
    - held out (64): combinations drawn from all 240, half in a held-out sentence shape (with no
      or one training synonym), half in a training shape with one held-out synonym: every
      held-out prompt has a sentence shape or a word that no training prompt has.
    """
    from transformers import CLIPTokenizer

    from diffusion_gym.embedded import EMBEDDED_DIR

    tokenizer = CLIPTokenizer.from_pretrained(EMBEDDED_DIR / "tokenizer")  # the generator's own
    tokenizer.model_max_length = 10**6  # counting only: longer candidates are drawn again, not warned about

    def token_count(prompt: str) -> int:
        return len(tokenizer.tokenize(prompt)) + 2  # with <|startoftext|> and <|endoftext|>

    rng = np.random.default_rng(seed)
    train = generate(world.TRAIN, TRAIN_TEMPLATES[1:], TRAIN_SYNONYMS, (0, 1), rng, token_count)
    combinations = [world.ALL_COMBINATIONS[i] for i in rng.choice(len(world.ALL_COMBINATIONS), size=64, replace=False)]
    held_out = generate(combinations[:32], HELD_OUT_TEMPLATES, TRAIN_SYNONYMS, (0, 1), rng, token_count)
    held_out += generate(combinations[32:], TRAIN_TEMPLATES[1:], HELD_OUT_SYNONYMS, (1,), rng, token_count)
    return train, held_out


def main() -> None:
    """Write the prompt sets into the package's prompt data."""
    from importlib import resources

    folder = resources.files("diffusion_gym.prompts").joinpath("data")
    train, held_out = build_prompt_sets()
    header = "# written by `python -m diffusion_gym.embedded.paraphrase` (diffusion_gym/embedded/paraphrase.py)\n"
    for name, prompts in ((TRAIN_FILE, train), (HELD_OUT_FILE, held_out)):
        Path(str(folder.joinpath(name))).write_text(header + "\n".join(prompts) + "\n", encoding="utf-8")
        print(f"{len(prompts)} prompts -> {folder.joinpath(name)}")


if __name__ == "__main__":
    main()
