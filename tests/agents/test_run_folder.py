"""The run folder: a command with other run-defining settings is refused before any work, allowed
changes are recorded, --overwrite starts afresh, damaged checkpoints fall back, a failed write
cleans up; and bad training settings fail before the folder is touched."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents import run_folder
from agents.ddpo import DDPOConfig
from agents.train import TrainConfig, embedded_preset, train

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(output_dir, **changes) -> TrainConfig:
    config = TrainConfig(
        algorithm="ddpo-is", model="tiny-random-pixel", num_inference_steps=2, num_envs=4, batches_per_epoch=1,
        ddpo=DDPOConfig(train_batch_size=4, clip_range=0.2, log_prob_reduce="sum"), reward="jpeg_incompressibility",
        prompts="toy_world", epochs=2, tensorboard=False, progress=False, output_dir=Path(output_dir),
    )  # fmt: skip
    return dataclasses.replace(config, **changes)


def as_saved(config: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leaves(settings: dict, prefix=""):
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def changed_value(value):
    """Another value of the same JSON kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return [*value, "other"]
    if isinstance(value, dict):
        return {"other": "1"}
    return "other"  # None


def with_leaf(settings: dict, key: str, value) -> dict:
    settings = json.loads(json.dumps(settings))
    *path, last = key.split(".")
    node = settings
    for part in path:
        node = node[part]
    node[last] = value
    return settings


