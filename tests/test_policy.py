"""DiffusionPolicy: guidance, sampling vs scoring, gradients, LoRA and full fine-tuning."""

import numpy as np
import pytest
import torch

from diffusion_gym import DiffusionPolicy


def make_policy(model, guidance_scale=5.0, steps=4, **kwargs):
    return DiffusionPolicy(model, model.scheduler, steps, guidance_scale=guidance_scale, **kwargs)


def batch_obs(policy, batch=3, seed=0, step_index=1, as_numpy=False):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, policy.denoiser.config.in_channels, 8, 8, generator=generator)
    t = policy.sampler.timesteps[step_index]
    obs = {"prompt": ("a red fox", "a cat", "a tench")[:batch], "timestep": torch.full((batch,), int(t)), "x_t": x}
    if as_numpy:
        obs = {"prompt": obs["prompt"], "timestep": obs["timestep"].numpy(), "x_t": x.numpy()}
    return obs


def test_guidance_combines_the_two_unet_passes(tiny_model):
    policy = make_policy(tiny_model, guidance_scale=7.5)
    obs = batch_obs(policy)
    t = obs["timestep"]
    cond = policy.denoiser(obs["x_t"], t, encoder_hidden_states=policy.encode_prompts(list(obs["prompt"]))["encoder_hidden_states"]).sample
    uncond = policy.denoiser(obs["x_t"], t, encoder_hidden_states=policy.encode_prompts([""] * 3)["encoder_hidden_states"]).sample
    guided = policy.predict(obs["x_t"], t, list(obs["prompt"]))
    # one pass over a batch of 6 against two of 3: the CPU's kernels may round them differently
    # (~1e-6 a pass, which guidance scales by 7.5), while cond - uncond is ~2e-2 here
    torch.testing.assert_close(guided, uncond + 7.5 * (cond - uncond), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(make_policy(tiny_model, guidance_scale=1.0).predict(obs["x_t"], t, list(obs["prompt"])), cond)


def test_guidance_interval_guides_only_its_timesteps_and_skips_the_unconditional_pass_elsewhere(tiny_model):
    full, unguided = make_policy(tiny_model, guidance_scale=7.5), make_policy(tiny_model, guidance_scale=1.0)
    t_high, t_low = (int(t) for t in full.sampler.timesteps[1:3])
    policy = make_policy(tiny_model, guidance_scale=7.5, guidance_interval=(t_high, 999))
    obs = batch_obs(policy)
    x, prompts = obs["x_t"], list(obs["prompt"])
    for t, reference in ((t_high, full), (t_low, unguided)):
        timesteps = torch.full((3,), t)
        torch.testing.assert_close(policy.predict(x, timesteps, prompts), reference.predict(x, timesteps, prompts))
    batch_sizes = []
    hook = policy.denoiser.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    policy.predict(x, torch.full((3,), t_low), prompts)
    mixed = policy.predict(x, torch.tensor([t_high, t_low, t_high]), prompts)
    hook.remove()
    assert batch_sizes == [3, 6]  # outside the interval: the conditional pass alone
    torch.testing.assert_close(mixed[1], unguided.predict(x, torch.full((3,), t_low), prompts)[1], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(mixed[0], full.predict(x, torch.full((3,), t_high), prompts)[0], rtol=1e-5, atol=1e-4)
    assert policy.guided(torch.tensor([t_high, t_low])).tolist() == [True, False]
    for bad in ((500, 100), (0, 1000), (-1, 10), (1, 2, 3), "all"):
        with pytest.raises(ValueError, match="guidance_interval"):
            make_policy(tiny_model, guidance_interval=bad)


def test_prompt_embeddings_are_cached_and_equal_to_fresh_ones(tiny_model):
    policy = make_policy(tiny_model)
    first = policy.encode_prompts(["a cat", "a dog", "a cat"])["encoder_hidden_states"]
    torch.testing.assert_close(first[0], first[2])
    ids = policy.model.tokenizer(["a dog"], padding="max_length", max_length=policy.model.tokenizer.model_max_length, return_tensors="pt").input_ids
    torch.testing.assert_close(first[1], policy.model.text_encoder(ids)[0][0])
    assert set(policy._prompt_embeds) == {"a cat", "a dog"}


def test_act_returns_a_sample_whose_log_prob_log_prob_reproduces(tiny_model):
    policy = make_policy(tiny_model)
    obs = batch_obs(policy)
    action, log_prob = policy.act(obs, generator=torch.Generator().manual_seed(1))
    assert action.shape == obs["x_t"].shape and log_prob.shape == (3,)
    torch.testing.assert_close(policy.log_prob(obs, action), log_prob)
    step = policy(obs, action=action)
    expected = torch.distributions.Normal(step.mean, step.std.expand_as(step.mean)).log_prob(action).sum(dim=(1, 2, 3))
    torch.testing.assert_close(log_prob, expected, rtol=1e-5, atol=0)


def test_numpy_and_single_observations_give_the_same_numbers(tiny_model):
    policy = make_policy(tiny_model)
    obs_np = batch_obs(policy, as_numpy=True)
    action, log_prob = policy.act(obs_np, generator=torch.Generator().manual_seed(2))
    assert isinstance(action, np.ndarray) and action.dtype == np.float32 and isinstance(log_prob, np.ndarray)
    single = {"prompt": obs_np["prompt"][1], "timestep": obs_np["timestep"][1], "x_t": obs_np["x_t"][1]}
    single_log_prob = policy.log_prob(single, action[1])
    np.testing.assert_allclose(single_log_prob.detach().numpy(), log_prob[1:2], rtol=1e-5)
    single_action, single_lp = policy.act(single)
    assert single_action.shape == obs_np["x_t"].shape[1:] and np.ndim(single_lp) == 0


def test_lora_starts_at_the_base_policy_and_gets_gradients_only_on_adapters(tiny_model):
    policy = make_policy(tiny_model)
    obs = batch_obs(policy)
    action, before = policy.act(obs, generator=torch.Generator().manual_seed(3))
    assert policy.trainable_parameters() == [] and policy.finetuning is None
    policy.enable_lora(rank=2)
    assert policy.finetuning == "lora" and make_policy(tiny_model).finetuning == "lora"  # read from the shared UNet
    trainable = policy.trainable_parameters()
    names = [n for n, p in policy.denoiser.named_parameters() if p.requires_grad]
    assert names and all("lora" in n for n in names)
    assert {p.shape[0] for n, p in policy.denoiser.named_parameters() if "lora_A" in n} == {2}
    torch.testing.assert_close(policy.log_prob(obs, action), before)  # B = 0 at the start

    policy.log_prob(obs, action).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert all(p.grad is None for n, p in policy.denoiser.named_parameters() if "lora" not in n)
    with pytest.raises(ValueError, match="already enabled"):
        policy.enable_lora(rank=2)
    with pytest.raises(ValueError, match="LoRA adapters"):
        policy.enable_full_finetuning()


def test_full_finetuning_trains_every_unet_parameter_and_changes_the_policy(tiny_model):
    policy = make_policy(tiny_model)
    obs = batch_obs(policy)
    action, before = policy.act(obs, generator=torch.Generator().manual_seed(4))
    policy.enable_full_finetuning()
    assert len(policy.trainable_parameters()) == len(list(policy.denoiser.parameters()))
    optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=1e-5)
    (-policy.log_prob(obs, action).sum()).backward()
    optimizer.step()
    after = policy.log_prob(obs, action).detach()
    assert (after > before).all()  # one ascent step on the log-likelihood of these actions raises it
    assert not any(p.requires_grad for p in policy.text_encoders.parameters())


def test_bad_arguments_and_observations_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="guidance_scale"):
        make_policy(tiny_model, guidance_scale=-1.0)
    policy = make_policy(tiny_model)
    with pytest.raises(ValueError, match="'prompt', 'timestep' and 'x_t'"):
        policy.act({"x_t": torch.zeros(1, 4, 8, 8)})
    obs = batch_obs(policy)
    obs["prompt"] = obs["prompt"][:2]
    with pytest.raises(ValueError, match="batch mismatch"):
        policy.act(obs)
    with pytest.raises(ValueError, match="rank"):
        policy.enable_lora(rank=0)


