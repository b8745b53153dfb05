"""The agents' numbers: surrogate losses, clipping, RWR weights, per-prompt normalisation."""

import numpy as np
import pytest
import torch

from agents.ddpo import DDPO, DDPOConfig, ddpo_loss
from agents.normalizer import PerPromptNormalizer, within_prompt_std
from agents.rwr import RWRConfig, denoising_loss, rwr_weights
from diffusion_gym import DiffusionPolicy
from diffusion_gym.models import load_model
from diffusion_gym.rollout import rollout
from tests.conftest import make_vec


def test_denoising_loss_matches_a_hand_computation_for_epsilon_and_v_prediction(tiny_model):
    for prediction_type in ("epsilon", "v_prediction"):
        tiny_model.scheduler.register_to_config(prediction_type=prediction_type)
        policy = DiffusionPolicy(tiny_model, tiny_model.scheduler, 4)
        x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(8))
        timesteps = torch.tensor([10, 700])
        loss = denoising_loss(policy, x0, ["a cat", "a dog"], timesteps=timesteps, generator=torch.Generator().manual_seed(9))
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))  # the same noise, by hand
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # tiny-random: SD's scaled_linear
        alpha = torch.cumprod(1 - betas, 0)[timesteps].view(-1, 1, 1, 1)
        x_t = (alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise).float()
        target = noise if prediction_type == "epsilon" else (alpha.sqrt() * noise - (1 - alpha).sqrt() * x0).float()
        prediction = policy.denoiser(x_t, timesteps, encoder_hidden_states=policy.encode_prompts(["a cat", "a dog"])["encoder_hidden_states"]).sample
        torch.testing.assert_close(loss, ((prediction - target) ** 2).mean(dim=(1, 2, 3)), rtol=1e-4, atol=1e-5)


def test_denoising_loss_is_the_flow_matching_loss_on_a_flow_model():
    model = load_model("tiny-random-pixel-flow", device="cpu")
    policy = DiffusionPolicy(model, model.scheduler, 4)
    x0 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(8)) * 2 - 1
    timesteps = torch.tensor([100.0, 750.0])
    loss = denoising_loss(policy, x0, ["a cat", "a dog"], timesteps=timesteps, generator=torch.Generator().manual_seed(9))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))  # the same noise, by hand
    sigma = torch.tensor([0.1, 0.75]).view(-1, 1, 1, 1)
    x_sigma = (1 - sigma) * x0 + sigma * noise  # (F1)
    velocity = model.unet(x_sigma, timesteps, encoder_hidden_states=policy.encode_prompts(["a cat", "a dog"])["encoder_hidden_states"]).sample
    torch.testing.assert_close(loss, ((velocity - (noise - x0)) ** 2).mean(dim=(1, 2, 3)), rtol=1e-4, atol=1e-5)


def test_mean_log_probs_divide_the_log_ratio_by_the_dimensions():
    """The policy's log-probs are sums; DDPOConfig.log_prob_reduce="mean" divides both sides of the
    ratio by the D dimensions. Old log-probs shifted by 0.01 D give a log-ratio of −0.01 under
    "mean" (inside a clip range of 0.2) and −0.01 D = −2.56 under "sum" (far outside)."""
    envs = make_vec(num_envs=4, array_type="torch")
    policy = DiffusionPolicy.from_env(envs)
    policy.enable_lora(rank=2, seed=0)
    batch = rollout(envs, policy, seed=0, generator=torch.Generator().manual_seed(0))
    dims = batch.samples[0, 0].numel()
    assert dims == 256
    batch.log_probs += 0.01 * dims
    metrics = {}
    for reduce in ("mean", "sum"):
        config = DDPOConfig(estimator="is", log_prob_reduce=reduce, train_batch_size=4, clip_range=0.2, learning_rate=1e-12)
        metrics[reduce] = DDPO(policy, config).update(batch)
    assert metrics["mean"]["clipfrac"] == 0.0 and metrics["sum"]["clipfrac"] == 1.0
    assert metrics["mean"]["approx_kl"] == pytest.approx(0.5 * 0.01**2, rel=1e-2)
    assert metrics["sum"]["approx_kl"] == pytest.approx(0.5 * 2.56**2, rel=1e-2)


