"""tianshou 2.x trains the embedded model for compressibility through the env, with its own
REINFORCE (or PPO) algorithm and a `ProbabilisticActorPolicy` whose actor is the DiffusionPolicy.

    python examples/tianshou_reinforce.py                       # REINFORCE, a short run, CPU
    python examples/tianshou_reinforce.py --algorithm ppo

The diffusion env denoises all its episodes in lockstep, so tianshou collects whole batches of
episodes (n_step = num_envs × steps × episodes). Memory: tianshou's replay buffer keeps obs,
obs_next and the action of every step (3 × 3×32×32 float32 = 36.9 kB per step for the embedded
model); it is sized here to exactly one collection, which the on-policy algorithms clear after
each update, so it stays bounded. The figure is printed.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
from tianshou.algorithm.modelfree.ppo import PPO
from tianshou.algorithm.modelfree.reinforce import Reinforce
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Collector, VectorReplayBuffer
from tianshou.trainer import OnPolicyTrainerParams

import diffusion_gym  # noqa: F401  (registers the ids)
from agents.train import EMBEDDED_LORA_TARGETS
from diffusion_gym import DiffusionPolicy
from diffusion_gym.wrappers.tianshou import TianshouVectorEnv, TimestepCritic, make_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithm", choices=("reinforce", "ppo"), default="reinforce")
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--num-inference-steps", type=int, default=10)
    parser.add_argument("--episodes-per-collect", type=int, default=2, help="episodes per env in one collection")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args()

    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=args.num_envs, model="embedded", num_inference_steps=args.num_inference_steps)
    venv = TianshouVectorEnv(envs)
    diffusion = DiffusionPolicy.from_env(envs)
    diffusion.enable_lora(rank=8, target_modules=EMBEDDED_LORA_TARGETS)
    policy = make_policy(diffusion, venv)
    optim = AdamOptimizerFactory(lr=args.learning_rate)
    if args.algorithm == "reinforce":
        algorithm = Reinforce(policy=policy, gamma=1.0, return_standardization=True, optim=optim)
    else:
        algorithm = PPO(policy=policy, critic=TimestepCritic(diffusion.sampler.num_train_timesteps), optim=optim, gamma=1.0, gae_lambda=1.0, ent_coef=0.0)
    steps = args.num_envs * args.num_inference_steps * args.episodes_per_collect
    buffer = VectorReplayBuffer(steps, len(venv))
    print(f"replay buffer: {steps} steps, about {steps * 3 * 3 * 32 * 32 * 4 / 1e6:.1f} MB of obs, obs_next and actions")
    collector = Collector(algorithm, venv, buffer)
    result = algorithm.run_training(
        OnPolicyTrainerParams(
            training_collector=collector, max_epochs=args.epochs, epoch_num_steps=steps, collection_step_num_env_steps=steps,
            batch_size=args.num_envs * args.num_inference_steps, update_step_num_repetitions=1, test_step_num_episodes=0,
        )
    )  # fmt: skip
    print(result)


if __name__ == "__main__":
    main()
