"""Train the embedded default from scratch: the captioner, then the diffusion model; or, with
`--objective flow`, the embedded flow model from the embedded default.

    python -m embedded_tools.train                       # reproduces the shipped weights
    python -m embedded_tools.train --output-dir /tmp/e   # somewhere else
    python -m embedded_tools.train --objective flow      # reproduces the shipped flow model

The two objectives train the same networks (`embedded_tools.model`) on the same renders:
- "v-prediction": the DDIM model, x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε on the cosine schedule, the target
  the velocity √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022);
- "flow": rectified flow as SD3 and FLUX are trained (Esser et al. 2024, eq. 1 and 3):
  x_σ = (1 − σ) x_0 + σ ε with σ uniform in [0, 1], the network given t = 1000 σ, the target the
  velocity ε − x_0 (`diffusion_gym.samplers.flow_match`, (F1)–(F2)). It starts from the shipped
  DDIM model's weights (`init_from`): the networks already know the world, only the
  parametrisation of noise and target is new, so a short run suffices.

On 2 CPU cores the default run takes 68 to 102 minutes, by the machine (benchmarks/README.md).
Progress shows as a bar; every `log_every` steps the loss goes to `train_log.jsonl` in the output
folder; every `save_every` steps a checkpoint is written there, and a killed run started again
with the same command continues from it. At the end the EMA weights are saved as a diffusers pipeline folder.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro
from tqdm import tqdm

from diffusion_gym.embedded import EMBEDDED_DIR, EMBEDDED_FLOW_DIR, world
from diffusion_gym.embedded.captioner import CaptionerTraining, train_captioner
from diffusion_gym.models import load_model
from diffusion_gym.samplers import noised
from embedded_tools.model import build_flow_scheduler, build_untrained

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.jsonl"


@dataclass
class TrainConfig:
    """Training of the embedded text-to-image model (and its captioner)."""

    objective: Literal["v-prediction", "flow"] = "v-prediction"
    """What the network learns: the DDIM model's velocity, or a flow model's (module docstring).
    "flow" also sets the defaults of `output_dir`, `init_from`, `steps`, `learning_rate`,
    `warmup_steps` and `train_captioner` to the shipped flow model's (FLOW_DEFAULTS) unless they
    are given."""
    output_dir: Path = EMBEDDED_DIR
    """Where the pipeline folder, the captioner, the loss log and checkpoints go."""
    init_from: Path | None = None
    """A pipeline folder whose UNet and text encoder the run starts from; None: fresh weights."""
    steps: int = 3600
    """Optimizer steps of the diffusion model."""
    batch_size: int = 64
    """Renders per step."""
    learning_rate: float = 1e-3
    """AdamW peak learning rate (linear warm-up, then cosine decay to 10%)."""
    warmup_steps: int = 200
    """Steps of linear learning-rate warm-up."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of the weights; the EMA weights are shipped."""
    prompt_dropout: float = 0.1
    """Fraction of training captions replaced by "" so that classifier-free guidance works."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    seed: int = 0
    """Seeds the renders, the noise and the initial weights."""
    threads: int = 2
    """torch CPU threads."""
    log_every: int = 25
    """Steps between loss-log lines."""
    save_every: int = 250
    """Steps between checkpoints (resume after a crash)."""
    train_captioner: bool = True
    """Train (or re-train) the captioner first."""
    captioner: CaptionerTraining = field(default_factory=CaptionerTraining)
    """The captioner's training."""


# The shipped flow model's run: 1200 steps from the embedded default, at a third of its learning rate.
FLOW_DEFAULTS = {"output_dir": EMBEDDED_FLOW_DIR, "init_from": EMBEDDED_DIR, "steps": 1200, "learning_rate": 3e-4, "warmup_steps": 50, "train_captioner": False}


def with_objective_defaults(config: TrainConfig, given: set[str]) -> TrainConfig:
    """`config` with FLOW_DEFAULTS filled in for a flow run, where the command line left them out."""
    if config.objective != "flow":
        return config
    return replace(config, **{key: value for key, value in FLOW_DEFAULTS.items() if key not in given})


