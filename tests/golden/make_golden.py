"""Golden numbers: what the env, the policy and the agents compute today for fixed seeds, so that
a change meant to keep behaviour (a refactor) can be checked against them by
`tests/test_golden.py`.

    python -m tests.golden.make_golden          # rewrite tests/golden/numbers.json (only when behaviour is meant to change)

Each case is small: a short rollout on the tiny random model and on the embedded model
(observations, actions and log-probs summarised per step, the rewards in full), one DDPO-IS and
one RWR update on the tiny model (their metrics and the size of the parameter change), and the
numbers of a small `diffusion-gym-bench quick` (incompressibility only, 128 reward queries: every
cell's last evaluation, and the start's).
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import diffusion_gym  # noqa: F401  (registers the ids)

PATH = Path(__file__).with_name("numbers.json")


def _summary(x) -> list[float]:
    """sum, sum of squares and the first four values of a tensor or array, as floats."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double().flatten()
    return [float(x.sum()), float((x * x).sum()), *map(float, x[:4])]


def episode(model: str, num_envs: int, num_inference_steps: int | None, seed: int) -> dict:
    from diffusion_gym.policy import DiffusionPolicy
    from diffusion_gym.rollout import rollout

    kwargs = {} if num_inference_steps is None else {"num_inference_steps": num_inference_steps}
    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=num_envs, model=model, device="cpu", **kwargs)
    batch = rollout(envs, DiffusionPolicy.from_env(envs), seed=seed, generator=torch.Generator().manual_seed(seed))
    steps = range(batch.num_steps)
    return {
        "prompts": batch.prompts,
        "timesteps": [batch.timesteps[:, k].tolist() for k in steps],
        "x_t": [_summary(batch.samples[:, k]) for k in steps],
        "actions": [_summary(batch.samples[:, k + 1]) for k in steps],
        "log_probs": [batch.log_probs[:, k].double().tolist() for k in steps],
        "rewards": batch.rewards.double().tolist(),
        "images": _summary(batch.images),
    }


def update(algorithm: str) -> dict:
    from agents.ddpo import DDPO, DDPOConfig
    from agents.rwr import RWR, RWRConfig
    from diffusion_gym.policy import DiffusionPolicy
    from diffusion_gym.rollout import rollout

    envs = gym.make_vec("DiffusionIncompressibility-v0", num_envs=4, model="tiny-random", num_inference_steps=3, device="cpu", array_type="torch")
    policy = DiffusionPolicy.from_env(envs)
    policy.enable_lora(rank=4, seed=0)
    generator = torch.Generator().manual_seed(0)
    if algorithm == "ddpo-is":
        agent = DDPO(policy, DDPOConfig(estimator="is", log_prob_reduce="mean", learning_rate=1e-3, train_batch_size=4, clip_range=0.2, per_prompt_min_count=16), generator)
    else:
        agent = RWR(policy, RWRConfig(weighting="exp", beta=1.0, learning_rate=1e-3, train_batch_size=4, num_updates=2), generator)
    envs.reset(seed=1)
    before = torch.cat([p.detach().flatten().clone() for p in policy.trainable_parameters()])
    batch = rollout(envs, policy, num_batches=1, generator=torch.Generator().manual_seed(2))
    metrics = agent.update(batch)
    after = torch.cat([p.detach().flatten() for p in policy.trainable_parameters()])
    change = (after - before).double()
    return {
        "rewards": batch.rewards.double().tolist(),
        "metrics": {k: float(v) for k, v in sorted(metrics.items()) if isinstance(v, (int, float)) and np.isfinite(v)},
        "parameter_change": [float(change.norm()), float(change.sum()), float(change.abs().max())],
    }


def bench_quick() -> dict:
    """`diffusion-gym-bench quick` on one task at a third of its budget (about 30 s on 2 cores): the
    evaluations its table is made of. In one process and with the held-out split, as these numbers
    were recorded (quick itself now runs two processes and the training prompts only)."""
    import dataclasses
    import tempfile

    from benchmarks.run import PRESETS, run

    with tempfile.TemporaryDirectory() as folder:
        config = dataclasses.replace(PRESETS["quick"][1], tasks=("DiffusionIncompressibility-v0",), budget=128, eval_every=4, eval_prompts=32, held_out_prompts="auto", workers=1, output_dir=Path(folder))
        results = run(config)
    keys = ("eval_train_reward", "eval_held_out_reward", "eval_train_faithfulness")
    numbers = {f"start {task}": [start[k] for k in keys] for task, start in sorted(results["start"].items())}
    for cell in results["cells"]:
        numbers[f"{cell['task']} {cell['algorithm']} seed {cell['seed']}"] = [cell["evaluations"][-1][k] for k in keys]
    return numbers


def compute() -> dict:
    torch.manual_seed(0)
    return {
        "rollout_tiny_random": episode("tiny-random", 2, 3, seed=0),
        "rollout_embedded": episode("embedded", 2, None, seed=0),
        "update_ddpo_is": update("ddpo-is"),
        "update_rwr": update("rwr-exp"),
        "bench_quick": bench_quick(),
    }


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    PATH.write_text(json.dumps(compute(), indent=1) + "\n")
    print(f"wrote {PATH}")
