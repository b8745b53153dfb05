"""The DDIM step and its log-prob against diffusers, torch.distributions and closed forms."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from diffusion_gym.samplers import DDIMSampler, gaussian_kl, gaussian_log_prob

SD_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
SHAPE = (3, 4, 8, 8)


def sd_scheduler(**overrides):
    return DDIMScheduler(**{**SD_CONFIG, **overrides})


@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_step_matches_diffusers_ddim_with_the_same_noise(eta, prediction_type):
    sampler = DDIMSampler(sd_scheduler(prediction_type=prediction_type), num_inference_steps=50, eta=eta)
    reference = sd_scheduler(prediction_type=prediction_type)
    reference.set_timesteps(50)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=generator)
    for t in sampler.timesteps:
        model_output = torch.randn(SHAPE, generator=generator)
        noise = torch.randn(SHAPE, generator=generator)
        ours = sampler.step(model_output, int(t), x, noise=noise)
        theirs = reference.step(model_output, t, x, eta=eta, variance_noise=noise)
        torch.testing.assert_close(ours.prev_sample, theirs.prev_sample, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.pred_original_sample, theirs.pred_original_sample, rtol=0, atol=1e-5)
        x = ours.prev_sample


def test_summed_log_prob_equals_torch_distributions_at_every_step():
    sampler = DDIMSampler(sd_scheduler(), num_inference_steps=50)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPE, generator=generator)
    for t in sampler.timesteps:
        step = sampler.step(torch.randn(SHAPE, generator=generator), int(t), x, generator=generator)
        expected = torch.distributions.Normal(step.mean, step.std.expand_as(step.mean)).log_prob(step.prev_sample).sum(dim=(1, 2, 3))
        torch.testing.assert_close(step.log_prob, expected, rtol=1e-5, atol=0)
        x = step.prev_sample


def test_scoring_a_given_action_equals_the_density_of_that_action():
    sampler = DDIMSampler(sd_scheduler(), num_inference_steps=10)
    generator = torch.Generator().manual_seed(2)
    x, eps, action = (torch.randn(SHAPE, generator=generator) for _ in range(3))
    t = int(sampler.timesteps[4])
    step = sampler.step(eps, t, x, prev_sample=action)
    assert torch.equal(step.prev_sample, action)
    expected = torch.distributions.Normal(step.mean, step.std.expand_as(step.mean)).log_prob(action).sum(dim=(1, 2, 3))
    torch.testing.assert_close(step.log_prob, expected, rtol=1e-5, atol=0)


def test_mean_reduction_is_the_sum_over_dimensions_divided_by_their_number():
    x, mean = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    std = torch.tensor([0.3, 2.0]).view(2, 1, 1, 1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, std, "mean"), gaussian_log_prob(x, mean, std, "sum") / 60)
    with pytest.raises(ValueError, match="reduce"):
        gaussian_log_prob(x, mean, std, "max")


def test_per_sample_timesteps_equal_one_step_per_sample():
    sampler = DDIMSampler(sd_scheduler(), num_inference_steps=20)
    generator = torch.Generator().manual_seed(3)
    x, eps, noise = (torch.randn(SHAPE, generator=generator) for _ in range(3))
    timesteps = sampler.timesteps[[0, 7, 19]]  # includes the last step, whose previous ᾱ is final_alpha_cumprod
    batched = sampler.step(eps, timesteps, x, noise=noise)
    for i, t in enumerate(timesteps.tolist()):
        single = sampler.step(eps[i : i + 1], t, x[i : i + 1], noise=noise[i : i + 1])
        torch.testing.assert_close(batched.prev_sample[i : i + 1], single.prev_sample)
        torch.testing.assert_close(batched.log_prob[i : i + 1], single.log_prob)


def test_mean_and_std_formulas_with_a_closed_form_model():
    """A stand-in model for data that is a single point x0*: the ideal noise prediction is
    ε̂(x_t) = (x_t − √ᾱ_t x0*) / √(1 − ᾱ_t), so x̂_0 = x0* and the DDIM mean and std have closed
    forms, computed here in float64 from the betas, independently of diffusers."""
    num_steps, eta = 10, 1.0
    sampler = DDIMSampler(sd_scheduler(), num_inference_steps=num_steps, eta=eta)
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1 - betas)
    x0_star = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4)).double()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)).double()
    for t in sampler.timesteps.tolist():
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[t - 1000 // num_steps] if t - 1000 // num_steps >= 0 else alphas_cumprod[0]
        eps = (x - a_t**0.5 * x0_star) / (1 - a_t) ** 0.5
        step = sampler.step(eps.float(), t, x.float(), noise=torch.zeros(1, 4, 8, 8))

        std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        mean = a_prev**0.5 * x0_star + (1 - a_prev - std**2) ** 0.5 * eps
        torch.testing.assert_close(step.pred_original_sample.double(), x0_star, rtol=0, atol=1e-4)
        torch.testing.assert_close(step.std.double().flatten(), torch.tensor([std], dtype=torch.float64), rtol=1e-5, atol=0)
        torch.testing.assert_close(step.mean.double(), mean, rtol=0, atol=1e-4)
        x = mean + std * torch.randn_like(mean)


def test_a_zero_terminal_snr_schedule_gives_finite_steps():
    """Cosine schedule, trailing timesteps: the first step is at ᾱ ≈ 2e-9, where the DDIM direction
    term is 0 up to float32 rounding (the embedded model's scheduler)."""
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=True, set_alpha_to_one=False, timestep_spacing="trailing")
    sampler = DDIMSampler(scheduler, num_inference_steps=5)
    assert sampler.timesteps[0] == 999
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(SHAPE, generator=generator)
    for t in sampler.timesteps.tolist():
        step = sampler.step(torch.randn(SHAPE, generator=generator), t, x, generator=generator)
        assert torch.isfinite(step.mean).all() and torch.isfinite(step.log_prob).all()
        x = step.prev_sample


