"""The toy world's aesthetic predictor: a small head on a frozen image embedding, learned from
ratings, as LAION's predictor is an MLP on CLIP's image embedding learned from people's ratings.

- the embedding is the toy-world captioner's (`embed`): its trunk's 256 features and, per
  convolution block, each channel's mean and maximum over the image (480 in all). The captioner
  was trained to read attributes, not to rate images, as CLIP was not trained to rate either;
- the ratings are noisy 1-10 scores of the hidden taste (`diffusion_gym.embedded.taste`) over
  ground-truth renders and the starting model's samples;
- the head (`AestheticHead`) is trained on them by `python -m embedded_tools.train_aesthetic`
  and shipped in `weights/aesthetic/`.

    predictor = load_predictor()
    scores = predictor(images)          # (N, 32, 32, 3) uint8 -> (N,) predicted ratings, ~1-10
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffusion_gym.embedded.captioner import Captioner, load_captioner, read_module, save_module


@torch.no_grad()
def embed(captioner: Captioner, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """The captioner's image embedding, (N, 256 + 2 · 7 · width) float32: its trunk's features,
    then each convolution block's per-channel mean and maximum."""
    captioner.eval()
    device = next(captioner.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        hidden = Captioner.to_input(images[start : start + batch_size]).to(device)
        pooled = []
        for block in captioner.features[:-1]:  # the conv blocks; the last module flattens
            hidden = block(hidden)
            pooled += [hidden.mean(dim=(2, 3)), hidden.amax(dim=(2, 3))]
        trunk = captioner.trunk(captioner.features[-1](hidden))
        out.append(torch.cat([trunk, *pooled], dim=1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, embedding_dim(captioner))


def embedding_dim(captioner: Captioner) -> int:
    return captioner.trunk[0].out_features + 2 * 7 * captioner.width


class AestheticHead(nn.Module):
    """Standardised embedding -> 128 -> 32 -> 1, ReLU and dropout between (the rating, ~1-10).

    The embedding's per-feature mean and std are buffers set from the training ratings' images."""

    def __init__(self, embedding_dim: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.embedding_dim, self.hidden, self.dropout = embedding_dim, hidden, dropout
        self.register_buffer("mean", torch.zeros(embedding_dim))
        self.register_buffer("std", torch.ones(embedding_dim))
        self.layers = nn.Sequential(
            nn.Linear(embedding_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, 32), nn.ReLU(),
            nn.Linear(32, 1),
        )  # fmt: skip

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, embedding_dim) -> (N,) ratings."""
        return self.layers((embeddings - self.mean) / self.std).squeeze(-1)

    def save(self, folder: str | Path, extra: dict | None = None) -> None:
        save_module(self, folder, {"embedding_dim": self.embedding_dim, "hidden": self.hidden, "dropout": self.dropout, **(extra or {})})


class AestheticPredictor:
    """Captioner embedding -> head: the predicted rating of each image.

    Args:
        head: the trained head.
        captioner: the captioner whose embedding the head was trained on.
    """

    def __init__(self, head: AestheticHead, captioner: Captioner):
        if head.embedding_dim != embedding_dim(captioner):
            raise ValueError(f"The head takes {head.embedding_dim}-d embeddings, the captioner gives {embedding_dim(captioner)}; retrain the head on this captioner.")
        self.head, self.captioner = head.eval(), captioner.eval()

    def to(self, device: str | torch.device) -> "AestheticPredictor":
        self.head.to(device)
        self.captioner.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Predicted ratings, (N,) float64, of (N, 32, 32, 3) uint8 images."""
        device = self.head.mean.device
        return self.head(embed(self.captioner, images).to(device)).double().cpu().numpy()


def load_predictor(folder: str | Path | None = None, captioner: str | Path | None = None) -> AestheticPredictor:
    """The predictor shipped with the embedded model (or the head in `folder`, on the captioner in `captioner`)."""
    from diffusion_gym.embedded import EMBEDDED_DIR

    folder = Path(folder) if folder is not None else EMBEDDED_DIR / "aesthetic"
    config, weights = read_module(folder, "aesthetic predictor", "train it with `python -m embedded_tools.train_aesthetic`")
    head = AestheticHead(config["embedding_dim"], config["hidden"], config["dropout"])
    head.load_state_dict(weights)
    return AestheticPredictor(head, load_captioner(captioner))
