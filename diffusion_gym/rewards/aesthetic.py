"""The LAION aesthetic predictor, as the paper used it.

score = MLP(e / ‖e‖), e = CLIP ViT-L/14 image embedding of the image preprocessed exactly as the
CLIP processor defines it; the MLP (768 → 1024 → 128 → 64 → 16 → 1) carries the published weights
`sac+logos+ava1-l14-linearMSE.pth` (trained on SAC + LOGOS + AVA ratings, scores about 1–10).

Both parts load from the hub or from local paths, lazily on the first call, once per process:

    reward_fn = make_reward("aesthetic")                                         # the hub
    reward_fn = make_reward("aesthetic", clip_model="/models/clip-vit-large-patch14",
                            mlp_weights="/models/sac+logos+ava1-l14-linearMSE.pth")   # offline
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from diffusion_gym.models.hub import check_available, how_to_download, hub_file, load_offline_first
from diffusion_gym.rewards.base import check_image_list

CLIP_MODEL = "openai/clip-vit-large-patch14"
# The published MLP weights, as the hub carries them (the same state dict as the original file).
MLP_REPO, MLP_FILENAME = "trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth"


class AestheticMLP(nn.Module):
    """The predictor's head; its state-dict keys are those of the published file
    (`layers.0`, `layers.2`, `layers.4`, `layers.6`, `layers.7`; the gaps are dropouts)."""

    def __init__(self, embedding_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embedding_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


class AestheticScorer:
    """CLIP image embedding → L2 normalisation → MLP. Loads on the first call.

    Args:
        clip_model: hub id or local folder of a transformers `CLIPModel` with its image processor.
        mlp_weights: local path of the MLP state dict; None: the published file from the hub.
        device: where the models run ("cpu", "cuda", a torch.device).
        batch_size: images per forward pass.
    """

    def __init__(self, clip_model: str = CLIP_MODEL, mlp_weights: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 32):
        self.clip_model, self.mlp_weights = str(clip_model), mlp_weights
        self.device, self.batch_size = torch.device(device), batch_size
        # where the models come from is checked now; they load on the first call
        check_available(self.clip_model, how_to_download(self.clip_model, "clip_model"))
        if mlp_weights is None:
            check_available(MLP_REPO, how_to_download(MLP_REPO, "mlp_weights", MLP_FILENAME), MLP_FILENAME)
        elif not Path(mlp_weights).is_file():
            raise ValueError(f"The aesthetic MLP weights {str(mlp_weights)!r} do not exist; pass mlp_weights='PATH' of sac+logos+ava1-l14-linearMSE.pth.")

    @functools.cached_property
    def models(self) -> tuple:
        """(processor, CLIP model, MLP), loaded once."""
        processor, clip = _load_clip(self.clip_model)
        mlp = AestheticMLP(clip.config.projection_dim)
        path = self.mlp_weights if self.mlp_weights is not None else hub_file(MLP_REPO, MLP_FILENAME)
        if not Path(path).is_file():
            raise ValueError(f"The aesthetic MLP weights {str(path)!r} do not exist; pass the path of sac+logos+ava1-l14-linearMSE.pth.")
        mlp.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return processor, clip.to(self.device).eval(), mlp.to(self.device).eval()

    @torch.no_grad()
    def embed(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """L2-normalised CLIP image embeddings, (N, D) float32; images may differ in size."""
        processor, clip, _ = self.models
        embeddings = []
        for start in range(0, len(images), self.batch_size):
            pixels = processor(images=list(images[start : start + self.batch_size]), return_tensors="pt")["pixel_values"]
            features = clip.get_image_features(pixel_values=pixels.to(self.device, clip.dtype))
            if not isinstance(features, torch.Tensor):  # transformers >= 5 returns an output object
                features = features.pooler_output
            embeddings.append(features.float())
        embeddings = torch.cat(embeddings)
        return embeddings / embeddings.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def __call__(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Aesthetic scores, (N,) float64, of uint8 (H, W, 3) images of any sizes."""
        check_image_list(images)
        _, _, mlp = self.models
        return mlp(self.embed(images)).squeeze(-1).double().cpu().numpy()


@functools.lru_cache(maxsize=None)
def _load_clip(name: str):
    """A CLIP model and its image processor from a folder or the hub; once per process."""
    from transformers import AutoImageProcessor, CLIPModel

    def load(local_files_only: bool):
        processor = AutoImageProcessor.from_pretrained(name, local_files_only=local_files_only)
        return processor, CLIPModel.from_pretrained(name, local_files_only=local_files_only)

    return load_offline_first(
        name, load, how_to_download(name, "clip_model")
    )


def aesthetic(clip_model: str = CLIP_MODEL, mlp_weights: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 32):
    """Reward = the LAION aesthetic score of each image (the paper's aesthetic quality task)."""
    scorer = AestheticScorer(clip_model, mlp_weights, device, batch_size)

    def reward(images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict]:
        scores = scorer(images)
        return scores, {"aesthetic": scores}

    reward.scorer = scorer
    return reward
