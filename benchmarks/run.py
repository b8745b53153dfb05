"""`diffusion-gym-bench`: the paper's comparison as a grid of (task × algorithm × seed) runs.

    diffusion-gym-bench quick                      # embedded model, 3 tasks, DDPO-IS against RWR, about 4 min on 2 cores
    diffusion-gym-bench cpu                        # embedded model, 4 tasks × 5 algorithms × 3 seeds (about 2 hours on 2 cores)
    diffusion-gym-bench paper                      # Stable Diffusion v1.4, the paper's settings (GPUs)
    diffusion-gym-bench quick --budget 320 --output-dir runs/bench-try

Every cell is a `diffusion-gym-train` run (same code, its preset with the task, seed and reward
query budget set) evaluated every few epochs on fixed prompts and noise: the training prompts
and, for generalisation, prompts never trained on. On the embedded model every evaluation also
records prompt faithfulness (the toy-world captioner's per-attribute accuracy against the
prompt), so over-optimisation shows as a falling curve. Writes, in the output folder:

- `results.json`: every evaluation point of every cell, the config, versions, wall times;
- `table.md`: final reward (mean and 95 % interval over seeds) per task and algorithm, the starting model
  first, and the generalisation table (gain on training prompts vs held-out prompts);
- `curves.png`: reward (and faithfulness) against reward queries, a line per algorithm with a
  band over seeds, a panel per task;
- `samples/`: grids of the starting and the fine-tuned model for the same prompts and noise;
- `cells/TASK/ALGORITHM/seedS/`: each run's folder (metrics.jsonl, checkpoint, final weights).

A re-run skips finished cells and resumes an interrupted one from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import tyro
from tqdm import tqdm

import diffusion_gym  # noqa: F401  (registers the ids)
from agents import run_folder
from agents.train import ALGORITHMS, TrainConfig, embedded_preset, paper_preset, train
from benchmarks.verdict import gap, gold_gaps, interval, mean_and_standard_error, verdict_table
from diffusion_gym.embedded import world
from diffusion_gym.embedded.paraphrase import recall
from diffusion_gym.images import prompt_grid
from diffusion_gym.policy import DiffusionPolicy
from diffusion_gym.prompts import held_out_set, load_prompts
from diffusion_gym.rewards import jpeg_size_kb
from embedded_tools.evaluate import sample

ALGORITHM_NAMES = {"ddpo-is": "DDPO-IS", "ddpo-sf": "DDPO-SF", "rwr-exp": "RWR", "rwr-sparse": "RWR-sparse", "ddpo-is-kl": "DDPO-IS + KL"}
# Variants a grid can run beside the four algorithms: name -> (algorithm, overrides of its preset).
# The KL variant adds the per-step KL penalty toward the starting model (weighted for the
# presets' per-dimension-mean log-probs), to show whether it holds back over-optimisation.
VARIANTS: dict[str, tuple[str, dict]] = {"ddpo-is-kl": ("ddpo-is", {"ddpo": {"kl_coef": 0.1}})}


@dataclass
class BenchConfig:
    """A grid of runs and how each is evaluated."""

    preset: str = "embedded"
    """Training preset family each cell starts from: "embedded" (CPU) or "paper" (Stable Diffusion, GPUs)."""
    tasks: tuple[str, ...] = ("DiffusionCompressibility-v0", "DiffusionIncompressibility-v0")
    """Environment ids (the tasks)."""
    algorithms: tuple[str, ...] = ALGORITHMS
    """Algorithms, as `diffusion-gym-train` names them, or variants of them (`VARIANTS`: "ddpo-is-kl")."""
    seeds: tuple[int, ...] = (0,)
    """Seeds per (task, algorithm)."""
    budget: int = 1280
    """Reward queries per run (training samples; evaluation samples are not counted)."""
    max_minutes: float | None = None
    """Wall-time limit per run, evaluations not counted (None: the budget alone)."""
    eval_every: int = 5
    """Epochs between evaluations (and one at the end)."""
    eval_prompts: int = 32
    """Prompts evaluated per split (a fixed spread of the task's set and of the held-out set), one sample each."""
    held_out_prompts: str | None = "auto"
    """Prompt set never trained on, for generalisation; "auto": the held-out set of the task's
    prompt set if it has one (`diffusion_gym.prompts.HELD_OUT_SETS`); None: skip."""
    eval_seed: int = 1234
    """Seeds the evaluation noise: every evaluation sees the same prompts and noise."""
    train: dict[str, str] = field(default_factory=dict)
    """Overrides of the training preset for every cell: `--train num_envs 8 ddpo.clip_range 1e-3`
    (in code also nested: {"ddpo": {"clip_range": 1e-3}}); checked against `TrainConfig` before any run."""
    preset_train: tyro.conf.Suppress[dict[str, Any]] = field(default_factory=dict)
    """This bench preset's own overrides of the training preset (typed values), applied before `train`."""
    output_dir: Path = Path("runs/bench")
    """Where everything goes."""
    workers: int = 1
    """Processes that run cells side by side, each with its share of the CPU threads."""

    def __post_init__(self) -> None:
        unknown = [a for a in self.algorithms if a not in ALGORITHMS and a not in VARIANTS]
        if unknown:
            raise ValueError(f"Unknown algorithms {unknown}; choose from {ALGORITHMS} or the variants {tuple(VARIANTS)}.")
        unknown_tasks = [t for t in self.tasks if t not in gym.registry]
        if unknown_tasks:
            raise ValueError(f"Unknown tasks {unknown_tasks}; registered: {[i for i in gym.registry if i.startswith('Diffusion')]}.")
        if self.preset not in ("embedded", "paper"):
            raise ValueError(f"preset must be 'embedded' or 'paper', got {self.preset!r}.")
        for name in ("budget", "eval_every", "eval_prompts", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")


PRESETS: dict[str, tuple[str, BenchConfig]] = {
    "quick": (
        "embedded model, the aesthetic, compressibility and incompressibility tasks, DDPO-IS against RWR, one seed, two processes: about 4 minutes on 2 cores",
        BenchConfig(
            tasks=("DiffusionAesthetic-v0", "DiffusionCompressibility-v0", "DiffusionIncompressibility-v0"), algorithms=("ddpo-is", "rwr-exp"),
            budget=384, eval_every=6, eval_prompts=64, held_out_prompts=None, workers=2,  # generalisation is the cpu grid's
            preset_train={
                "num_envs": 16, "batches_per_epoch": 2, "samples_per_prompt": 4, "num_inference_steps": 5, "ddpo.per_prompt_min_count": 4,
                # 5 steps and 32-sample epochs are not the regime the sweep tuned (10 steps, 64): quick
                # keeps both algorithms at the sweep's centres, the presets' rates before it
                "ddpo.learning_rate": 5e-4, "rwr.learning_rate": 1e-4,
            },
            output_dir=Path("runs/bench-quick"),
        ),  # fmt: skip
    ),
    "cpu": (
        "embedded model, the four tasks, the four algorithms and DDPO-IS with the KL penalty, 3 seeds, 640 reward queries (the sweep's budget), two processes: about 2 hours on 2 cores",
        BenchConfig(
            tasks=("DiffusionAesthetic-v0", "DiffusionCompressibility-v0", "DiffusionIncompressibility-v0", "DiffusionPromptAlignment-v0"),
            algorithms=(*ALGORITHMS, "ddpo-is-kl"), seeds=(0, 1, 2), budget=640, eval_every=2, eval_prompts=32, workers=2,
            output_dir=Path("runs/bench-cpu"),
        ),  # fmt: skip
    ),
    "paper": (
        "Stable Diffusion v1.4 with the paper's settings and prompt sets, 4 tasks (GPUs; accelerate for several)",
        BenchConfig(
            preset="paper",
            tasks=("DiffusionAesthetic-v0", "DiffusionCompressibility-v0", "DiffusionIncompressibility-v0", "DiffusionPromptAlignment-v0"),
            budget=50_000, eval_every=10, eval_prompts=64, held_out_prompts=None, output_dir=Path("runs/bench-paper"),
        ),  # fmt: skip
    ),
}


# ---------------------------------------------------------------- one cell
def cell_config(config: BenchConfig, task: str, algorithm: str, seed: int) -> TrainConfig:
    """The training run of a cell: the preset, the bench's overrides, the variant's, the task, seed and budget."""
    algorithm_of_preset, variant_overrides = VARIANTS.get(algorithm, (algorithm, {}))
    merged = (embedded_preset if config.preset == "embedded" else paper_preset)(algorithm_of_preset)
    for overrides in (config.preset_train, config.train, variant_overrides):  # typed and checked: "--train num_envs 8"
        merged = merged.with_overrides(overrides)
    epochs = -(-config.budget // (merged.num_envs * merged.batches_per_epoch))  # enough for the budget (one process)
    return dataclasses.replace(
        merged, env_id=task, seed=seed, max_reward_queries=config.budget, max_minutes=config.max_minutes, epochs=epochs,
        output_dir=config.output_dir / "cells" / task / algorithm / f"seed{seed}", tensorboard=False,
    )  # fmt: skip


class Evaluator:
    """Samples fixed prompts with fixed noise through the task's env and scores them."""

    def __init__(self, config: BenchConfig, train_config: TrainConfig, policy: DiffusionPolicy):
        self.envs = gym.make_vec(train_config.env_id, num_envs=min(32, config.eval_prompts), model=policy.model, **train_config.env_kwargs())
        self.splits = {"train": _spread(self.envs.unwrapped.prompts, config.eval_prompts)}
        held_out = held_out_set(self.envs.unwrapped.prompts) if config.held_out_prompts == "auto" else config.held_out_prompts
        if held_out:
            self.splits["held_out"] = _spread(load_prompts(held_out), config.eval_prompts)
        self.seed = config.eval_seed
        self.embedded = policy.model.name == "embedded"
        self.captioner = None
        if self.embedded:
            from diffusion_gym.embedded.captioner import load_captioner

            self.captioner = load_captioner()

    def __call__(self, policy: DiffusionPolicy) -> tuple[dict, dict[str, np.ndarray]]:
        """({metric: value}, {split: images})."""
        metrics, images_by_split = {}, {}
        for split, prompts in self.splits.items():
            images = sample(self.envs, policy, prompts, seed=self.seed, desc=f"eval {split}")
            rewards, info = self.envs.unwrapped.score(images, prompts)
            metrics[f"eval_{split}_reward"] = float(rewards.mean())
            metrics[f"eval_{split}_rewards"] = [float(r) for r in rewards]  # per prompt: the paired evaluation noise
            if "gold" in info:
                metrics[f"eval_{split}_gold"] = float(np.mean(info["gold"]))
            metrics[f"eval_{split}_jpeg_kb"] = float(jpeg_size_kb(images).mean())
            if self.captioner is not None:  # the attributes each prompt names, read right (in any of their words)
                captions = self.captioner.caption(images)
                metrics[f"eval_{split}_faithfulness"] = float(np.mean([recall(p, c) for p, c in zip(prompts, captions)]))
                backgrounds = [world.parse_caption(c)[3] for c in captions]  # the strategy a policy found (flat? noisy?)
                metrics.update({f"eval_{split}_background_{b}": float(np.mean([x == b for x in backgrounds])) for b in world.ATTRIBUTES["background"]})
            images_by_split[split] = images
        return metrics, images_by_split


def _spread(prompts, n: int) -> list[str]:
    """n prompts evenly spread over a prompt set (all of them if it has fewer)."""
    indices = np.linspace(0, len(prompts) - 1, min(n, len(prompts))).round().astype(int)
    return [prompts[i] for i in indices]


def run_cell(config: BenchConfig, task: str, algorithm: str, seed: int, start_metrics: dict) -> dict:
    """Train one cell (or resume it) with evaluations; returns its summary."""
    train_config = cell_config(config, task, algorithm, seed)
    out = train_config.output_dir
    evaluator: Evaluator | None = None
    last_images: dict = {}

    def on_epoch(policy: DiffusionPolicy, record: dict) -> dict:
        nonlocal evaluator, last_images
        final = record["reward_queries"] >= config.budget or (config.max_minutes is not None and record["seconds"] >= 60 * config.max_minutes)
        if (record["epoch"] + 1) % config.eval_every and not final:
            return {}
        evaluator = evaluator or Evaluator(config, train_config, policy)
        metrics, last_images = evaluator(policy)
        return metrics

    start = time.perf_counter()
    history = train(train_config, on_epoch=on_epoch)
    evaluations = [{k: v for k, v in r.items() if k == "reward_queries" or k.startswith("eval_")} for r in history if any(k.startswith("eval_") for k in r)]
    summary = {
        "task": task, "algorithm": algorithm, "seed": seed, "wall_seconds": time.perf_counter() - start,
        "train_seconds": history[-1]["seconds"] if history else 0.0, "reward_queries": history[-1]["reward_queries"] if history else 0,
        "evaluations": [{"reward_queries": 0, **start_metrics}] + evaluations,
        "train_reward": [(r["reward_queries"], r["reward_mean"]) for r in history],
    }  # fmt: skip
    if last_images:
        (out / "end_images.npz").parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / "end_images.npz", **last_images)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def start_of_task(config: BenchConfig, task: str, out: Path) -> tuple[dict, dict]:
    """The starting model's evaluation on a task (shared by its cells), cached in the output folder."""
    path = out / "start" / f"{task}.json"
    images_path = out / "start" / f"{task}.npz"
    if path.is_file() and images_path.is_file():
        return json.loads(path.read_text()), dict(np.load(images_path))
    train_config = cell_config(config, task, config.algorithms[0], 0)
    envs = gym.make_vec(task, num_envs=1, model=train_config.model, device=train_config.device, dtype=train_config.dtype, **train_config.env_kwargs())
    policy = DiffusionPolicy.from_env(envs, **train_config.sampling())
    metrics, images = Evaluator(config, train_config, policy)(policy)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=1) + "\n")
    np.savez_compressed(images_path, **images)
    return metrics, images


