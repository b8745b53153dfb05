"""`diffusion_gym.models.half`: half-precision products on float32 kernels, on a CPU without
matrix instructions for the half dtype. Whichever this machine is, the capability is set here."""

import copy
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion_gym.models import half as half_module
from diffusion_gym.models.half import Float32Products, half_products

BF16 = torch.bfloat16
# an element rounded to bfloat16 (8 significant bits) is within 2^-9 of its value, relatively; the
# float32 sums behind it may differ in order, hence 2^-8
ROUNDING = 2.0**-8


@pytest.fixture
def emulated(monkeypatch):
    """A CPU without bfloat16 matrix instructions (AVX2), whatever this one has."""
    monkeypatch.setitem(half_module.CPU_HALF_IN_HARDWARE, BF16, False)


def within_rounding(value: torch.Tensor, exact: torch.Tensor) -> bool:
    """Every element of `value` is `exact` (float32) rounded to bfloat16, up to the order of the sums."""
    return bool(((value.float() - exact).abs() <= ROUNDING * exact.abs() + 1e-6 * exact.abs().max()).all())


def relative_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    return float((value.float() - exact).norm() / exact.norm())


LAYERS = {
    "linear": (lambda: torch.nn.Linear(32, 24), (3, 50, 32)),
    "conv 3x3": (lambda: torch.nn.Conv2d(8, 16, 3, padding=1), (2, 8, 10, 10)),
    "conv stride 2, groups, no bias": (lambda: torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2, bias=False), (2, 8, 9, 9)),
}
SETUPS = {
    "bf16 weights": dict(weights=BF16, autocast=False),
    "bf16 autocast, float32 weights": dict(weights=torch.float32, autocast=True),
}


