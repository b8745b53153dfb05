"""The same tuning budget for every algorithm: each runs at the same learning-rate multiples of its
preset's (one seed, a reduced budget, every task), and the table says which value each would pick.

    python -m benchmarks.tune                                   # the embedded presets, 4 tasks, lr × 1/3, 1, 3
    python -m benchmarks.tune --budget 320 --output-dir runs/tune-try

Every (algorithm, value) is a `diffusion-gym-bench` grid of its own (`runs/tune/ALGORITHM/lr-VALUE/`),
so a re-run skips what finished and resumes what was killed. The pick is the value with the best
mean rank over the tasks of the gain in evaluation reward over the starting model (training
prompts, fixed prompts and noise); ties go to the preset's own value, else to the smaller
learning rate. Writes `tuning.md` and `tuning.json` into the output folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from agents.train import embedded_preset
from benchmarks.run import ALGORITHM_NAMES, VARIANTS, BenchConfig, run


@dataclass
class TuneConfig:
    """A learning-rate sweep, the same for every algorithm."""

    tasks: tuple[str, ...] = ("DiffusionAesthetic-v0", "DiffusionCompressibility-v0", "DiffusionIncompressibility-v0", "DiffusionPromptAlignment-v0")
    """The tasks every value runs on."""
    algorithms: tuple[str, ...] = ("ddpo-is", "ddpo-sf", "rwr-exp", "rwr-sparse")
    """Algorithms to tune (a variant such as "ddpo-is-kl" takes its algorithm's pick)."""
    multiples: tuple[float, ...] = (1 / 3, 1.0, 3.0)
    """Learning rates tried, as multiples of each algorithm's preset value."""
    budget: int = 640
    """Reward queries per run."""
    eval_every: int = 5
    """Epochs between evaluations."""
    eval_prompts: int = 32
    """Evaluation prompts per split."""
    seed: int = 0
    """The one seed."""
    output_dir: Path = Path("runs/tune")
    """Where the grids and the table go."""
    workers: int = 2
    """Processes that run an algorithm's cells side by side (`diffusion-gym-bench --workers`)."""


def preset_learning_rate(algorithm: str) -> tuple[str, float]:
    """(the setting's path, the preset's value) for an algorithm's learning rate."""
    preset = embedded_preset(VARIANTS.get(algorithm, (algorithm, {}))[0])
    return ("ddpo.learning_rate", preset.ddpo.learning_rate) if algorithm.startswith("ddpo") else ("rwr.learning_rate", preset.rwr.learning_rate)


def main(config: TuneConfig) -> dict:
    rows = []
    for algorithm in config.algorithms:
        key, base = preset_learning_rate(algorithm)
        for multiple in config.multiples:
            value = float(f"{base * multiple:.2g}")
            bench = BenchConfig(
                tasks=config.tasks, algorithms=(algorithm,), seeds=(config.seed,), budget=config.budget, eval_every=config.eval_every,
                eval_prompts=config.eval_prompts, held_out_prompts=None, train={key: value}, output_dir=config.output_dir / algorithm / f"lr-{value:g}",
                workers=config.workers,
            )  # fmt: skip
            results = run(bench)
            gains = {c["task"]: c["evaluations"][-1]["eval_train_reward"] - results["start"][c["task"]]["eval_train_reward"] for c in results["cells"]}
            rows.append({"algorithm": algorithm, "setting": key, "value": value, "preset": multiple == 1.0, "gains": gains})
    picks = {}
    for algorithm in config.algorithms:
        mine = [r for r in rows if r["algorithm"] == algorithm]
        ranks = np.mean([np.argsort(np.argsort([-r["gains"][t] for r in mine])) for t in config.tasks], axis=0)
        for r, rank in zip(mine, ranks):
            r["mean_rank"] = float(rank) + 1
        best = min(mine, key=lambda r: (r["mean_rank"], not r["preset"], r["value"]))
        picks[algorithm] = best["value"]
    lines = [
        f"Learning rates tried per algorithm (its preset's × {', '.join(f'{m:.3g}' for m in config.multiples)}), one seed, {config.budget} reward queries, "
        "every task: the gain in evaluation reward over the starting model on the training prompts (fixed prompts and noise), and the mean rank "
        "over the tasks (1 = best of the algorithm's values). `python -m benchmarks.tune`.\n",
        "| algorithm | learning rate | " + " | ".join(t.removeprefix("Diffusion").removesuffix("-v0") for t in config.tasks) + " | mean rank | picked |",
        "|---|---|" + "---|" * len(config.tasks) + "---|---|",
    ]
    for r in rows:
        mark = "yes" if picks[r["algorithm"]] == r["value"] else ""
        preset = " (preset)" if r["preset"] else ""
        lines.append(
            f"| {ALGORITHM_NAMES.get(r['algorithm'], r['algorithm'])} | {r['value']:g}{preset} | " + " | ".join(f"{r['gains'][t]:+.4f}" for t in config.tasks) + f" | {r['mean_rank']:.2f} | {mark} |"
        )
    table = "\n".join(lines) + "\n"
    config.output_dir.mkdir(parents=True, exist_ok=True)
    (config.output_dir / "tuning.md").write_text(table)
    result = {"config": json.loads(json.dumps(dataclasses.asdict(config), default=str)), "rows": rows, "picks": picks}
    (config.output_dir / "tuning.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table)
    return result


if __name__ == "__main__":
    main(tyro.cli(TuneConfig))
