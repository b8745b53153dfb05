"""The flow-matching samplers against diffusers' ODE step, torch.distributions, and the marginals
of closed-form models (Gaussian data, and data that is a single point)."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from diffusion_gym.samplers import CPSSampler, FlowSDESampler

SHAPE = (3, 4, 8, 8)
SAMPLERS = {
    "flow-grpo": lambda scheduler, steps, **kw: FlowSDESampler(scheduler, steps, diffusion="flow-grpo", **kw),
    "constant": lambda scheduler, steps, **kw: FlowSDESampler(scheduler, steps, diffusion="constant", **kw),
    "cps": lambda scheduler, steps, **kw: CPSSampler(scheduler, steps, **kw),
}


def sd3_scheduler(**overrides):
    return FlowMatchEulerDiscreteScheduler(**{"shift": 3.0, **overrides})  # SD3's config


def density(step):
    return torch.distributions.Normal(step.mean, step.std.expand_as(step.mean)).log_prob(step.prev_sample).sum(dim=(1, 2, 3))


@pytest.mark.parametrize("kind", SAMPLERS)
def test_with_the_noise_at_zero_every_step_is_diffusers_ode_step(kind):
    sampler = SAMPLERS[kind](sd3_scheduler(), 10, noise_level=0.0)
    reference = sd3_scheduler()
    reference.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=generator)
    for t in sampler.timesteps:
        velocity = torch.randn(SHAPE, generator=generator)
        ours = sampler.step(velocity, t, x, generator=generator)
        theirs = reference.step(velocity, t, x).prev_sample
        torch.testing.assert_close(ours.prev_sample, theirs, rtol=0, atol=1e-6)
        assert bool((ours.std == 0).all()) and bool(ours.log_prob.isnan().all())  # no density: nothing to train on
        x = ours.prev_sample


@pytest.mark.parametrize("kind", SAMPLERS)
def test_summed_log_prob_equals_torch_distributions_at_every_stochastic_step(kind):
    sampler = SAMPLERS[kind](sd3_scheduler(), 10)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPE, generator=generator)
    for i, t in enumerate(sampler.timesteps):
        step = sampler.step(torch.randn(SHAPE, generator=generator), t, x, generator=generator)
        if kind == "cps" and i == 9:  # σ' = 0: CPS's last step is the ODE step
            assert bool((step.std == 0).all()) and bool(step.log_prob.isnan().all())
        else:
            assert bool((step.std > 0).all())
            torch.testing.assert_close(step.log_prob, density(step), rtol=1e-5, atol=0)
        x = step.prev_sample


@pytest.mark.parametrize("kind", SAMPLERS)
def test_scoring_a_given_action_equals_the_density_of_that_action(kind):
    sampler = SAMPLERS[kind](sd3_scheduler(), 10)
    generator = torch.Generator().manual_seed(2)
    x, velocity, action = (torch.randn(SHAPE, generator=generator) for _ in range(3))
    t = sampler.timesteps[4]
    step = sampler.step(velocity, t, x, prev_sample=action)
    assert torch.equal(step.prev_sample, action)
    torch.testing.assert_close(step.log_prob, density(step), rtol=1e-5, atol=0)
    torch.testing.assert_close(sampler.step(velocity, t, x, prev_sample=action, reduce="mean").log_prob, step.log_prob / 256)


def test_mean_and_std_by_hand():
    """(S3), (S4), (C1), (C2) written out for one step of each sampler."""
    generator = torch.Generator().manual_seed(3)
    x, v = torch.randn(1, 4, 2, 2, generator=generator), torch.randn(1, 4, 2, 2, generator=generator)
    for kind, a in (("flow-grpo", 0.7), ("constant", 0.3), ("cps", 0.7)):
        sampler = SAMPLERS[kind](sd3_scheduler(), 10, noise_level=a)
        for i in (0, 3):
            s, s_next = (float(sigma) for sigma in sampler.sigmas()[i : i + 2])
            if kind == "cps":
                std = s_next * math.sin(a * math.pi / 2)
                mean = (1 - s_next) * (x - s * v) + math.sqrt(s_next**2 - std**2) * (x + (1 - s) * v)
            else:
                g = a * math.sqrt(s / (1 - (float(sampler.sigmas()[1]) if i == 0 else s))) if kind == "flow-grpo" else a
                std = g * math.sqrt(s - s_next)
                mean = x + (v + g**2 / (2 * s) * (x + (1 - s) * v)) * (s_next - s)
            step = sampler.step(v, sampler.timesteps[i], x, noise=torch.zeros_like(x))
            torch.testing.assert_close(step.std.flatten(), torch.tensor([std]), rtol=1e-5, atol=0)
            torch.testing.assert_close(step.mean, mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(step.pred_original_sample, x - s * v, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- marginals, closed-form models
MU = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
VAR = torch.tensor([0.25, 1.0, 0.04, 2.0], dtype=torch.float64)


def gaussian_velocity(x, sigma):
    """The exact v = E[ε − x_0 | x_σ] for data N(MU, diag VAR): linear in x."""
    mean, var = (1 - sigma) * MU, (1 - sigma) ** 2 * VAR + sigma**2
    return (sigma - (1 - sigma) * VAR) / var * (x - mean) - MU


def marginal_z_scores(sampler, velocity, n, exact, seed=0):
    """Run n trajectories of 4 dimensions with an exact velocity; after every step, the largest
    |z| of the sample mean and variance against the exact marginal (mean, var) = exact(σ')."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    worst = []
    for t, s_next in zip(sampler.timesteps, sampler.sigmas()[1:].double()):
        sigma = float(t) / sampler.num_train_timesteps
        step = sampler.step(velocity(x, sigma).float(), t, x.float(), noise=torch.randn(n, 4, generator=generator).float())
        x = step.prev_sample.double()
        mean, var = exact(float(s_next))
        z_mean = (x.mean(0) - mean) / (var / n).sqrt().clamp(min=1e-12)
        z_var = (x.var(0) - var) / (var * math.sqrt(2 / n)).clamp(min=1e-12)
        worst.append(float(torch.cat([z_mean, z_var]).abs().max()))
    return worst


@pytest.mark.parametrize("kind, a", [("constant", 0.3), ("flow-grpo", 0.3)])
def test_the_sde_keeps_the_marginals_of_gaussian_data_at_every_step(kind, a):
    """The property that makes the SDE a valid policy: sampled with the exact velocity, its
    marginals are the data's path (F1), N((1 − σ) μ, (1 − σ)² s² + σ²), after every one of 200 steps."""
    sampler = SAMPLERS[kind](FlowMatchEulerDiscreteScheduler(), 200, noise_level=a)
    z = marginal_z_scores(sampler, gaussian_velocity, 40_000, lambda s: ((1 - s) * MU, (1 - s) ** 2 * VAR + s**2))
    assert max(z) < 5, f"largest |z| {max(z):.2f} at step {z.index(max(z))}"
    # without the score term (S2) the same noise spreads the samples: the test can fail
    plain = FlowSDESampler(FlowMatchEulerDiscreteScheduler(), 200, noise_level=a, diffusion=kind)
    plain._mean = lambda x, v, s, s_next: x + v * (s_next - s)
    assert max(marginal_z_scores(plain, gaussian_velocity, 40_000, lambda s: ((1 - s) * MU, (1 - s) ** 2 * VAR + s**2))) > 20


def test_the_flow_grpo_first_step_adds_the_variance_computed_by_hand():
    """At σ = 1, Flow-GRPO's g is infinite and the denominator takes the second σ: with
    h = 1 − σ_1, x = ε and v = x − μ there, the first step has variance (1 − h − a²/2)² + a², about
    a⁴/4 above the path's h² s² + (1 − h)², whatever the step count."""
    a, n = 0.7, 40_000
    sampler = FlowSDESampler(FlowMatchEulerDiscreteScheduler(), 100, noise_level=a)
    h = 1 - float(sampler.sigmas()[1])
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    x1 = sampler.step(gaussian_velocity(x, 1.0).float(), sampler.timesteps[0], x.float(), generator=generator).prev_sample.double()
    expected = (1 - h - a**2 / 2) ** 2 + a**2
    torch.testing.assert_close(x1.var(0), torch.full((4,), expected, dtype=torch.float64), rtol=0, atol=5 * expected * math.sqrt(2 / n))
    path = h**2 * VAR + (1 - h) ** 2
    assert bool(((x1.var(0) - path) > 0.5 * a**4 / 4).all())


def test_cps_keeps_the_coefficients_of_point_data_exactly_at_coarse_steps():
    """Data that is one point c: the exact velocity makes x̂_0 = c and x̂_1 = ε, so (C3) gives
    x_σ' = (1 − σ') c + σ' ε' at every step, even with 8 steps; the SDE's coarse steps add noise."""
    c = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)

    def velocity(x, sigma):
        return (x - (1 - sigma) * c) / sigma - c

    def exact(s):
        return (1 - s) * c, torch.full((4,), s**2, dtype=torch.float64)

    cps = CPSSampler(sd3_scheduler(), 8, noise_level=0.7)
    z = marginal_z_scores(cps, velocity, 40_000, exact)
    assert max(z[:-1]) < 5, z
    sde = FlowSDESampler(sd3_scheduler(), 8, noise_level=0.7)
    assert max(marginal_z_scores(sde, velocity, 40_000, exact)[:-1]) > 20


