"""stable-baselines3 and tianshou train the diffusion policy through the env: their log-probs are
DiffusionPolicy.log_prob, their updates change the policy, and action bounds never clip a sample."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from diffusion_gym.policy import DiffusionPolicy
from diffusion_gym.wrappers.observations import ACTION_BOUND, PromptIndexObservation

ENV = dict(model="tiny-random-pixel", num_inference_steps=3, device="cpu")


def make(num_envs=4):
    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=num_envs, **ENV)
    policy = DiffusionPolicy.from_env(envs)
    policy.enable_lora(rank=4, seed=0)
    return envs, policy


def trainable(policy):
    return {n: p.detach().clone() for n, p in policy.denoiser.named_parameters() if p.requires_grad}


def changed(policy, before) -> bool:
    return any(not torch.equal(p, before[n]) for n, p in policy.denoiser.named_parameters() if p.requires_grad)


def test_prompt_index_observations_and_bounds_that_never_clip_a_policy_sample():
    envs, policy = make(8)
    wrapped = PromptIndexObservation(envs)
    obs, _ = wrapped.reset(seed=0)
    assert wrapped.single_observation_space.contains({k: v[0] for k, v in obs.items()})
    generator = torch.Generator().manual_seed(0)
    largest = 0.0
    for _ in range(3):  # whole episodes: every step's action, from pure noise to x_0
        while True:
            action, _ = policy.act(wrapped.prompt_observation(obs), generator=generator)
            assert np.array_equal(np.clip(action, wrapped.single_action_space.low, wrapped.single_action_space.high), action)
            largest = max(largest, float(np.abs(action).max()))
            obs, _, terminated, _, _ = wrapped.step(action)
            if terminated.all():
                obs, _ = wrapped.reset()
                break
    assert largest < ACTION_BOUND / 100  # not just unclipped here: two orders of magnitude of room
    with pytest.raises(ValueError, match="not in the env's prompt set"):
        wrapped.reset(options={"prompts": ["a prompt from elsewhere"] * 8})


@pytest.mark.parametrize("value_head", ["timestep", "prompt"])
def test_stable_baselines3_ppo_trains_the_policy_and_its_log_prob_is_ours(value_head):
    from stable_baselines3 import PPO

    from diffusion_gym.wrappers.sb3 import DiffusionActorCriticPolicy, SB3VecEnv, ddpo_like_ppo_kwargs

    envs, policy = make(4)
    vec_env = SB3VecEnv(envs)
    kwargs = ddpo_like_ppo_kwargs(vec_env, episodes_per_rollout=2)
    assert kwargs["n_steps"] == 6 and kwargs["gamma"] == 1.0 and kwargs["gae_lambda"] == 1.0
    model = PPO(DiffusionActorCriticPolicy, vec_env, learning_rate=1e-3, seed=0, device="cpu",
                policy_kwargs=dict(diffusion_policy=policy, prompts=vec_env.prompts, value_head=value_head), **kwargs)  # fmt: skip
    before = trainable(policy)
    model.learn(total_timesteps=2 * kwargs["n_steps"] * 4)
    assert changed(policy, before)
    values = model.policy.values_per_timestep if value_head == "timestep" else model.policy.values_per_prompt
    assert values.weight.abs().sum() > 0  # the learned V(t) or V(prompt) moved too

    obs = vec_env.reset()
    obs_tensor, _ = model.policy.obs_to_tensor(obs)
    with torch.no_grad():
        actions, _, sb3_log_prob = model.policy(obs_tensor)
        _, evaluated, _ = model.policy.evaluate_actions(obs_tensor, actions)
        ours = policy.log_prob(vec_env.envs.prompt_observation(obs), actions.reshape(4, *vec_env.sample_shape))
    torch.testing.assert_close(sb3_log_prob, ours, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(evaluated, ours, rtol=1e-5, atol=1e-3)


def test_sb3_policy_gives_no_gradient_on_quiet_steps_and_keeps_their_log_prob():
    from stable_baselines3 import PPO

    from diffusion_gym.wrappers.sb3 import DiffusionActorCriticPolicy, SB3VecEnv, ddpo_like_ppo_kwargs

    envs, policy = make(4)
    vec_env = SB3VecEnv(envs)
    relative = policy.sampler.relative_std(policy.sampler.timesteps)  # tiny-random-pixel, 3 steps: 1, 0.063, 0.032
    ratio = float(relative[1] + relative[2]) / 2  # only the last step is quiet
    models = {
        r: PPO(DiffusionActorCriticPolicy, vec_env, seed=0, device="cpu", policy_kwargs=dict(diffusion_policy=policy, prompts=vec_env.prompts, min_step_std_ratio=r),
               **ddpo_like_ppo_kwargs(vec_env))
        for r in (0.0, ratio)
    }  # fmt: skip
    obs = vec_env.reset()
    for step in range(3):
        obs_tensor, _ = models[0.0].policy.obs_to_tensor(obs)
        actions = torch.as_tensor(np.stack([vec_env.envs.single_action_space.sample() for _ in range(4)])).flatten(1) * 0.01
        grads, log_probs = {}, {}
        for r, model in models.items():
            policy.denoiser.zero_grad()
            _, log_probs[r], _ = model.policy.evaluate_actions(obs_tensor, actions)
            log_probs[r].sum().backward()
            grads[r] = sum(float(p.grad.abs().sum()) for p in policy.trainable_parameters() if p.grad is not None)
        torch.testing.assert_close(log_probs[ratio], log_probs[0.0])  # values unchanged
        assert grads[0.0] > 0
        assert (grads[ratio] == 0) == (step == 2), (step, grads)
        obs, _, _, _ = vec_env.step(actions.numpy())
    with pytest.raises(ValueError, match="min_step_std_ratio"):
        PPO(DiffusionActorCriticPolicy, vec_env, policy_kwargs=dict(diffusion_policy=policy, prompts=vec_env.prompts, min_step_std_ratio=2.0), **ddpo_like_ppo_kwargs(vec_env))


def test_sb3_env_groups_prompts_and_hands_ppo_per_prompt_normalised_rewards():
    from agents.normalizer import PerPromptNormalizer
    from diffusion_gym.rewards.jpeg import jpeg_size_kb
    from diffusion_gym.wrappers.sb3 import SB3VecEnv

    envs, policy = make(8)
    vec_env = SB3VecEnv(envs, samples_per_prompt=2, reward_normalizer=PerPromptNormalizer(buffer_size=8, min_count=2))
    vec_env.seed(0)
    obs = vec_env.reset()
    generator = torch.Generator().manual_seed(0)
    for episode in range(2):
        indices = obs["prompt_index"].reshape(-1)
        assert np.array_equal(indices[0::2], indices[1::2])  # 4 prompts, 2 samples each
        for step in range(3):
            action, _ = policy.act(vec_env.envs.prompt_observation(obs), generator=generator)
            obs, rewards, dones, infos = vec_env.step(action.reshape(8, -1))
            if step < 2:
                assert not dones.any() and np.all(rewards == 0)
        assert dones.all()
        raw = np.array([info["unnormalized_reward"] for info in infos])
        final = torch.as_tensor(np.stack([info["terminal_observation"]["x_t"] for info in infos]))
        np.testing.assert_allclose(raw, -jpeg_size_kb(policy.model.decode(final)))  # the env's reward, -kB
        if episode == 0:  # each prompt's first two rewards: normalised by their own mean and std, by hand
            for pair in range(4):
                if indices[2 * pair] in indices[: 2 * pair]:
                    continue  # drawn twice in this batch: four rewards in its statistics
                two = raw[2 * pair : 2 * pair + 2]
                np.testing.assert_allclose(rewards[2 * pair : 2 * pair + 2], (two - two.mean()) / (two.std() + 1e-6), rtol=1e-5)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        SB3VecEnv(envs, samples_per_prompt=3)


@pytest.mark.parametrize("algorithm", ["reinforce", "ppo"])
def test_tianshou_trains_the_policy_and_its_log_prob_is_ours(algorithm):
    from tianshou.algorithm.modelfree.ppo import PPO
    from tianshou.algorithm.modelfree.reinforce import Reinforce
    from tianshou.algorithm.optim import AdamOptimizerFactory
    from tianshou.data import Batch, Collector, VectorReplayBuffer
    from tianshou.trainer import OnPolicyTrainerParams

    from diffusion_gym.wrappers.tianshou import TianshouVectorEnv, TimestepCritic, make_policy

    envs, policy = make(4)
    venv = TianshouVectorEnv(envs)
    actor_policy = make_policy(policy, venv)
    optim = AdamOptimizerFactory(lr=1e-3)
    if algorithm == "reinforce":
        trainer = Reinforce(policy=actor_policy, gamma=1.0, optim=optim)
    else:
        trainer = PPO(policy=actor_policy, critic=TimestepCritic(policy.sampler.num_train_timesteps), optim=optim, gamma=1.0, gae_lambda=1.0, ent_coef=0.0)
    steps = 4 * 3 * 2  # two batches of whole episodes
    collector = Collector(trainer, venv, VectorReplayBuffer(steps, len(venv)))
    before = trainable(policy)
    trainer.run_training(
        OnPolicyTrainerParams(
            training_collector=collector, max_epochs=1, epoch_num_steps=steps, collection_step_num_env_steps=steps,
            batch_size=12, update_step_num_repetitions=1, test_step_num_episodes=0, show_progress=False, verbose=False,
        )
    )  # fmt: skip
    assert changed(policy, before)

    obs, _ = venv.reset()
    with torch.no_grad():
        out = actor_policy(Batch(obs=obs, info=Batch()))
        tianshou_log_prob = out.dist.log_prob(out.act)
        stacked = {key: np.stack([row[key] for row in obs]) for key in obs[0]}
        ours = policy.log_prob(venv.envs.prompt_observation(stacked), out.act.reshape(4, *venv.sample_shape))
    torch.testing.assert_close(tianshou_log_prob, ours, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="all its 4 episodes together"):
        venv.step(np.zeros((2, venv.action_space.shape[0]), dtype=np.float32), env_id=[0, 1])
