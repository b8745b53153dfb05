"""A training run's folder: whether a command may continue the run in it, and its checkpoints.

Running the same command again continues the run from its checkpoint. A command with other
settings may continue it only if what it changes is the budget, the logging or the folder
(`MAY_CHANGE`): anything else (task, algorithm, model, LoRA, hyperparameters, seed) would make
another run, so it is refused, before any work, with the differences listed. Allowed changes are
recorded in `resumes.jsonl`, and `config.json` always holds the settings in force.

Checkpoints are written atomically (a temporary file, then a rename), and the one before is kept
as `checkpoint.prev.pt`: a checkpoint that cannot be read (a crash mid-copy, a damaged disk) falls
back to it, and a write that fails (a full disk) removes its temporary file and says so.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CHECKPOINT, PREVIOUS, TEMPORARY, DAMAGED = "checkpoint.pt", "checkpoint.prev.pt", "checkpoint.tmp", "checkpoint.damaged.pt"
# Everything a run writes in its folder; --overwrite deletes these and nothing else.
RUN_FILES = ("config.json", "metrics.jsonl", "resumes.jsonl", CHECKPOINT, PREVIOUS, TEMPORARY, DAMAGED, "tensorboard", "final")
# Settings a resumed run may change: its budget, its logging, where its folder is, how the UNet's
# passes run (float rounding aside, not what they compute). Any other setting defines the run.
MAY_CHANGE = frozenset(
    {"epochs", "max_reward_queries", "max_minutes", "save_every", "images_every", "tensorboard", "progress", "overlap_rewards", "output_dir", "overwrite",
     "compile", "channels_last", "ddpo.steps_per_pass"}
)  # fmt: skip
_CHECKPOINT_KEYS = {"trainable", "agent", "env_rng", "sampling_rng", "epoch", "queries", "history", "seconds"}


def may_change(key: str) -> bool:
    """Whether a resumed run may change this setting ("epochs", "ddpo.steps_per_pass", ...)."""
    return key in MAY_CHANGE or key.split(".")[0] in MAY_CHANGE


@dataclass
class Plan:
    """What a command does with its folder: start afresh, or resume with these allowed changes."""

    resume: bool
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def as_saved(config: Any) -> dict:
    """A config dataclass as config.json holds it (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def differences(saved: dict, new: dict, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{"ddpo.learning_rate": (saved, new), ...} for every setting that differs; a group of
    settings (ddpo, rwr) is compared setting by setting, a mapping (reward_kwargs) as a whole."""
    out = {}
    for key in sorted(set(saved) | set(new)):
        a, b = saved.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
            out.update(differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = (a, b)
    return out


FRESH_START = "use another --output-dir, or pass --overwrite to delete the run in this folder"


def plan(out: Path, config: dict, overwrite: bool, fix: str = FRESH_START) -> Plan:
    """Decide, reading only, whether `config` (as config.json would hold it) starts afresh or
    resumes in `out`. Raises ValueError if `out` is a file, or holds a run with other settings
    (`fix`: how to start a new run instead, for the message)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {str(out)!r} is a file; give a folder (it is made if missing).")
    saved_path = out / "config.json"
    if overwrite:
        return Plan(resume=False)
    if not saved_path.is_file():
        found = sorted(name for name in RUN_FILES if (out / name).exists())
        if found:  # a run's files without its config (or another tool's): not ours to delete unasked
            raise ValueError(f"{str(out)!r} holds {found} but no config.json, so whose run it is cannot be checked; {fix}.")
        return Plan(resume=False)
    try:
        saved = json.loads(saved_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{str(saved_path)!r} cannot be read ({error}), so this folder's run cannot be checked against these settings; {fix}."
        ) from None
    changed = differences(saved, config)
    defining = {k: v for k, v in changed.items() if not may_change(k)}
    if defining:
        listed = "\n".join(f"  {key}: {a!r} in the folder, {b!r} now" for key, (a, b) in defining.items())
        raise ValueError(
            f"{str(out)!r} holds a run with other settings:\n{listed}\n"
            f"A run can only be continued with its own settings (the budget and logging may change). To start a new run, {fix}."
        )
    return Plan(resume=(out / CHECKPOINT).is_file() or (out / PREVIOUS).is_file(), changed=changed)


def start(out: Path, config: dict, plan: Plan, epoch: int = 0, queries: int = 0) -> None:
    """Make the folder ready (main process only): a fresh start deletes the files of any earlier
    attempt (metrics of epochs that never reached a checkpoint, stale TensorBoard events); a
    resume records its allowed changes. Then config.json is written."""
    out.mkdir(parents=True, exist_ok=True)
    if not plan.resume:
        for name in RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    else:
        record = {"time": datetime.datetime.now().isoformat(timespec="seconds"), "epoch": epoch, "reward_queries": queries, "changed": plan.changed}
        with (out / "resumes.jsonl").open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def save_checkpoint(out: Path, state: dict) -> None:
    """Write `state` atomically, keeping the checkpoint before it as checkpoint.prev.pt."""
    path, previous, temporary = out / CHECKPOINT, out / PREVIOUS, out / TEMPORARY
    try:
        torch.save(state, temporary)
    except (OSError, RuntimeError) as error:
        temporary.unlink(missing_ok=True)
        kept = f"{path} still holds the checkpoint before it" if path.exists() else "no checkpoint was written yet"
        raise OSError(
            f"Could not write the checkpoint of epoch {state.get('epoch')} to {temporary} ({error}); it was removed, and {kept}. "
            "Free disk space (or fix the folder's permissions) and run the same command to resume."
        ) from error
    if path.exists():
        os.replace(path, previous)
    os.replace(temporary, path)  # a crash between the two renames leaves checkpoint.prev.pt, which load() falls back to


def load_checkpoint(out: Path, set_aside_damaged: bool = True) -> dict | None:
    """The newest readable checkpoint in `out`, or None if there is none. A damaged
    checkpoint.pt falls back to checkpoint.prev.pt, with a message, and is renamed
    checkpoint.damaged.pt (`set_aside_damaged`: the main process), so that the next save keeps
    the good one as the previous; if none can be read, ValueError names each file and what to do."""
    problems = []
    for path in (out / CHECKPOINT, out / PREVIOUS):
        if not path.is_file():
            continue
        try:
            state = torch.load(path, weights_only=False, map_location="cpu")
            if not isinstance(state, dict) or not _CHECKPOINT_KEYS <= state.keys():
                raise ValueError(f"it lacks {sorted(_CHECKPOINT_KEYS - set(state) if isinstance(state, dict) else _CHECKPOINT_KEYS)}")
        except Exception as error:  # a damaged file fails in many ways (EOFError, UnpicklingError, RuntimeError, ...)
            problems.append(f"{path} cannot be read ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
            continue
        if problems:
            print(f"{problems[0]}; resuming from the previous checkpoint, {path.name} (epoch {state['epoch']}), instead.", file=sys.stderr)
            if set_aside_damaged and (out / CHECKPOINT).exists():
                os.replace(out / CHECKPOINT, out / DAMAGED)
        return state
    if problems:
        raise ValueError(
            "; ".join(problems) + ". No readable checkpoint is left: restore one from a copy, "
            "or pass --overwrite to start the run afresh in this folder."
        )
    return None
