"""Text-image rewards of the papers that followed DDPO: learned human preference and CLIP agreement.

- `pickscore` (Kirstain et al. 2023, "Pick-a-Pic"): a CLIP ViT-H/14 fine-tuned on human picks
  between two images for one prompt. score = exp(logit_scale) · cos(image, prompt), the logit
  the authors' softmax over candidate images takes; about 15–25 for ordinary images (the
  learned scale is ≈ 100, cosines ≈ 0.15–0.25).
- `clipscore` (Hessel et al. 2021): w · max(cos(image, "A photo depicts " + prompt), 0) with
  w = 2.5 and CLIP ViT-B/32, as the paper defines it; in [0, 2.5]. (torchmetrics' variant:
  `weight=100, template="{}"`, model openai/clip-vit-large-patch14.)

Both run the published weights through transformers' `CLIPModel`, with the preprocessing the
authors use: the CLIP processor of the model's folder (resize the short side to 224 bicubic,
centre crop, OpenAI mean and std) and its tokenizer (77 tokens, truncated). The models load on
the first call, once per process; where they come from is checked when the reward is made.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffusion_gym.models.hub import check_available, how_to_download, load_offline_first
from diffusion_gym.rewards.base import check_image_list

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIPSCORE_MODEL = "openai/clip-vit-base-patch32"


class CLIPTextImageScorer:
    """Cosine similarities of CLIP image and text embeddings, in batches. Loads on the first call.

    Args:
        model: hub id or local folder of a transformers `CLIPModel`.
        processor: hub id or folder of its `CLIPProcessor` (image processor and tokenizer); None: `model`'s.
        template: how a prompt is worded for the text tower ("{}": as it is).
        device: where the model runs.
        batch_size: pairs per forward pass.
    """

    def __init__(
        self, model: str, processor: str | None = None, template: str = "{}", device: str | torch.device = "cpu", batch_size: int = 32,
        options: tuple[str, str] = ("model", "processor"),
    ):  # fmt: skip
        self.model_name, self.processor_name = str(model), str(processor or model)
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}' where the prompt goes, got {template!r}.")
        self.template, self.device, self.batch_size = template, torch.device(device), batch_size
        # where each comes from is checked now (once if both are one folder), named by the reward's option for it
        check_available(self.model_name, how_to_download(self.model_name, options[0]))
        if self.processor_name != self.model_name:
            check_available(self.processor_name, how_to_download(self.processor_name, options[1]))

    @functools.cached_property
    def parts(self) -> tuple:
        """(processor, model), loaded once."""
        processor, model = _load_clip_pair(self.model_name, self.processor_name)
        return processor, model.to(self.device).eval().requires_grad_(False)

    def inputs(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """What the model receives for these images and prompts: pixel values, token ids, mask."""
        processor, _ = self.parts
        texts = [self.template.format(prompt) for prompt in prompts]
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        tokens = processor.tokenizer(texts, padding="max_length", truncation=True, max_length=processor.tokenizer.model_max_length, return_tensors="pt")
        return {"pixel_values": pixels, "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    @torch.no_grad()
    def cosine(self, images: np.ndarray | Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        """cos(image_i, prompt_i), (N,) float64, for uint8 (H, W, 3) images of any sizes."""
        check_image_list(images, prompts)
        _, model = self.parts
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = {k: v.to(self.device) for k, v in self.inputs(images[start : start + self.batch_size], prompts[start : start + self.batch_size]).items()}
            image = _features(model.get_image_features(pixel_values=batch["pixel_values"].to(model.dtype)))
            text = _features(model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
            image, text = image.double(), text.double()
            out.append(((image / image.norm(dim=-1, keepdim=True)) * (text / text.norm(dim=-1, keepdim=True))).sum(-1))
        return torch.cat(out).cpu().numpy()

    @property
    def logit_scale(self) -> float:
        return float(self.parts[1].logit_scale.detach().exp())


def _features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # transformers >= 5 returns an output object


def _load_clip_pair(model_name: str, processor_name: str):
    return _load_pretrained("CLIPProcessor", processor_name, "processor"), _load_pretrained("CLIPModel", model_name, "model")


@functools.lru_cache(maxsize=None)
def _load_pretrained(class_name: str, name: str, option: str):
    """transformers' `class_name` from a folder or the hub, once per process."""
    import transformers

    cls = getattr(transformers, class_name)
    return load_offline_first(name, lambda local_files_only: cls.from_pretrained(name, local_files_only=local_files_only), how_to_download(name, option))


def pickscore(model: str = PICKSCORE_MODEL, processor: str = PICKSCORE_PROCESSOR, device: str | torch.device = "cpu", batch_size: int = 32):
    """Reward = PickScore, exp(logit_scale) · cos(image, prompt) (see the module docstring)."""
    scorer = CLIPTextImageScorer(model, processor, "{}", device, batch_size)

    def reward(images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict]:
        scores = scorer.logit_scale * scorer.cosine(images, prompts)
        return scores, {"pickscore": scores}

    reward.scorer = scorer
    return reward


def clipscore(
    model: str = CLIPSCORE_MODEL, template: str = "A photo depicts {}", weight: float = 2.5, device: str | torch.device = "cpu", batch_size: int = 32
):
    """Reward = CLIPScore, weight · max(cos(image, template(prompt)), 0) (see the module docstring)."""
    scorer = CLIPTextImageScorer(model, None, template, device, batch_size)

    def reward(images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict]:
        cosine = scorer.cosine(images, prompts)
        scores = weight * np.maximum(cosine, 0.0)
        return scores, {"clipscore": scores, "cosine": cosine}

    reward.scorer = scorer
    return reward


