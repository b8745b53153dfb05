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


@pytest.mark.parametrize(
    "levers", [{}, {"channels_last": True}, {"compile": True, "compile_backend": "aot_eager"}], ids=["defaults", "channels_last", "compile"]
)
def test_speed_levers_keep_log_probs_rewards_and_the_first_ratio(levers):
    """How the UNet runs, not what it computes. Against a policy with no lever at all (peft's
    unmerged LoRA layers), a fixed-seed rollout with the levers on by default (merged LoRA
    weights, `merged_lora`; the baseline too samples in inference mode, which changes no bit:
    `test_sampling_passes_run_in_inference_mode...`), and with each of `optimize`'s on top, gives
    the same samples and log-probs within float32 rounding (1e-5 of the largest sample value,
    5e-6 nats a dimension) and JPEG rewards within 0.01 kB (a pixel that rounds to the next uint8
    level may change the file by a few bytes); recomputed with gradients, as DDPO trains, before
    any update, the log-probs give every importance ratio 1 to within 1e-6 a dimension
    (scaled by 0.1 / σ_t on the last steps, whose small σ_t magnifies a rounding of the mean), so
    a clip range of 1e-4 clips nothing. The compile case checks tracing with "aot_eager";
    inductor's kernels are timed in benchmarks/vs_reference.py."""
    import gymnasium as gym

    from diffusion_gym.rollout import rollout

    def run(baseline=False, **options):
        envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=4, model="tiny-random", num_inference_steps=3, device="cpu", array_type="torch")
        policy = DiffusionPolicy.from_env(envs)
        policy.enable_lora(rank=4)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            for p in policy.trainable_parameters():  # adapters away from zero, so their path counts
                p.normal_(0, 0.05)
        policy.merge_lora = not baseline
        policy.optimize(**options)
        envs.reset(seed=0)
        return policy, rollout(envs, policy, num_batches=1, generator=torch.Generator().manual_seed(0))

    _, eager = run(baseline=True)
    policy, batch = run(**levers)
    dims = batch.samples[0, 0].numel()
    assert not torch.equal(batch.samples, eager.samples)  # the merged weights round otherwise: the check below is not vacuous
    assert (batch.samples - eager.samples).abs().max() <= 1e-5 * eager.samples.abs().max()
    assert float((batch.log_probs - eager.log_probs).abs().max()) / dims <= 5e-6
    assert np.abs(batch.rewards.numpy() - eager.rewards.numpy()).max() <= 0.01
    index = torch.arange(4)
    for step in range(batch.num_steps):
        steps = torch.full((4,), step)
        log_prob = policy(batch.observation(index, steps), action=batch.action(index, steps)).log_prob
        assert log_prob.requires_grad
        # a rounding δ of the mean moves the log-density by about z δ / std a dimension: the
        # last steps (small std) get a bound looser in proportion, as in tests/agents/test_learning.py
        std = float(policy.sampler.std(batch.timesteps[0, step : step + 1]))
        assert float((log_prob.detach() - batch.log_probs[index, steps]).abs().max()) / dims <= 1e-6 * max(1.0, 0.1 / std)


def test_sampling_passes_run_in_inference_mode_and_give_tensors_a_backward_can_keep(tiny_model):
    """Without gradients `denoise` runs its pass in inference mode (no autograd bookkeeping) and
    returns the same numbers as the pass with gradients, bit for bit, in a normal tensor: one
    that a later backward may keep (an inference tensor would make it raise)."""
    policy = make_policy(tiny_model)
    policy.enable_lora(rank=2)
    obs = batch_obs(policy)
    cond = policy.encode_prompts(list(obs["prompt"]))
    modes = []
    handle = policy.denoiser.register_forward_hook(lambda module, args, out: modes.append(torch.is_inference_mode_enabled()))
    with torch.no_grad():
        sampled = policy.denoise(obs["x_t"], obs["timestep"], cond)
    trained = policy.denoise(obs["x_t"], obs["timestep"], cond)
    handle.remove()
    assert modes == [True, False]
    assert trained.requires_grad and not sampled.is_inference() and sampled.dtype == torch.float32
    assert torch.equal(sampled, trained.detach())
    weight = torch.ones((), requires_grad=True)
    (weight * sampled).sum().backward()  # the product keeps `sampled` for the backward
    torch.testing.assert_close(weight.grad, sampled.sum())


