"""Side by side with the reference implementation: DDPO-IS here and in trl 0.23.1's `DDPOTrainer`,
on the same work, each run a fresh process for each side. The two processes of a run take turns
epoch by epoch (ours, trl, then trl, ours, ...; the idle one waits, computing nothing), so that
both see the same state of a shared machine and each epoch of ours has a trl epoch beside it.

The work: a random Stable Diffusion saved to a folder both load (`--model tiny`: the tiny one of
`build_tiny_random`, latents 4×8×8; `--model sd14`: Stable Diffusion v1.4's shapes, its UNet on
4×64×64 latents, its text encoder and VAE); LoRA rank 4 on to_q/to_k/to_v/to_out.0; DDIM with
eta 1, guidance 5 in sampling and training; sampling batches of 8; train batch 8; one inner
epoch; every timestep; clip range 1e-4; JPEG compressibility; no checkpoints on either side.
Both make the same UNet calls. Each process reports samples/s per epoch and per phase (sampling,
training), its start-up time, its epoch time ÷ the time of the same UNet passes run alone in
that process, its peak RSS and, on CUDA, each phase's peak GPU memory.

trl is not a dependency: install it beside this environment, not into it (its own requirements
would replace the CPU torch):

    pip install --target benchmarks/.trl --no-deps trl==0.23.1
    python -m benchmarks.vs_reference --mode fp32        # or --mode bf16 (both sides in bf16)
    python -m benchmarks.vs_reference --model sd14 --device cuda --mode bf16 --num-inference-steps 50 \
        --batches-per-epoch 2 --epochs 2 --runs 2 --no-unet-baseline      # the GPU comparison
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Literal

ROOT = Path(__file__).resolve().parents[1]
PROMPT_SET = "simple_animals"


@dataclass
class VsReferenceConfig:
    """Our DDPO-IS against trl's DDPOTrainer on the same work."""

    model: Literal["tiny", "sd14"] = "tiny"
    """The random pipeline both sides load: "tiny", or "sd14" (Stable Diffusion v1.4's shapes, for GPUs)."""
    device: str = "cpu"
    """"cpu" or "cuda"."""
    mode: Literal["fp32", "bf16"] = "fp32"
    """Precision on both sides: fp32, or bf16 (frozen weights in bf16, training under bf16 autocast)."""
    runs: int = 5
    """Interleaved runs per side (fresh processes)."""
    epochs: int = 3
    """Epochs per run."""
    num_inference_steps: int = 10
    guidance_scale: float = 5.0
    sample_batch_size: int = 8
    batches_per_epoch: int = 4
    train_batch_size: int = 8
    threads: int = 2
    """torch threads in each process."""
    compile: bool = False
    """Ours: torch.compile the UNet (`DiffusionPolicy.optimize`); its compilation falls in our first epoch."""
    channels_last: bool = False
    """Ours: channels-last UNet weights (`DiffusionPolicy.optimize`)."""
    steps_per_pass: int | None = None
    """Ours: the most sampler steps of a minibatch a training pass holds (`DDPOConfig.steps_per_pass`; None: automatic)."""
    unet_baseline: bool = True
    """Also time the epoch's UNet passes alone (epoch ÷ UNet); costs about an epoch."""
    trl_path: Path = ROOT / "benchmarks" / ".trl"
    """Where trl 0.23.1 was installed (`pip install --target ... --no-deps trl==0.23.1`)."""
    output: Path | None = ROOT / "benchmarks" / "results" / "vs_reference_{model}_{device}_{mode}{levers}.json"
    """Where the results go ({model}, {device}, {mode} and {levers}, e.g. "_compile", are filled in); None: print only."""
    side: Literal["both", "ours", "trl"] = "both"
    """Internal: a worker process runs one side."""
    folder: Path | None = None
    """Internal: the saved pipeline a worker loads."""


