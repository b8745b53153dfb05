"""benchmarks/flow_grpo.py: its table's numbers from hand-made evaluations, and its plot."""

import numpy as np

from benchmarks.flow_grpo import plot, table


def evaluation(queries, kb):
    return {"reward_queries": queries, "seconds": 6.0 * queries, "eval_train_rewards": [-k for k in kb], "eval_train_jpeg_kb": float(np.mean(kb))}


def test_the_table_gives_each_run_its_paired_gain_against_its_own_start(tmp_path):
    runs = [
        {"name": "A", "model": "embedded", "evaluations": [evaluation(0, [1.0, 2.0, 3.0]), evaluation(640, [0.9, 1.8, 2.7])]},
        {"name": "B", "model": "embedded-flow", "evaluations": [evaluation(0, [2.0, 2.0, 2.0]), evaluation(640, [2.0, 2.1, 2.2])]},
    ]
    text = table(runs)
    # A: kB falls by 0.1, 0.2, 0.3: mean −0.2, standard error 0.1 / √3 = 0.0577, twice 0.1155
    assert "| A | embedded | 640 | 64.0 | 2.0000 | 1.8000 | -0.2000 ± 0.1155 |" in text
    assert "| B | embedded-flow | 640 | 64.0 | 2.0000 | 2.1000 | +0.1000 ± 0.1155 |" in text
    plot(runs, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
