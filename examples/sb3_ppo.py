"""stable-baselines3 PPO fine-tunes the embedded model for compressibility through the env.

    python examples/sb3_ppo.py                                  # a short run, offline, CPU
    python examples/sb3_ppo.py --rollouts 60 --output runs/sb3_ppo.jsonl

PPO's policy is `DiffusionActorCriticPolicy`: the Gaussian of each denoising step comes from the
`DiffusionPolicy` (LoRA adapters are what PPO trains), with no gradient from near-deterministic
steps (as `embedded-ddpo-is`). The env draws each batch as 8 prompts × 8 (as DDPO samples) and
hands PPO each terminal reward normalised by its prompt's statistics (DDPO's advantage), so the
value head is zero by default (`--value-head prompt` learns V(prompt) instead, with
`--no-per-prompt-rewards`: PPO on the raw rewards). The settings from `ddpo_like_ppo_kwargs`
(gamma 1, GAE lambda 1, whole episodes per rollout) make the update DDPO-IS's in spirit. Like
the `embedded-*` presets it samples without guidance. Each rollout's mean terminal reward (the
env's, before normalisation) is printed and written as a JSON line against the number of
reward queries (finished episodes).

Memory: SB3's rollout buffer holds n_steps × num_envs observations and actions (x_t and x_{t-1},
3×32×32 float32 each for the embedded model, 24.6 kB per step and env); it is allocated once,
for one rollout. Keep it bounded with --episodes-per-rollout and --num-envs; the figure is printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

import diffusion_gym  # noqa: F401  (registers the ids)
from agents.normalizer import PerPromptNormalizer
from agents.train import EMBEDDED_LORA_TARGETS
from diffusion_gym import DiffusionPolicy
from diffusion_gym.wrappers.sb3 import DiffusionActorCriticPolicy, SB3VecEnv, ddpo_like_ppo_kwargs


class TerminalRewards(BaseCallback):
    """Mean terminal reward of each rollout, against reward queries so far."""

    def __init__(self, output: Path | None):
        super().__init__()
        self.output, self.rewards, self.queries, self.start = output, [], 0, time.perf_counter()

    def _on_step(self) -> bool:
        dones, infos = self.locals["dones"], self.locals["infos"]
        if dones.any():  # the env's reward, before any normalisation
            self.rewards += [info["unnormalized_reward"] for info, done in zip(infos, dones) if done]
            self.queries += int(dones.sum())
        return True

    def _on_rollout_end(self) -> None:
        record = {"reward_queries": self.queries, "reward_mean": float(np.mean(self.rewards)), "seconds": time.perf_counter() - self.start}
        print(json.dumps(record), flush=True)
        if self.output:
            with self.output.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self.rewards = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-id", default="DiffusionCompressibility-v0")
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--num-inference-steps", type=int, default=10)
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--value-head", choices=["zero", "timestep", "prompt"], default="zero", help="zero: the per-prompt normalised rewards are the advantages, as in DDPO")
    parser.add_argument("--min-step-std-ratio", type=float, default=0.2, help="steps with a smaller σ_t / max σ give no gradient")
    parser.add_argument("--episodes-per-rollout", type=int, default=4, help="episodes per env in one rollout")
    parser.add_argument("--samples-per-prompt", type=int, default=8, help="each batch of episodes holds num_envs / k prompts k times each")
    parser.add_argument("--per-prompt-rewards", action=argparse.BooleanOptionalAction, default=True,
                        help="PPO's rewards are normalised per prompt (DDPO's advantages); --no-per-prompt-rewards: the raw rewards")
    parser.add_argument("--minibatches", type=int, default=4, help="PPO updates per rollout (1: one step on the whole rollout, as DDPO-SF)")
    parser.add_argument("--rollouts", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="JSON lines: reward against reward queries")
    args = parser.parse_args()

    envs = gym.make_vec(args.env_id, num_envs=args.num_envs, model="embedded", num_inference_steps=args.num_inference_steps)
    normalizer = PerPromptNormalizer(buffer_size=32, min_count=args.samples_per_prompt) if args.per_prompt_rewards else None
    vec_env = SB3VecEnv(envs, samples_per_prompt=args.samples_per_prompt, reward_normalizer=normalizer)
    vec_env.seed(args.seed)
    diffusion = DiffusionPolicy.from_env(envs, guidance_scale=args.guidance_scale)
    diffusion.enable_lora(rank=8, target_modules=EMBEDDED_LORA_TARGETS, seed=args.seed)
    kwargs = ddpo_like_ppo_kwargs(vec_env, episodes_per_rollout=args.episodes_per_rollout, minibatches=args.minibatches)
    model = PPO(
        DiffusionActorCriticPolicy, vec_env, learning_rate=args.learning_rate, seed=args.seed, device=diffusion.device,
        policy_kwargs=dict(diffusion_policy=diffusion, prompts=vec_env.prompts, value_head=args.value_head, min_step_std_ratio=args.min_step_std_ratio),
        **kwargs,
    )  # fmt: skip
    buffer = model.rollout_buffer
    nbytes = sum(a.nbytes for a in buffer.observations.values()) + sum(a.nbytes for a in (buffer.actions, buffer.rewards, buffer.values, buffer.log_probs, buffer.advantages, buffer.returns))
    print(f"rollout buffer: {nbytes / 1e6:.1f} MB for {kwargs['n_steps']} steps × {args.num_envs} envs")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("")
    model.learn(total_timesteps=args.rollouts * kwargs["n_steps"] * args.num_envs, callback=TerminalRewards(args.output))


if __name__ == "__main__":
    main()
