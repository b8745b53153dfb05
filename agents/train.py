"""`diffusion-gym-train`: fine-tune a diffusion policy with DDPO or RWR through the environment.

    diffusion-gym-train embedded-ddpo-is                       # CPU preset on the embedded model
    diffusion-gym-train embedded-ddpo-is --epochs 5 --output-dir runs/try
    diffusion-gym-train paper-ddpo-is                          # Stable Diffusion v1.4, GPUs
    accelerate launch --num_processes 8 -m agents.train paper-ddpo-is

Each run folder gets: config.json (the resolved config), metrics.jsonl (one line per epoch),
TensorBoard events (scalars and sample grids), checkpoint.pt (atomic, every `save_every`
epochs, the one before kept as checkpoint.prev.pt), and the final weights (final/: the LoRA
adapter or the full denoiser). The same command resumes from the checkpoint after a crash; a
command with other run-defining settings is refused (`agents.run_folder`). Every setting is
checked before the folder is touched. With several processes each samples its own prompts and
noise, rewards are gathered for the advantages, gradients are averaged, and only the main
process writes; every process reads the checkpoint when resuming, so on several machines the run
folder must be on a shared filesystem, and a run resumes with the number of processes it had.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import gymnasium as gym
import numpy as np
import torch
import tyro
from tqdm import tqdm

import diffusion_gym  # noqa: F401  (registers the ids)
from agents import run_folder
from agents.ddpo import DDPO, DDPOConfig, grpo_config
from agents.distributed import is_distributed, rank, world_size
from agents.rwr import RWR, RWRConfig
from diffusion_gym.coerce import coerce
from diffusion_gym.models.hub import quiet_libraries
from diffusion_gym.finetuning import DEFAULT_LORA_TARGETS
from diffusion_gym.policy import DiffusionPolicy, check_guidance_scale
from diffusion_gym.rewards import check_reward
from diffusion_gym.rollout import rollout

ALGORITHMS = ("ddpo-sf", "ddpo-is", "rwr-exp", "rwr-sparse")
"""The paper's four (the benchmark's grid)."""
DDPO_ALGORITHMS = ("ddpo-sf", "ddpo-is", "grpo")
"""The algorithms the DDPO agent runs: "grpo" is DDPO-IS with group-normalised advantages (`agents.ddpo.grpo_config`)."""


@dataclass
class TrainConfig:
    """A training run: environment, policy, algorithm, budget, output."""

    algorithm: Literal["ddpo-sf", "ddpo-is", "rwr-exp", "rwr-sparse", "grpo"] = "ddpo-is"
    """The algorithm (the DDPO estimator and RWR weighting follow from the name; "grpo" is DDPO-IS
    with each prompt's rewards normalised within its group of samples_per_prompt)."""
    env_id: str = "DiffusionCompressibility-v0"
    """Registered environment id: the task."""
    model: str = "embedded"
    """Hub id, local pipeline folder, "embedded" or "tiny-random"."""
    reward: str | None = None
    """Registered reward name; None: the task's own for the model (`gym.spec(env_id).kwargs["defaults"]`)."""
    reward_kwargs: dict[str, str] = field(default_factory=dict)
    """Options of the reward, e.g. `--reward-kwargs clip_model /models/clip mlp_weights /models/mlp.pth`
    (converted to the reward factory's types)."""
    prompts: str | None = None
    """Prompt set name; None: the task's for the model (`gym.spec(env_id).kwargs["defaults"]`)."""
    num_inference_steps: int | None = None
    """Sampler steps; None: the task's for the model (`gym.spec(env_id).kwargs["defaults"]`)."""
    guidance_scale: float | None = None
    """Classifier-free guidance (sampling and training); None: the policy's for the model (`diffusion_gym.policy.SAMPLING`)."""
    guidance_interval: tuple[int, int] | None = None
    """Timesteps (low, high) that guidance applies to; None: the policy's for the model (`diffusion_gym.policy.SAMPLING`)."""
    sampler: str | None = None
    """The policy's sampler (`diffusion_gym.policy.SAMPLERS`); None: "ddim" for a diffusion model, "flow-grpo" for a flow model."""
    noise_level: float | None = None
    """A flow sampler's noise (a, or η for "dance-grpo"); None: the sampler's default."""
    sde_window: tuple[int, int] | None = None
    """(first, stop): a flow sampler's stochastic steps, the rest ODE steps not trained on; None: every step."""
    sde_window_size: int | None = None
    """A stochastic window of this many steps drawn for each sampling batch (MixGRPO); None: `sde_window`."""
    num_envs: int = 16
    """Episodes sampled in parallel per process (the sampling batch)."""
    batches_per_epoch: int = 4
    """Sampling batches per epoch per process: an epoch collects num_envs × this × processes samples."""
    epochs: int = 10
    """Epochs to run (each: sample, then update)."""
    max_reward_queries: int | None = None
    """Stop once this many rewards were computed (all processes together); None: no limit."""
    max_minutes: float | None = None
    """Stop after the epoch that passes this much wall time (resumed runs count their earlier time); None: no limit."""
    samples_per_prompt: int = 1
    """Episodes per prompt in each sampling batch (1: independent prompts; k: num_envs / k prompts, k times each)."""
    overlap_rewards: bool = False
    """Score each sampling batch in a worker thread while the next is sampled (for large reward models)."""
    finetuning: Literal["lora", "full"] = "lora"
    """LoRA adapters or every denoiser parameter (the UNet, or SD3's and FLUX's transformer)."""
    lora_rank: int = 4
    """Rank of the LoRA adapters."""
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    """Module names that get LoRA adapters (default: the attention projections, as ddpo-pytorch)."""
    ddpo: DDPOConfig = field(default_factory=DDPOConfig)
    """DDPO settings (ddpo-sf, ddpo-is); the estimator is set from `algorithm`."""
    rwr: RWRConfig = field(default_factory=RWRConfig)
    """RWR settings (rwr-exp, rwr-sparse); the weighting is set from `algorithm`."""
    seed: int = 0
    """Seeds the env, the policy's noise and the agent; process r uses seed + 1000 r."""
    device: str = "auto"
    """"auto", "cpu" or "cuda" (with several processes, each its own GPU)."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """dtype of the frozen networks."""
    compile: bool = False
    """torch.compile the denoiser (how its passes run, not what they compute). The first sampling and
    the first training pass each compile a graph (a minute or more on a CPU; inductor's on-disk
    cache serves later runs), after which passes dominated by per-operation overhead (small denoisers)
    are cheaper: it can pay back only over many epochs. Off by default: no faster epoch on the
    embedded model (benchmarks/README.md, "Overheads"; `benchmarks/vs_reference.py --compile`)."""
    channels_last: bool = False
    """Keep the denoiser's convolution weights channels-last, the layout GPU convolutions in half
    precision prefer. Off by default: no faster epoch on the CPU (benchmarks/README.md)."""
    output_dir: Path = Path("runs/train")
    """The run folder: config, metrics, TensorBoard, checkpoint, final weights."""
    overwrite: bool = False
    """Delete the run in output_dir (its config, metrics, TensorBoard, checkpoints, final weights) and start afresh."""
    save_every: int = 1
    """Epochs between checkpoints."""
    images_every: int = 5
    """Epochs between sample grids in TensorBoard (0: never)."""
    tensorboard: bool = True
    """Write TensorBoard events."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.algorithm not in (*ALGORITHMS, "grpo"):
            raise ValueError(f"Unknown algorithm {self.algorithm!r}; choose one of {(*ALGORITHMS, 'grpo')}.")
        if self.env_id not in gym.registry:
            raise ValueError(f"Unknown env_id {self.env_id!r}; registered: {sorted(i for i in gym.registry if i.startswith('Diffusion'))}.")
        if self.reward is not None:
            check_reward(self.reward)
        if self.guidance_scale is not None:
            check_guidance_scale(self.guidance_scale)
        if not self.lora_targets and self.finetuning == "lora":
            raise ValueError("lora_targets is empty; name the modules that get adapters (the default: the attention projections), or use --finetuning full.")
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"output_dir {str(self.output_dir)!r} is a file; give a folder (it is made if missing).")
        self.ddpo.check("ddpo.")
        self.rwr.check("rwr.")
        autocast_dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(self.ddpo.mixed_precision)
        if self.algorithm in DDPO_ALGORITHMS and autocast_dtype and self.dtype != autocast_dtype:
            raise ValueError(
                f"ddpo.mixed_precision={self.ddpo.mixed_precision!r} trains under {autocast_dtype} autocast while dtype={self.dtype!r} samples "
                "in another precision: the importance ratios would differ from 1 by rounding alone (benchmarks/precision_ratio.py). "
                f"Sample in the same precision: --dtype {autocast_dtype}."
            )
        for name in ("num_envs", "batches_per_epoch", "epochs", "lora_rank", "save_every", "samples_per_prompt"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.max_reward_queries is not None and self.max_reward_queries < 1:
            raise ValueError(f"max_reward_queries must be >= 1 or None, got {self.max_reward_queries}.")
        if self.num_envs % self.samples_per_prompt:
            raise ValueError(f"samples_per_prompt ({self.samples_per_prompt}) must divide num_envs ({self.num_envs}).")
        samples = self.num_envs * self.batches_per_epoch
        if self.algorithm == "grpo":  # the group normalisation; the KL weight stays ddpo.kl_coef (grpo_config's presets set it)
            if self.samples_per_prompt < 2:
                raise ValueError(f"grpo normalises each prompt's rewards within its group: samples_per_prompt must be >= 2, got {self.samples_per_prompt}.")
            group = self.samples_per_prompt
            self.ddpo = dataclasses.replace(self.ddpo, estimator="is", per_prompt_buffer=group, per_prompt_min_count=group)
        if self.algorithm in DDPO_ALGORITHMS:
            if self.algorithm != "grpo":
                self.ddpo = dataclasses.replace(self.ddpo, estimator=self.algorithm.split("-")[1])
            per_step = self.ddpo.train_batch_size * self.ddpo.gradient_accumulation_steps
            if samples % per_step:
                raise ValueError(
                    f"The samples of an epoch (num_envs × batches_per_epoch = {samples}) must be divisible by "
                    f"ddpo.train_batch_size × ddpo.gradient_accumulation_steps = {per_step}, so every optimizer step sees as many samples."
                )
        else:
            self.rwr = dataclasses.replace(self.rwr, weighting=self.algorithm.split("-")[1])

    def env_kwargs(self) -> dict:
        """The env settings this run gives (the rest are the task's and the model's defaults)."""
        settings = (("reward", self.reward), ("prompts", self.prompts), ("num_inference_steps", self.num_inference_steps))
        kwargs = {k: v for k, v in settings if v is not None}
        if self.reward_kwargs:
            kwargs["reward_kwargs"] = dict(self.reward_kwargs)
        return kwargs

    def sampling(self) -> dict:
        """The policy settings this run gives (the rest are the policy's defaults for the model)."""
        names = ("guidance_scale", "guidance_interval", "sampler", "noise_level", "sde_window", "sde_window_size")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """This config with `overrides` applied, as a new, validated config.

        Args:
            overrides: {"num_envs": 8, "ddpo.clip_range": "1e-3"} or nested {"ddpo": {"clip_range": 1e-3}};
                text is converted to each setting's type (a command line's `--train num_envs 8`).

        Raises:
            ValueError: an unknown setting (the message lists the known ones), or a value of the wrong type.
        """
        return _override(self, overrides, "")


def _override(config: Any, overrides: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    changes: dict[str, Any] = {}
    nested: dict[str, dict] = {}
    for key, value in overrides.items():
        head, _, rest = str(key).replace("-", "_").partition(".")
        if head not in names:
            raise ValueError(f"Unknown setting {prefix + head!r}; {type(config).__name__} has {names}.")
        if dataclasses.is_dataclass(getattr(config, head)):
            if not rest and not isinstance(value, dict):
                raise ValueError(f"{prefix + head} is a group of settings; set one of them, e.g. {prefix + head}.{dataclasses.fields(getattr(config, head))[0].name}.")
            nested.setdefault(head, {}).update({rest: value} if rest else value)
        elif rest and isinstance(getattr(config, head), dict):  # an entry of a mapping: "reward_kwargs.model"
            changes[head] = {**changes.get(head, getattr(config, head)), rest: value}
        elif isinstance(getattr(config, head), dict) and isinstance(value, str):
            raise ValueError(f"{prefix + head} is a mapping; set its entries as {prefix + head}.NAME VALUE, e.g. {prefix + head}.model /models/clip.")
        elif rest:
            raise ValueError(f"{prefix + head} has no settings under it; {prefix + head + '.' + rest!r} is not a setting.")
        else:
            changes[head] = coerce(value, hints[head], prefix + head)
    for head, group in nested.items():
        changes[head] = _override(getattr(config, head), group, f"{prefix}{head}.")
    return dataclasses.replace(config, **changes)


# ---------------------------------------------------------------- presets
# The embedded model's LoRA reaches its convolutions too: its attention runs only at 8×8, so
# adapters there alone cannot change fine texture, which is what JPEG size measures. The prompt
# reaches that UNet by two roads, cross-attention and the pooled text embedding added to the
# timestep embedding (`add_embedding`): both get adapters, so that what a prompt asks for can be
# learned too.
EMBEDDED_TEXT_PATH = ("add_embedding.pool.q_proj", "add_embedding.pool.k_proj", "add_embedding.pool.v_proj", "add_embedding.proj")
EMBEDDED_LORA_TARGETS = (*DEFAULT_LORA_TARGETS, "conv1", "conv2", "time_emb_proj", "proj_in", "proj_out", "conv_in", "conv_out", *EMBEDDED_TEXT_PATH)


# The embedded presets' learning rates: the picks of the tuning sweep that treats every algorithm
# alike (`python -m benchmarks.tune`, table in benchmarks/results/tuning.md; a test holds them equal).
EMBEDDED_LEARNING_RATES = {"ddpo-is": 1.5e-3, "ddpo-sf": 2e-3, "rwr-exp": 3.7e-6, "rwr-sparse": 1e-4}


def embedded_preset(algorithm: str) -> TrainConfig:
    """The embedded model on 2 CPU cores: 10 steps without guidance (half the cost of guided
    sampling and training), LoRA rank 8 on attention and convolutions, 64 samples an epoch as
    8 prompts × 8 (per-prompt advantages from the first epoch), at most 10,000 reward queries
    or 30 minutes; the learning rate is the algorithm's in `EMBEDDED_LEARNING_RATES`.

    DDPO: IS makes 2 passes over each batch on half the steps (8 optimizer steps an epoch for
    the cost of 4 full ones), SF one step an epoch; steps with σ_t below a fifth of the first
    step's are not trained on (at 10 steps the last two), and the clip range is 1e-3. RWR: 4
    updates of 32 an iteration, β = 10 (the paper's 0.2 is for rewards in kB of 512×512
    images, whose spread is far larger than a 32×32 image's)."""
    is_ddpo_is = algorithm == "ddpo-is"
    return TrainConfig(
        algorithm=algorithm,
        model="embedded",
        num_inference_steps=10,
        guidance_scale=1.0,
        num_envs=16,
        batches_per_epoch=4,
        samples_per_prompt=8,
        epochs=1000,
        max_reward_queries=10_000,
        max_minutes=30.0,
        lora_rank=8,
        lora_targets=EMBEDDED_LORA_TARGETS,
        ddpo=DDPOConfig(
            learning_rate=EMBEDDED_LEARNING_RATES["ddpo-sf" if algorithm == "ddpo-sf" else "ddpo-is"], train_batch_size=16, num_inner_epochs=2 if is_ddpo_is else 1,
            timestep_fraction=0.5 if is_ddpo_is else 1.0, clip_range=1e-3, min_step_std_ratio=0.2, per_prompt_min_count=8,
        ),  # fmt: skip
        rwr=RWRConfig(beta=10.0, learning_rate=EMBEDDED_LEARNING_RATES["rwr-sparse" if algorithm == "rwr-sparse" else "rwr-exp"], train_batch_size=32, num_updates=4),
        output_dir=Path(f"runs/embedded-{algorithm}"),
    )


def paper_preset(algorithm: str) -> TrainConfig:
    """The paper's setting on GPUs: Stable Diffusion v1.4, 50 steps, guidance 5, LoRA as in
    ddpo-pytorch (lr 3e-4), 256 samples an epoch with 8 processes × 32; DDPO-IS: 4 updates of 64;
    RWR: 10k samples an iteration, batch 128, 400 updates."""
    is_rwr = algorithm.startswith("rwr")
    return TrainConfig(
        algorithm=algorithm,
        model="CompVis/stable-diffusion-v1-4",
        num_envs=8,
        batches_per_epoch=157 if is_rwr else 4,  # RWR: 8 processes × 8 × 157 ≈ 10k samples an iteration
        epochs=100,
        device="cuda",
        dtype="float16",
        ddpo=DDPOConfig(learning_rate=3e-4, train_batch_size=8, gradient_accumulation_steps=1, clip_range=1e-4, mixed_precision="fp16"),
        rwr=RWRConfig(learning_rate=3e-4, train_batch_size=128 // 8, num_updates=400),
        output_dir=Path(f"runs/paper-{algorithm}"),
    )


def embedded_flow_preset() -> TrainConfig:
    """GRPO on the embedded flow model on 2 CPU cores, with the budget, LoRA and sampling batch of
    `embedded_preset("ddpo-is")` so the two compare side by side: 10 steps of Flow-GRPO's SDE
    (a = 0.7) without guidance, 8 samples of each prompt (2 prompts a sampling batch of 16, 64
    samples an epoch), each prompt normalised within its group; clip range 1e-3 and no KL term (as the DDPO-IS preset: the reference pass would cost a
    third more a step); steps whose std is below a fifth of the largest are not trained on (the
    same rule as the DDPO-IS preset's: at 10 steps of this SDE the last three)."""
    config = embedded_preset("ddpo-is")
    return dataclasses.replace(
        config, algorithm="grpo", model="embedded-flow", output_dir=Path("runs/embedded-flow-grpo"),
        ddpo=grpo_config(8, **{f: getattr(config.ddpo, f) for f in ("learning_rate", "train_batch_size", "num_inner_epochs", "timestep_fraction", "clip_range", "min_step_std_ratio")}, kl_coef=0.0),
    )  # fmt: skip


def sd35_flow_grpo_preset() -> TrainConfig:
    """Flow-GRPO's PickScore settings for SD3.5-Medium (its config `pickscore_sd3`), on GPUs: 10
    SDE steps (a = 0.7) at guidance 4.5, 24 samples per prompt, LoRA rank 32 at lr 3e-4, clip
    range 1e-4 on per-dimension log-probs, KL β 0.01, bf16; 8 processes. One difference: the
    images are SD3.5-M's default 1024 px (Flow-GRPO samples 512 px; the env has no size option yet)."""
    return TrainConfig(
        algorithm="grpo", env_id="DiffusionAesthetic-v0", model="stabilityai/stable-diffusion-3.5-medium", reward="pickscore",
        num_inference_steps=10, guidance_scale=4.5, num_envs=24, batches_per_epoch=2, samples_per_prompt=24, epochs=1000,
        lora_rank=32, device="cuda", dtype="bfloat16",
        ddpo=grpo_config(24, learning_rate=3e-4, train_batch_size=8, gradient_accumulation_steps=3, kl_coef=0.01, mixed_precision="bf16"),
        output_dir=Path("runs/sd35-flow-grpo"),
    )  # fmt: skip


PRESETS: dict[str, tuple[str, TrainConfig]] = {
    **{f"embedded-{a}": (f"{a} on the embedded model, 2 CPU cores", embedded_preset(a)) for a in ALGORITHMS},
    **{f"paper-{a}": (f"{a} with the paper's settings on Stable Diffusion v1.4, GPUs", paper_preset(a)) for a in ALGORITHMS},
    "embedded-flow-grpo": ("grpo on the embedded flow model, 2 CPU cores", embedded_flow_preset()),
    "sd35-flow-grpo": ("grpo with Flow-GRPO's PickScore settings on SD3.5-Medium, GPUs", sd35_flow_grpo_preset()),
}


# ---------------------------------------------------------------- the run
def _trainable_state(policy: DiffusionPolicy) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in policy.denoiser.named_parameters() if p.requires_grad}


def train(config: TrainConfig, on_epoch: Callable[[DiffusionPolicy, dict], dict] | None = None) -> list[dict]:
    """Run (or resume) a training run; returns the metrics of every epoch.

    Everything is checked before the run folder is touched: the config, the folder (a run with
    other settings in it is refused), the env with its model and reward, the policy and agent.

    Args:
        config: the run.
        on_epoch: called on the main process after each epoch's update with (policy, the
            epoch's metrics); the dict it returns joins those metrics (benchmarks evaluate
            here). Its time is not counted in the run's `seconds`.
    """
    main_process = rank() == 0
    out = config.output_dir
    resolved = run_folder.as_saved(config)
    plan = run_folder.plan(out, resolved, overwrite=config.overwrite)

    device = config.device
    if device == "cuda" and is_distributed():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank()))}"  # one GPU per process
    envs = gym.make_vec(config.env_id, num_envs=config.num_envs, model=config.model, device=device, dtype=config.dtype, array_type="torch", **config.env_kwargs())
    policy = DiffusionPolicy.from_env(envs, **config.sampling())
    if config.finetuning == "lora":
        policy.enable_lora(rank=config.lora_rank, target_modules=config.lora_targets, seed=config.seed)  # the same adapters on every process
    else:
        policy.enable_full_finetuning(keep_reference=config.ddpo.kl_coef > 0)
    policy.optimize(compile=config.compile, channels_last=config.channels_last)
    process_seed = config.seed + 1000 * rank()
    agent_generator = torch.Generator().manual_seed(process_seed)
    agent = DDPO(policy, config.ddpo, agent_generator) if config.algorithm in DDPO_ALGORITHMS else RWR(policy, config.rwr, agent_generator)
    sampling_generator = torch.Generator(policy.device).manual_seed(process_seed)
    envs.reset(seed=process_seed)

    start_epoch, queries, history, seconds_before = 0, 0, [], 0.0
    state = run_folder.load_checkpoint(out, set_aside_damaged=main_process) if plan.resume else None
    if state is not None and state.get("world_size", 1) != world_size():
        raise ValueError(
            f"{out / run_folder.CHECKPOINT} was written by {state.get('world_size', 1)} processes and this run has {world_size()}; "
            f"resume with {state.get('world_size', 1)} (accelerate launch --num_processes N), or pass --overwrite to start afresh."
        )
    if state is not None:
        with torch.no_grad():
            for name, p in policy.denoiser.named_parameters():
                if name in state["trainable"]:
                    p.copy_(state["trainable"][name])
        agent.load_state_dict(state["agent"])
        envs.unwrapped.np_random.bit_generator.state = state["env_rng"][rank()]
        sampling_generator.set_state(state["sampling_rng"][rank()])
        start_epoch, queries, history, seconds_before = state["epoch"], state["queries"], state["history"], state["seconds"]
    if main_process:
        run_folder.start(out, resolved, dataclasses.replace(plan, resume=state is not None), start_epoch, queries)
        if state is not None:  # epochs after the checkpoint are run again: their lines go
            (out / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in history))
            changed = ", ".join(f"{key} {a} -> {b}" for key, (a, b) in plan.changed.items())
            print(f"resuming {out} at epoch {start_epoch} ({queries} reward queries so far)" + (f"; changed: {changed}" if changed else ""))

    writer = None
    if config.tensorboard and main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(out / "tensorboard", purge_step=queries + 1 if state is not None else None)  # drop events after the checkpoint
    start = time.perf_counter() - seconds_before
    bar = tqdm(range(start_epoch, config.epochs), desc=config.algorithm, unit="epoch", disable=not (config.progress and main_process), initial=start_epoch, total=config.epochs)
    for epoch in bar:
        batch = rollout(
            envs, policy, config.batches_per_epoch, generator=sampling_generator, overlap_rewards=config.overlap_rewards, samples_per_prompt=config.samples_per_prompt
        )
        queries += len(batch) * world_size()
        rewards = _gather(batch.rewards)
        metrics = agent.update(batch)
        record = {"epoch": epoch, "reward_queries": queries, "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std())}
        if "gold" in batch.reward_info:  # the embedded tasks' gold reference, beside the reward it stands behind
            record["gold_mean"] = float(_gather(torch.as_tensor(batch.reward_info["gold"], device=batch.rewards.device)).mean())
        record.update(metrics, seconds=time.perf_counter() - start)
        if on_epoch is not None and main_process:
            hook_start = time.perf_counter()
            record.update(on_epoch(policy, record))
            start += time.perf_counter() - hook_start  # the hook's time is not the run's
        history.append(record)
        if main_process:
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            if writer:
                for key, value in record.items():
                    if key not in ("epoch", "reward_queries"):
                        writer.add_scalar(key, value, queries)
                if config.images_every and epoch % config.images_every == 0:
                    writer.add_images("samples", torch.from_numpy(batch.images[:16]).permute(0, 3, 1, 2), queries)
            bar.set_postfix(reward=f"{record['reward_mean']:.4f}", queries=queries)
        done = (config.max_reward_queries is not None and queries >= config.max_reward_queries) or (
            config.max_minutes is not None and record["seconds"] >= 60 * config.max_minutes
        )
        if (epoch + 1) % config.save_every == 0 or epoch + 1 == config.epochs or done:
            _checkpoint(out, policy, agent, envs, sampling_generator, epoch + 1, queries, history, time.perf_counter() - start)
        if done:
            break

    if main_process:
        final = out / "final"
        with quiet_libraries():  # diffusers warns about dtypes while saving adapters, whatever the dtype
            if config.finetuning == "lora":
                policy.denoiser.save_lora_adapter(final)
            else:
                policy.denoiser.save_pretrained(final)
        if writer:
            writer.close()
        if history:
            last = history[-1]
            print(
                f"{config.algorithm}: training batches' mean reward {history[0]['reward_mean']:.4f} (epoch {history[0]['epoch']}) -> {last['reward_mean']:.4f} "
                f"(epoch {last['epoch']}) after {last['reward_queries']} reward queries, {last['seconds']:.0f} s (each batch has its own prompts and noise)"
            )
    envs.close()
    return history


def _gather(values: torch.Tensor) -> np.ndarray:
    """Every process's values, for metrics."""
    if not is_distributed():
        return values.cpu().numpy()
    parts = [torch.empty_like(values) for _ in range(world_size())]
    torch.distributed.all_gather(parts, values.contiguous())
    return torch.cat(parts).cpu().numpy()


def _checkpoint(out, policy, agent, envs, sampling_generator, epoch, queries, history, seconds) -> None:
    """Every process contributes its RNG states; the main process writes."""
    env_rng, sampling_rng = envs.unwrapped.np_random.bit_generator.state, sampling_generator.get_state()
    if is_distributed():
        env_states, sampling_states = [None] * world_size(), [None] * world_size()
        torch.distributed.all_gather_object(env_states, env_rng)
        torch.distributed.all_gather_object(sampling_states, sampling_rng)
    else:
        env_states, sampling_states = [env_rng], [sampling_rng]
    error: OSError | None = None
    if rank() == 0:
        state = {
            "trainable": _trainable_state(policy), "agent": agent.state_dict(),
            "env_rng": env_states, "sampling_rng": sampling_states, "world_size": world_size(),
            "epoch": epoch, "queries": queries, "history": history, "seconds": seconds,
        }  # fmt: skip
        try:
            run_folder.save_checkpoint(out, state)
        except OSError as failure:
            error = failure
    if is_distributed():  # every process stops if the checkpoint could not be written (none waits at the next collective)
        message = [None if error is None else str(error)]
        torch.distributed.broadcast_object_list(message, src=0)
        if message[0] is not None and error is None:
            raise OSError(f"The main process could not write the checkpoint: {message[0]}")
    if error is not None:
        raise error


def main() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by accelerate or torchrun
        from accelerate import PartialState

        PartialState()  # sets up the process group (gloo on CPUs, NCCL on GPUs)
    train(tyro.extras.overridable_config_cli(PRESETS, prog="diffusion-gym-train"))


if __name__ == "__main__":
    main()
