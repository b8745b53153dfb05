"""Time a denoiser's half-precision passes on torch's own kernels against the float32 kernels the
policy takes on a CPU without matrix instructions for that precision (`diffusion_gym.models.half`),
with a float32 pass for scale: a forward (as sampling runs it) and a training pass (forward and
backward under autocast, the weights frozen, as a LoRA pass's frozen layers run). The three take
turns in each round; prints the median (min–max) of the rounds.

    python -m benchmarks.half_kernels                          # the tiny UNet, bf16, batch 32
    python -m benchmarks.half_kernels --model embedded --batch 16
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import tyro

from diffusion_gym.models import load_model
from diffusion_gym.models.half import Float32Products, emulated_on_cpu


@dataclass
class HalfKernelsConfig:
    """Half-precision passes: torch's kernels against float32 ones, on the CPU."""

    model: str = "tiny-random"
    """Model whose denoiser is timed (a UNet family)."""
    dtype: Literal["bfloat16", "float16"] = "bfloat16"
    """The half precision."""
    batch: int = 32
    """Latents a pass."""
    rounds: int = 5
    """Timed rounds, after one that warms up."""
    threads: int = 2
    """torch threads."""


def main(config: HalfKernelsConfig) -> dict:
    torch.set_num_threads(config.threads)
    half = getattr(torch, config.dtype)
    model = load_model(config.model, device="cpu", dtype="float32")
    unets = {torch.float32: model.denoiser.requires_grad_(False)}
    unets[half] = copy.deepcopy(unets[torch.float32]).to(half)
    unet = unets[torch.float32]
    shape = (config.batch, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    t = torch.full((config.batch,), 500)
    text = torch.randn(config.batch, 77, unet.config.cross_attention_dim, generator=generator)

    def forward(dtype, context) -> None:
        with torch.inference_mode(), context():
            unets[dtype](x.to(dtype), t, encoder_hidden_states=text.to(dtype))

    def training(dtype, context) -> None:
        leaf = x.to(dtype).requires_grad_(True)
        with torch.autocast("cpu", dtype=half, enabled=dtype != torch.float32), context():
            out = unets[dtype](leaf, t, encoder_hidden_states=text.to(dtype)).sample
        out.float().mean().backward()

    ways = {"float32": (torch.float32, nullcontext), f"{config.dtype}, torch's kernels": (half, nullcontext), f"{config.dtype}, float32 kernels": (half, Float32Products)}
    seconds: dict[str, list[float]] = {f"{name}: {kind}": [] for name in ways for kind in ("forward", "training pass")}
    for round_ in range(config.rounds + 1):
        for name, (dtype, context) in ways.items():
            for kind, run in (("forward", forward), ("training pass", training)):
                start = time.perf_counter()
                run(dtype, context)
                if round_ > 0:
                    seconds[f"{name}: {kind}"].append(time.perf_counter() - start)
    result = {
        "config": asdict(config),
        "emulated_on_this_cpu": emulated_on_cpu(half),
        "ms": {key: {"median": 1e3 * statistics.median(v), "min": 1e3 * min(v), "max": 1e3 * max(v)} for key, v in seconds.items()},
    }
    print(json.dumps(result, indent=2))
    print(f"{config.model}, batch {config.batch}; {config.dtype} {'without' if result['emulated_on_this_cpu'] else 'with'} matrix instructions on this CPU")
    for key, ms in result["ms"].items():
        print(f"  {key}: {ms['median']:.1f} ms ({ms['min']:.1f}–{ms['max']:.1f})")
    return result


if __name__ == "__main__":
    main(tyro.cli(HalfKernelsConfig))