def test_reference_is_the_starting_policy_for_lora_and_full_finetuning(tiny_model):
    policy = make_policy(tiny_model)
    obs = batch_obs(policy)
    action, start = policy.act(obs, generator=torch.Generator().manual_seed(5))
    policy.enable_lora(rank=2)
    with torch.no_grad():
        for name, p in policy.denoiser.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)  # move the adapters away from zero
    moved = policy.log_prob(obs, action).detach()
    assert not torch.allclose(moved, start)
    with policy.reference():
        torch.testing.assert_close(policy.log_prob(obs, action), start)
    torch.testing.assert_close(policy.log_prob(obs, action).detach(), moved)  # adapters are back


def test_reference_for_full_finetuning_needs_a_kept_copy():
    from diffusion_gym.models import build_tiny_random, load_model

    policy = make_policy(load_model(build_tiny_random(), device="cpu"))
    obs = batch_obs(policy)
    action, start = policy.act(obs)
    policy.enable_full_finetuning(keep_reference=True)
    with torch.no_grad():
        next(policy.denoiser.parameters()).add_(0.1)
    with policy.reference():
        torch.testing.assert_close(policy.log_prob(obs, action), start)
    assert not torch.allclose(policy.log_prob(obs, action).detach(), start)
    assert len(policy.state_dict()) == len(make_policy(load_model(build_tiny_random(), device="cpu")).state_dict())
    other = make_policy(load_model(build_tiny_random(), device="cpu"))
    other.enable_full_finetuning()
    with pytest.raises(ValueError, match="keep_reference=True"):
        with other.reference():
            pass


