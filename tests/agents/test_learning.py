"""Each algorithm learns: on a small task the reward after training beats the starting reward by
more than its noise (paired: the same prompts and initial noise before and after)."""

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.ddpo import DDPO, DDPOConfig, grpo_config
from agents.rwr import RWR, RWRConfig
from diffusion_gym import DiffusionPolicy
from diffusion_gym.rollout import rollout


def brightness(images, prompts):
    """Mean pixel value in [0, 1]: smooth in x_0, so a few updates can move it."""
    return images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0, {}


def make(num_envs=16, model="tiny-random-pixel", steps=3, **sampling):
    envs = gym.make_vec(
        "DiffusionCompressibility-v0", num_envs=num_envs, model=model, num_inference_steps=steps,
        reward=brightness, prompts=["a cat", "a dog"], device="cpu", array_type="torch",
    )  # fmt: skip
    policy = DiffusionPolicy.from_env(envs, **{"guidance_scale": 1.0, **sampling})
    policy.enable_full_finetuning()
    return envs, policy


# The DDPO paper's DDIM model, and a flow model with each flow sampler (GRPO's setting).
POLICIES = {
    "ddim": dict(model="tiny-random-pixel"),
    "flow-grpo": dict(model="tiny-random-pixel-flow", sampler="flow-grpo"),
    "dance-grpo": dict(model="tiny-random-pixel-flow", sampler="dance-grpo"),
    "cps": dict(model="tiny-random-pixel-flow", sampler="cps"),
}


def evaluate(envs, policy, seed=1234):
    envs.reset(seed=seed)  # the same prompts and noise every time
    return rollout(envs, policy, num_batches=4, generator=torch.Generator().manual_seed(seed)).rewards.numpy()


