"""GRPO on the embedded flow model beside DDPO-IS on the embedded (DDIM) model: the same task,
budget, LoRA, sampling batch and evaluation, one run each, one after the other.

    python -m benchmarks.flow_grpo                  # about 20 minutes on 2 CPU cores
    python -m benchmarks.flow_grpo --budget 640     # shorter

Each run is a `diffusion-gym-train` run (`embedded-ddpo-is`, `embedded-flow-grpo`) on the
compressibility task, evaluated on 32 fixed prompts with fixed noise before training and every
few epochs, against its own starting model. Writes `results.json`, `table.md` (start, end and the
paired gain with twice its standard error) and `curves.png` (mean JPEG kB against reward queries
and against minutes) to the output folder; a re-run skips a finished run and resumes a killed one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import tyro

from agents.train import embedded_flow_preset, embedded_preset, train
from benchmarks.run import BenchConfig, Evaluator, paired_difference
from diffusion_gym.policy import DiffusionPolicy

RUNS = {"ddpo-is": ("DDPO-IS, embedded (DDIM)", lambda: embedded_preset("ddpo-is")), "grpo": ("GRPO, embedded flow", embedded_flow_preset)}


@dataclass
class FlowBenchConfig:
    """The two runs and their evaluation."""

    task: str = "DiffusionCompressibility-v0"
    """Environment id; its reward is the one compared."""
    budget: int = 2560
    """Reward queries per run (training samples): 40 epochs of 64."""
    max_minutes: float = 15.0
    """Wall-time limit per run, evaluations not counted."""
    eval_every: int = 5
    """Epochs between evaluations (and one at the end)."""
    eval_prompts: int = 32
    """Prompts evaluated (a fixed spread of the task's set), one sample each, the same noise every time."""
    seed: int = 0
    """Training seed of both runs."""
    output_dir: Path = Path("runs/flow-grpo")
    """Where the runs and the results go."""


def run_one(config: FlowBenchConfig, algorithm: str) -> dict:
    name, preset = RUNS[algorithm]
    train_config = dataclasses.replace(
        preset(), env_id=config.task, seed=config.seed, max_reward_queries=config.budget, max_minutes=config.max_minutes,
        epochs=10_000, output_dir=config.output_dir / algorithm, tensorboard=False,
    )  # fmt: skip
    summary_path = train_config.output_dir / "summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    bench = BenchConfig(tasks=(config.task,), eval_prompts=config.eval_prompts, held_out_prompts=None)
    envs = gym.make_vec(config.task, num_envs=1, model=train_config.model, device="cpu", **train_config.env_kwargs())
    start_policy = DiffusionPolicy.from_env(envs, **train_config.sampling())
    start, _ = Evaluator(bench, train_config, start_policy)(start_policy)
    evaluator = None

    def on_epoch(policy: DiffusionPolicy, record: dict) -> dict:
        nonlocal evaluator
        final = record["reward_queries"] >= config.budget or record["seconds"] >= 60 * config.max_minutes
        if (record["epoch"] + 1) % config.eval_every and not final:
            return {}
        evaluator = evaluator or Evaluator(bench, train_config, policy)
        return evaluator(policy)[0]

    wall = time.perf_counter()
    history = train(train_config, on_epoch=on_epoch)
    evaluations = [{"reward_queries": 0, "seconds": 0.0, **start}] + [
        {k: v for k, v in r.items() if k in ("reward_queries", "seconds") or k.startswith("eval_")} for r in history if "eval_train_reward" in r
    ]
    summary = {"algorithm": algorithm, "name": name, "model": train_config.model, "wall_seconds": time.perf_counter() - wall, "evaluations": evaluations}
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def table(runs: list[dict]) -> str:
    lines = [
        "Mean JPEG size of 32 evaluation images (fixed prompts and noise), each run against its own starting model; the gain "
        "with twice the standard error of the paired difference over the prompts.\n",
        "| run | model | reward queries | minutes | start kB | end kB | end − start kB |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        first, last = run["evaluations"][0], run["evaluations"][-1]
        gain, se = paired_difference(last["eval_train_rewards"], first["eval_train_rewards"])  # rewards are −kB
        lines.append(
            f"| {run['name']} | {run['model']} | {last['reward_queries']} | {last['seconds'] / 60:.1f} | {first['eval_train_jpeg_kb']:.4f} | "
            f"{last['eval_train_jpeg_kb']:.4f} | {-gain:+.4f} ± {2 * se:.4f} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for run in runs:
        kb = [e["eval_train_jpeg_kb"] for e in run["evaluations"]]
        axes[0].plot([e["reward_queries"] for e in run["evaluations"]], kb, marker="o", markersize=3, label=run["name"])
        axes[1].plot([e["seconds"] / 60 for e in run["evaluations"]], kb, marker="o", markersize=3, label=run["name"])
    axes[0].set(xlabel="reward queries", ylabel="mean JPEG kB (evaluation)", title="compressibility: lower is better")
    axes[1].set(xlabel="training minutes (2 CPU cores)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    config = tyro.cli(FlowBenchConfig)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    runs = [run_one(config, algorithm) for algorithm in RUNS]
    (config.output_dir / "results.json").write_text(json.dumps({"config": json.loads(json.dumps(dataclasses.asdict(config), default=str)), "runs": runs}, indent=1) + "\n")
    text = table(runs)
    (config.output_dir / "table.md").write_text(text)
    plot(runs, config.output_dir / "curves.png")
    print(text)


if __name__ == "__main__":
    main()