def test_merged_lora_computes_the_unmerged_policy_and_gives_the_base_weights_back(tiny_model):
    """Inside `merged_lora` (every pass of the policy) each LoRA layer computes with W + s·B·A:
    exactly the base policy while B = 0, the unmerged policy (`merge_lora` False, peft's own
    forward) within float32 rounding after the adapters move, and the new adapters after an
    in-place change (an optimizer step). On leaving, every base weight is the very tensor it was,
    bit for bit, and every layer its own forward. Nothing is merged under `reference()` or with
    `merge_lora` False."""
    from peft.tuners.lora import LoraLayer

    policy = make_policy(tiny_model)
    policy.enable_lora(rank=4)
    layers = [m for m in policy.denoiser.modules() if isinstance(m, LoraLayer)]
    weights = [(w, w.data_ptr(), w.data.clone()) for w in (layer.get_base_layer().weight for layer in layers)]
    obs = batch_obs(policy)
    action, _ = policy.act(obs, generator=torch.Generator().manual_seed(0))  # an action the policy draws
    generator = torch.Generator().manual_seed(1)

    def step(merge: bool):
        policy.merge_lora = merge
        with torch.no_grad():
            with policy.merged_lora():
                assert all(layer.merged for layer in layers) == merge
            return policy(obs, action=action)

    assert torch.equal(step(True).log_prob, step(False).log_prob)  # B = 0: W + 0 is W
    for _ in range(2):  # adapters moved in place, as an optimizer moves them: the merged weights follow
        with torch.no_grad():
            for p in policy.trainable_parameters():
                p.add_(torch.randn(p.shape, generator=generator), alpha=0.05)
        unmerged, merged = step(False), step(True)
        assert not torch.equal(merged.mean, unmerged.mean)  # the adapters count, and round otherwise merged
        torch.testing.assert_close(merged.mean, unmerged.mean, rtol=1e-5, atol=1e-5 * float(unmerged.mean.abs().max()))
        torch.testing.assert_close(merged.log_prob, unmerged.log_prob, rtol=1e-6, atol=1e-3)
    assert all(not layer.merged for layer in layers)
    assert all(w.data_ptr() == pointer and torch.equal(w.data, original) for w, pointer, original in weights)
    with torch.no_grad(), policy.reference(), policy.merged_lora():
        assert not any(layer.merged for layer in layers)
    policy.merge_lora = False
    with torch.no_grad(), policy.merged_lora():
        assert not any(layer.merged for layer in layers)


