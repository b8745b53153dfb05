"""The toy-world captioner: reads an image back into its attributes and its caption.

A small CNN with one classification head per attribute, trained on the world generator's ground
truth (training combinations only, so that held-out combinations test it too). It is the
evaluation instrument for the embedded model (how faithful are samples to their prompts) and the
VLM stand-in of the prompt-alignment reward on the embedded model.

    captioner = load_captioner()
    attributes = captioner.read(images)        # (N, 32, 32, 3) uint8 -> (N, 4) attribute indices
    captions = captioner.caption(images)       # ["a small red circle on a flat background", ...]

Two are shipped: `weights/captioner/` (trained by `python -m embedded_tools.train` with
the embedded model) and `weights/captioner_gold/`, the alignment task's gold judge, trained
apart with another seed and width so that a policy that fools the first does not fool it too:

    python -m diffusion_gym.embedded.captioner gold        # reproduces weights/captioner_gold/
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from diffusion_gym.embedded import world

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_module(module: nn.Module, folder: str | Path, config: dict) -> None:
    """A small module of the embedded world as a folder: its weights and the config that rebuilds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(module.state_dict(), folder / WEIGHTS_NAME)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def read_module(folder: Path, what: str, how_to_make: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, weights) of a folder written by `save_module`; ValueError saying how to make it if it is not there."""
    if not (folder / WEIGHTS_NAME).is_file():
        raise ValueError(f"No {what} at {folder}; {how_to_make}, or pass the folder that holds {WEIGHTS_NAME}.")
    return json.loads((folder / CONFIG_NAME).read_text()), load_file(folder / WEIGHTS_NAME)


class Captioner(nn.Module):
    """CNN over 32×32 RGB images with one linear head per attribute of `world.ATTRIBUTES`."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.width = width

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.MaxPool2d(2),
            )  # fmt: skip

        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width), nn.Flatten())
        self.trunk = nn.Sequential(nn.Linear(4 * width * 4 * 4, 256), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(256, len(values)) for values in world.ATTRIBUTES.values())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Logits per attribute for images (N, 3, 32, 32) float in [-1, 1]."""
        hidden = self.trunk(self.features(images))
        return [head(hidden) for head in self.heads]

    @staticmethod
    def to_input(images: np.ndarray) -> torch.Tensor:
        """(N, 32, 32, 3) uint8 -> (N, 3, 32, 32) float32 in [-1, 1]."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (world.IMAGE_SIZE, world.IMAGE_SIZE, 3):
            raise ValueError(f"The captioner reads (N, 32, 32, 3) uint8 images, got {images.dtype} {images.shape}.")
        return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1

    @torch.no_grad()
    def read(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """The most likely value of each attribute, (N, 4) int64 indices in `world.ATTRIBUTE_NAMES` order."""
        self.eval()
        device = next(self.parameters()).device
        out = []
        for start in range(0, len(images), batch_size):
            logits = self(self.to_input(images[start : start + batch_size]).to(device))
            out.append(torch.stack([l.argmax(dim=1) for l in logits], dim=1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(world.ATTRIBUTES)), dtype=np.int64)

    @torch.no_grad()
    def probabilities(self, images: np.ndarray, batch_size: int = 512) -> dict[str, np.ndarray]:
        """How likely each value of each attribute is: {attribute: (N, n_values) float64}, rows
        summing to 1, values in `world.ATTRIBUTES` order."""
        self.eval()
        device = next(self.parameters()).device
        parts: list[list[torch.Tensor]] = [[] for _ in world.ATTRIBUTES]
        for start in range(0, len(images), batch_size):
            for part, logits in zip(parts, self(self.to_input(images[start : start + batch_size]).to(device))):
                part.append(logits.double().softmax(dim=1).cpu())
        return {
            name: torch.cat(part).numpy() if part else np.zeros((0, len(values)))
            for part, (name, values) in zip(parts, world.ATTRIBUTES.items())
        }

    def caption(self, images: np.ndarray) -> list[str]:
        """The caption of each image, as the world writes captions."""
        return [world.caption(combination_of(row)) for row in self.read(images)]

    def save(self, folder: str | Path) -> None:
        save_module(self, folder, {"width": self.width, "attributes": world.ATTRIBUTES})


def combination_of(labels: np.ndarray) -> world.Combination:
    """Attribute indices (4,) -> the combination of values."""
    return tuple(world.ATTRIBUTES[name][int(i)] for name, i in zip(world.ATTRIBUTE_NAMES, labels))  # type: ignore[return-value]


def load_captioner(folder: str | Path | None = None) -> Captioner:
    """Load a saved captioner (by default the one shipped with the embedded model)."""
    from diffusion_gym.embedded import EMBEDDED_DIR

    folder = Path(folder) if folder is not None else EMBEDDED_DIR / "captioner"
    config, weights = read_module(folder, "captioner weights", "train them with `python -m embedded_tools.train` (see its --help)")
    if config.get("attributes") != {k: list(v) for k, v in world.ATTRIBUTES.items()}:
        raise ValueError(f"The captioner at {folder} was trained on another world's attributes; retrain it.")
    captioner = Captioner(width=config["width"])
    captioner.load_state_dict(weights)
    return captioner.eval()


@dataclass
class CaptionerTraining:
    """How the captioner is trained (on training combinations, with pixel noise for robustness)."""

    steps: int = 1500
    """Optimizer steps."""
    batch_size: int = 128
    """Renders per step."""
    learning_rate: float = 2e-3
    """Adam learning rate (cosine-decayed to 0)."""
    max_pixel_noise: float = 12.0
    """Gaussian noise of std up to this many grey levels is added to each render, so that slightly
    noisy model samples are read like clean renders."""
    seed: int = 0
    """Seeds the renders and the weights."""
    width: int = 16
    """Channels of the first convolution block (the next two have 2x and 4x)."""


def train_captioner(config: CaptionerTraining, log: list[dict] | None = None) -> Captioner:
    """Train a captioner on fresh renders of the training combinations."""
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    captioner = Captioner(width=config.width)
    optimizer = torch.optim.Adam(captioner.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.steps))
    captioner.train()
    for step in (bar := tqdm(range(config.steps), desc="captioner", unit="step")):
        batch = world.sample_batch(config.batch_size, rng, world.TRAIN)
        noise_std = rng.uniform(0, config.max_pixel_noise, size=(config.batch_size, 1, 1, 1))
        noisy = np.clip(batch.images + rng.normal(0, 1, batch.images.shape) * noise_std, 0, 255).astype(np.uint8)
        logits = captioner(Captioner.to_input(noisy))
        labels = torch.from_numpy(batch.labels)
        loss = sum(nn.functional.cross_entropy(l, labels[:, i]) for i, l in enumerate(logits))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == config.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if log is not None:
                log.append({"model": "captioner", "step": step, "loss": loss.item()})
    return captioner.eval()


