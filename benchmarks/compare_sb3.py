"""stable-baselines3 PPO against our DDPO-IS on the same task: training reward per reward query.

    python examples/sb3_ppo.py --rollouts 72 --output runs/sb3_ppo.jsonl
    diffusion-gym-train embedded-ddpo-is --env-id DiffusionCompressibility-v0 --max-reward-queries 4608 --output-dir runs/ddpo-is
    python -m benchmarks.compare_sb3 --sb3 runs/sb3_ppo.jsonl --ddpo runs/ddpo-is/metrics.jsonl --output runs/sb3_vs_ddpo.png

Both curves are the mean reward of the samples each algorithm trained on (on-policy), against
the reward queries so far; a moving average over `--window` points smooths the prompt-to-prompt
noise. Prints the smoothed rewards at the same numbers of queries.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def read_curve(path: Path) -> tuple[np.ndarray, np.ndarray]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return np.array([r["reward_queries"] for r in records], dtype=float), np.array([r["reward_mean"] for r in records])


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    return np.array([values[max(0, i - window + 1) : i + 1].mean() for i in range(len(values))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sb3", type=Path, required=True, help="examples/sb3_ppo.py --output file")
    parser.add_argument("--ddpo", type=Path, required=True, help="a diffusion-gym-train metrics.jsonl")
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("sb3_vs_ddpo.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {"SB3 PPO": read_curve(args.sb3), "DDPO-IS": read_curve(args.ddpo)}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, y) in curves.items():
        ax.plot(x, y, alpha=0.25)
        ax.plot(x, smooth(y, args.window), label=f"{name} (moving average of {args.window})", color=ax.lines[-1].get_color())
    ax.set_xlabel("reward queries")
    ax.set_ylabel("training reward (mean of the epoch's samples)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)

    limit = min(x[-1] for x, _ in curves.values())
    print(f"smoothed training reward at the same reward queries (window {args.window}):")
    print("| queries | " + " | ".join(curves) + " |")
    print("|---" * (len(curves) + 1) + "|")
    for q in np.linspace(0, limit, 5)[1:]:
        row = [smooth(y, args.window)[np.searchsorted(x, q, side="right") - 1] for x, y in curves.values()]
        print(f"| {int(q)} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    for name, (x, y) in curves.items():
        print(f"{name}: first {y[: args.window].mean():.4f} (mean of the first {args.window}), last {y[-args.window :].mean():.4f} (of the last {args.window}), {int(x[-1])} queries")


if __name__ == "__main__":
    main()