def test_merged_lora_in_training_gives_peft_gradients_and_the_sampled_log_probs(tiny_model):
    """With gradients on, each LoRA layer's pass is `MergedLoRALinear`, whose backward is the
    derivative of its forward (`gradcheck`, float64). In the policy: the log-prob and the
    adapters' gradients of peft's unmerged forward within float32 rounding (5e-5 of each
    gradient's norm: the forward's rounding, magnified by the log-density), and, since sampling
    merges alike, the log-probs `act` sampled with, bit for bit, after the adapters moved. The
    layers get their own forwards back on leaving; each pass reads the layer as it is (its
    scaling, `reference()` inside the block); under `reference()` nothing is replaced; a pass with
    gradients inside a block entered without them is refused."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from diffusion_gym.finetuning import MergedLoRALinear

    generator = torch.Generator().manual_seed(3)
    for d_in, d_out in ((6, 5), (40, 48)):  # the backward's two ways: through gᵀx, and through LoRA's thin products
        model = torch.nn.Sequential(torch.nn.Linear(d_in, d_out)).double()
        layer = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=6, target_modules=["0"]), model)[0].double()  # scaling 3
        a, b, base = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.get_base_layer()
        with torch.no_grad():
            b.copy_(torch.randn(b.shape, generator=generator, dtype=torch.float64))
        x = torch.randn(4, 3, d_in, generator=generator, dtype=torch.float64, requires_grad=True)

        def merged(x, a, b):
            return MergedLoRALinear.apply(x, a, b, base.weight, base.bias, 3.0)

        assert torch.autograd.gradcheck(merged, (x, a, b))
        torch.testing.assert_close(merged(x, a, b), layer(x))

    policy = make_policy(tiny_model)
    policy.enable_lora(rank=4, alpha=8)  # scaling 2: the scaling's place in the backward counts
    layers = [m for m in policy.denoiser.modules() if isinstance(m, LoraLayer)]
    with torch.no_grad():
        for p, generator in zip(policy.trainable_parameters(), [torch.Generator().manual_seed(2)] * 10**4):
            p.add_(torch.randn(p.shape, generator=generator), alpha=0.05)
    obs = batch_obs(policy)
    action, sampled = policy.act(obs, generator=torch.Generator().manual_seed(0))
    seen = []
    original = MergedLoRALinear.forward

    def gradients(merge: bool):
        policy.merge_lora = merge
        policy.denoiser.zero_grad(set_to_none=True)
        log_prob = policy.log_prob(obs, action)
        log_prob.sum().backward()
        return log_prob.detach(), [p.grad.clone() for p in policy.trainable_parameters()]

    try:
        MergedLoRALinear.forward = staticmethod(lambda ctx, *args: seen.append(1) or original(ctx, *args))
        merged_log_prob, merged_grads = gradients(True)
    finally:
        MergedLoRALinear.forward = staticmethod(original)
    assert len(seen) == len(layers)  # one merged pass per layer
    log_prob, grads = gradients(False)
    assert torch.equal(merged_log_prob, sampled)  # training recomputes what sampling computed
    assert not torch.equal(log_prob, sampled)  # peft's forward rounds otherwise
    torch.testing.assert_close(merged_log_prob, log_prob, rtol=1e-6, atol=1e-6 * float(log_prob.abs().max()))
    for merged_grad, grad in zip(merged_grads, grads):
        assert float(grad.norm()) > 0
        assert float((merged_grad - grad).norm()) <= 5e-5 * float(grad.norm())  # a wrong backward is off by order one
    assert not any("forward" in layer.__dict__ for layer in layers)
    for layer in layers:
        layer.scale_layer(0.5)  # rescaled in place, as diffusers' adapter weights do: each pass reads the scaling
    (merged_log_prob, merged_grads), (log_prob, grads) = gradients(True), gradients(False)
    torch.testing.assert_close(merged_log_prob, log_prob, rtol=1e-6, atol=1e-6 * float(log_prob.abs().max()))
    assert all(float((m - g).norm()) <= 5e-5 * float(g.norm()) for m, g in zip(merged_grads, grads))
    policy.merge_lora = True
    with torch.no_grad(), policy.reference():
        reference = policy(obs, action=action).mean
    with policy.merged_lora(), policy.reference():  # reference() inside a block with gradients: the starting model
        assert torch.equal(policy(obs, action=action).mean.detach(), reference)
    with torch.no_grad(), policy.merged_lora(), torch.enable_grad(), pytest.raises(RuntimeError, match="no gradient reaches the adapters"):
        policy.log_prob(obs, action)
    with policy.reference(), policy.merged_lora():
        assert not any("forward" in layer.__dict__ for layer in layers)
    with policy.merged_lora():
        assert all("forward" in layer.__dict__ for layer in layers)
        with policy.merged_lora():  # nested, as a pass inside a merged block: the outer block keeps its forwards
            pass
        assert all("forward" in layer.__dict__ for layer in layers)
    assert not any("forward" in layer.__dict__ for layer in layers)


def test_attention_processor_shows_diffusers_its_signature_without_inspecting_a_method():
    """diffusers' `Attention.forward` filters its keyword arguments by
    `inspect.signature(processor.__call__)` on every call. The processor hands it a callable that
    carries the method's signature: the same parameters (so the same arguments pass), read
    without building a signature (which is most of the per-call cost). A deep copy (a kept
    reference denoiser) calls its own processor."""
    import copy
    import inspect

    from diffusers.models.attention_processor import Attention

    from diffusion_gym.models.attention import SDPAOrExplicitAttention

    processor = SDPAOrExplicitAttention()
    assert inspect.signature(processor.__call__) == inspect.signature(SDPAOrExplicitAttention.__call__.__get__(processor))
    assert isinstance(processor.__call__.__signature__, inspect.Signature)
    attn = Attention(16, heads=2, dim_head=8, processor=processor)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = SDPAOrExplicitAttention.__call__(processor, attn, x)
        assert torch.equal(attn(x), expected)
        assert torch.equal(attn(x, scale=2.0), expected)  # filtered out, as for diffusers' own processors
        twin = copy.deepcopy(attn)
        assert twin.processor.__call__.args[0] is twin.processor
        assert torch.equal(twin(x), expected)


def test_cpu_half_precision_passes_take_the_explicit_attention_and_compute_the_same(tiny_model, monkeypatch):
    """The UNet's attention is SDPA except on a CPU in a half precision it multiplies in hardware
    (AVX-512 BF16, AMX), where it is the explicit attention (`diffusion_gym.models.attention`)
    while a sample's scores are small enough; on a CPU without (AVX2) bfloat16 passes keep SDPA.
    Whichever this machine is, both cases are checked (the capability is set here). The explicit
    attention's output and its adapters' gradient are SDPA's to bfloat16 rounding: the error of
    either against a float32 pass of the same weights is the same size."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from diffusion_gym.models import half as half_module
    from diffusion_gym.models.attention import SDPAOrExplicitAttention

    monkeypatch.setitem(half_module.CPU_HALF_IN_HARDWARE, torch.bfloat16, True)

    policy = make_policy(tiny_model)
    policy.enable_lora(rank=4)
    unet = policy.denoiser
    processors = [m.processor for m in unet.modules() if hasattr(m, "processor")]
    assert processors and all(isinstance(p, SDPAOrExplicitAttention) for p in processors)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for p in policy.trainable_parameters():
            p.normal_(0, 0.1)
    x, t = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([900, 600, 300, 50])
    embeds = policy.encode_prompts(["a red fox", "a cat", "a tench", "a dog"])["encoder_hidden_states"]

    def pass_(dtype, sdpa_only=False):
        if sdpa_only:
            unet.set_attn_processor(AttnProcessor2_0())
        chosen = []
        explicit = SDPAOrExplicitAttention.uses_explicit
        SDPAOrExplicitAttention.uses_explicit = lambda self, *a: chosen.append(explicit(self, *a)) or chosen[-1]
        try:
            unet.to(dtype)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                out = unet(x.to(dtype), t, encoder_hidden_states=embeds.to(dtype)).sample.float()
            out.square().mean().backward()
        finally:
            SDPAOrExplicitAttention.uses_explicit = explicit
        grads = torch.cat([p.grad.flatten() for p in policy.trainable_parameters()])
        unet.zero_grad(set_to_none=True)
        for p in policy.trainable_parameters():
            p.data = p.data.float()  # LoRA weights stay float32, as in mixed-precision training
        return out.detach(), grads, chosen

    truth, truth_grads, chosen = pass_(torch.float32)
    assert chosen and not any(chosen)  # float32: SDPA
    out, grads, chosen = pass_(torch.bfloat16)
    assert chosen and all(chosen)  # bfloat16 on the CPU: explicit
    attention = next(m for m in unet.modules() if hasattr(m, "processor"))
    with torch.no_grad():  # sampling alike, whatever the batch; not where a sample's scores are too many
        assert all(attention.processor.uses_explicit(attention, torch.zeros(b, 64, attention.query_dim, dtype=torch.bfloat16), None) for b in (1, 64))
        assert not attention.processor.uses_explicit(attention, torch.zeros(1, 4096, attention.query_dim, dtype=torch.bfloat16), None)
    monkeypatch.setitem(half_module.CPU_HALF_IN_HARDWARE, torch.bfloat16, False)
    _, _, chosen = pass_(torch.bfloat16)
    assert chosen and not any(chosen)  # bfloat16 on a CPU without bfloat16 instructions: SDPA
    monkeypatch.setitem(half_module.CPU_HALF_IN_HARDWARE, torch.bfloat16, True)
    sdpa_out, sdpa_grads, _ = pass_(torch.bfloat16, sdpa_only=True)

    def error(a, b):
        return float((a - b).norm() / b.norm())

    print(f"relative error against float32: output {error(out, truth):.2e} (SDPA {error(sdpa_out, truth):.2e}), gradient {error(grads, truth_grads):.2e} (SDPA {error(sdpa_grads, truth_grads):.2e})")
    assert error(out, truth) <= 1.5 * error(sdpa_out, truth) + 1e-3 and error(out, truth) < 0.05
    assert error(grads, truth_grads) <= 1.5 * error(sdpa_grads, truth_grads) + 1e-3 and error(grads, truth_grads) < 0.1