# ---------------------------------------------------------------- windows, batches, schedules
def test_steps_outside_the_window_are_ode_steps_without_a_density():
    sampler = FlowSDESampler(sd3_scheduler(), 10, sde_window=(2, 4))
    reference = sd3_scheduler()
    reference.set_timesteps(10)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(SHAPE, generator=generator)
    for i, t in enumerate(sampler.timesteps):
        velocity = torch.randn(SHAPE, generator=generator)
        step = sampler.step(velocity, t, x, generator=generator)
        if i in (2, 3):
            assert bool((step.std > 0).all()) and bool(step.log_prob.isfinite().all()) and float(sampler.relative_std(t)) > 0
        else:
            reference._step_index = i  # the reference steps from our trajectory
            torch.testing.assert_close(step.prev_sample, reference.step(velocity, t, x).prev_sample, rtol=0, atol=1e-6)
            assert bool(step.log_prob.isnan().all()) and float(sampler.relative_std(t)) == 0
        x = step.prev_sample
    assert float(sampler.relative_std(sampler.timesteps[2:4]).max()) == 1


def test_a_per_sample_window_and_per_sample_timesteps_equal_one_step_per_sample():
    sampler = CPSSampler(sd3_scheduler(), 10)
    generator = torch.Generator().manual_seed(6)
    x, velocity, noise = (torch.randn(SHAPE, generator=generator) for _ in range(3))
    timesteps, stochastic = sampler.timesteps[[0, 5, 9]], torch.tensor([True, False, True])
    batched = sampler.step(velocity, timesteps, x, noise=noise, stochastic=stochastic)
    for i in range(3):
        single = sampler.step(velocity[i : i + 1], timesteps[i], x[i : i + 1], noise=noise[i : i + 1], stochastic=stochastic[i : i + 1])
        torch.testing.assert_close(batched.prev_sample[i : i + 1], single.prev_sample)
        torch.testing.assert_close(batched.log_prob[i : i + 1], single.log_prob, equal_nan=True)
    assert batched.log_prob.isnan().tolist() == [False, True, True]  # sample 2: the last step, σ' = 0
    assert torch.equal(sampler.previous_timestep(timesteps), torch.cat([sampler.timesteps[[1, 6]], torch.zeros(1)]))


