"""BERTScore (Zhang et al. 2020), written with transformers to match the `bert-score` package.

Each text is embedded token by token (the hidden states after `layer` layers of a text model),
every token vector is L2-normalised, and each reference token is matched to its most similar
candidate token:

    recall(candidate, reference) = Σ_i w_i · max_j cos(r_i, c_j) / Σ_i w_i

with w_i = 0 for the reference's special tokens ([CLS], [SEP], BOS, EOS) and 1 otherwise (the
package without idf weighting or baseline rescaling). The max runs over all the candidate's
tokens, special ones included, as in the package. Precision swaps the roles.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

from diffusion_gym.models.hub import how_to_download, load_offline_first

# The package's default for English: roberta-large, the hidden states after 17 layers.
BERTSCORE_MODEL, BERTSCORE_LAYER = "roberta-large", 17


def greedy_match(
    candidate: torch.Tensor, candidate_mask: torch.Tensor, reference: torch.Tensor, reference_weights: torch.Tensor
) -> torch.Tensor:
    """BERTScore recall from token embeddings.

    Args:
        candidate: (B, Lc, D) candidate token embeddings (normalised here).
        candidate_mask: (B, Lc) bool, True for real tokens (False for padding).
        reference: (B, Lr, D) reference token embeddings.
        reference_weights: (B, Lr) float weights, 0 for padding and special tokens.

    Returns:
        (B,) recall in [-1, 1].
    """
    candidate = candidate / candidate.norm(dim=-1, keepdim=True)
    reference = reference / reference.norm(dim=-1, keepdim=True)
    similarity = reference @ candidate.transpose(1, 2)  # (B, Lr, Lc)
    similarity = similarity.masked_fill(~candidate_mask[:, None, :], float("-inf"))
    best = similarity.max(dim=2).values.nan_to_num(0.0, neginf=0.0)  # a reference token's best match
    return (best * reference_weights).sum(dim=1) / reference_weights.sum(dim=1).clamp_min(1e-12)


class BERTScorer:
    """BERTScore recall with any transformers text model and its tokenizer.

    Args:
        model: a transformers text model (an encoder such as BERT or RoBERTa, or a CLIP text model).
        tokenizer: its tokenizer.
        layer: use the hidden states after this many layers (0: the token embeddings).
        device: where the model runs.
    """

    def __init__(self, model, tokenizer, layer: int, device: str | torch.device = "cpu"):
        num_layers = model.config.num_hidden_layers
        if not 0 <= layer <= num_layers:
            raise ValueError(f"layer must be in [0, {num_layers}] for this model, got {layer}.")
        self.model, self.tokenizer, self.layer = model.to(device).eval(), tokenizer, layer
        self.device = torch.device(device)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeddings (B, L, D), real-token mask (B, L) bool, special-token mask (B, L) bool)."""
        max_length = min(self.tokenizer.model_max_length, 512)
        encoded = self.tokenizer(
            [t.strip() for t in texts], padding=True, truncation=True, max_length=max_length,
            return_special_tokens_mask=True, return_tensors="pt",
        )  # fmt: skip
        input_ids = encoded["input_ids"].to(self.device)
        attention_mask = encoded["attention_mask"].to(self.device)
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        real = attention_mask.bool()
        return outputs.hidden_states[self.layer].float(), real, encoded["special_tokens_mask"].to(self.device).bool() & real

    def recall(self, candidates: Sequence[str], references: Sequence[str]) -> torch.Tensor:
        """(B,) BERTScore recall of each candidate against its reference."""
        if len(candidates) != len(references):
            raise ValueError(f"Got {len(candidates)} candidates for {len(references)} references.")
        candidate, candidate_mask, _ = self.embed(candidates)
        reference, reference_mask, reference_special = self.embed(references)
        weights = (reference_mask & ~reference_special).float()
        return greedy_match(candidate, candidate_mask, reference, weights).cpu()


@functools.lru_cache(maxsize=None)
def load_bertscorer(model: str = BERTSCORE_MODEL, layer: int = BERTSCORE_LAYER, device: str = "cpu") -> BERTScorer:
    """A `BERTScorer` from a hub id or local folder; loaded once per process."""
    from transformers import AutoModel, AutoTokenizer

    def load(local_files_only: bool) -> BERTScorer:
        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=local_files_only)
        return BERTScorer(AutoModel.from_pretrained(model, local_files_only=local_files_only), tokenizer, layer, device)

    return load_offline_first(
        model, load, how_to_download(model, "bertscore_model")
    )