# ---------------------------------------------------------------- one side, in its own process
@contextmanager
def turn() -> Iterator[None]:
    """In a worker: say it is ready, compute only once the comparison says "go", then say it is
    done; the two sides' epochs alternate and never overlap."""
    print("TURN", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("The comparison stopped before this worker's turn.")
    yield
    print("DONE", flush=True)


class Phases:
    """Wall time of each epoch and of its phases (sampling with scoring, training) and, on CUDA,
    each phase's peak GPU memory; the device is synchronised around every timing."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda") and torch.cuda.is_available()
        self.seconds: dict[str, list[float]] = {"epoch": [], "sampling": [], "training": []}
        self.peak_mib: dict[str, float] = {"sampling": 0.0, "training": 0.0}

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    @contextmanager
    def epoch(self) -> Iterator[None]:
        for times in self.seconds.values():
            times.append(0.0)
        with turn():
            self._sync()
            start = time.perf_counter()
            yield
            self._sync()
            self.seconds["epoch"][-1] = time.perf_counter() - start

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        import torch

        self._sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        yield
        self._sync()
        if self.cuda:
            self.peak_mib[phase] = max(self.peak_mib[phase], torch.cuda.max_memory_allocated() / 2**20)
        self.seconds[phase][-1] += time.perf_counter() - start

    def timed(self, function, phase: str):
        def wrapper(*args, **kwargs):
            with self(phase):
                return function(*args, **kwargs)

        return wrapper

    def result(self) -> dict:
        return {
            "epoch_s": self.seconds["epoch"], "sampling_s": self.seconds["sampling"], "training_s": self.seconds["training"],
            "gpu_peak_mib": self.peak_mib if self.cuda else None,
        }  # fmt: skip


def build_sd14_random(seed: int = 0):
    """A random pipeline of Stable Diffusion v1.4's shapes: the UNet (320-640-1280-1280, cross-
    attention 768) on 4×64×64 latents, a CLIP ViT-L/14 text encoder, the VAE to 512×512. The
    tokenizer is the byte-level stand-in of `build_tiny_random` (no hub): other token ids, the
    same 77-token shapes."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffusion_gym.models import DiffusionModel
    from diffusion_gym.models.tiny import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer(model_max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ))  # fmt: skip
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # diffusers' default blocks are SD v1's
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, latent_channels=4, sample_size=512,
        )  # fmt: skip
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return DiffusionModel(unet=unet.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, scheduler=scheduler, vae=vae.eval(), name="sd14-random")


def _jpeg_rewards(images_uint8):
    from diffusion_gym.rewards import jpeg_size_kb

    return -jpeg_size_kb(images_uint8)


def _unet_seconds(unet, embeds, config: VsReferenceConfig, autocast, passes=nullcontext, pass_pairs: list[int] | None = None, inference_mode: bool = False) -> float:
    """The epoch's UNet work run alone: sampling forwards (batch 2B with guidance) and training
    forward/backward passes (2 rows a (sample, step) pair, `pass_pairs` pairs in each pass of a
    minibatch, as the side trains; None: one sampler step of the train batch a pass, as trl), on
    inputs of the same shapes; within `passes()` (ours: `DiffusionPolicy.passes`, as our passes run), the
    sampling forwards in inference mode with `inference_mode` (ours)."""
    import torch

    channels, size = unet.config.in_channels, unet.config.sample_size
    parameter = next(unet.parameters())
    b = 2 * config.sample_batch_size
    steps = config.num_inference_steps
    pass_rows = [2 * pairs for pairs in (pass_pairs or [config.train_batch_size] * steps)]
    rows = max(b, *pass_rows)
    x = torch.randn(rows, channels, size, size, dtype=parameter.dtype, device=parameter.device)
    t = torch.full((rows,), 500, device=parameter.device)
    embeds = embeds[:1].to(parameter.device, parameter.dtype).repeat(rows, 1, 1)  # a real batch's layout, not a broadcast view
    start = time.perf_counter()
    with torch.no_grad(), autocast(), passes(), torch.inference_mode(inference_mode):
        for _ in range(config.batches_per_epoch * steps):
            unet(x[:b], t[:b], encoder_hidden_states=embeds[:b])
    minibatches = config.sample_batch_size * config.batches_per_epoch // config.train_batch_size
    for _ in range(minibatches):
        for m in pass_rows:
            with autocast(), passes():
                out = unet(x[:m], t[:m], encoder_hidden_states=embeds[:m]).sample
            out.float().mean().backward()
    if parameter.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    unet.zero_grad(set_to_none=True)
    return seconds