def assert_learns(envs, policy, agent, epochs, samples_per_prompt=1):
    before = evaluate(envs, policy)
    envs.reset(seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        agent.update(rollout(envs, policy, num_batches=1, samples_per_prompt=samples_per_prompt, generator=generator))
    after = evaluate(envs, policy)
    gain = after - before
    noise = 3 * gain.std(ddof=1) / np.sqrt(len(gain))
    assert gain.mean() > noise, f"reward {before.mean():.4f} -> {after.mean():.4f}, gain {gain.mean():.4f} <= 3 s.e. {noise:.4f}"


@pytest.mark.parametrize("estimator", ["sf", "is"])
def test_ddpo_learns(estimator):
    envs, policy = make()
    config = DDPOConfig(estimator=estimator, learning_rate=1e-3, train_batch_size=8, num_inner_epochs=2, clip_range=0.2, per_prompt_min_count=4)
    assert_learns(envs, policy, DDPO(policy, config), epochs=5)


@pytest.mark.parametrize("weighting", ["exp", "sparse"])
def test_rwr_learns(weighting):
    envs, policy = make()
    config = RWRConfig(weighting=weighting, beta=100.0, percentile=75, learning_rate=1e-3, train_batch_size=8, num_updates=8)
    assert_learns(envs, policy, RWR(policy, config), epochs=5)


def mean_kl_to_start(envs, policy) -> float:
    """Mean per-step KL between the policy's and the starting model's Gaussians on fresh samples."""
    from diffusion_gym.samplers import gaussian_kl

    envs.reset(seed=99)
    batch = rollout(envs, policy, num_batches=1, generator=torch.Generator().manual_seed(99))
    index = torch.arange(len(batch))
    kls = []
    with torch.no_grad():
        for step in range(batch.num_steps):
            obs = batch.observation(index, step)
            out = policy.forward(obs)
            with policy.reference():
                reference = policy.forward(obs)
            kls.append(gaussian_kl(out.mean, reference.mean, out.std).mean().item())
    return float(np.mean(kls))


def test_the_kl_penalty_keeps_the_policy_closer_to_the_starting_model():
    distances = {}
    for kl_coef in (0.0, 1.0):
        envs = make(num_envs=8)[0]  # a fresh model: make() enables full fine-tuning without a reference copy
        policy = DiffusionPolicy.from_env(envs)
        policy.enable_full_finetuning(keep_reference=True)
        config = DDPOConfig(estimator="sf", learning_rate=1e-3, train_batch_size=8, per_prompt_min_count=4, kl_coef=kl_coef)
        agent = DDPO(policy, config)
        envs.reset(seed=0)
        generator = torch.Generator().manual_seed(0)
        for _ in range(3):
            metrics = agent.update(rollout(envs, policy, num_batches=1, generator=generator))
        assert ("kl" in metrics) == (kl_coef > 0)  # the penalty's own KL is logged when it is on
        distances[kl_coef] = mean_kl_to_start(envs, policy)
    print(f"mean per-step KL to the starting model after 3 updates: {distances}")
    assert 0 < distances[1.0] < 0.5 * distances[0.0], distances


def test_grouped_prompts_repeat_each_prompt_within_a_batch():
    envs, policy = make(num_envs=8)
    envs.reset(seed=0)
    batch = rollout(envs, policy, num_batches=2, generator=torch.Generator().manual_seed(0), samples_per_prompt=4)
    for start in (0, 8):
        prompts = batch.prompts[start : start + 8]
        assert prompts[:4] == [prompts[0]] * 4 and prompts[4:] == [prompts[4]] * 4
    assert not torch.equal(batch.samples[0, -1], batch.samples[1, -1])  # same prompt, different noise
    with pytest.raises(ValueError, match="must divide num_envs"):
        rollout(envs, policy, num_batches=1, samples_per_prompt=3)


def test_steps_below_min_step_std_ratio_are_not_trained_on():
    """With the last step (the smallest σ_t) excluded, corrupting its recorded log-probs changes nothing."""
    envs, policy = make(num_envs=8)
    envs.reset(seed=0)
    batch = rollout(envs, policy, num_batches=1, generator=torch.Generator().manual_seed(0))
    std = policy.sampler.std(batch.timesteps[0])
    assert std[-1] < std[:-1].min()  # DDIM: σ_t shrinks to the last step
    corrupted = dataclasses.replace(batch, log_probs=batch.log_probs.clone())
    corrupted.log_probs[:, -1] += 1.0  # the old policy "was" far away on the last step only

    def parameters_after_update(ratio, trajectories):
        start = {k: v.clone() for k, v in policy.denoiser.state_dict().items()}
        config = DDPOConfig(learning_rate=1e-3, train_batch_size=8, clip_range=0.2, per_prompt_min_count=4, min_step_std_ratio=ratio)
        agent = DDPO(policy, config, generator=torch.Generator().manual_seed(0))
        trained = agent.trainable_steps(trajectories)
        assert (trained == trained[:1]).all() and torch.nonzero(trained[0]).flatten().tolist() == list(range(batch.num_steps - (ratio > 0)))
        agent.update(trajectories)
        after = torch.cat([p.detach().flatten().clone() for p in policy.trainable_parameters()])
        policy.denoiser.load_state_dict(start)
        return after

    threshold = float(std[-1] + std[-2]) / 2 / float(std.max())
    assert torch.equal(parameters_after_update(threshold, batch), parameters_after_update(threshold, corrupted))
    assert not torch.equal(parameters_after_update(0.0, batch), parameters_after_update(0.0, corrupted))
    with pytest.raises(ValueError, match="min_step_std_ratio must be in"):
        DDPO(policy, DDPOConfig(min_step_std_ratio=1.5))


@pytest.mark.parametrize("kind", POLICIES)
def test_the_first_ratio_is_one_whatever_the_minibatch(kind):
    """Recomputed in training, before any update, every step's log-prob is the one recorded in
    sampling: exactly for a minibatch of the sampling batch's shape, and within a few float32
    roundings of the summed log-prob (1e-6 nats a dimension) for minibatches of 4, 2 and 1, whose
    kernels sum in another order. So the importance ratio starts at 1 (the check Flow-GRPO's and
    DanceGRPO's users ask for) and the default per-dimension log-probs (`log_prob_reduce="mean"`)
    clip nothing at a clip range of 1e-4. On a flow model every stochastic step is checked (CPS's
    last step, σ' = 0, is its ODE step: no log-prob, never trained on)."""
    envs, policy = make(num_envs=8, **POLICIES[kind])
    envs.reset(seed=0)
    batch = rollout(envs, policy, num_batches=1, generator=torch.Generator().manual_seed(0))
    dims = batch.samples[0, 0].numel()
    stochastic = [k for k in range(batch.num_steps) if torch.isfinite(batch.log_probs[:, k]).all()]
    assert len(stochastic) == batch.num_steps - (kind == "cps")
    for size in (8, 4, 2, 1):
        for start in range(0, 8, size):
            index = torch.arange(start, start + size)
            for step in stochastic:
                steps = torch.full((size,), step)
                with torch.no_grad():
                    log_prob = policy(batch.observation(index, steps), action=batch.action(index, steps)).log_prob
                recorded = batch.log_probs[index, steps]
                if size == 8:
                    assert torch.equal(log_prob, recorded)
                # a rounding δ of the mean moves the log-density by about z δ / std a dimension:
                # steps of small std (CPS's late ones) get a bound looser in proportion
                std = float(policy.sampler.std(batch.timesteps[0, step : step + 1]))
                assert float((log_prob - recorded).abs().max()) / dims <= 1e-6 * max(1.0, 0.1 / std)


def one_batch_and_its_updates(kind):
    """A policy of POLICIES[kind] (the flow model with a kept reference, for GRPO's KL term), one
    batch of 8 episodes (4 a prompt), and `update(config)`: the gradients each optimizer step of
    one epoch on that batch receives, stacked, and the epoch's diagnostics; the policy is put
    back after each."""
    envs, policy = make(num_envs=8, **POLICIES[kind])
    if kind != "ddim":
        policy.enable_full_finetuning(keep_reference=True)
    envs.reset(seed=0)
    batch = rollout(envs, policy, num_batches=1, samples_per_prompt=4, generator=torch.Generator().manual_seed(0))
    start = {k: v.clone() for k, v in policy.denoiser.state_dict().items()}

    def update(**settings):
        settings = dict(learning_rate=1e-3, clip_range=0.2, **settings)
        config = DDPOConfig(**settings, per_prompt_min_count=4) if kind == "ddim" else grpo_config(4, **settings)
        agent, seen = DDPO(policy, config, generator=torch.Generator().manual_seed(0)), []
        step = agent._step
        agent._step = lambda: seen.append(torch.cat([p.grad.flatten().clone() for p in policy.trainable_parameters()])) or step()
        metrics = agent.update(batch)
        policy.denoiser.load_state_dict(start)
        return torch.stack(seen), metrics

    return batch, update


@pytest.mark.parametrize("kind", ["ddim", "flow-grpo"])
def test_an_update_does_not_depend_on_the_minibatch_size(kind):
    """One DDPO-IS epoch (on the flow model: GRPO's, groups of 4 with the KL term) as one
    minibatch of 8, or as 2 × 4 or 8 × 1 with gradient accumulation: the same gradient reaches
    the optimizer (to float rounding), since each minibatch's loss is weighted by its share of
    the accumulated batch."""
    _, update = one_batch_and_its_updates(kind)
    (whole,), _ = update(train_batch_size=8, gradient_accumulation_steps=1)
    assert whole.norm() > 0
    for size, accumulation in ((4, 2), (1, 8)):
        (accumulated,), _ = update(train_batch_size=size, gradient_accumulation_steps=accumulation)
        assert (accumulated - whole).norm() <= 1e-4 * whole.norm()  # float32 sums in another order
    (first, _), _ = update(train_batch_size=4, gradient_accumulation_steps=1)  # two optimizer steps of half the batch each: not the same update
    assert (first - whole).norm() > 0.1 * whole.norm()


@pytest.mark.parametrize("kind", ["ddim", "flow-grpo"])
def test_an_update_does_not_depend_on_the_steps_per_pass(kind):
    """One DDPO-IS epoch (on the flow model GRPO's, with its KL term, on half the steps) with one
    sampler step a denoiser pass, or 2, 3 (which does not divide the steps trained) or all of
    them a pass (a minibatch's (sample, step) pairs split evenly over the passes): the same
    gradient reaches the optimizer and the same diagnostics come back (to float rounding), since
    each pair's loss is computed as if it had a pass of its own."""
    batch, update = one_batch_and_its_updates(kind)
    fraction = {} if kind == "ddim" else {"timestep_fraction": 0.5}
    one, metrics = update(train_batch_size=4, steps_per_pass=1, **fraction)
    assert one.norm() > 0 and len(one) == 2  # two minibatches of 4, an optimizer step each
    for per_pass in (2, 3, batch.num_steps):
        grouped, grouped_metrics = update(train_batch_size=4, steps_per_pass=per_pass, **fraction)
        assert (grouped - one).norm() <= 1e-4 * one.norm(), per_pass  # float32 sums in another order
        assert grouped_metrics.keys() == metrics.keys()
        for key in ("loss", "approx_kl", "clipfrac", "kl"):
            if key in metrics:
                assert grouped_metrics[key] == pytest.approx(metrics[key], rel=1e-3, abs=1e-7), (per_pass, key)


# (model, sampler steps, epochs): the tiny latent models see the reward through a random VAE
# whose decoder normalises most of a shift of the latents away, so they need more of both.
FAMILY_RUNS = {"flow (pixels)": ("tiny-random-pixel-flow", 3, 5), "sdxl": ("tiny-random-sdxl", 6, 10), "sd3": ("tiny-random-sd3", 3, 5), "flux": ("tiny-random-flux", 3, 20)}


@pytest.mark.parametrize("family", FAMILY_RUNS)
def test_grpo_learns_on_every_family(family):
    """GRPO (DDPO-IS with group-normalised advantages) raises the brightness of each family's tiny
    model: on the flow models with Flow-GRPO's SDE, on SDXL with DDIM."""
    model, steps, epochs = FAMILY_RUNS[family]
    envs, policy = make(model=model, steps=steps)
    config = grpo_config(8, learning_rate=1e-3, train_batch_size=8, num_inner_epochs=2, clip_range=0.2, kl_coef=0.0)
    assert_learns(envs, policy, DDPO(policy, config), epochs, samples_per_prompt=8)
