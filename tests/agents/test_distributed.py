"""Two CPU processes (gloo) train together: after an update they hold identical parameters,
and they sampled different prompts and noise."""

import copy
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


def _sharded_worker(rank: int, port: int, results) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    import diffusion_gym  # noqa: F401
    from agents.ddpo import grpo_config
    from diffusion_gym import DiffusionPolicy

    envs = gym.make_vec("DiffusionIncompressibility-v0", num_envs=4, model="tiny-random-pixel-flow", num_inference_steps=2, prompts="toy_world", device="cpu", array_type="torch")
    whole, sharded = DiffusionPolicy.from_env(envs), DiffusionPolicy.from_env(envs)
    sharded.denoiser = copy.deepcopy(whole.denoiser)  # the same start, a model of its own
    whole.enable_full_finetuning()
    sharded.enable_full_finetuning()
    sharded.shard()
    start = torch.cat([p.detach().flatten().clone() for p in whole.denoiser.parameters()])
    envs.reset(seed=1000 * rank)
    batch = rollout(envs, whole, num_batches=1, samples_per_prompt=2, generator=torch.Generator().manual_seed(1000 * rank))
    config = grpo_config(2, learning_rate=1e-3, train_batch_size=4, clip_range=0.2, kl_coef=0.0)
    gradients = {}
    for name, policy in (("whole", whole), ("sharded", sharded)):  # the same batch: all-reduced gradients against FSDP's reduce-scatter
        agent = DDPO(policy, config, torch.Generator().manual_seed(rank))
        step = agent.optimizer.step

        def capture(*args, name=name, policy=policy, step=step, **kwargs):  # the gradient the optimizer gets, whole
            gradients[name] = torch.cat([(p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).flatten() for p in policy.denoiser.parameters()])
            return step(*args, **kwargs)

        agent.optimizer.step = capture
        agent.update(batch)
    full = torch.cat([p.detach().full_tensor().flatten() for p in sharded.denoiser.parameters()])
    local = sum(p.to_local().numel() for p in sharded.denoiser.parameters())
    gathered = [torch.empty_like(full) for _ in range(2)]
    dist.all_gather(gathered, full)
    results[rank] = {
        "identical": bool(torch.equal(gathered[0], gathered[1])), "moved": float((full - start).abs().max()), "share": local / full.numel(),
        "gradient_difference": float((gradients["sharded"] - gradients["whole"]).norm() / gradients["whole"].norm()),
    }  # fmt: skip
    dist.destroy_process_group()


def test_a_sharded_denoiser_takes_the_same_update_as_a_whole_one():
    """Full fine-tuning with the denoiser sharded over two gloo processes (FSDP2, `policy.shard()`):
    each process holds half the parameters; in a GRPO update the optimizer gets the gradient of
    the unsharded update on the same batch (all-reduced by the agent), to float rounding, and the
    gathered parameters after it are the same on both processes."""
    results = mp.Manager().dict()
    mp.spawn(_sharded_worker, args=(_free_port(), results), nprocs=2, join=True)
    for r in (0, 1):
        assert results[r]["identical"]
        assert results[r]["moved"] > 1e-4 and results[r]["gradient_difference"] <= 1e-5
        assert 0.45 <= results[r]["share"] <= 0.55