def run_ours(config: VsReferenceConfig, start: float) -> dict:
    import gymnasium as gym
    import torch

    import diffusion_gym  # noqa: F401
    from agents.ddpo import DDPO, DDPOConfig
    from diffusion_gym.policy import DiffusionPolicy
    from diffusion_gym.rollout import rollout

    bf16 = config.mode == "bf16"
    envs = gym.make_vec(
        "DiffusionCompressibility-v0", num_envs=config.sample_batch_size, model=str(config.folder), num_inference_steps=config.num_inference_steps,
        prompts=PROMPT_SET, device=config.device, dtype="bfloat16" if bf16 else "float32", array_type="torch",
    )  # fmt: skip
    policy = DiffusionPolicy.from_env(envs, guidance_scale=config.guidance_scale, eta=1.0)
    policy.enable_lora(rank=4, target_modules=("to_q", "to_k", "to_v", "to_out.0"))  # trl's adapters (its rank is fixed)
    policy.optimize(compile=config.compile, channels_last=config.channels_last)
    agent = DDPO(
        policy, DDPOConfig(estimator="is", log_prob_reduce="mean", learning_rate=3e-4, train_batch_size=config.train_batch_size, clip_range=1e-4, mixed_precision="bf16" if bf16 else "no",
                        steps_per_pass=config.steps_per_pass),
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    envs.reset(seed=0)
    startup = time.perf_counter() - start
    phases = Phases(config.device)
    for epoch in range(config.epochs):
        with phases.epoch():
            with phases("sampling"):
                batch = rollout(envs, policy, config.batches_per_epoch, generator=torch.Generator().manual_seed(epoch))
            with phases("training"):
                agent.update(batch)
    autocast = (lambda: torch.autocast(policy.device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    pass_pairs = agent.minibatch_pass_sizes(batch)
    unet = None
    if config.unet_baseline:
        with turn():
            unet = _unet_seconds(policy.denoiser, policy.encode_prompts(["a cat"])["encoder_hidden_states"], config, autocast, policy.passes, pass_pairs, inference_mode=True)
    return {"startup_s": startup, **phases.result(), "unet_s": unet, "pass_pairs": pass_pairs}


def run_trl(config: VsReferenceConfig, start: float) -> dict:
    import random

    import numpy as np
    import torch

    sys.path.insert(0, str(config.trl_path))
    from accelerate import PartialState

    PartialState(cpu=not config.device.startswith("cuda"))  # before the pipeline: trl's LoRA path needs the accelerate state when the folder has no LoRA weights
    from trl import DDPOConfig as TRLConfig
    from trl import DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    from diffusion_gym.prompts import load_prompts

    prompts, rng = load_prompts(PROMPT_SET), random.Random(0)

    def reward_fn(images, batch_prompts, metadata):
        uint8 = (images.float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return torch.as_tensor(_jpeg_rewards(np.ascontiguousarray(uint8))), {}

    with tempfile.TemporaryDirectory() as logdir:
        trl_config = TRLConfig(
            num_epochs=config.epochs, sample_num_steps=config.num_inference_steps, sample_eta=1.0, sample_guidance_scale=config.guidance_scale,
            sample_batch_size=config.sample_batch_size, sample_num_batches_per_epoch=config.batches_per_epoch, train_batch_size=config.train_batch_size,
            train_gradient_accumulation_steps=1, train_num_inner_epochs=1, train_cfg=True, train_timestep_fraction=1.0, train_learning_rate=3e-4,
            train_clip_range=1e-4, mixed_precision="bf16" if config.mode == "bf16" else "no", save_freq=10**9, log_with=None, seed=0,
            allow_tf32=False, logdir=logdir, project_kwargs={"project_dir": logdir}, accelerator_kwargs={"cpu": not config.device.startswith("cuda")},
        )  # fmt: skip
        pipeline = DefaultDDPOStableDiffusionPipeline(str(config.folder), use_lora=True)
        pipeline.sd_pipeline.set_progress_bar_config(disable=True)
        trainer = DDPOTrainer(trl_config, reward_fn, lambda: (rng.choice(prompts), {}), pipeline)
        startup = time.perf_counter() - start
        phases = Phases(config.device)
        for method, phase in (("_generate_samples", "sampling"), ("compute_rewards", "sampling"), ("_train_batched_samples", "training")):
            setattr(trainer, method, phases.timed(getattr(trainer, method), phase))  # trl's step: sample, score, then train
        step = 0
        for epoch in range(config.epochs):
            with phases.epoch():
                step = trainer.step(epoch, step)
        seconds = None
        if config.unet_baseline:
            unet = pipeline.sd_pipeline.unet
            ids = pipeline.sd_pipeline.tokenizer(["a cat"], return_tensors="pt", padding="max_length", max_length=pipeline.sd_pipeline.tokenizer.model_max_length).input_ids
            with torch.no_grad():
                embeds = pipeline.sd_pipeline.text_encoder(ids.to(unet.device))[0]
            with turn():
                seconds = _unet_seconds(unet, embeds, config, trainer.autocast)
    return {"startup_s": startup, **phases.result(), "unet_s": seconds}


def worker(config: VsReferenceConfig) -> None:
    start = time.perf_counter()
    import torch

    torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    result = (run_ours if config.side == "ours" else run_trl)(config, start)
    samples = config.sample_batch_size * config.batches_per_epoch
    result.update(
        side=config.side, samples_per_s=[samples / s for s in result["epoch_s"]],
        sampling_images_per_s=[samples / s for s in result["sampling_s"]], training_images_per_s=[samples / s for s in result["training_s"]],
        epoch_over_unet=None if result["unet_s"] is None else sum(result["epoch_s"]) / config.epochs / result["unet_s"],
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )  # fmt: skip
    print("RESULT " + json.dumps(result))


# ---------------------------------------------------------------- the comparison
def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _levers(config: VsReferenceConfig) -> list[str]:
    """Our settings beyond trl's: [], ["compile"], ["channels_last"] or both."""
    return [name for name in ("compile", "channels_last") if getattr(config, name)]


def settings_table(config: VsReferenceConfig) -> list[tuple[str, str, str]]:
    """(setting, ours, trl's) for the printed comparison."""
    import torch

    from diffusion_gym.models.attention import takes_explicit
    from diffusion_gym.models.half import emulated_on_cpu

    precision = "bf16 weights, bf16 autocast in training" if config.mode == "bf16" else "fp32"
    ours_unet = ", ".join(label for label, on in (("torch.compile", config.compile), ("channels-last", config.channels_last)) if on) or "eager"
    same = [
        ("model", f"random {config.model} pipeline, one saved folder"), ("fine-tuning", "LoRA rank 4 on to_q/to_k/to_v/to_out.0"),
        ("sampler", f"DDIM, {config.num_inference_steps} steps, eta 1"), ("guidance", f"{config.guidance_scale:g}, sampling and training"),
        ("samples an epoch", f"{config.batches_per_epoch} batches of {config.sample_batch_size}"),
        ("training", f"DDPO-IS, batch {config.train_batch_size}, 1 inner epoch, every timestep, clip 1e-4"),
        ("reward", "JPEG compressibility"), ("epochs a run", str(config.epochs)), ("device, threads", f"{config.device}, {config.threads}"),
        ("precision", precision),
    ]  # fmt: skip
    per_pass = "automatic" if config.steps_per_pass is None else str(config.steps_per_pass)
    explicit = config.mode == "bf16" and takes_explicit(torch.device(config.device).type, torch.bfloat16)
    ours_attention = "the explicit attention (this CPU multiplies bf16 in hardware)" if explicit else "SDPA"
    float32_kernels = config.mode == "bf16" and torch.device(config.device).type == "cpu" and emulated_on_cpu(torch.bfloat16)
    return [(name, value, value) for name, value in same] + [
        ("UNet passes", ours_unet, "eager"),
        ("LoRA layers", "merged weights W + s·B·A (`merged_lora`)" if config.mode == "fp32" else "unmerged (peft; merging is float32 only)", "unmerged (peft)"),
        ("sampling passes", "inference mode (`DiffusionPolicy.denoise`)", "torch.no_grad"),
        ("(sample, step) pairs a training pass", f"{per_pass} (`DDPOConfig.steps_per_pass`)", f"one step's: {config.train_batch_size}"),
        ("frozen convolutions, for the backward", "the compiled graph's" if config.compile else "keep the weight (`FrozenConv2d`)", "keep the input and the weight"),
        ("attention", ours_attention, "SDPA"),
    ] + ([("bf16 linear layers and convolutions", "float32 kernels on the bf16 operands (`diffusion_gym.models.half`: this CPU has no bf16 matrix instructions)", "torch's bf16 kernels")]
         if float32_kernels else [])


def _run_pair(config: VsReferenceConfig, folder: Path, env: dict, order: tuple[str, str]) -> dict[str, dict]:
    """One run: a fresh worker process for each side, started one after the other, then their
    turns (`turn`) alternated: the epochs in `order`, then reversed, and so on; the isolated UNet
    passes last. A worker's last turn is followed by its report and exit (a process tearing down
    takes CPU) before the other side's last turn. Returns each side's RESULT."""
    workers: dict[str, tuple[subprocess.Popen, object]] = {}

    def read_until(side: str, marker: str) -> str:
        process, log = workers[side]
        while True:
            line = process.stdout.readline()
            if not line:
                process.wait()
                log.seek(0)
                raise SystemExit(f"The {side} worker stopped (exit {process.returncode}):\n{log.read()[-3000:]}")
            if line.startswith(marker):
                return line

    try:
        for side in order:
            settings = {**asdict(config), "side": side, "folder": folder, "trl_path": config.trl_path.resolve(), "output": None, "runs": 1}
            args = [sys.executable, "-m", "benchmarks.vs_reference"]
            for key, value in settings.items():
                flag = "--" + key.replace("_", "-")
                if isinstance(value, bool):
                    args.append(flag if value else "--no-" + key.replace("_", "-"))
                else:
                    args += [flag, "None" if value is None else str(value)]
            log = tempfile.TemporaryFile("w+")  # its stderr (trl's progress bars), read only if it fails
            workers[side] = (subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True), log)
            read_until(side, "TURN")  # set up, waiting for its first epoch
        turns = config.epochs + (1 if config.unet_baseline else 0)
        results = {}
        for k in range(turns):
            for side in order if k % 2 == 0 else order[::-1]:
                process = workers[side][0]
                process.stdin.write("go\n")
                process.stdin.flush()
                read_until(side, "DONE")
                if k < turns - 1:
                    read_until(side, "TURN")
                else:  # its last turn: it reports and exits before the other side's last turn starts
                    results[side] = json.loads(read_until(side, "RESULT ")[len("RESULT ") :])
                    process.wait()
        return {side: results[side] for side in order}
    finally:
        for process, log in workers.values():
            if process.poll() is None:
                process.kill()
            process.wait()
            log.close()


def compare(config: VsReferenceConfig) -> dict:
    print("| setting | ours | trl 0.23.1 |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in settings_table(config)), flush=True)
    if not (config.trl_path / "trl").is_dir():
        raise SystemExit(f"trl is not at {config.trl_path}; install it there with `pip install --target {config.trl_path} --no-deps trl==0.23.1`.")
    from diffusion_gym.models import build_tiny_random

    results: dict[str, list[dict]] = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / config.model
        (build_tiny_random() if config.model == "tiny" else build_sd14_random()).save_pretrained(folder)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(config.threads), "PYTHONWARNINGS": "ignore"}
        for run in range(config.runs):
            order = ("ours", "trl") if run % 2 == 0 else ("trl", "ours")
            for side, r in _run_pair(config, folder, env, order).items():
                results[side].append(r)
                overhead = "" if r["epoch_over_unet"] is None else f", epoch/UNet {r['epoch_over_unet']:.3f}"
                gpu = "" if r["gpu_peak_mib"] is None else f", GPU peak sampling {r['gpu_peak_mib']['sampling']:.0f} / training {r['gpu_peak_mib']['training']:.0f} MiB"
                print(f"run {run} {side:4s}: samples/s {' '.join(f'{v:.2f}' for v in r['samples_per_s'])}, start-up {r['startup_s']:.1f} s{overhead}, "
                      f"peak RSS {r['peak_rss_mib']:.0f} MiB{gpu}", flush=True)  # fmt: skip

    def rate(r: dict, skip_first: bool) -> float:
        epochs = r["epoch_s"][1:] if skip_first else r["epoch_s"]
        return config.sample_batch_size * config.batches_per_epoch * len(epochs) / sum(epochs)

    pairs = list(zip(results["ours"], results["trl"]))
    summary = {
        "config": {k: str(v) for k, v in asdict(config).items() if k not in ("side", "folder")},
        "settings": settings_table(config),
        "ratio_all_epochs": _summary([rate(o, False) / rate(t, False) for o, t in pairs]),
        "ratio_after_first_epoch": _summary([rate(o, True) / rate(t, True) for o, t in pairs]),
        "ratio_per_epoch": _summary([t / o for ours, trl in pairs for o, t in zip(ours["epoch_s"], trl["epoch_s"])]),
        "ours_pass_pairs": results["ours"][0]["pass_pairs"],
        **{f"{side}_{key}": _summary([r[key] for r in rs]) for side, rs in results.items() for key in ("startup_s", "epoch_over_unet", "peak_rss_mib") if rs[0][key] is not None},
        **{f"{side}_samples_per_s": _summary([rate(r, False) for r in rs]) for side, rs in results.items()},
        **{f"{side}_{phase}_images_per_s": _summary([statistics.median(r[f"{phase}_images_per_s"]) for r in rs]) for side, rs in results.items() for phase in ("sampling", "training")},
        **{f"{side}_gpu_peak_{phase}_mib": _summary([r["gpu_peak_mib"][phase] for r in rs]) for side, rs in results.items() for phase in ("sampling", "training") if rs[0]["gpu_peak_mib"]},
        "runs": results,
    }  # fmt: skip
    r = summary["ratio_all_epochs"]
    overhead = f"; epoch/UNet ours {summary['ours_epoch_over_unet']['median']:.3f}, trl {summary['trl_epoch_over_unet']['median']:.3f}" if config.unet_baseline else ""
    phases = "; ".join(f"{phase} images/s ours {summary[f'ours_{phase}_images_per_s']['median']:.2f}, trl {summary[f'trl_{phase}_images_per_s']['median']:.2f}" for phase in ("sampling", "training"))
    e = summary["ratio_per_epoch"]
    print(f"{config.model} {config.mode}{''.join(' + ' + name.replace('_', '-') for name in _levers(config))}: samples/s ours ÷ trl {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f}) over {config.runs} runs; "
          f"after the first epoch {summary['ratio_after_first_epoch']['median']:.3f}; epoch by epoch {e['median']:.3f} (min {e['min']:.3f}, max {e['max']:.3f}){overhead}; {phases}; "
          f"ours with training passes of {', '.join(map(str, summary['ours_pass_pairs']))} (sample, step) pairs a minibatch; "
          f"peak RSS ours {summary['ours_peak_rss_mib']['median']:.0f} MiB, trl {summary['trl_peak_rss_mib']['median']:.0f} MiB")  # fmt: skip
    if "ours_gpu_peak_sampling_mib" in summary:
        print("GPU peak MiB, sampling / training: " + ", ".join(f"{side} {summary[f'{side}_gpu_peak_sampling_mib']['median']:.0f} / {summary[f'{side}_gpu_peak_training_mib']['median']:.0f}" for side in ("ours", "trl")))
    if config.output is not None:
        path = Path(str(config.output).format(model=config.model, device=config.device.split(":")[0], mode=config.mode, levers="".join("_" + name for name in _levers(config))))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main() -> None:
    import tyro

    config = tyro.cli(VsReferenceConfig)
    if config.side == "both":
        compare(config)
    else:
        worker(config)


if __name__ == "__main__":
    main()