def test_a_flux_style_schedule_takes_its_image_size_shift():
    config = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    with pytest.raises(ValueError, match="mu"):
        FlowSDESampler(FlowMatchEulerDiscreteScheduler(**config), 10)
    sampler = FlowSDESampler(FlowMatchEulerDiscreteScheduler(**config), 10, mu=0.9)
    reference = FlowMatchEulerDiscreteScheduler(**config)
    reference.set_timesteps(10, mu=0.9)
    torch.testing.assert_close(sampler.timesteps, reference.timesteps)
    torch.testing.assert_close(sampler.sigmas(), reference.sigmas)


def test_bad_flow_sampler_settings_are_rejected():
    with pytest.raises(ValueError, match="DDIMSampler"):
        FlowSDESampler(DDIMScheduler(), 10)
    with pytest.raises(ValueError, match="noise_level"):
        FlowSDESampler(sd3_scheduler(), 10, noise_level=-0.1)
    with pytest.raises(ValueError, match="noise_level"):
        CPSSampler(sd3_scheduler(), 10, noise_level=1.5)
    with pytest.raises(ValueError, match="diffusion"):
        FlowSDESampler(sd3_scheduler(), 10, diffusion="ve")
    with pytest.raises(ValueError, match="sde_window"):
        FlowSDESampler(sd3_scheduler(), 10, sde_window=(4, 11))
    with pytest.raises(ValueError, match="num_inference_steps"):
        CPSSampler(sd3_scheduler(), 0)
    sampler = FlowSDESampler(sd3_scheduler(), 10)
    with pytest.raises(ValueError, match="not this episode's"):
        sampler.step(torch.zeros(SHAPE), 123.0, torch.zeros(SHAPE))
    with pytest.raises(ValueError, match="not both"):
        sampler.step(torch.zeros(SHAPE), sampler.timesteps[0], torch.zeros(SHAPE), prev_sample=torch.zeros(SHAPE), noise=torch.zeros(SHAPE))
