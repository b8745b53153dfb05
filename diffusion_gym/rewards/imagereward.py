"""ImageReward (Xu et al. 2023): BLIP fine-tuned on 137k expert comparisons of generated images.

score = (MLP(h_CLS) − 0.16717) / 1.03334, where h_CLS is the first output of BLIP's text
encoder (BERT-base with cross-attention to the image) reading the prompt while attending to the
image embedding of a ViT-L/16; the constants standardise the scores of the authors' training
set, so about −2 to 2, higher is preferred.

The authors' package (`image-reward`) does not import beside current transformers, so the
published checkpoint (`ImageReward.pt` of THUDM/ImageReward, in the package's layout) is loaded
into transformers' `BlipVisionModel` and `BlipTextModel` (the same layers: BLIP's own code
became those classes), sized from the checkpoint's tensors. The preprocessing is the authors':
resize the short side to 224 (bicubic), centre crop (torchvision's rounding), OpenAI CLIP mean
and std; the prompt through BERT's uncased tokenizer, padded to 35 tokens.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from diffusion_gym.models.hub import check_available, how_to_download, hub_file, load_offline_first
from diffusion_gym.rewards.aesthetic import AestheticMLP
from diffusion_gym.rewards.base import check_image_list

IMAGEREWARD_REPO, IMAGEREWARD_FILE = "THUDM/ImageReward", "ImageReward.pt"
TOKENIZER = "google-bert/bert-base-uncased"
MEAN, STD = 0.16717362830052426, 1.0333394966054072
CLIP_MEAN, CLIP_STD = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
MAX_TOKENS = 35


def split_checkpoint(state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """ImageReward.pt's tensors as (BlipVisionModel, BlipTextModel, MLP) state dicts."""
    vision, text, mlp = {}, {}, {}
    renames = [
        (r"^blip\.visual_encoder\.cls_token$", "embeddings.class_embedding"),
        (r"^blip\.visual_encoder\.pos_embed$", "embeddings.position_embedding"),
        (r"^blip\.visual_encoder\.patch_embed\.proj\.", "embeddings.patch_embedding."),
        (r"^blip\.visual_encoder\.blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
        (r"^blip\.visual_encoder\.blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
        (r"^blip\.visual_encoder\.blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
        (r"^blip\.visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
        (r"^blip\.visual_encoder\.blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
        (r"^blip\.visual_encoder\.norm\.", "post_layernorm."),
    ]
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            for pattern, target in renames:
                if re.match(pattern, key):
                    vision[re.sub(pattern, target, key)] = value
                    break
            else:
                raise ValueError(f"Unexpected ImageReward key {key!r}: not a BLIP ViT layer.")
        elif key.startswith("blip.text_encoder.") and not key.endswith("position_ids"):
            text[key.removeprefix("blip.text_encoder.")] = value
        elif key.startswith("mlp."):
            mlp[key.removeprefix("mlp.")] = value
    return vision, text, mlp


def _configs(vision: dict, text: dict, vision_heads: int, text_heads: int):
    """BLIP configs sized from the checkpoint's tensors (the head counts are not in the shapes)."""
    from transformers import BlipTextConfig, BlipVisionConfig

    width = vision["embeddings.class_embedding"].shape[-1]
    patch = vision["embeddings.patch_embedding.weight"].shape[-1]
    grid = int(round((vision["embeddings.position_embedding"].shape[1] - 1) ** 0.5))
    vision_config = BlipVisionConfig(
        hidden_size=width, intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0], patch_size=patch, image_size=grid * patch,
        num_hidden_layers=len({k.split(".")[2] for k in vision if k.startswith("encoder.layers.")}), num_attention_heads=vision_heads,
        layer_norm_eps=1e-6, hidden_act="gelu",
    )  # fmt: skip
    vocab, hidden = text["embeddings.word_embeddings.weight"].shape
    text_config = BlipTextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=text["encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_hidden_layers=len({k.split(".")[2] for k in text if k.startswith("encoder.layer.")}), num_attention_heads=text_heads,
        encoder_hidden_size=text["encoder.layer.0.crossattention.self.key.weight"].shape[1],
        max_position_embeddings=text["embeddings.position_embeddings.weight"].shape[0], layer_norm_eps=1e-12, hidden_act="gelu",
        is_decoder=True,  # makes the cross-attention layers; the forward pass reads the prompt bidirectionally
        bos_token_id=None, sep_token_id=None, pad_token_id=0,
    )  # fmt: skip
    return vision_config, text_config


class ImageRewardScorer:
    """ImageReward from its published checkpoint. Loads on the first call.

    Args:
        checkpoint: local path of ImageReward.pt; None: from the hub (THUDM/ImageReward).
        tokenizer: hub id or folder of BERT's uncased tokenizer.
        vision_heads, text_heads: attention heads of the ViT-L and BERT-base (16, 12).
        device: where the model runs.
        batch_size: images per forward pass.
    """

    def __init__(self, checkpoint: str | None = None, tokenizer: str = TOKENIZER, vision_heads: int = 16, text_heads: int = 12, device: str | torch.device = "cpu", batch_size: int = 16):
        if checkpoint is None:
            check_available(IMAGEREWARD_REPO, how_to_download(IMAGEREWARD_REPO, "checkpoint", IMAGEREWARD_FILE), IMAGEREWARD_FILE)
        elif not Path(checkpoint).is_file():
            raise ValueError(f"The ImageReward checkpoint {str(checkpoint)!r} does not exist; pass checkpoint='PATH' of {IMAGEREWARD_FILE}.")
        check_available(tokenizer, how_to_download(tokenizer, "tokenizer"))
        self.checkpoint, self.tokenizer_name = checkpoint, str(tokenizer)
        self.vision_heads, self.text_heads = vision_heads, text_heads
        self.device, self.batch_size = torch.device(device), batch_size

    @functools.cached_property
    def parts(self) -> tuple:
        """(tokenizer, vision model, text model, MLP), loaded once."""
        return _load(str(self.checkpoint or hub_file(IMAGEREWARD_REPO, IMAGEREWARD_FILE)), self.tokenizer_name, self.vision_heads, self.text_heads, str(self.device))

    def inputs(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """What the model receives: pixel values, token ids, attention mask."""
        tokenizer, vision, _, _ = self.parts
        size = vision.config.image_size
        pixels = torch.tensor(np.stack([_preprocess(image, size) for image in images]), dtype=torch.float32)
        tokens = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        return {"pixel_values": pixels, "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    @torch.no_grad()
    def __call__(self, images: np.ndarray | Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        """ImageReward scores, (N,) float64, of uint8 (H, W, 3) images of any sizes with their prompts."""
        check_image_list(images, prompts)
        _, vision, text, mlp = self.parts
        scores = []
        for start in range(0, len(images), self.batch_size):
            batch = {k: v.to(self.device) for k, v in self.inputs(images[start : start + self.batch_size], prompts[start : start + self.batch_size]).items()}
            image_embeds = vision(pixel_values=batch["pixel_values"]).last_hidden_state
            image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=self.device)
            hidden = text(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask).last_hidden_state
            scores.append((mlp(hidden[:, 0]).squeeze(-1).double() - MEAN) / STD)
        return torch.cat(scores).cpu().numpy()


def _preprocess(image: np.ndarray, size: int) -> np.ndarray:
    """The authors' transform: Resize(size, bicubic) of the short side, CenterCrop(size) with
    torchvision's rounding, to [0, 1], CLIP mean and std; (3, size, size)."""
    h, w = image.shape[:2]
    short, long = min(h, w), max(h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC), dtype=np.float64)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    crop = resized[top : top + size, left : left + size] / 255.0
    return ((crop - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


@functools.lru_cache(maxsize=None)
def _load(checkpoint: str, tokenizer_name: str, vision_heads: int, text_heads: int, device: str):
    from transformers import AutoTokenizer, BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    tokenizer = load_offline_first(
        tokenizer_name, lambda local: AutoTokenizer.from_pretrained(tokenizer_name, local_files_only=local), how_to_download(tokenizer_name, "tokenizer")
    )
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    vision_state, text_state, mlp_state = split_checkpoint(state.get("state_dict", state))
    if not vision_state or not text_state or not mlp_state:
        raise ValueError(f"{checkpoint!r} is not an ImageReward checkpoint (it lacks blip.visual_encoder, blip.text_encoder or mlp weights).")
    vision_config, text_config = _configs(vision_state, text_state, vision_heads, text_heads)
    vision, text, mlp = BlipVisionModel(vision_config), BlipTextModel(text_config, add_pooling_layer=False), AestheticMLP(text_config.hidden_size)
    for module, part, name in ((vision, vision_state, "vision"), (text, text_state, "text"), (mlp, mlp_state, "mlp")):
        missing, unexpected = module.load_state_dict(part, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"{checkpoint!r}: its {name} weights do not fit (missing {missing[:4]}, unexpected {unexpected[:4]}); is it ImageReward.pt?")
    return tokenizer, *(m.to(device).eval().requires_grad_(False) for m in (vision, text, mlp))


def imagereward(checkpoint: str | None = None, tokenizer: str = TOKENIZER, vision_heads: int = 16, text_heads: int = 12, device: str | torch.device = "cpu", batch_size: int = 16):
    """Reward = ImageReward (see the module docstring)."""
    scorer = ImageRewardScorer(checkpoint, tokenizer, vision_heads, text_heads, device, batch_size)

    def reward(images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict]:
        scores = scorer(images, prompts)
        return scores, {"imagereward": scores}

    reward.scorer = scorer
    return reward