def test_every_run_defining_setting_is_refused_and_every_other_allowed_and_reported(tmp_path):
    saved = as_saved(embedded_preset("ddpo-is"))
    (tmp_path / "config.json").write_text(json.dumps(saved))
    before = snapshot(tmp_path)
    refused = []
    for key, value in leaves(saved):
        new = with_leaf(saved, key, changed_value(value))
        if run_folder.may_change(key):
            plan = run_folder.plan(tmp_path, new, overwrite=False)
            assert list(plan.changed) == [key] and not plan.resume
            continue
        with pytest.raises(ValueError) as error:
            run_folder.plan(tmp_path, new, overwrite=False)
        message = str(error.value)
        assert f"  {key}: {value!r} in the folder, {changed_value(value)!r} now" in message, message
        assert "another --output-dir" in message and "--overwrite" in message
        refused.append(key)
    assert len(refused) >= 40 and {"env_id", "algorithm", "model", "lora_rank", "ddpo.learning_rate", "seed", "reward"} <= set(refused)
    assert run_folder.plan(tmp_path, with_leaf(saved, "env_id", "other"), overwrite=True).resume is False
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch run (checkpoint and previous checkpoint), and what its folder holds."""
    out = tmp_path_factory.mktemp("run") / "run"
    history = train(tiny_config(out))
    return out, history, snapshot(out)


@pytest.mark.parametrize(
    "changes, listed",
    [
        ({"env_id": "DiffusionIncompressibility-v0"}, "env_id: 'DiffusionCompressibility-v0' in the folder, 'DiffusionIncompressibility-v0' now"),
        ({"algorithm": "ddpo-sf"}, "algorithm: 'ddpo-is' in the folder, 'ddpo-sf' now"),
        ({"lora_rank": 8}, "lora_rank: 4 in the folder, 8 now"),
        ({"ddpo": DDPOConfig(train_batch_size=4, clip_range=0.2, learning_rate=1e-3)}, "ddpo.learning_rate: 0.0003 in the folder, 0.001 now"),
        ({"model": "tiny-random"}, "model: 'tiny-random-pixel' in the folder, 'tiny-random' now"),
    ],
)
def test_a_command_with_other_settings_is_refused_and_the_run_is_untouched(finished_run, changes, listed):
    out, _, files = finished_run
    with pytest.raises(ValueError) as error:
        train(tiny_config(out, **changes))
    assert listed in str(error.value) and "--overwrite" in str(error.value)
    assert snapshot(out) == files


def test_allowed_changes_resume_and_are_recorded_and_overwrite_starts_afresh(finished_run, tmp_path):
    out, history, _ = finished_run
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    more = train(tiny_config(copy, epochs=3))
    assert [r["epoch"] for r in more] == [0, 1, 2] and more[:2] == history
    (resume,) = [json.loads(line) for line in (copy / "resumes.jsonl").read_text().splitlines()]
    assert resume["epoch"] == 2 and resume["changed"] == {"epochs": [2, 3], "output_dir": [str(out), str(copy)]}  # the folder was moved too
    assert json.loads((copy / "config.json").read_text())["epochs"] == 3  # the settings in force
    fresh = train(tiny_config(copy, epochs=1, seed=5, overwrite=True))
    assert [r["epoch"] for r in fresh] == [0]
    assert [json.loads(line)["epoch"] for line in (copy / "metrics.jsonl").read_text().splitlines()] == [0]
    assert not (copy / "resumes.jsonl").exists() and json.loads((copy / "config.json").read_text())["seed"] == 5


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path, capsys):
    out, history, _ = finished_run
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    checkpoint = copy / run_folder.CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])  # truncated
    resumed = train(tiny_config(copy))
    err = capsys.readouterr().err
    assert str(checkpoint) in err and "cannot be read" in err and "checkpoint.prev.pt (epoch 1)" in err
    assert [r["epoch"] for r in resumed] == [0, 1]
    assert {k: v for k, v in resumed[1].items() if k != "seconds"} == {k: v for k, v in history[1].items() if k != "seconds"}
    assert (copy / run_folder.DAMAGED).exists()  # set aside, so the next save keeps the good one as the previous
    assert torch.load(copy / run_folder.PREVIOUS, weights_only=False)["epoch"] == 1 and torch.load(checkpoint, weights_only=False)["epoch"] == 2

    for path in (checkpoint, copy / run_folder.PREVIOUS):
        path.write_bytes(b"not a checkpoint")
    files = snapshot(copy)
    with pytest.raises(ValueError) as error:
        train(tiny_config(copy))
    for needle in (str(checkpoint), str(copy / run_folder.PREVIOUS), "No readable checkpoint", "--overwrite"):
        assert needle in str(error.value)
    assert snapshot(copy) == files


def test_a_folder_with_run_files_but_no_config_is_not_wiped_unasked(tmp_path):
    out = tmp_path / "run"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "mine.txt").write_text("keep")
    (out / "checkpoint.pt").write_bytes(b"someone's")
    files = snapshot(out)
    with pytest.raises(ValueError) as error:
        train(tiny_config(out))
    assert "['checkpoint.pt', 'tensorboard']" in str(error.value) and "no config.json" in str(error.value) and "--overwrite" in str(error.value)
    assert snapshot(out) == files
    assert [r["epoch"] for r in train(tiny_config(out, epochs=1, overwrite=True))] == [0]
    assert not (out / "tensorboard" / "mine.txt").exists()


def test_a_checkpoint_of_another_number_of_processes_is_refused(finished_run, tmp_path):
    out, _, _ = finished_run
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    state = torch.load(copy / run_folder.CHECKPOINT, weights_only=False)
    assert state["world_size"] == 1
    torch.save({**state, "world_size": 2}, copy / run_folder.CHECKPOINT)
    with pytest.raises(ValueError, match=r"written by 2 processes and this run has 1; resume with 2 \(accelerate launch --num_processes N\)"):
        train(tiny_config(copy, epochs=3))


def test_a_full_disk_removes_the_temporary_file_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_config(out, epochs=1))
    good = (out / run_folder.CHECKPOINT).read_bytes()

    def full_disk(state, path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_folder.torch, "save", full_disk)
    with pytest.raises(OSError) as error:
        train(tiny_config(out, epochs=2))
    message = str(error.value)
    assert "No space left on device" in message and "checkpoint.tmp" in message and "Free disk space" in message
    assert not (out / run_folder.TEMPORARY).exists()
    assert (out / run_folder.CHECKPOINT).read_bytes() == good
    monkeypatch.undo()
    assert [r["epoch"] for r in train(tiny_config(out, epochs=2))] == [0, 1]  # resumes from the kept checkpoint


@pytest.mark.parametrize(
    "changes, needles",
    [
        ({"env_id": "DiffusionNope-v0"}, ["Unknown env_id 'DiffusionNope-v0'", "DiffusionCompressibility-v0"]),
        ({"guidance_scale": -1.0}, ["guidance_scale must be a finite number >= 0"]),
        ({"reward": "jpeg"}, ["Unknown reward 'jpeg'", "jpeg_compressibility"]),
        ({"lora_targets": ()}, ["lora_targets is empty"]),
        ({"lora_targets": ("no_such_layer",)}, ["No denoiser module matches the LoRA targets ['no_such_layer']", "to_q"]),
        ({"ddpo": DDPOConfig(learning_rate=-1.0, train_batch_size=4)}, ["ddpo.learning_rate must be > 0"]),
        ({"reward_kwargs": {"quality": "high"}}, ["option 'quality' must be an int, got 'high'"]),
        ({"ddpo": DDPOConfig(train_batch_size=4, mixed_precision="bf16")}, ["ratios would differ from 1 by rounding", "--dtype bfloat16"]),
        ({"env_id": "DiffusionAesthetic-v0", "reward": None}, ["clip-vit-large-patch14", "clip_model='DIR'"]),
    ],
)
def test_bad_settings_fail_before_the_output_folder_is_made(tmp_path, changes, needles):
    out = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        train(tiny_config(out, **changes))
    for needle in needles:
        assert needle in str(error.value), f"{needle!r} not in {error.value}"
    assert not out.exists()


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="is a file; give a folder"):
        tiny_config(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"


def test_a_nested_settings_error_names_the_setting_not_the_parsers_internals():
    result = subprocess.run(
        [sys.executable, "-m", "agents.train", "embedded-ddpo-is", "--ddpo.learning-rate", "-1", "--output-dir", "/nonexistent/never"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0 and "ddpo.learning_rate must be > 0" in result.stderr
    assert "tyro" not in result.stderr and "Traceback" not in result.stderr


def test_bench_overrides_are_typed_and_checked_before_anything_is_written(tmp_path):
    from benchmarks.run import BenchConfig, cell_config, run

    config = BenchConfig(train={"num_envs": "8", "ddpo.clip_range": "1e-3", "guidance_interval": "600,999"}, output_dir=tmp_path / "bench")
    cell = cell_config(config, "DiffusionCompressibility-v0", "ddpo-is", 0)
    assert cell.num_envs == 8 and cell.ddpo.clip_range == 1e-3 and cell.guidance_interval == (600, 999)
    for train_overrides, needle in (
        ({"num_envs": "x"}, "num_envs must be an int, got 'x'"),
        ({"num_env": "8"}, "Unknown setting 'num_env'; TrainConfig has"),
        ({"ddpo.clip": "1"}, "Unknown setting 'ddpo.clip'; DDPOConfig has"),
        ({"ddpo": "1"}, "ddpo is a group of settings"),
        ({"num_envs": "6"}, "must divide num_envs (6)"),
    ):
        with pytest.raises(ValueError) as error:
            run(BenchConfig(train=train_overrides, output_dir=tmp_path / "bad"))
        assert needle in str(error.value), f"{needle!r} not in {error.value}"
        assert not (tmp_path / "bad").exists()