def test_a_minibatch_splits_into_the_fewest_even_passes_within_the_limit(tiny_model):
    """`DDPO.pass_sizes`: a minibatch's (sample, step) pairs go through the fewest passes of at
    most `pairs_per_pass`, split as evenly as they go; automatic in float32 by latent size (at
    least one step of the batch a pass), one step a pass under mixed precision."""
    policy = DiffusionPolicy(tiny_model, tiny_model.scheduler, 4)
    policy.enable_lora(rank=2, seed=0)

    def sizes(samples=8, steps=10, latent_values=4 * 8 * 8, **config):
        return DDPO(policy, DDPOConfig(train_batch_size=8, **config)).pass_sizes(samples, steps, latent_values)

    assert sizes() == [20, 20, 20, 20]  # at most 12288 // (2 × 256) = 24 pairs: 4 passes, not 24, 24, 24, 8
    assert sizes(steps_per_pass=1) == [8] * 10  # one whole step a pass
    assert sizes(steps_per_pass=3) == [20, 20, 20, 20] and sizes(steps_per_pass=4) == [27, 27, 26]
    assert sizes(steps_per_pass=10) == [80] and sizes(steps_per_pass=50) == [80]
    assert sizes(samples=5, steps=3, steps_per_pass=1) == [8, 7]  # a last, smaller minibatch: 15 pairs
    assert sizes(latent_values=4 * 64 * 64) == [8] * 10  # Stable Diffusion's latents: one step a pass
    assert sizes(mixed_precision="bf16") == [8] * 10
    for samples, steps, limit in ((8, 10, 3), (7, 9, 2), (1, 1, 1), (16, 25, 4)):
        split = sizes(samples, steps, steps_per_pass=limit)
        assert sum(split) == samples * steps and max(split) - min(split) <= 1 and max(split) <= 8 * limit
        assert len(split) == -(-samples * steps // (8 * limit))


def test_is_loss_equals_sf_loss_and_gradient_at_ratio_one():
    advantages = torch.tensor([1.5, -0.5, 2.0, -3.0])
    theta_sf = torch.tensor([0.3, -1.0, 0.7, 0.1], requires_grad=True)
    theta_is = theta_sf.detach().clone().requires_grad_(True)
    log_prob = lambda theta: -(theta**2) * torch.tensor([1.0, 2.0, 0.5, 3.0])  # noqa: E731  any differentiable log-prob
    old = log_prob(theta_sf).detach()  # ratio = 1: the policy has not moved since sampling
    sf, _ = ddpo_loss(log_prob(theta_sf), old, advantages, "sf", clip_range=1e-4)
    is_, _ = ddpo_loss(log_prob(theta_is), old, advantages, "is", clip_range=1e-4)
    sf.backward()
    is_.backward()
    torch.testing.assert_close(sf, is_)
    torch.testing.assert_close(sf, -advantages.mean())
    torch.testing.assert_close(theta_sf.grad, theta_is.grad)
    # and the gradient is REINFORCE's: −A ∇log π / B
    theta = theta_sf.detach().clone().requires_grad_(True)
    (-(advantages * log_prob(theta)).mean()).backward()
    torch.testing.assert_close(theta_sf.grad, theta.grad)


@pytest.mark.parametrize(
    "advantage, log_ratio, gradient_flows",
    [
        (1.0, 0.5, False),  # A > 0, ρ above 1 + ε: clipped, no gradient
        (1.0, -0.5, True),  # A > 0, ρ below 1 − ε: the unclipped term is the max, gradient flows
        (-1.0, -0.5, False),  # A < 0, ρ below 1 − ε: clipped
        (-1.0, 0.5, True),
        (1.0, 0.05, True),  # inside the range
    ],
)
def test_clipping_stops_the_gradient_beyond_the_clip_range(advantage, log_ratio, gradient_flows):
    log_prob = torch.tensor([log_ratio], requires_grad=True)
    loss, info = ddpo_loss(log_prob, torch.zeros(1), torch.tensor([advantage]), "is", clip_range=0.2)
    loss.backward()
    assert (log_prob.grad.abs().item() > 0) == gradient_flows
    assert info["clipfrac"] == float(abs(np.exp(log_ratio) - 1) > 0.2)


def test_rwr_weights_equal_the_formulas():
    rewards = np.array([1.0, 2.0, 3.0, -1.0, 0.0, 10.0, 4.0, 5.0, 6.0, 7.0])
    exp = rwr_weights(rewards, RWRConfig(weighting="exp", beta=0.2))
    by_hand = np.exp(0.2 * rewards) / np.exp(0.2 * rewards).sum() * len(rewards)
    np.testing.assert_allclose(exp, by_hand, rtol=1e-12)
    sparse = rwr_weights(rewards, RWRConfig(weighting="sparse", percentile=90))
    threshold = np.percentile(rewards, 90)  # 7.3: only 10.0 is kept
    np.testing.assert_array_equal(sparse, (rewards >= threshold).astype(float))
    assert sparse.sum() == 1 and sparse[5] == 1
    # huge rewards do not overflow the exponential weights
    assert np.isfinite(rwr_weights(rewards * 1e4, RWRConfig(weighting="exp"))).all()


def test_per_prompt_normalizer_matches_a_hand_computation():
    normalizer = PerPromptNormalizer(buffer_size=3, min_count=2, clip=5.0, eps=0.0)
    # batch 1: "a" has 2 rewards (its own stats), "b" has 1 (batch stats)
    adv = normalizer(["a", "a", "b"], np.array([1.0, 3.0, 8.0]))
    batch_mean, batch_std = np.mean([1, 3, 8]), np.std([1, 3, 8])
    np.testing.assert_allclose(adv, [(1 - 2) / 1, (3 - 2) / 1, (8 - batch_mean) / batch_std])
    # batch 2: "a"'s buffer keeps the last 3 of [1, 3, 5], "b" now has [8, 4]
    adv = normalizer(["a", "b"], np.array([5.0, 4.0]))
    np.testing.assert_allclose(adv, [(5 - 3) / np.std([1, 3, 5]), (4 - 6) / 2])
    normalizer(["a"], np.array([100.0]))  # buffer [3, 5, 100]: the oldest reward has gone
    assert list(normalizer.buffers["a"]) == [3.0, 5.0, 100.0]
    clipped = PerPromptNormalizer(buffer_size=4, min_count=4, clip=1.0)(["x"] * 4, np.array([0.0, 0.0, 0.0, 10.0]))
    assert clipped.max() == 1.0


def test_a_buffer_of_one_batch_normalises_each_prompt_within_its_batch():
    first, later = np.array([0.0, 1.0]), np.array([2.0, 3.0])  # the policy improved between two visits of "p"
    running = PerPromptNormalizer(buffer_size=4, min_count=2, eps=0.0)
    running(["p"] * 2, first)
    stale = running(["p"] * 2, later)  # buffer [0, 1, 2, 3]: mean 1.5, std 1.118
    np.testing.assert_allclose(stale, (later - 1.5) / np.std([0.0, 1.0, 2.0, 3.0]))
    assert (stale > 0).all()  # both later samples look good only because the old ones were worse
    per_batch = PerPromptNormalizer(buffer_size=2, min_count=2, eps=0.0)
    per_batch(["p"] * 2, first)
    np.testing.assert_allclose(per_batch(["p"] * 2, later), [-1.0, 1.0])  # (r − 2.5) / 0.5


def test_within_prompt_std_averages_each_prompts_spread():
    rewards, spread = np.array([1.00, 1.01, 0.99, 1.00]), np.array([0.0, 1.0, 2.0, 3.0])  # stds 0.00707 and 1.118
    both = within_prompt_std(["p"] * 4 + ["q"] * 4, np.concatenate([rewards, spread]))
    np.testing.assert_allclose(both, (np.std(rewards) + np.std(spread)) / 2)


def test_bad_configs_fail_their_check_with_a_reason():
    """`check()` runs when an agent is made, and for a TrainConfig's groups when it is made."""
    with pytest.raises(ValueError, match="estimator"):
        DDPOConfig(estimator="ppo").check()
    with pytest.raises(ValueError, match="^ddpo.learning_rate"):
        DDPOConfig(learning_rate=-1e-4).check("ddpo.")
    with pytest.raises(ValueError, match="weighting"):
        RWRConfig(weighting="linear").check()
    with pytest.raises(ValueError, match="min_count"):
        PerPromptNormalizer(buffer_size=4, min_count=8)
