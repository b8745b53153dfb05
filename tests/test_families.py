"""Every model family through the one loader, the env, the policy and the agents: SDXL, SD3 and
FLUX on tiny random models of their real classes, checked against diffusers' own pipelines."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionXLPipeline
from gymnasium.utils.env_checker import check_env

from agents.ddpo import DDPO, DDPOConfig
from diffusion_gym import ENV_IDS, DiffusionPolicy
from diffusion_gym.models import load_model
from diffusion_gym.rollout import rollout

FAMILIES = {"tiny-random-sdxl": "sdxl", "tiny-random-sd3": "sd3", "tiny-random-flux": "flux"}
PROMPTS = ["a red cat", "a blue dog"]


def brightness(images, prompts):
    return images.mean(axis=(1, 2, 3)) / 255.0, {}


def make_vec(model, num_envs=2, steps=3, **kwargs):
    return gym.make_vec("DiffusionCompressibility-v0", num_envs=num_envs, model=model, num_inference_steps=steps, device="cpu", **kwargs)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_loader_names_the_family_and_a_saved_folder_loads_back_the_same(name, tmp_path):
    model = load_model(name, device="cpu")
    assert model.family.name == FAMILIES[name]
    model.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"), device="cpu")
    assert again.family.name == FAMILIES[name] and again.sample_shape == model.sample_shape and again.is_flow == model.is_flow
    x = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([800.0, 300.0]) if model.is_flow else torch.tensor([800, 300])
    outputs = []
    for m in (model, again):
        cond = m.family.encode(m, PROMPTS)
        outputs.append(m.family.predict(m.denoiser, m, x, t, cond, torch.full((2,), 3.5)))
    torch.testing.assert_close(outputs[0], outputs[1])


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("name", FAMILIES)
def test_check_env_passes_with_every_family_on_every_id(name, env_id):
    env = gym.make(env_id, model=name, num_inference_steps=2, device="cpu", reward=brightness, render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught if "infinity" not in str(w.message)] == []


@pytest.mark.parametrize("name", FAMILIES)
def test_a_whole_episode_runs_through_the_vector_env_and_its_log_probs_are_the_policys(name):
    envs = make_vec(name)
    policy = DiffusionPolicy.from_env(envs)
    batch = rollout(envs, policy, seed=0, generator=torch.Generator().manual_seed(0))
    assert batch.samples.shape == (2, 4, *envs.unwrapped.model.sample_shape) and batch.images.shape == (2, 16, 16, 3)
    assert torch.isfinite(batch.log_probs).all() and torch.isfinite(batch.rewards).all()
    assert batch.timesteps.dtype == (torch.float32 if envs.unwrapped.model.is_flow else torch.int64)
    with torch.no_grad():  # scoring the recorded actions gives the recorded log-probs
        for k in range(3):
            index = torch.arange(2)
            rescored = policy.log_prob(batch.observation(index, k), batch.action(index, k))
            torch.testing.assert_close(rescored, batch.log_probs[:, k], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("finetuning", ["lora", "full"])
@pytest.mark.parametrize("name", FAMILIES)
def test_lora_and_full_finetuning_change_the_parameters(name, finetuning):
    envs = make_vec(name, num_envs=4)
    policy = DiffusionPolicy.from_env(envs)
    policy.enable_lora(4) if finetuning == "lora" else policy.enable_full_finetuning()
    before = [p.detach().clone() for p in policy.trainable_parameters()]
    batch = rollout(envs, policy, seed=0, samples_per_prompt=2, generator=torch.Generator().manual_seed(0))
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])  # a signal whatever the random model draws
    DDPO(policy, DDPOConfig(learning_rate=1e-3, train_batch_size=4, per_prompt_min_count=2)).update(batch)
    changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, policy.trainable_parameters()))
    assert changed > 0.5 * len(before)


# ---------------------------------------------------------------- against diffusers' pipelines
def pipeline_of(model):
    parts = {k: getattr(model, k) for k in ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")}
    if model.family.name == "sdxl":
        return StableDiffusionXLPipeline(unet=model.unet, **parts)
    if model.family.name == "sd3":
        return StableDiffusion3Pipeline(transformer=model.transformer, text_encoder_3=model.text_encoder_3, tokenizer_3=model.tokenizer_3, **parts)
    return FluxPipeline(transformer=model.transformer, **parts)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_conditioning_is_the_pipelines(name):
    model = load_model(name, device="cpu")
    pipeline = pipeline_of(model)
    ours = model.family.encode(model, PROMPTS)
    with torch.no_grad():
        if model.family.name == "sdxl":
            embeds, negative, pooled, negative_pooled = pipeline.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=True)
            theirs = {"encoder_hidden_states": embeds, "text_embeds": pooled}
            torch.testing.assert_close(model.family.unconditional(model)["encoder_hidden_states"][0], negative[0])  # zeros: force_zeros_for_empty_prompt
        elif model.family.name == "sd3":
            embeds, _, pooled, _ = pipeline.encode_prompt(PROMPTS, PROMPTS, PROMPTS, device="cpu", do_classifier_free_guidance=False, max_sequence_length=32)
            theirs = {"encoder_hidden_states": embeds, "pooled_projections": pooled}
        else:
            embeds, pooled, _ = pipeline.encode_prompt(PROMPTS, PROMPTS, device="cpu", max_sequence_length=32)
            theirs = {"encoder_hidden_states": embeds, "pooled_projections": pooled}
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key])


def sd3_shifted_by_image_size():
    """The tiny SD3 with a schedule shifted by the image size, as the pipeline computes it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    model = load_model("tiny-random-sd3", device="cpu")
    model.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256, base_shift=0.5, max_shift=1.15)
    return model