def _lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train(config: TrainConfig) -> Path:
    torch.set_num_threads(config.threads)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2, default=str) + "\n")
    log_path = out / LOG_NAME

    if config.train_captioner:
        captioner_log: list[dict] = []
        start = time.perf_counter()
        train_captioner(config.captioner, log=captioner_log).save(out / "captioner")
        with log_path.open("w") as f:
            for line in captioner_log:
                f.write(json.dumps(line) + "\n")
            f.write(json.dumps({"model": "captioner", "seconds": time.perf_counter() - start}) + "\n")

    model = build_untrained(seed=config.seed)
    if config.init_from is not None:
        initial = load_model(str(config.init_from), device="cpu")
        model.unet.load_state_dict(initial.unet.state_dict())
        model.text_encoder.load_state_dict(initial.text_encoder.state_dict())
    if config.objective == "flow":
        model.scheduler = build_flow_scheduler()
    unet, text_encoder, tokenizer, scheduler = model.unet, model.text_encoder, model.tokenizer, model.scheduler
    unet.train()
    text_encoder.train()
    ema_unet, ema_text_encoder = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    start_step, seconds_before = 0, 0.0

    checkpoint_path = out / CHECKPOINT_NAME
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, weights_only=False)
        for module, key in ((unet, "unet"), (text_encoder, "text_encoder"), (ema_unet, "ema_unet"), (ema_text_encoder, "ema_text_encoder")):
            module.load_state_dict(state[key])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.bit_generator.state = state["numpy_rng"]
        generator.set_state(state["torch_rng"])
        start_step, seconds_before = state["step"], state["seconds"]
        print(f"resuming from {checkpoint_path} at step {start_step}")
    start = time.perf_counter() - seconds_before

    bar = tqdm(range(start_step, config.steps), desc="diffusion model", unit="step", initial=start_step, total=config.steps)
    for step in bar:
        batch = world.sample_batch(config.batch_size, rng, world.TRAIN)
        x0 = torch.from_numpy(batch.images).permute(0, 3, 1, 2).float() / 127.5 - 1
        prompts = ["" if drop else p for p, drop in zip(batch.prompts, rng.random(config.batch_size) < config.prompt_dropout)]
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        if config.objective == "flow":
            sigma = torch.rand(config.batch_size, generator=generator)
            x_t, v_target = noised(x0, torch.randn(x0.shape, generator=generator), sigma)  # (F1), (F2)
            timesteps = sigma * scheduler.config.num_train_timesteps
        else:
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (config.batch_size,), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            x_t = scheduler.add_noise(x0, noise, timesteps)
            v_target = scheduler.get_velocity(x0, noise, timesteps)  # the velocity (Salimans & Ho 2022)
        v_pred = unet(x_t, timesteps, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = torch.nn.functional.mse_loss(v_pred, v_target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        schedule.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text_encoder, text_encoder)):
                for p_ema, p in zip(ema.parameters(), live.parameters()):
                    p_ema.lerp_(p, 1 - decay)

        if step % config.log_every == 0 or step == config.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            with log_path.open("a") as f:
                f.write(json.dumps({"model": "diffusion", "step": step, "loss": loss.item(), "lr": schedule.get_last_lr()[0], "seconds": time.perf_counter() - start}) + "\n")
        if (step + 1) % config.save_every == 0 and step + 1 < config.steps:
            state = {
                "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                "ema_unet": ema_unet.state_dict(), "ema_text_encoder": ema_text_encoder.state_dict(),
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "numpy_rng": rng.bit_generator.state, "torch_rng": generator.get_state(),
                "step": step + 1, "seconds": time.perf_counter() - start,
            }  # fmt: skip
            torch.save(state, checkpoint_path.with_suffix(".tmp"))
            os.replace(checkpoint_path.with_suffix(".tmp"), checkpoint_path)  # atomic: a crash never leaves half a file

    model.unet, model.text_encoder = ema_unet.eval(), ema_text_encoder.eval()
    model.save_pretrained(out)
    with log_path.open("a") as f:
        f.write(json.dumps({"model": "diffusion", "seconds": time.perf_counter() - start, "steps": config.steps}) + "\n")
    checkpoint_path.unlink(missing_ok=True)
    print(f"saved the embedded model to {out} after {time.perf_counter() - start:.0f} s")
    return out


def main() -> None:
    import sys

    config = tyro.cli(TrainConfig)
    given = {arg[2:].split("=")[0].removeprefix("no-").replace("-", "_") for arg in sys.argv[1:] if arg.startswith("--")}
    train(with_objective_defaults(config, given))


if __name__ == "__main__":
    main()