# ---------------------------------------------------------------- HPSv2
HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_CLIP = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # the architecture and tokenizer HPS fine-tuned


def open_clip_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip CLIP state dict (as HPSv2's checkpoints hold it) in transformers' CLIPModel
    names: fused attention projections split into q, k, v; projections transposed."""
    out = {}
    towers = (("visual.transformer.resblocks.", "vision_model.encoder.layers."), ("transformer.resblocks.", "text_model.encoder.layers."))
    block = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj"}
    fixed = {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight", "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight", "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }  # fmt: skip
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.T.contiguous()
        elif key == "text_projection":
            out["text_projection.weight"] = value.T.contiguous()
        elif key.startswith(tuple(prefix for prefix, _ in towers)):
            prefix, target = next((p, t) for p, t in towers if key.startswith(p))
            index, _, rest = key[len(prefix) :].partition(".")
            name = f"{target}{index}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[-1]  # weight or bias
                for projection, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{name}self_attn.{projection}.{kind}"] = part.contiguous()
            else:
                module, _, kind = rest.rpartition(".")
                if module not in block:
                    raise ValueError(f"Unexpected open_clip key {key!r}: not a CLIP ViT layer this converter knows.")
                out[f"{name}{block[module]}.{kind}"] = value
        elif key != "attn_mask":
            raise ValueError(f"Unexpected open_clip key {key!r}: is this an open_clip CLIP (ViT) checkpoint?")
    return out


class HPSScorer(CLIPTextImageScorer):
    """HPSv2: an open_clip ViT-H/14 checkpoint, run as a transformers CLIPModel built from
    `clip`'s config, with `clip`'s tokenizer and HPS's own image preprocessing: resize the long
    side to the model's size (bicubic), pad to a square with black, OpenAI mean and std."""

    def __init__(self, checkpoint: str, clip: str = HPS_CLIP, device: str | torch.device = "cpu", batch_size: int = 32):
        super().__init__(clip, clip, "{}", device, batch_size, options=("clip", "clip"))
        self.checkpoint = str(checkpoint)

    @functools.cached_property
    def parts(self) -> tuple:
        processor, model = _load_pretrained("CLIPProcessor", self.processor_name, "clip"), _load_hps(self.checkpoint, self.model_name)
        return processor, model.to(self.device).eval().requires_grad_(False)

    def inputs(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        processor, _ = self.parts
        size = processor.image_processor.crop_size["height"]
        mean, std = np.asarray(processor.image_processor.image_mean), np.asarray(processor.image_processor.image_std)
        pixels = torch.tensor(np.stack([(_pad_to_square(image, size) / 255.0 - mean) / std for image in images]).transpose(0, 3, 1, 2), dtype=torch.float32)
        tokens = processor.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=processor.tokenizer.model_max_length, return_tensors="pt")
        return {"pixel_values": pixels, "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


@functools.lru_cache(maxsize=None)
def _load_hps(checkpoint: str, clip: str):
    """The HPS checkpoint in a CLIPModel of `clip`'s config, once per process."""
    from transformers import CLIPModel

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    model = CLIPModel(_load_pretrained("CLIPConfig", clip, "clip"))
    missing, unexpected = model.load_state_dict(open_clip_to_transformers(state), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{checkpoint!r} does not fit the CLIP of {clip!r}: missing {missing[:5]}, unexpected {unexpected[:5]}; pass the matching clip='DIR'.")
    return model


def _pad_to_square(image: np.ndarray, size: int) -> np.ndarray:
    """open_clip's ResizeMaxSize: the long side resized to `size` (bicubic), centred on black."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = round(h * scale), round(w * scale)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC), ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas, dtype=np.float64)


def hpsv2(checkpoint: str | None = None, version: str = "v2.1", clip: str = HPS_CLIP, device: str | torch.device = "cpu", batch_size: int = 32):
    """Reward = HPSv2 (Wu et al. 2023), cos(image, prompt) of the HPS-tuned CLIP ViT-H/14, about 0.2–0.35.

    Args:
        checkpoint: local path of HPS_v2(.1)_compressed.pt; None: `version`'s file from the hub (xswu/HPSv2).
        version: "v2.0" or "v2.1", when `checkpoint` is None.
        clip: folder or hub id of the CLIP whose config and tokenizer HPS uses (laion ViT-H/14).
    """
    if version not in HPS_FILES:
        raise ValueError(f"version must be one of {sorted(HPS_FILES)}, got {version!r}.")
    if checkpoint is None:
        from diffusion_gym.models.hub import hub_file

        check_available(HPS_REPO, how_to_download(HPS_REPO, "checkpoint", HPS_FILES[version]), HPS_FILES[version])
        checkpoint = hub_file(HPS_REPO, HPS_FILES[version])
    elif not Path(checkpoint).is_file():
        raise ValueError(f"The HPSv2 checkpoint {str(checkpoint)!r} does not exist; pass checkpoint='PATH' of {HPS_FILES[version]}.")
    scorer = HPSScorer(checkpoint, clip, device, batch_size)

    def reward(images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict]:
        scores = scorer.cosine(images, prompts)
        return scores, {"hpsv2": scores}

    reward.scorer = scorer
    return reward
