"""Two CPU processes (gloo) train together: after an update they hold identical parameters,
and they sampled different prompts and noise."""

import os
import socket

import gymnasium as gym
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from diffusion_gym.rollout import rollout
from agents.ddpo import DDPO, DDPOConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, results) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    import diffusion_gym  # noqa: F401
    from diffusion_gym import DiffusionPolicy

    envs = gym.make_vec("DiffusionIncompressibility-v0", num_envs=4, model="tiny-random-pixel", num_inference_steps=2, prompts="toy_world", device="cpu", array_type="torch")
    policy = DiffusionPolicy.from_env(envs)
    policy.enable_lora(rank=2)
    envs.reset(seed=1000 * rank)  # as diffusion-gym-train seeds process r
    agent = DDPO(policy, DDPOConfig(estimator="sf", learning_rate=1e-2, train_batch_size=4, per_prompt_min_count=2), torch.Generator().manual_seed(rank))
    batch = rollout(envs, policy, num_batches=1, generator=torch.Generator().manual_seed(1000 * rank))
    before = torch.cat([p.detach().flatten() for p in policy.trainable_parameters()])
    agent.update(batch)
    after = torch.cat([p.detach().flatten() for p in policy.trainable_parameters()])
    gathered = [torch.empty_like(after) for _ in range(2)]
    dist.all_gather(gathered, after)
    results[rank] = {
        "identical": bool(torch.equal(gathered[0], gathered[1])),
        "moved": float((after - before).abs().max()),
        "prompts": batch.prompts,
        "noise": batch.samples[:, 0].numpy().copy(),
    }
    dist.destroy_process_group()


def test_two_gloo_processes_train_together():
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)
    a, b = results[0], results[1]
    assert a["identical"] and b["identical"]
    assert a["moved"] > 0 and b["moved"] > 0
    assert a["prompts"] != b["prompts"]
    assert not np.allclose(a["noise"], b["noise"])
