"""Prompt alignment, as in the paper: a VLM describes the image, and the reward is the BERTScore
recall of its description against the prompt (how much of the prompt the description covers).

- `prompt_alignment`: LLaVA-1.5 through transformers (or BLIP, or a VLM served over HTTP) and
  BERTScore with roberta-large, as the paper; `DiffusionPromptAlignment-v0` uses it.
- `embedded_alignment`: the same reward on the embedded model's toy world, fully offline: the
  toy-world captioner plays the VLM, and the embedded model's own text encoder gives the token
  embeddings for BERTScore. With `model="embedded"`, `DiffusionPromptAlignment-v0` uses it.

Models load lazily, on the first call, once per process.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from diffusion_gym.rewards.base import RewardFn, check_images
from diffusion_gym.models.hub import check_available, how_to_download
from diffusion_gym.rewards.bertscore import BERTSCORE_LAYER, BERTSCORE_MODEL, BERTScorer, load_bertscorer
from diffusion_gym.rewards.vlm import LLAVA_MODEL, VLM, HTTPVLM, TransformersVLM

QUESTION = "what is happening in this image?"


def alignment_reward(vlm: VLM, scorer: Callable[[], BERTScorer], question: str = QUESTION) -> RewardFn:
    """Reward = BERTScore recall of `vlm`'s answer to `question` against the prompt.

    Args:
        vlm: answers `question` about each image: `vlm(images, question) -> list[str]`.
        scorer: returns the `BERTScorer` (called on the first reward, so loading is lazy).
        question: what the VLM is asked.
    """

    def reward(images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict]:
        check_images(images)
        answers = vlm(images, question)
        recall = scorer().recall(answers, list(prompts)).double().numpy()
        return recall, {"answers": answers, "bertscore_recall": recall}

    return reward


def prompt_alignment(
    vlm: str = LLAVA_MODEL,
    vlm_kind: Literal["llava", "blip", "http"] = "llava",
    question: str = QUESTION,
    bertscore_model: str = BERTSCORE_MODEL,
    bertscore_layer: int = BERTSCORE_LAYER,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
) -> RewardFn:
    """The paper's prompt-alignment reward.

    Args:
        vlm: hub id or local folder of the VLM, or its URL when `vlm_kind="http"`.
        vlm_kind: "llava" (answers the question), "blip" (captions), or "http" (served elsewhere).
        question: what the VLM is asked about each image.
        bertscore_model, bertscore_layer: the BERTScore text model and layer (the package's English default).
        device: where the local models run.
        batch_size: images per VLM call.
    """
    if vlm_kind == "http":
        answerer: VLM = HTTPVLM(vlm)
    else:
        dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
        answerer = TransformersVLM(vlm, vlm_kind, device, dtype, batch_size=batch_size)
    check_available(bertscore_model, how_to_download(bertscore_model, "bertscore_model"))
    return alignment_reward(answerer, lambda: load_bertscorer(bertscore_model, bertscore_layer, str(device)), question)


@functools.lru_cache(maxsize=None)
def _embedded_parts(device: str) -> tuple:
    """(toy-world captioner, BERTScorer on the embedded text encoder), once per process."""
    from diffusion_gym.embedded.captioner import load_captioner
    from diffusion_gym.models.loading import load_model

    model = load_model("embedded", device=device)
    layers = model.text_encoder.config.num_hidden_layers
    return load_captioner().to(device), BERTScorer(model.text_encoder, model.tokenizer, layer=layers, device=device)


def embedded_alignment(question: str = QUESTION, device: str | torch.device = "cpu") -> RewardFn:
    """Prompt alignment on the toy world, offline: the captioner's caption scored by BERTScore
    recall against the prompt, with the embedded model's text encoder as the BERTScore model."""

    def captioner_vlm(images: np.ndarray, question: str) -> list[str]:
        return _embedded_parts(str(device))[0].caption(images)  # a captioner: the question goes unread

    return alignment_reward(captioner_vlm, lambda: _embedded_parts(str(device))[1], question)
