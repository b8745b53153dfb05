"""The same tuning budget for every algorithm: each runs at the same ladder of learning rates
around its sweep centre (one seed, a reduced budget, every task), and the table says which value
each picks. The picks are the embedded presets' learning rates (`agents.train.embedded_preset`,
and `benchmarks.run.VARIANTS` for DDPO-IS + KL); a test holds them equal.

    python -m benchmarks.tune                                   # 5 algorithms, 4 tasks, lr × 1/3, 1, 3 of each centre (+ edges)
    python -m benchmarks.tune --reuse benchmarks/results/tuning.json   # take the rows already recorded with these settings
    python -m benchmarks.tune --budget 320 --output-dir runs/tune-try

The rule, the same for everyone: try the centre × 1/3, 1 and 3; while an algorithm's pick is the
largest (smallest) rate it has tried, try the next one up (down) by ×3, at most `max_extensions`
times. The pick is the value with the best mean rank over the tasks of the gain in evaluation
reward over the starting model (training prompts, fixed prompts and noise); ties go to the
centre, else to the smaller learning rate.

Every (algorithm, value) is a `diffusion-gym-bench` grid of its own (`OUTPUT/ALGORITHM/lr-VALUE/`),
so a re-run skips what finished and resumes what was killed. Writes `tuning.md` and `tuning.json`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tyro

from benchmarks.run import ALGORITHM_NAMES, BenchConfig, run

# The learning rates the presets had before this sweep: the centre of each algorithm's ladder
# (fixed here, so that the sweep does not move when its picks become the presets).
CENTRES = {"ddpo-is": 5e-4, "ddpo-sf": 2e-3, "rwr-exp": 1e-4, "rwr-sparse": 1e-4, "ddpo-is-kl": 5e-4}


@dataclass
class TuneConfig:
    """A learning-rate sweep, the same for every algorithm."""

    tasks: tuple[str, ...] = ("DiffusionAesthetic-v0", "DiffusionCompressibility-v0", "DiffusionIncompressibility-v0", "DiffusionPromptAlignment-v0")
    """The tasks every value runs on."""
    algorithms: tuple[str, ...] = ("ddpo-is", "ddpo-sf", "rwr-exp", "rwr-sparse", "ddpo-is-kl")
    """Algorithms (or variants, `benchmarks.run.VARIANTS`) to tune."""
    centres: dict[str, float] = field(default_factory=lambda: dict(CENTRES))
    """Each algorithm's ladder centre."""
    powers: tuple[int, ...] = (-1, 0, 1)
    """The rates first tried: centre × 3 ** power."""
    max_extensions: int = 2
    """Rates added beyond the first ones, per algorithm, while its pick is at an edge."""
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
    reuse: Path | None = None
    """A `tuning.json` whose rows with the same tasks, budget, evaluation and seed are taken instead of run."""

    def __post_init__(self) -> None:
        missing = [a for a in self.algorithms if a not in self.centres]
        if missing:
            raise ValueError(f"No ladder centre for {missing}; give one with --centres {missing[0]} 1e-4.")


def rate(centre: float, power: int) -> float:
    return float(f"{centre * 3.0**power:.2g}")


def _setting(algorithm: str) -> str:
    return "ddpo.learning_rate" if algorithm.startswith("ddpo") else "rwr.learning_rate"


def _recorded(config: TuneConfig) -> dict[tuple[str, float], dict]:
    """Rows of `config.reuse` measured with this sweep's tasks, budget, evaluation and seed."""
    if config.reuse is None:
        return {}
    old = json.loads(Path(config.reuse).read_text())
    same = ("tasks", "budget", "eval_every", "eval_prompts", "seed")
    if any(old["config"][k] != json.loads(json.dumps(getattr(config, k))) for k in same):
        recorded = ", ".join(f"{k}={old['config'][k]}" for k in same)
        raise ValueError(f"{config.reuse} was measured with other settings ({recorded}); run without --reuse.")
    return {(r["algorithm"], r["value"]): {k: r[k] for k in ("algorithm", "setting", "value", "gains")} for r in old["rows"]}


def _measure(config: TuneConfig, algorithm: str, value: float) -> dict:
    bench = BenchConfig(
        tasks=config.tasks, algorithms=(algorithm,), seeds=(config.seed,), budget=config.budget, eval_every=config.eval_every,
        eval_prompts=config.eval_prompts, held_out_prompts=None, train={_setting(algorithm): value},
        output_dir=config.output_dir / algorithm / f"lr-{value:g}", workers=config.workers,
    )  # fmt: skip
    results = run(bench)
    gains = {c["task"]: c["evaluations"][-1]["eval_train_reward"] - results["start"][c["task"]]["eval_train_reward"] for c in results["cells"]}
    return {"algorithm": algorithm, "setting": _setting(algorithm), "value": value, "gains": gains}


def pick(rows: list[dict], tasks: tuple[str, ...], centre: float) -> dict:
    """Ranks one algorithm's rows (sets each row's "mean_rank") and returns the picked row."""
    ranks = np.mean([np.argsort(np.argsort([-r["gains"][t] for r in rows], kind="stable")) for t in tasks], axis=0)
    for r, rank in zip(rows, ranks):
        r["mean_rank"] = float(rank) + 1
    return min(rows, key=lambda r: (r["mean_rank"], r["value"] != centre, r["value"]))


def main(config: TuneConfig) -> dict:
    recorded = _recorded(config)
    rows, picks = [], {}
    for algorithm in config.algorithms:
        centre = config.centres[algorithm]

        def measured(value: float) -> dict:
            return recorded.get((algorithm, value)) or _measure(config, algorithm, value)

        powers = sorted(config.powers)
        mine = [measured(rate(centre, p)) for p in powers]
        for _ in range(config.max_extensions):
            best, values = pick(mine, config.tasks, centre)["value"], [r["value"] for r in mine]
            if best == max(values):
                powers.append(powers[-1] + 1)
                new = rate(centre, powers[-1])
            elif best == min(values):
                powers.insert(0, powers[0] - 1)
                new = rate(centre, powers[0])
            else:
                break
            mine.append(measured(new))
        mine.sort(key=lambda r: r["value"])
        picks[algorithm] = pick(mine, config.tasks, centre)["value"]
        rows += [{**r, "centre": r["value"] == centre} for r in mine]
    lines = [
        f"Learning rates tried per algorithm (its ladder centre × 3^k, k = {', '.join(map(str, sorted(config.powers)))}, and one more step "
        f"beyond an edge while the pick is there, up to {config.max_extensions}), one seed, {config.budget} reward queries, every task: the "
        "gain in evaluation reward over the starting model on the training prompts (fixed prompts and noise), and the mean rank over the "
        "tasks (1 = best of the algorithm's values). `python -m benchmarks.tune`.\n",
        "| algorithm | learning rate | " + " | ".join(t.removeprefix("Diffusion").removesuffix("-v0") for t in config.tasks) + " | mean rank | picked |",
        "|---|---|" + "---|" * len(config.tasks) + "---|---|",
    ]
    for r in rows:
        mark = "yes" if picks[r["algorithm"]] == r["value"] else ""
        centre = " (centre)" if r["centre"] else ""
        lines.append(
            f"| {ALGORITHM_NAMES.get(r['algorithm'], r['algorithm'])} | {r['value']:g}{centre} | " + " | ".join(f"{r['gains'][t]:+.4f}" for t in config.tasks) + f" | {r['mean_rank']:.2f} | {mark} |"
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