GOLD = CaptionerTraining(seed=1, width=24)
"""The gold judge's training: the shipped captioner's recipe with another seed and width."""


@dataclass
class CaptionerRun:
    """Train a captioner alone and save it."""

    training: CaptionerTraining
    """The captioner's training."""
    output_dir: Path = Path("outputs/captioner")
    """Where model.safetensors and config.json go."""
    threads: int = 2
    """torch CPU threads."""


def attribute_accuracy(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Fraction of images whose attribute was read right, per attribute name."""
    return {name: float((predicted[:, i] == labels[:, i]).mean()) for i, name in enumerate(world.ATTRIBUTE_NAMES)}


def main(run: CaptionerRun) -> Path:
    torch.set_num_threads(run.threads)
    captioner = train_captioner(run.training)
    rng = np.random.default_rng(run.training.seed + 10_000)
    for split, combinations in (("held_out", world.HELD_OUT), ("train", world.TRAIN)):
        batch = world.sample_batch(2000, rng, combinations)
        print(f"accuracy on fresh renders of {split} combinations: {attribute_accuracy(captioner.read(batch.images), batch.labels)}")
    captioner.save(run.output_dir)
    return run.output_dir


if __name__ == "__main__":
    import tyro

    from diffusion_gym.embedded import EMBEDDED_DIR

    presets = {"gold": ("the alignment task's gold judge (weights/captioner_gold/)", CaptionerRun(GOLD, EMBEDDED_DIR / "captioner_gold"))}
    main(tyro.extras.overridable_config_cli(presets, prog="python -m diffusion_gym.embedded.captioner"))
