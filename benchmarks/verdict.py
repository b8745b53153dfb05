"""The paper's claims, each as a rule on a grid's results and its outcome: holds, does not hold, or
inconclusive, with the numbers.

    python -m benchmarks.verdict runs/bench-cpu/results.json      # prints the table (run.py writes it too)

Every rule compares final evaluations (fixed prompts and noise) across seeds with a 95 %
t-interval of the mean over seeds; with one seed there is no interval over seeds and every claim
is inconclusive (the per-prompt evaluation noise is in `table.md`).

| claim (Black et al. 2023) | rule |
|---|---|
| DDPO beats RWR on a task | the interval of DDPO-IS − RWR at the end lies above 0 (holds), at or below 0 (does not hold) |
| DDPO-IS at least matches DDPO-SF | the interval of DDPO-IS − DDPO-SF does not lie wholly below 0 (holds), else does not hold; inconclusive with < 2 seeds |
| compressibility finds flat backgrounds | the interval of DDPO-IS's change in the share of flat backgrounds (captioner) lies above 0 |
| incompressibility finds noise | the interval of DDPO-IS's change in the share of noisy backgrounds lies above 0 |
| gains carry to held-out prompts | the interval of DDPO-IS's gain on held-out prompts lies above 0, on each task |
| alignment improves where the base model fails | the interval of DDPO-IS's gain on the prompts the starting model gets below 1 (alignment) lies above 0 |
| (not in the paper) the KL penalty keeps the reward closer to its gold | the interval of DDPO-IS's reward–gold gap minus DDPO-IS + KL's lies above 0, on each task with a gold |

The reward–gold gap of a run (`gold_gaps`) is its gain in reward minus its gain in gold since the
start: what the reward claims beyond what it stands for.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# two-sided 95 % quantiles of Student's t for 1..10 degrees of freedom
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def mean_and_standard_error(values) -> tuple[float, float]:
    """The mean of `values` and its standard error (nan below 2 values)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean()) if len(x) else float("nan")
    return mean, float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95 % t-interval of the mean of `values` (low = high = nan below 2 values)."""
    mean, standard_error = mean_and_standard_error(values)
    if np.isnan(standard_error):
        return mean, float("nan"), float("nan")
    half = (T_975[len(values) - 2] if len(values) - 1 <= len(T_975) else 1.96) * standard_error
    return mean, mean - half, mean + half


def outcome(low: float, high: float, at_least: bool = False) -> str:
    """"holds" when the interval lies above 0; "does not hold" when it lies at or below 0 (no
    value above 0 in it, e.g. a change that is exactly 0 for every seed); else "inconclusive".
    `at_least`: holds unless the interval lies wholly below 0."""
    if np.isnan(low):
        return "inconclusive"
    if high < 0 or (high <= 0 and not at_least):
        return "does not hold"
    if low > 0 or at_least:
        return "holds"
    return "inconclusive"


def _final(cell: dict, key: str) -> float | None:
    return cell["evaluations"][-1].get(key)


def _by_seed(results: dict, task: str, algorithm: str, key: str) -> dict[int, float]:
    return {c["seed"]: _final(c, key) for c in results["cells"] if c["task"] == task and c["algorithm"] == algorithm and _final(c, key) is not None}


def _difference(results: dict, task: str, a: str, b: str, key: str = "eval_train_reward") -> list[float]:
    left, right = _by_seed(results, task, a, key), _by_seed(results, task, b, key)
    return [left[s] - right[s] for s in sorted(set(left) & set(right))]


def _gain(results: dict, task: str, algorithm: str, key: str) -> list[float]:
    start = results["start"][task].get(key)
    return [] if start is None else [v - start for v in _by_seed(results, task, algorithm, key).values()]


def _failed_prompt_gain(results: dict, task: str, algorithm: str) -> list[float]:
    """Per seed: the mean gain on the evaluation prompts whose starting reward is below 1."""
    start = np.asarray(results["start"][task].get("eval_train_rewards", []), dtype=np.float64)
    failed = start < 1.0
    if not failed.any():
        return []
    gains = []
    for cell in (c for c in results["cells"] if c["task"] == task and c["algorithm"] == algorithm):
        end = _final(cell, "eval_train_rewards")
        if end is not None:
            gains.append(float((np.asarray(end)[failed] - start[failed]).mean()))
    return gains


def gap(evaluation: dict, start: dict, split: str = "train") -> float:
    """Gain in reward minus gain in gold from `start` to `evaluation`."""
    return (evaluation[f"eval_{split}_reward"] - start[f"eval_{split}_reward"]) - (evaluation[f"eval_{split}_gold"] - start[f"eval_{split}_gold"])


def gold_gaps(results: dict, task: str, algorithm: str) -> dict[int, float]:
    """{seed: the reward–gold gap at the end} for a task whose reward has a gold reference."""
    start = results["start"][task]
    if "eval_train_gold" not in start:
        return {}
    cells = (c for c in results["cells"] if c["task"] == task and c["algorithm"] == algorithm)
    return {c["seed"]: gap(c["evaluations"][-1], start) for c in cells if "eval_train_gold" in c["evaluations"][-1]}


def verdicts(results: dict) -> list[dict]:
    """One row per claim and task it applies to: claim, task, rule, n (seeds), mean, interval, outcome."""
    tasks, algorithms = list(results["start"]), {c["algorithm"] for c in results["cells"]}
    rows = []

    def add(claim: str, task: str, rule: str, values: list[float], at_least: bool = False) -> None:
        if not values:
            return
        mean, low, high = interval(values)
        rows.append({"claim": claim, "task": task, "rule": rule, "n": len(values), "mean": mean, "low": low, "high": high, "outcome": outcome(low, high, at_least)})

    for task in tasks:
        if {"ddpo-is", "rwr-exp"} <= algorithms:
            add("DDPO beats RWR", task, "DDPO-IS − RWR at the end > 0", _difference(results, task, "ddpo-is", "rwr-exp"))
        if {"ddpo-is", "ddpo-sf"} <= algorithms:
            values = _difference(results, task, "ddpo-is", "ddpo-sf")
            add("DDPO-IS at least matches DDPO-SF", task, "DDPO-IS − DDPO-SF at the end not < 0", values, at_least=len(values) > 1)
        if task == "DiffusionCompressibility-v0":
            add("compressibility finds flat backgrounds", task, "change in the share of flat backgrounds > 0", _gain(results, task, "ddpo-is", "eval_train_background_flat"))
        if task == "DiffusionIncompressibility-v0":
            add("incompressibility finds noise", task, "change in the share of noisy backgrounds > 0", _gain(results, task, "ddpo-is", "eval_train_background_noisy"))
        add("gains carry to held-out prompts", task, "DDPO-IS's gain on held-out prompts > 0", _gain(results, task, "ddpo-is", "eval_held_out_reward"))
        if task == "DiffusionPromptAlignment-v0":
            add("alignment improves where the base model fails", task, "DDPO-IS's gain on prompts the start scores < 1 > 0", _failed_prompt_gain(results, task, "ddpo-is"))
        if "ddpo-is-kl" in algorithms:
            plain, kl = gold_gaps(results, task, "ddpo-is"), gold_gaps(results, task, "ddpo-is-kl")
            add("(not in the paper) the KL penalty keeps the reward closer to its gold", task, "reward–gold gap, DDPO-IS − DDPO-IS + KL > 0", [plain[s] - kl[s] for s in sorted(set(plain) & set(kl))])
    return rows


def verdict_table(results: dict) -> str:
    """The claims as a markdown table: rule, seeds, mean and 95 % interval over seeds, outcome."""
    lines = [
        "The paper's claims, each a rule on the final evaluations (training prompts unless said; fixed prompts and noise), "
        "with the mean and 95 % t-interval over seeds.\n",
        "| claim | task | rule | seeds | mean | 95 % interval | outcome |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in verdicts(results):
        bounds = "—" if np.isnan(r["low"]) else f"[{r['low']:+.4f}, {r['high']:+.4f}]"
        lines.append(f"| {r['claim']} | {r['task'].removeprefix('Diffusion').removesuffix('-v0')} | {r['rule']} | {r['n']} | {r['mean']:+.4f} | {bounds} | {r['outcome']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m benchmarks.verdict RESULTS_JSON")
    print(verdict_table(json.loads(Path(sys.argv[1]).read_text())))
