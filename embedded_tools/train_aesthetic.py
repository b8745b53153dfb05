"""Draw the toy world's aesthetic ratings and train its predictor on them.

    python -m embedded_tools.train_aesthetic                 # reproduces weights/aesthetic/
    python -m embedded_tools.train_aesthetic --output-dir /tmp/a

1. Ratings, as LAION's raters scored a wide range of real images: `renders` ground-truth
   renders of all 240 combinations, as many again drawn with more freedom than the world has
   (`world.Variation`: background colours from all of RGB, jittered object colours, sizes and
   positions; a model fine-tuned on the predictor strays there, and a predictor that never saw
   such images rated would score them by extrapolation), and `samples` samples of the starting
   model (the embedded model through the env, with the embedded training presets' sampler
   settings) on its training prompts, each rated 1-10 by `raters` raters from the hidden taste
   (`diffusion_gym.embedded.taste`):
   rating = clip(round(1 + 0.9 · taste + noise), 1, 10), noise ~ N(0, rater_noise²); an image's
   rating is its raters' mean. Saved to `ratings_file` (not shipped).
2. The head (`diffusion_gym.embedded.aesthetic.AestheticHead`) on the captioner's frozen
   embedding, trained with MSE on the ratings (a tenth kept aside for validation).
3. Its test: Pearson and Spearman correlation with the taste on `held_out_samples` further
   samples of the starting model that were never rated. Printed, and written with the weights'
   config.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tyro
from tqdm import tqdm

from diffusion_gym.embedded import EMBEDDED_DIR, world
from diffusion_gym.embedded.aesthetic import AestheticHead, AestheticPredictor, embed
from diffusion_gym.embedded.captioner import load_captioner
from diffusion_gym.embedded.taste import taste


@dataclass
class AestheticTraining:
    """The rating set and the predictor's training."""

    output_dir: Path = EMBEDDED_DIR / "aesthetic"
    """Where the head's weights and config go."""
    ratings_file: Path = Path("outputs/aesthetic_ratings.npz")
    """Where the rated images and their ratings go (for inspection; not shipped)."""
    renders: int = 2000
    """Ground-truth renders rated (combinations drawn from all 240), and as many varied renders."""
    samples: int = 2048
    """Starting-model samples rated (the training prompts in turn)."""
    held_out_samples: int = 512
    """Further starting-model samples, never rated: the predictor's test."""
    num_inference_steps: int = 10
    """Sampler steps of the starting model (the embedded training presets')."""
    guidance_scale: float = 1.0
    """Its classifier-free guidance (the embedded training presets')."""
    raters: int = 5
    """Ratings per image."""
    rater_noise: float = 1.5
    """Std of a rater's noise, in rating points."""
    steps: int = 2000
    """Optimizer steps of the head."""
    batch_size: int = 256
    """Ratings per step."""
    learning_rate: float = 1e-3
    """AdamW learning rate (cosine-decayed to 0)."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    seed: int = 0
    """Seeds the renders, the samples, the raters and the head."""
    threads: int = 2
    """torch CPU threads."""


def rate(tastes: np.ndarray, raters: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """The mean of `raters` integer 1-10 ratings per image: clip(round(1 + 0.9 taste + N(0, noise²)), 1, 10)."""
    each = np.clip(np.round(1 + 0.9 * tastes[:, None] + rng.normal(0, noise, (len(tastes), raters))), 1, 10)
    return each.mean(axis=1)


def starting_samples(n: int, config: AestheticTraining, seed: int, desc: str) -> np.ndarray:
    """`n` samples of the embedded model on its training prompts in turn, through the env."""
    import diffusion_gym  # noqa: F401  (registers the ids)
    from diffusion_gym.policy import DiffusionPolicy
    from embedded_tools.evaluate import sample

    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=64, model="embedded", device="cpu", num_inference_steps=config.num_inference_steps)
    prompts = [world.TRAIN_PROMPTS[i % len(world.TRAIN_PROMPTS)] for i in range(n)]
    return sample(envs, DiffusionPolicy.from_env(envs, guidance_scale=config.guidance_scale), prompts, seed=seed, desc=desc)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        ordered = np.sort(x)
        for value in np.unique(ordered[1:][np.diff(ordered) == 0]):  # tied values share their mean rank
            r[x == value] = r[x == value].mean()
        return r

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def train_head(embeddings: torch.Tensor, ratings: torch.Tensor, config: AestheticTraining) -> tuple[AestheticHead, dict]:
    """Fit the head with MSE on 90 % of the ratings; returns it and the validation figures."""
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(ratings), generator=generator)
    n_val = len(ratings) // 10
    val, train = order[:n_val], order[n_val:]
    torch.manual_seed(config.seed)
    head = AestheticHead(embeddings.shape[1])
    head.mean.copy_(embeddings[train].mean(0))
    head.std.copy_(embeddings[train].std(0).clamp_min(1e-6))
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    head.train()
    for _ in tqdm(range(config.steps), desc="aesthetic head", unit="step"):
        batch = train[torch.randint(len(train), (config.batch_size,), generator=generator)]
        loss = torch.nn.functional.mse_loss(head(embeddings[batch]), ratings[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    head.eval()
    with torch.no_grad():
        predicted = head(embeddings[val])
    return head, {"validation_rmse": float((predicted - ratings[val]).pow(2).mean().sqrt()), "validation_pearson": float(np.corrcoef(predicted, ratings[val])[0, 1])}


def main(config: AestheticTraining) -> dict:
    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)

    # 1. the rating set
    renders = np.concatenate([
        world.sample_batch(config.renders, rng, world.ALL_COMBINATIONS).images,
        world.sample_batch(config.renders, rng, world.ALL_COMBINATIONS, variation=world.Variation()).images,
    ])  # fmt: skip
    samples = starting_samples(config.samples, config, seed=config.seed, desc="samples to rate")
    images = np.concatenate([renders, samples])
    tastes = taste(images)
    ratings = rate(tastes, config.raters, config.rater_noise, rng)
    config.ratings_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(config.ratings_file, images=images, ratings=ratings, taste=tastes, is_render=np.arange(len(images)) < len(renders))

    # 2. the head
    captioner = load_captioner()
    head, figures = train_head(embed(captioner, images), torch.from_numpy(ratings).float(), config)

    # 3. the test: starting-model samples that were never rated
    test = starting_samples(config.held_out_samples, config, seed=config.seed + 1_000_000, desc="held-out samples")
    predicted, gold = AestheticPredictor(head, captioner)(test), taste(test)
    figures.update(
        held_out_pearson=float(np.corrcoef(predicted, gold)[0, 1]),
        held_out_spearman=rank_correlation(predicted, gold),
        ratings=len(ratings),
        rating_noise_pearson=float(np.corrcoef(ratings, tastes)[0, 1]),
        seconds=time.perf_counter() - start,
    )
    head.save(config.output_dir, extra={"training": {k: str(v) for k, v in asdict(config).items() if k not in ("output_dir", "ratings_file")}, "figures": figures})
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main(tyro.cli(AestheticTraining))