# ---------------------------------------------------------------- the grid
def check_cells(config: BenchConfig) -> dict[tuple[str, str, int], bool]:
    """Every cell's training config, built and checked before anything is written (bad
    overrides fail here), and whether the cell is finished: its summary is there and its run
    had these very settings. A cell folder holding a run with other settings is refused."""
    if config.output_dir.exists() and not config.output_dir.is_dir():
        raise ValueError(f"output_dir {str(config.output_dir)!r} is a file; give a folder (it is made if missing).")
    finished = {}
    for cell in ((t, a, s) for t in config.tasks for a in config.algorithms for s in config.seeds):
        train_config = cell_config(config, *cell)
        fix = f"use another --output-dir for this bench, or delete {train_config.output_dir} to run that cell again"
        plan = run_folder.plan(train_config.output_dir, run_folder.as_saved(train_config), overwrite=False, fix=fix)
        budget_changed = any(key in ("epochs", "max_reward_queries", "max_minutes") for key in plan.changed)  # a moved folder is still finished
        finished[cell] = (train_config.output_dir / "summary.json").is_file() and not budget_changed
    return finished


def _run_shard(config: BenchConfig, shard: int, threads: int) -> None:
    """In a worker process: the unfinished cells whose index is `shard` modulo `config.workers`."""
    torch.set_num_threads(threads)
    finished = check_cells(config)
    starts = {task: start_of_task(config, task, config.output_dir) for task in config.tasks}
    for index, (task, algorithm, seed) in enumerate(finished):
        if index % config.workers == shard and not finished[(task, algorithm, seed)]:
            run_cell(config, task, algorithm, seed, starts[task][0])