def test_lora_adapters_depend_only_on_the_seed():
    from diffusion_gym.models import build_tiny_random, load_model

    def adapters(seed):
        policy = make_policy(load_model(build_tiny_random(), device="cpu"))
        torch.manual_seed(seed + 100)  # the global RNG must not matter
        policy.enable_lora(rank=2, seed=seed)
        return torch.cat([p.detach().flatten() for p in policy.trainable_parameters()])

    assert torch.equal(adapters(0), adapters(0))
    assert not torch.equal(adapters(0), adapters(1))


@pytest.mark.parametrize("levers", [{"channels_last": True}, {"compile": True, "compile_backend": "aot_eager"}], ids=["channels_last", "compile"])
def test_speed_levers_keep_log_probs_rewards_and_the_first_ratio(levers):
    """`optimize` changes how the UNet runs, not what it computes. A fixed-seed rollout with the
    lever gives the eager policy's samples and log-probs within float32 rounding (1e-5 of the
    largest sample value, 5e-6 nats a dimension) and its JPEG rewards within 0.01 kB (a pixel that rounds to the next uint8 level
    may change the file by a few bytes); recomputed with gradients, as DDPO trains, before any
    update, the log-probs give every importance ratio 1 to within 1e-6 a dimension, so a clip
    range of 1e-4 clips nothing. The compile case checks tracing with "aot_eager"; inductor's
    kernels are timed in benchmarks/vs_reference.py."""
    import gymnasium as gym

    from diffusion_gym.rollout import rollout

    def run(**options):
        envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=4, model="tiny-random", num_inference_steps=3, device="cpu", array_type="torch")
        policy = DiffusionPolicy.from_env(envs)
        policy.enable_lora(rank=4)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            for p in policy.trainable_parameters():  # adapters away from zero, so their path counts
                p.normal_(0, 0.05)
        policy.optimize(**options)
        envs.reset(seed=0)
        return policy, rollout(envs, policy, num_batches=1, generator=torch.Generator().manual_seed(0))

    _, eager = run()
    policy, batch = run(**levers)
    dims = batch.samples[0, 0].numel()
    assert (batch.samples - eager.samples).abs().max() <= 1e-5 * eager.samples.abs().max()
    assert float((batch.log_probs - eager.log_probs).abs().max()) / dims <= 5e-6
    assert np.abs(batch.rewards.numpy() - eager.rewards.numpy()).max() <= 0.01
    index = torch.arange(4)
    for step in range(batch.num_steps):
        steps = torch.full((4,), step)
        log_prob = policy(batch.observation(index, steps), action=batch.action(index, steps)).log_prob
        assert log_prob.requires_grad
        assert float((log_prob.detach() - batch.log_probs[index, steps]).abs().max()) / dims <= 1e-6
