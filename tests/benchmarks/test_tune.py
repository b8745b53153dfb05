"""The tuning sweep: the same ladder rule for every algorithm, and its picks are the presets."""

import json
from pathlib import Path

import pytest

import benchmarks.tune as tune
from benchmarks.run import BenchConfig, cell_config

TASKS = ("DiffusionCompressibility-v0", "DiffusionIncompressibility-v0")


def test_the_committed_picks_are_the_presets_learning_rates():
    committed = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "tuning.json").read_text())
    assert set(committed["picks"]) == {"ddpo-is", "ddpo-sf", "rwr-exp", "rwr-sparse", "ddpo-is-kl"}
    for algorithm, value in committed["picks"].items():
        config = cell_config(BenchConfig(algorithms=(algorithm,)), TASKS[0], algorithm, 0)
        assert (config.ddpo if algorithm.startswith("ddpo") else config.rwr).learning_rate == value, algorithm


def fake_measure(best: float):
    """A sweep whose gain peaks at `best` on every task; records what was run."""
    tried = []

    def measure(config, algorithm, value):
        tried.append(value)
        return {"algorithm": algorithm, "setting": tune._setting(algorithm), "value": value, "gains": {t: -abs(value - best) for t in config.tasks}}

    return measure, tried


@pytest.mark.parametrize("best, expected_tried, expected_pick", [
    (1e-3, [3.3e-5, 1e-4, 3e-4, 9e-4, 2.7e-3], 9e-4),  # up twice: 9e-4 is inside
    (5e-3, [3.3e-5, 1e-4, 3e-4, 9e-4, 2.7e-3], 2.7e-3),  # up twice and still at the edge: the rule stops there
    (1e-5, [3.3e-5, 1e-4, 3e-4, 1.1e-5, 3.7e-6], 1.1e-5),  # down
    (1e-4, [3.3e-5, 1e-4, 3e-4], 1e-4),  # inside at once: nothing added
])  # fmt: skip
def test_the_ladder_goes_past_an_edge_while_the_pick_is_there(monkeypatch, tmp_path, best, expected_tried, expected_pick):
    measure, tried = fake_measure(best)
    monkeypatch.setattr(tune, "_measure", measure)
    result = tune.main(tune.TuneConfig(tasks=TASKS, algorithms=("rwr-exp",), output_dir=tmp_path))
    assert tried == pytest.approx(expected_tried) and result["picks"]["rwr-exp"] == pytest.approx(expected_pick)
    assert [r["value"] for r in result["rows"]] == sorted(r["value"] for r in result["rows"])
    assert (tmp_path / "tuning.md").read_text().count("| RWR |") == len(expected_tried)


def test_ties_go_to_the_centre_then_to_the_smaller_rate(monkeypatch, tmp_path):
    def measure(config, algorithm, value):  # ranks per task: 3.3e-5 → 1, 3; 1e-4 → 2, 2; 3e-4 → 3, 1: all tie
        gains = {3.3e-5: (3, 1), 1e-4: (2, 2), 3e-4: (1, 3)}[value]
        return {"algorithm": algorithm, "setting": "rwr.learning_rate", "value": value, "gains": dict(zip(config.tasks, gains))}

    monkeypatch.setattr(tune, "_measure", measure)
    assert tune.main(tune.TuneConfig(tasks=TASKS, algorithms=("rwr-exp",), output_dir=tmp_path))["picks"]["rwr-exp"] == 1e-4


def test_recorded_rows_are_reused_only_when_measured_the_same_way(monkeypatch, tmp_path):
    measure, tried = fake_measure(1e-4)
    monkeypatch.setattr(tune, "_measure", measure)
    first = tune.main(tune.TuneConfig(tasks=TASKS, algorithms=("rwr-exp",), output_dir=tmp_path / "a"))
    tried.clear()
    again = tune.main(tune.TuneConfig(tasks=TASKS, algorithms=("rwr-exp", "rwr-sparse"), output_dir=tmp_path / "b", reuse=tmp_path / "a" / "tuning.json"))
    assert tried == pytest.approx([3.3e-5, 1e-4, 3e-4])  # rwr-sparse only: rwr-exp's rows came from the record
    assert again["picks"]["rwr-exp"] == first["picks"]["rwr-exp"]
    with pytest.raises(ValueError, match="measured with other settings"):
        tune.main(tune.TuneConfig(tasks=TASKS, budget=320, output_dir=tmp_path / "c", reuse=tmp_path / "a" / "tuning.json"))
    with pytest.raises(ValueError, match="No ladder centre"):
        tune.TuneConfig(algorithms=("ppo",))