def test_frozen_convolutions_keep_their_weight_not_their_input_and_compute_the_same(tiny_model):
    """The policy gives the UNet's convolutions the lean forward
    (`diffusion_gym.models.convolution`): in a LoRA training pass each frozen convolution that a
    gradient passes through keeps its weight, not its input, so the pass keeps less, and its
    output and the adapters' gradient are the convolutions' own forward's, bit for bit. A
    convolution whose weight trains (full fine-tuning) takes its own forward and gets its
    gradient; a deep copy (a kept reference denoiser) computes with its own weights."""
    import copy

    from torch import nn

    from diffusion_gym.models.convolution import FrozenConv2d

    policy = make_policy(tiny_model)
    policy.enable_lora(rank=4)
    unet = policy.denoiser
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for p in policy.trainable_parameters():
            p.normal_(0, 0.1)
    convs = [m for m in unet.modules() if type(m) is nn.Conv2d]
    assert convs and all("forward" in conv.__dict__ for conv in convs)
    lean = {conv: conv.__dict__["forward"] for conv in convs}
    x, t = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([900, 600, 300, 50])
    embeds = policy.encode_prompts(["a red fox", "a cat", "a tench", "a dog"])["encoder_hidden_states"]

    def pass_():
        saved, nodes = {}, []

        def pack(tensor):
            if not isinstance(tensor, nn.Parameter):
                saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = unet(x, t, encoder_hidden_states=embeds).sample
        stack, seen = [out.grad_fn], set()
        while stack:
            node = stack.pop()
            if node is not None and node not in seen:
                seen.add(node)
                nodes.append(type(node).__name__)
                stack.extend(next_node for next_node, _ in node.next_functions)
        (out * x).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in policy.trainable_parameters()])
        unet.zero_grad(set_to_none=True)
        return out.detach(), grads, sum(saved.values()), nodes

    out, grads, kept, nodes = pass_()
    assert nodes.count(FrozenConv2d.__name__ + "Backward") > 0 and "ConvolutionBackward0" not in nodes
    for conv in convs:
        del conv.forward
    own_out, own_grads, own_kept, own_nodes = pass_()
    assert "ConvolutionBackward0" in own_nodes
    assert torch.equal(out, own_out) and torch.equal(grads, own_grads)
    assert kept < 0.9 * own_kept

    for conv, forward in lean.items():
        conv.forward = forward
    trained = convs[-1]  # conv_out: full fine-tuning of one convolution
    trained.weight.requires_grad_(True)
    unet(x, t, encoder_hidden_states=embeds).sample.square().sum().backward()
    assert trained.weight.grad is not None and trained.weight.grad.abs().sum() > 0
    trained.weight.requires_grad_(False)

    twin = copy.deepcopy(trained)
    assert twin.forward.conv is twin
    with torch.no_grad():
        twin.weight.zero_()
        twin.bias.zero_()
        assert not twin(torch.randn(1, *trained.weight.shape[1:2], 8, 8)).any()


