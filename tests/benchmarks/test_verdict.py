"""The verdict table: each claim's rule on hand-made results, against numbers computed by hand."""

import numpy as np
import pytest

from benchmarks.verdict import interval, outcome, verdict_table, verdicts


def cell(task, algorithm, seed, **final):
    return {"task": task, "algorithm": algorithm, "seed": seed, "evaluations": [{"reward_queries": 0}, {"reward_queries": 640, **final}]}


def results(ddpo_is, rwr, ddpo_sf=None, task="DiffusionCompressibility-v0", start=None, **extra):
    cells = [cell(task, "ddpo-is", s, eval_train_reward=v, **{k: vals[s] for k, vals in extra.items()}) for s, v in enumerate(ddpo_is)]
    cells += [cell(task, "rwr-exp", s, eval_train_reward=v) for s, v in enumerate(rwr)]
    cells += [cell(task, "ddpo-sf", s, eval_train_reward=v) for s, v in enumerate(ddpo_sf or [])]
    return {"start": {task: start or {"eval_train_reward": -1.25}}, "cells": cells}


def test_the_interval_is_students_t_over_seeds():
    mean, low, high = interval([0.10, 0.12, 0.09])
    half = 4.303 * np.std([0.10, 0.12, 0.09], ddof=1) / np.sqrt(3)
    assert mean == pytest.approx(0.103333, abs=1e-6) and (low, high) == pytest.approx((mean - half, mean + half), abs=1e-4)
    assert np.isnan(interval([0.1])[1])


@pytest.mark.parametrize("low, high, at_least, expected", [
    (0.01, 0.2, False, "holds"), (-0.2, -0.01, False, "does not hold"), (-0.1, 0.1, False, "inconclusive"),
    (-0.1, 0.1, True, "holds"), (-0.2, -0.01, True, "does not hold"), (float("nan"), float("nan"), True, "inconclusive"),
    (0.0, 0.0, False, "does not hold"), (0.0, 0.0, True, "holds"),  # no change at all: not a gain, but a match
])  # fmt: skip
def test_outcomes(low, high, at_least, expected):
    assert outcome(low, high, at_least) == expected


def test_ddpo_beating_rwr_and_matching_sf_are_read_from_the_seeds():
    rows = {r["claim"]: r for r in verdicts(results(ddpo_is=[-1.20, -1.19, -1.21], rwr=[-1.24, -1.23, -1.24], ddpo_sf=[-1.18, -1.20, -1.19]))}
    beats = rows["DDPO beats RWR"]
    assert beats["n"] == 3 and beats["mean"] == pytest.approx((0.04 + 0.04 + 0.03) / 3) and beats["outcome"] == "holds"
    matches = rows["DDPO-IS at least matches DDPO-SF"]
    assert matches["mean"] == pytest.approx(-0.01, abs=1e-9) and matches["outcome"] == "holds"  # within noise: not worse
    rows = {r["claim"]: r for r in verdicts(results(ddpo_is=[-1.30, -1.29, -1.31], rwr=[-1.24, -1.23, -1.24]))}
    assert rows["DDPO beats RWR"]["outcome"] == "does not hold"
    rows = {r["claim"]: r for r in verdicts(results(ddpo_is=[-1.20], rwr=[-1.24]))}
    assert rows["DDPO beats RWR"]["outcome"] == "inconclusive"  # one seed: no interval over seeds


def test_the_strategy_and_the_prompts_the_start_fails_are_measured():
    start = {"eval_train_reward": -1.25, "eval_train_background_flat": 0.2}
    rows = verdicts(results([-1.2, -1.2, -1.2], [-1.3, -1.3, -1.3], start=start, eval_train_background_flat=[0.5, 0.6, 0.7]))
    flat = next(r for r in rows if r["claim"] == "compressibility finds flat backgrounds")
    assert flat["mean"] == pytest.approx(0.4) and flat["outcome"] == "holds"
    task = "DiffusionPromptAlignment-v0"
    start = {"eval_train_reward": 0.75, "eval_train_rewards": [1.0, 0.5, 0.75, 1.0]}
    ends = [[1.0, 0.75, 1.0, 0.75], [1.0, 1.0, 0.75, 1.0], [0.75, 0.75, 1.0, 1.0]]
    rows = verdicts(results([0.8] * 3, [0.7] * 3, task=task, start=start, eval_train_rewards=ends))
    failed = next(r for r in rows if r["claim"] == "alignment improves where the base model fails")
    by_hand = [np.mean([0.75 - 0.5, 1.0 - 0.75]), np.mean([1.0 - 0.5, 0.75 - 0.75]), np.mean([0.75 - 0.5, 1.0 - 0.75])]  # prompts 1 and 2 start below 1
    assert failed["mean"] == pytest.approx(np.mean(by_hand))
    assert "| alignment improves where the base model fails | PromptAlignment |" in verdict_table(results([0.8] * 3, [0.7] * 3, task=task, start=start, eval_train_rewards=ends))


def test_the_reward_gold_gap_and_the_kl_rule_against_hand_computed_values(tmp_path):
    """Gap = gain in reward − gain in gold; the KL rule compares the two variants' gaps seed by seed."""
    from benchmarks.run import plot_reward_vs_gold, tables
    from benchmarks.verdict import gold_gaps

    task = "DiffusionAesthetic-v0"
    start = {"eval_train_reward": 2.0, "eval_train_gold": 1.5}
    cells = [cell(task, "ddpo-is", s, eval_train_reward=3.0 + 0.1 * s, eval_train_gold=2.0) for s in range(3)]  # gaps 0.5, 0.6, 0.7
    cells += [cell(task, "ddpo-is-kl", s, eval_train_reward=2.5, eval_train_gold=1.9 + 0.05 * s) for s in range(3)]  # gaps 0.1, 0.05, 0.0
    for c in cells:
        c["evaluations"][0].update(start)
    grid = {"start": {task: start}, "cells": cells}
    assert gold_gaps(grid, task, "ddpo-is") == pytest.approx({0: 0.5, 1: 0.6, 2: 0.7})
    assert gold_gaps(grid, task, "ddpo-is-kl") == pytest.approx({0: 0.1, 1: 0.05, 2: 0.0})
    kl = next(r for r in verdicts(grid) if r["claim"].endswith("keeps the reward closer to its gold"))
    assert kl["mean"] == pytest.approx(np.mean([0.4, 0.55, 0.7])) and kl["n"] == 3 and kl["outcome"] == "holds"
    assert "Reward against gold" in tables(grid) and "0.6000 [" in tables(grid)
    plot_reward_vs_gold(grid, tmp_path / "gold.png")
    assert (tmp_path / "gold.png").stat().st_size > 10_000
    plot_reward_vs_gold({"start": {"DiffusionCompressibility-v0": {"eval_train_reward": -1.0}}, "cells": []}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()  # no task with a gold: no figure