@pytest.mark.parametrize("name", ["tiny-random-sd3", "tiny-random-flux", "sd3-shifted-by-image-size"])
def test_an_ode_episode_is_the_pipelines_sample(name):
    """With the noise at zero every step is the ODE step: the env's episode, driven by the policy,
    ends at the latents the diffusers pipeline samples from the same x_T (guidance, schedule,
    conditioning, FLUX's packing and shift all alike)."""
    envs = make_vec(sd3_shifted_by_image_size() if name == "sd3-shifted-by-image-size" else name, num_envs=2, steps=4, array_type="torch")
    model = envs.unwrapped.model
    policy = DiffusionPolicy.from_env(envs, noise_level=0.0, guidance_scale=4.0)
    batch = rollout(envs, policy, prompts=PROMPTS, seed=0, keep_steps=True, score=False)
    assert torch.isnan(batch.log_probs).all()  # ODE steps have no density
    x_T = batch.samples[:, 0]
    pipeline = pipeline_of(model)
    kwargs = dict(num_inference_steps=4, guidance_scale=4.0, height=16, width=16, output_type="latent", max_sequence_length=32)
    with torch.no_grad():
        if model.family.name == "flux":
            from diffusion_gym.models.families.flux import pack, unpack

            latents = pipeline(PROMPTS, latents=pack(x_T), **kwargs).images
            latents = unpack(latents, 8, 8)
        else:
            latents = pipeline(PROMPTS, latents=x_T, **kwargs).images
    torch.testing.assert_close(batch.samples[:, -1], latents, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- the policy on a flow model
def test_a_fixed_window_and_a_drawn_window_are_the_only_stochastic_steps_and_the_only_ones_trained():
    envs = make_vec("tiny-random-pixel-flow", num_envs=4, steps=4, array_type="torch")
    fixed = DiffusionPolicy.from_env(envs, sde_window=(1, 3))
    batch = rollout(envs, fixed, seed=0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(batch.log_probs).all(dim=0).tolist() == [False, True, True, False]
    envs = make_vec("tiny-random-pixel-flow", num_envs=4, steps=6, array_type="torch")
    drawn = DiffusionPolicy.from_env(envs, sde_window_size=2)
    drawn.enable_full_finetuning()
    batch = rollout(envs, drawn, num_batches=6, seed=0, generator=torch.Generator().manual_seed(0))
    windows = {tuple(torch.isfinite(batch.log_probs[i]).tolist()) for i in range(len(batch))}
    starts = {w.index(True) for w in windows}
    assert all(sum(w) == 2 and w[w.index(True) + 1] for w in windows)  # two neighbouring steps
    assert starts == {0, 1}  # drawn anew per batch, inside the first half (steps 0-2)
    agent = DDPO(drawn, DDPOConfig(learning_rate=1e-3, train_batch_size=8, per_prompt_min_count=2))
    assert torch.equal(agent.trainable_steps(batch), torch.isfinite(batch.log_probs))
    before = [p.detach().clone() for p in drawn.trainable_parameters()]
    metrics = agent.update(batch)  # no NaN reaches the loss: the ODE steps are never scored
    assert np.isfinite(metrics["loss"]) and any(not torch.equal(b, p) for b, p in zip(before, drawn.trainable_parameters()))


def test_the_policy_refuses_a_sampler_or_setting_that_does_not_fit_the_model():
    flow, ddim, flux = make_vec("tiny-random-pixel-flow"), make_vec("tiny-random-pixel"), make_vec("tiny-random-flux")
    with pytest.raises(ValueError, match="does not fit"):
        DiffusionPolicy.from_env(flow, sampler="ddim")
    with pytest.raises(ValueError, match="does not fit"):
        DiffusionPolicy.from_env(ddim, sampler="cps")
    with pytest.raises(ValueError, match="eta"):
        DiffusionPolicy.from_env(ddim, noise_level=0.5)
    with pytest.raises(ValueError, match="Unknown sampler"):
        DiffusionPolicy.from_env(flow, sampler="euler")
    with pytest.raises(ValueError, match="guidance_interval does not apply"):
        DiffusionPolicy.from_env(flux, guidance_interval=(0, 500))
    with pytest.raises(ValueError, match="not both"):
        DiffusionPolicy.from_env(flow, sde_window=(0, 1), sde_window_size=1)
    assert type(DiffusionPolicy.from_env(flow, sampler="cps").sampler).__name__ == "CPSSampler"
    assert DiffusionPolicy.from_env(flux).guidance_scale == 3.5  # the family's row of SAMPLING


def test_in_float16_what_the_libraries_keep_in_float32_stays_there():
    """T5's `wo` layers (transformers' `_keep_in_fp32_modules`) and a VAE with `force_upcast`
    (SDXL's overflows in float16) stay float32; everything else is cast before it moves."""
    model = load_model("tiny-random-sd3", device="cpu", dtype="float16")
    t5 = dict(model.text_encoder_3.named_parameters())
    assert all(p.dtype == torch.float32 for n, p in t5.items() if ".wo." in n) and any(".wo." in n for n in t5)
    assert all(p.dtype == torch.float16 for n, p in t5.items() if ".wo." not in n)
    assert model.vae.config.force_upcast and model.vae.dtype == torch.float32 and model.transformer.dtype == torch.float16
    images = model.decode(torch.randn(2, *model.sample_shape).half())
    assert images.shape == (2, 16, 16, 3) and images.std() > 0