@pytest.mark.parametrize("setup", SETUPS.values(), ids=SETUPS.keys())
@pytest.mark.parametrize("layer", LAYERS.values(), ids=LAYERS.keys())
@pytest.mark.parametrize("trains", [True, False], ids=["weight trains", "frozen"])
def test_products_are_the_float32_products_of_the_half_precision_operands(layer, setup, trains, emulated):
    """Inside `Float32Products` a bfloat16 linear layer or convolution (bfloat16 weights, or
    float32 ones under bfloat16 autocast) gives, forward, exactly the float32 product of the
    operands rounded to bfloat16, rounded to bfloat16; backward, every gradient within bfloat16
    rounding of the float32 one, in the dtype torch's own kernel gives; torch's bfloat16 kernel
    is no closer to the float32 truth (its convolution's backward accumulates in part in bfloat16). It keeps the half-precision operands, and the
    input only where the weight trains, as a frozen layer's gradient needs the weight alone."""
    make, shape = layer
    torch.manual_seed(0)
    module = make().to(setup["weights"]).requires_grad_(trains)
    x = torch.randn(shape)

    def run(context, module=module, exact=False):
        leaf = x.clone().requires_grad_(True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            if exact:  # the input's values rounded to bfloat16 (its gradient passed unrounded), float32 after
                out = module(leaf + (leaf.to(BF16).float() - leaf).detach())
            else:
                with torch.autocast("cpu", dtype=BF16, enabled=setup["autocast"]), context:
                    out = module(leaf if setup["autocast"] else leaf.to(BF16))
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(BF16).to(out.dtype)
        out.backward(grad)
        grads = [leaf.grad] + [p.grad for p in module.parameters()]
        for p in module.parameters():
            p.grad = None
        return out.detach(), grads, saved

    out, grads, saved = run(Float32Products())
    native, native_grads, _ = run(nullcontext())
    # the float32 truth: operands rounded to bfloat16, everything after in float32
    exact_module = copy.deepcopy(module).float()
    with torch.no_grad():
        for p in exact_module.parameters():
            p.copy_(p.to(BF16).float())
    exact, exact_grads, _ = run(None, exact_module, exact=True)

    assert out.dtype == native.dtype == BF16
    assert torch.equal(out, exact.to(BF16))
    assert relative_error(out, exact) <= relative_error(native, exact) + 2**-9  # torch's own kernel: no closer
    assert [g is None for g in grads] == [g is None for g in native_grads] == [False] + [not trains] * len(list(module.parameters()))
    for g, native_g, exact_g in zip(grads, native_grads, exact_grads):
        if g is not None:
            assert g.dtype == native_g.dtype and g.abs().sum() > 0
            assert within_rounding(g, exact_g)
            print(f"gradient's relative error: {relative_error(g, exact_g):.2e}, torch's bfloat16 kernel {relative_error(native_g, exact_g):.2e}")
            assert relative_error(g, exact_g) <= relative_error(native_g, exact_g) + 2**-9
    assert all(t.dtype == BF16 for t in saved)  # no float32 copy kept for the backward
    assert any(t.shape == x.shape for t in saved) == trains


def test_only_cpu_half_precision_without_instructions_takes_the_float32_kernels(monkeypatch):
    """`half_products` is the mode for a CPU pass in a half dtype the CPU has no instructions for
    (weights or autocast), and nothing for float32, for a CPU with the instructions, or for
    another device; inside the mode, operands of mismatched dtypes without autocast still meet
    torch's own error, float32 products are left alone, and so are convolutions it has no float32
    backward for (padding by name, an unbatched input)."""
    cpu = torch.device("cpu")
    monkeypatch.setitem(half_module.CPU_HALF_IN_HARDWARE, BF16, False)
    assert isinstance(half_products(cpu, BF16), Float32Products)
    assert isinstance(half_products(cpu, torch.float16), Float32Products) != half_module.CPU_HALF_IN_HARDWARE[torch.float16]
    assert isinstance(half_products(cpu, torch.float32), nullcontext)
    with torch.autocast("cpu", dtype=BF16):
        assert isinstance(half_products(cpu, torch.float32), Float32Products)
    assert isinstance(half_products(torch.device("cuda"), BF16), nullcontext)
    batched, unbatched, kernel = torch.randn(2, 3, 6, 6).to(BF16), torch.randn(3, 6, 6).to(BF16), torch.randn(4, 3, 3, 3).to(BF16)
    cases = [(batched, kernel, "same"), (unbatched, kernel, 1)]  # padding given by name, an unbatched input
    own = [F.conv2d(image, kernel, padding=padding) for image, kernel, padding in cases]
    x, w = torch.randn(2, 8), torch.randn(4, 8)
    float32 = F.linear(x, w)
    with Float32Products():
        with pytest.raises(RuntimeError):
            F.linear(torch.randn(2, 8).to(BF16), torch.randn(4, 8))
        assert torch.equal(F.linear(x, w), float32)
        for (image, kernel, padding), expected in zip(cases, own):  # torch's own kernel
            assert torch.equal(F.conv2d(image, kernel, padding=padding), expected)
    monkeypatch.setitem(half_module.CPU_HALF_IN_HARDWARE, BF16, True)
    assert isinstance(half_products(cpu, BF16), nullcontext)
    x, w = torch.randn(2, 8).to(BF16), torch.randn(4, 8).to(BF16)
    expected = F.linear(x, w)
    with Float32Products():  # a CPU with the instructions: torch's own bfloat16 kernel
        assert torch.equal(F.linear(x, w), expected)


def test_bfloat16_rollout_on_float32_kernels_is_as_close_to_float32_as_torchs_kernels(emulated, monkeypatch):
    """A fixed-seed bfloat16 rollout of the tiny model with its products on float32 kernels (what
    the policy and the decoder do on a CPU without bfloat16 instructions) is as close to the
    float32 rollout as the one on torch's bfloat16 kernels: samples and JPEG rewards within 1.5
    times that rollout's relative error, plus a bfloat16 rounding; the per-dimension log-probs
    (float32 sums over the drawn noise) within float32 rounding, 1e-6 relative, either way."""
    import gymnasium as gym

    from diffusion_gym.policy import DiffusionPolicy
    from diffusion_gym.rollout import rollout

    def run(dtype):
        envs = gym.make_vec("DiffusionCompressibility-v0", num_envs=4, model="tiny-random", num_inference_steps=3, device="cpu", dtype=dtype, array_type="torch")
        policy = DiffusionPolicy.from_env(envs)
        envs.reset(seed=0)
        batch = rollout(envs, policy, num_batches=1, generator=torch.Generator().manual_seed(0))
        return batch.samples.float(), batch.log_probs / batch.samples[0, 0].numel(), batch.rewards.numpy()

    truth = run("float32")
    ours = run("bfloat16")
    monkeypatch.setattr(half_module, "_PRODUCTS", {})  # the mode passes everything to torch's kernels
    native = run("bfloat16")
    assert not torch.equal(ours[0], native[0])  # two computations, not one

    for name, a, b, t in zip(("samples", "log-probs", "rewards"), ours, native, truth):
        a, b, t = (torch.as_tensor(np.asarray(v), dtype=torch.float64) for v in (a, b, t))
        error, native_error = float((a - t).norm() / t.norm()), float((b - t).norm() / t.norm())
        print(f"{name}: relative error against float32 {error:.3g} (torch's bfloat16 kernels {native_error:.3g})")
        if name == "log-probs":  # computed in float32 from the drawn noise: float32 rounding apart, either way
            assert error <= 1e-6 and native_error <= 1e-6
        else:
            assert native_error > 0 and error <= 1.5 * native_error + 2**-9, name