def run(config: BenchConfig) -> dict:
    out = config.output_dir
    finished = check_cells(config)
    out.mkdir(parents=True, exist_ok=True)
    if config.workers > 1 and not all(finished.values()):
        import multiprocessing

        for task in config.tasks:  # once, before the workers (they read it)
            start_of_task(config, task, out)
        threads = max(1, torch.get_num_threads() // config.workers)
        with multiprocessing.get_context("spawn").Pool(config.workers) as pool:
            pool.starmap(_run_shard, [(config, shard, threads) for shard in range(config.workers)])
        finished = check_cells(config)
    cells = list(finished)
    starts, summaries = {}, []
    overall = tqdm(total=len(cells), desc="bench", unit="cell")
    for task in config.tasks:
        starts[task] = start_of_task(config, task, out)
    for task, algorithm, seed in cells:
        summary_path = cell_config(config, task, algorithm, seed).output_dir / "summary.json"
        overall.set_postfix_str(f"{task} {algorithm} seed {seed}")
        if finished[(task, algorithm, seed)]:
            summaries.append(json.loads(summary_path.read_text()))  # finished before: skipped
        else:
            summaries.append(run_cell(config, task, algorithm, seed, starts[task][0]))
        overall.update()
        start_reward, end_reward = summaries[-1]["evaluations"][0].get("eval_train_reward", float("nan")), _final(summaries[-1], "train")
        tqdm.write(
            f"{task} {algorithm} seed {seed}: evaluation reward {start_reward:.4f} -> {end_reward:.4f} (the same prompts and noise) "
            f"after {summaries[-1]['reward_queries']} queries, {summaries[-1]['train_seconds']:.0f} s"
        )
    overall.close()

    results = {
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
        "versions": _versions(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch_threads": torch.get_num_threads()},
        "start": {task: metrics for task, (metrics, _) in starts.items()},
        "cells": summaries,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    table = tables(results)
    (out / "table.md").write_text(table)
    plot_curves(results, out / "curves.png")
    plot_reward_vs_gold(results, out / "reward_vs_gold.png")
    write_sample_grids(config, starts, out)
    print(table)
    return results


def _final(summary: dict, split: str, metric: str = "reward") -> float:
    return summary["evaluations"][-1].get(f"eval_{split}_{metric}", float("nan"))


def _versions() -> dict:
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__, "gymnasium": gym.__version__, "numpy": np.__version__}


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """mean(a − b) and its standard error, for two evaluations of the same prompts with the same
    noise (the evaluation's own noise: which prompts were drawn, and their noise)."""
    return mean_and_standard_error(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))


def against_noise(results: dict, rwr: str = "rwr-exp") -> list[str]:
    """Per task, DDPO algorithm and seed: its end minus its start, and its lead over RWR at the
    end, each with twice its paired standard error (same prompts and noise); a difference counts
    if it exceeds that."""
    lines = [
        "DDPO against the evaluation noise (training prompts; ± twice the standard error of the paired difference over the "
        "evaluation prompts, which share their noise; a difference counts when it is larger).\n",
        f"| task | algorithm | seed | end − start | counts | lead over {ALGORITHM_NAMES[rwr]} at the end | counts |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, start in results["start"].items():
        for cell in (c for c in results["cells"] if c["task"] == task and c["algorithm"].startswith("ddpo")):
            other = next((c for c in results["cells"] if c["task"] == task and c["algorithm"] == rwr and c["seed"] == cell["seed"]), None)
            end = cell["evaluations"][-1].get("eval_train_rewards")
            if end is None or "eval_train_rewards" not in start:
                continue
            gain, gain_se = paired_difference(end, start["eval_train_rewards"])
            row = f"| {task} | {ALGORITHM_NAMES.get(cell['algorithm'], cell['algorithm'])} | {cell['seed']} | {gain:+.4f} ± {2 * gain_se:.4f} | {'yes' if gain > 2 * gain_se else 'no'} |"
            if other is not None and "eval_train_rewards" in other["evaluations"][-1]:
                lead, lead_se = paired_difference(end, other["evaluations"][-1]["eval_train_rewards"])
                row += f" {lead:+.4f} ± {2 * lead_se:.4f} | {'yes' if lead > 2 * lead_se else 'no'} |"
            else:
                row += " | |"
            lines.append(row)
    return lines if len(lines) > 3 else []


def tables(results: dict) -> str:
    """table.md: final reward per task and algorithm (mean and 95 % t-interval over seeds), start
    first; DDPO against the evaluation noise; the verdict table (several seeds); generalisation;
    the gold reference and reward against gold (rewards that have one); on the embedded model,
    faithfulness."""
    cells, tasks = results["cells"], list(results["start"])
    algorithms = list(dict.fromkeys(c["algorithm"] for c in cells))

    def values(task, algorithm, split, metric="reward"):
        return np.array([_final(c, split, metric) for c in cells if c["task"] == task and c["algorithm"] == algorithm])

    def fmt(v: np.ndarray) -> str:
        if len(v) < 2:
            return f"{v.mean():.4f}"
        mean, low, high = interval(v)
        return f"{mean:.4f} [{low:.4f}, {high:.4f}]"

    seeds = len({c["seed"] for c in cells})
    spread = f"mean and 95 % t-interval over {seeds} seeds" if seeds > 1 else "1 seed"
    lines = [f"Final evaluation reward on the training prompts ({spread}; fixed prompts and noise).\n"]
    lines += ["| algorithm | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    lines.append("| starting model | " + " | ".join(f"{results['start'][t]['eval_train_reward']:.4f}" for t in tasks) + " |")
    for a in algorithms:
        lines.append(f"| {ALGORITHM_NAMES.get(a, a)} | " + " | ".join(fmt(values(t, a, "train")) for t in tasks) + " |")
    noise = against_noise(results)
    if noise:
        lines += [""] + noise
    if seeds > 1:
        lines += ["", verdict_table(results).rstrip("\n")]
    if any("eval_held_out_reward" in results["start"][t] for t in tasks):
        lines += ["", "Generalisation: gain in evaluation reward over the starting model, training prompts vs held-out prompts never trained on.\n"]
        lines += ["| task | algorithm | gain, training prompts | gain, held-out prompts |", "|---|---|---|---|"]
        for t in tasks:
            for a in algorithms:
                gain_train = values(t, a, "train") - results["start"][t]["eval_train_reward"]
                gain_held = values(t, a, "held_out") - results["start"][t]["eval_held_out_reward"]
                lines.append(f"| {t} | {ALGORITHM_NAMES.get(a, a)} | {fmt(gain_train)} | {fmt(gain_held)} |")
    gold_tasks = [t for t in tasks if "eval_train_gold" in results["start"][t]]
    if gold_tasks:
        lines += ["", "Gold reference on the training prompts (what the reward stands for; training never sees it): the reward's end value beside the gold's.\n"]
        lines += ["| algorithm | " + " | ".join(f"{t} reward | {t} gold" for t in gold_tasks) + " |", "|---" * (2 * len(gold_tasks) + 1) + "|"]
        lines.append("| starting model | " + " | ".join(f"{results['start'][t]['eval_train_reward']:.4f} | {results['start'][t]['eval_train_gold']:.4f}" for t in gold_tasks) + " |")
        for a in algorithms:
            lines.append(f"| {ALGORITHM_NAMES.get(a, a)} | " + " | ".join(f"{fmt(values(t, a, 'train'))} | {fmt(values(t, a, 'train', 'gold'))}" for t in gold_tasks) + " |")
        lines += ["", "Reward against gold: the gain in reward minus the gain in gold since the start (what the reward claims beyond what it "
                  "stands for; 0 = they moved together), at the end, training prompts (`reward_vs_gold.png` shows it as training goes on).\n"]
        lines += ["| algorithm | " + " | ".join(gold_tasks) + " |", "|---" * (len(gold_tasks) + 1) + "|"]
        for a in algorithms:
            lines.append(f"| {ALGORITHM_NAMES.get(a, a)} | " + " | ".join(fmt(np.array(list(gold_gaps(results, t, a).values()))) for t in gold_tasks) + " |")
    if any("eval_train_faithfulness" in results["start"][t] for t in tasks):
        lines += ["", "Prompt faithfulness (captioner's per-attribute accuracy against the prompt, training prompts): start → end.\n"]
        lines += ["| algorithm | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        lines.append("| starting model | " + " | ".join(f"{results['start'][t]['eval_train_faithfulness']:.3f}" for t in tasks) + " |")
        for a in algorithms:
            lines.append(f"| {ALGORITHM_NAMES.get(a, a)} | " + " | ".join(fmt(values(t, a, "train", "faithfulness")) for t in tasks) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(results: dict, path: Path) -> None:
    """Evaluation reward (top), the gold reference (tasks that have one) and faithfulness
    (embedded model) against reward queries, on the training prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, cells = list(results["start"]), results["cells"]
    metrics = ["reward"] + [m for m in ("gold", "faithfulness") if any(f"eval_train_{m}" in results["start"][t] for t in tasks)]
    labels = {"reward": "evaluation reward", "gold": "gold reference", "faithfulness": "prompt faithfulness"}
    rows = len(metrics)
    fig, axes = plt.subplots(rows, len(tasks), figsize=(4.5 * len(tasks), 3.6 * rows), squeeze=False)
    for column, task in enumerate(tasks):
        for row, metric in enumerate(metrics):
            ax = axes[row, column]
            if f"eval_train_{metric}" not in results["start"][task]:  # a reward without a gold reference
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"no {labels[metric]}\n(the reward is its own)", ha="center", va="center", transform=ax.transAxes, color="grey")
                continue
            for algorithm in dict.fromkeys(c["algorithm"] for c in cells):
                runs = [c["evaluations"] for c in cells if c["task"] == task and c["algorithm"] == algorithm]
                length = min(len(r) for r in runs)
                x = np.array([r[i]["reward_queries"] for i in range(length) for r in runs[:1]])
                y = np.array([[r[i].get(f"eval_train_{metric}", np.nan) for i in range(length)] for r in runs])
                line = ax.plot(x, y.mean(axis=0), marker="o", markersize=3, label=ALGORITHM_NAMES.get(algorithm, algorithm))[0]
                if len(runs) > 1:
                    ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=line.get_color(), alpha=0.2)
            ax.set_xlabel("reward queries")
            ax.set_ylabel(labels[metric])
            ax.set_title(task.removeprefix("Diffusion").removesuffix("-v0") if row == 0 else "")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reward_vs_gold(results: dict, path: Path) -> None:
    """For the tasks whose reward has a gold reference: per algorithm, the gain in reward (solid)
    and in gold (dashed) since the start, and their gap (`benchmarks.verdict.gap`), against reward
    queries; bands span the seeds. Nothing is written when no task has a gold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in results["start"] if "eval_train_gold" in results["start"][t]]
    if not tasks:
        return
    cells = results["cells"]
    fig, axes = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 7.2), squeeze=False)
    for column, task in enumerate(tasks):
        start = results["start"][task]
        for algorithm in dict.fromkeys(c["algorithm"] for c in cells if c["task"] == task):
            runs = [c["evaluations"] for c in cells if c["task"] == task and c["algorithm"] == algorithm]
            length = min(len(r) for r in runs)
            x = np.array([runs[0][i]["reward_queries"] for i in range(length)])
            reward = np.array([[r[i]["eval_train_reward"] - start["eval_train_reward"] for i in range(length)] for r in runs])
            gold = np.array([[r[i]["eval_train_gold"] - start["eval_train_gold"] for i in range(length)] for r in runs])
            gaps = np.array([[gap(r[i], start) for i in range(length)] for r in runs])
            name = ALGORITHM_NAMES.get(algorithm, algorithm)
            line = axes[0, column].plot(x, reward.mean(axis=0), marker="o", markersize=3, label=f"{name}: reward")[0]
            axes[0, column].plot(x, gold.mean(axis=0), linestyle="--", color=line.get_color(), label=f"{name}: gold")
            axes[1, column].plot(x, gaps.mean(axis=0), marker="o", markersize=3, color=line.get_color(), label=name)
            if len(runs) > 1:
                axes[1, column].fill_between(x, gaps.min(axis=0), gaps.max(axis=0), color=line.get_color(), alpha=0.2)
        axes[0, column].set_title(task.removeprefix("Diffusion").removesuffix("-v0"))
        axes[0, column].set_ylabel("gain since the start")
        axes[1, column].set_ylabel("reward gain − gold gain")
        axes[1, column].axhline(0, color="grey", linewidth=0.8)
        for ax in axes[:, column]:
            ax.set_xlabel("reward queries")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_sample_grids(config: BenchConfig, starts: dict, out: Path) -> None:
    """Per task: the starting model and each algorithm's first seed, same prompts and noise."""
    folder = out / "samples"
    folder.mkdir(exist_ok=True)
    for task in config.tasks:
        start_images = starts[task][1]["train"][:8]
        rows = [("start", start_images)]
        for algorithm in config.algorithms:
            path = cell_config(config, task, algorithm, config.seeds[0]).output_dir / "end_images.npz"
            if path.is_file():
                rows.append((ALGORITHM_NAMES.get(algorithm, algorithm), np.load(path)["train"][:8]))
        prompt_grid(rows).save(folder / f"{task}.png")


def main() -> None:
    run(tyro.extras.overridable_config_cli({name: preset for name, preset in PRESETS.items()}, prog="diffusion-gym-bench"))


if __name__ == "__main__":
    main()
