"""The example scripts run as documented (a minimal size: seconds)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_sb3_example_trains_and_reports_its_buffer_and_curve(tmp_path):
    out = run("sb3_ppo.py", "--num-envs", "4", "--num-inference-steps", "2", "--episodes-per-rollout", "1", "--samples-per-prompt", "2", "--rollouts", "2", "--output", str(tmp_path / "curve.jsonl"))
    assert "rollout buffer: 0.2 MB for 2 steps × 4 envs" in out
    curve = [json.loads(line) for line in (tmp_path / "curve.jsonl").read_text().splitlines()]
    assert [r["reward_queries"] for r in curve] == [4, 8] and all(r["reward_mean"] < 0 for r in curve)


def test_the_tianshou_example_trains_with_reinforce():
    out = run("tianshou_reinforce.py", "--num-envs", "4", "--num-inference-steps", "2", "--episodes-per-collect", "1", "--epochs", "1")
    assert "replay buffer: 8 steps" in out