@pytest.mark.parametrize("bfloat16_in_hardware", [True, False], ids=["explicit attention", "SDPA"])
def test_the_first_ratio_is_exactly_one_in_bfloat16_on_the_cpu(bfloat16_in_hardware, monkeypatch):
    """Sampled with bfloat16 weights (no gradients) and recomputed as DDPO trains (gradients,
    bfloat16 autocast), both on the same attention (the explicit one where the CPU multiplies
    bfloat16 in hardware, SDPA where it does not; both are checked whatever this machine is): the
    log-probs are the same to the bit, so the first importance ratio is exactly 1
    (`benchmarks/precision_ratio.py`)."""
    import gymnasium as gym

    from diffusion_gym.models import half as half_module
    from diffusion_gym.rollout import rollout

    monkeypatch.setitem(half_module.CPU_HALF_IN_HARDWARE, torch.bfloat16, bfloat16_in_hardware)

    envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=4, model="tiny-random", num_inference_steps=3, device="cpu", dtype="bfloat16", array_type="torch")
    policy = DiffusionPolicy.from_env(envs)
    policy.enable_lora(rank=4)
    envs.reset(seed=0)
    batch = rollout(envs, policy, num_batches=1, generator=torch.Generator().manual_seed(0))
    index = torch.arange(4)
    for step in range(batch.num_steps):
        steps = torch.full((4,), step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            log_prob = policy(batch.observation(index, steps), action=batch.action(index, steps)).log_prob
        assert log_prob.requires_grad and torch.equal(log_prob.detach(), batch.log_probs[index, steps])