def test_bad_sampler_settings_are_rejected():
    with pytest.raises(ValueError, match="eta must be > 0"):
        DDIMSampler(sd_scheduler(), num_inference_steps=10, eta=0.0)
    with pytest.raises(ValueError, match="<= 1"):
        DDIMSampler(sd_scheduler(), num_inference_steps=10, eta=1.5)
    with pytest.raises(ValueError, match="set_alpha_to_one"):
        DDIMSampler(sd_scheduler(set_alpha_to_one=True, steps_offset=0), num_inference_steps=10)
    with pytest.raises(ValueError, match="positive int"):
        DDIMSampler(sd_scheduler(), num_inference_steps=0)


def test_a_non_ddim_scheduler_config_is_wrapped():
    from diffusers import PNDMScheduler

    sampler = DDIMSampler(PNDMScheduler(**{k: v for k, v in SD_CONFIG.items() if k != "clip_sample"}, skip_prk_steps=True), 50)
    assert isinstance(sampler.scheduler, DDIMScheduler)
    assert sampler.timesteps[0] == 981 and sampler.timesteps[-1] == 1


def test_closed_form_kl_equals_torch_distributions():
    generator = torch.Generator().manual_seed(7)
    mean_p, mean_q = torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)
    std = torch.tensor([0.1, 0.5, 2.0]).view(3, 1, 1, 1)
    p = torch.distributions.Normal(mean_p, std.expand(SHAPE))
    q = torch.distributions.Normal(mean_q, std.expand(SHAPE))
    expected = torch.distributions.kl_divergence(p, q).sum(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_kl(mean_p, mean_q, std), expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(gaussian_kl(mean_p, mean_q, std, "mean"), expected / 256, rtol=1e-5, atol=0)
    assert torch.equal(gaussian_kl(mean_p, mean_p, std), torch.zeros(3))
