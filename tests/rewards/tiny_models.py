"""Tiny randomly initialised models of the classes the real rewards load, saved as folders.

Each builder writes `from_pretrained`-loadable weights and processors into a folder, so the
rewards' real loading code runs on them. Built in code, in seconds, with no downloads.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "a an the of on in is it this image picture shows photo what happening user assistant "
    "cat dog horse bird monkey riding bike playing chess washing dishes red green blue small large circle square "
    "triangle cross background flat striped noisy there with and"
).split()


def tiny_bert_tokenizer():
    """A BERT word-piece tokenizer over `WORDS` (unknown words become [UNK])."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "?", ".", ",", ":"]
    return BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, model_max_length=64)


def tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer BERT and its tokenizer: the BERTScore text model."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = tiny_bert_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_clip(folder: Path, seed: int = 0, projection_dim: int = 12) -> Path:
    """A CLIPModel (ViT on 32×32, patches of 8) with its image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=projection_dim,
    )
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def tiny_llava(folder: Path, seed: int = 0) -> Path:
    """A LLaVA (CLIP vision tower + Llama) with its processor and a word-level tokenizer."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    torch.manual_seed(seed)
    tokenizer = tiny_bert_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the vision tower's CLS token, dropped by the "default" strategy
        image_token="<image>",
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id),
        image_token_index=image_token,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_blip(folder: Path, seed: int = 0) -> Path:
    """A BLIP captioner (ViT on 16×16 + BERT-style decoder) with its processor."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    torch.manual_seed(seed)
    tokenizer = tiny_bert_tokenizer()
    config = BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=64, bos_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 16, "width": 16}), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def tiny_clip_pair(folder: Path, seed: int = 0, projection_dim: int = 12, logit_scale: float = 4.6052, hidden_act: str = "quick_gelu") -> Path:
    """A CLIPModel with both towers and its CLIPProcessor (32×32 images, a byte-level CLIP
    tokenizer of 77 tokens): what PickScore and CLIPScore load."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from diffusion_gym.models.tiny import tiny_clip_tokenizer

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer(model_max_length=77)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, hidden_act=hidden_act),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8, hidden_act=hidden_act),
        projection_dim=projection_dim,
        logit_scale_init_value=logit_scale,
    )  # fmt: skip
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=tokenizer).save_pretrained(folder)
    return folder
