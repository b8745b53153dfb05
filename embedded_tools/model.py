"""The embedded default's architecture: a small pixel-space text-to-image diffusion model.

The same classes as Stable Diffusion, smaller and without a VAE:
- tokenizer: a real `CLIPTokenizer` whose vocabulary is the 256 bytes plus one token per word of
  the toy world; any other word falls back to its bytes, so no prompt fails to tokenize;
- text encoder: a 2-layer `CLIPTextModel` (width 64), trained with the UNet;
- UNet: `UNet2DConditionModel` on 3×32×32 pixels; cross-attention at 8×8 and the pooled text
  embedding added to the timestep embedding (`addition_embed_type="text"`), so every resolution
  is conditioned at little cost;
- scheduler: `DDIMScheduler` config with the cosine schedule, v-prediction, x_0 clipped to
  [-1, 1], trailing timesteps (the first step starts from pure noise); the embedded flow model
  (same networks, trained as a flow) has a `FlowMatchEulerDiscreteScheduler` instead.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTokenizer

from diffusion_gym.embedded.world import ATTRIBUTES, IMAGE_SIZE
from diffusion_gym.models.pipeline import DiffusionModel
from diffusion_gym.models.tiny import byte_alphabet, clip_text_encoder

TEXT_WIDTH = 64
MAX_TOKENS = 16  # "a large red triangle on a striped background" is 10 tokens with <bos>/<eos>
WORLD_WORDS = ("a", "on", "background", *(value for values in ATTRIBUTES.values() for value in values))


def bpe_merges(words: tuple[str, ...]) -> list[str]:
    """BPE merges learned as BPE training learns them (the most frequent adjacent pair over all
    words first, ties broken alphabetically, merged everywhere) until every word is one symbol.
    Encoding replays merges in this order, so each of these words encodes to a single token."""
    segments = {word: list(word[:-1]) + [word[-1] + "</w>"] for word in sorted(set(words))}
    merges = []
    while True:
        counts = Counter(pair for symbols in segments.values() for pair in zip(symbols, symbols[1:]))
        if not counts:
            return merges
        (left, right), _ = min(counts.items(), key=lambda item: (-item[1], item[0]))
        merges.append(f"{left} {right}")
        for word, symbols in segments.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == (left, right):
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            segments[word] = merged


def build_tokenizer() -> CLIPTokenizer:
    """A byte-level `CLIPTokenizer` with one token per word of the world."""
    alphabet = byte_alphabet()
    vocab = {token: i for i, token in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    merges = bpe_merges(WORLD_WORDS)
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_TOKENS)


def build_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=True,
        clip_sample_range=1.0,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
        steps_offset=0,
    )


def build_flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The embedded flow model's schedule: σ = t / 1000, no shift (a 32×32 image needs none)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def build_untrained(seed: int = 0) -> DiffusionModel:
    """The embedded model's architecture with fresh random weights (the training script's start)."""
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = clip_text_encoder(tokenizer, width=TEXT_WIDTH, intermediate=4 * TEXT_WIDTH, heads=4, layers=2)
        unet = UNet2DConditionModel(
            sample_size=IMAGE_SIZE,
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            cross_attention_dim=TEXT_WIDTH,
            attention_head_dim=16,
            norm_num_groups=16,
            addition_embed_type="text",
            addition_embed_type_num_heads=4,
        )
    return DiffusionModel(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=build_scheduler(), vae=None, name="embedded")
