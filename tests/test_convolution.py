"""`diffusion_gym.models.convolution`: frozen convolutions that keep their weight, not their input."""

import copy
import gc
import io
import weakref
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from diffusion_gym.models import half as half_module
from diffusion_gym.models.convolution import FrozenConv2d, use_lean_frozen_convolutions
from diffusion_gym.models.half import Float32Products

CASES = {
    "3x3": dict(conv=dict(in_channels=4, out_channels=6, kernel_size=3, padding=1), size=8),
    "stride 2, odd size": dict(conv=dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1), size=9),
    "groups": dict(conv=dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2), size=8),
    "dilation, no bias": dict(conv=dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2, bias=False), size=8),
    "asymmetric padding": dict(conv=dict(in_channels=4, out_channels=6, kernel_size=(3, 1), padding=(1, 0)), size=7),
    "channels last": dict(conv=dict(in_channels=4, out_channels=6, kernel_size=3, padding=1), size=8, channels_last=True),
    "bf16 autocast, float32 weights": dict(conv=dict(in_channels=4, out_channels=6, kernel_size=3, padding=1), size=8, autocast=True),
    "bf16 autocast, on float32 kernels": dict(conv=dict(in_channels=4, out_channels=6, kernel_size=3, padding=1), size=8, autocast=True, emulated=True),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_lean_forward_computes_what_the_convolution_computes_and_keeps_no_input(case, monkeypatch):
    """Through a frozen convolution with the lean forward, the output and the input's gradient
    are those of the module's own forward, bit for bit, in every layout and under autocast, on a
    CPU with bfloat16 instructions and on one without, whose bfloat16 products the policy runs on
    float32 kernels (`Float32Products`, both forwards inside it); the graph keeps the weight only."""
    monkeypatch.setitem(half_module.CPU_HALF_IN_HARDWARE, torch.bfloat16, not case.get("emulated"))
    torch.manual_seed(0)
    conv = nn.Conv2d(**case["conv"]).requires_grad_(False)
    x = torch.randn(3, 4, case["size"], case["size"])
    if case.get("channels_last"):
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    lean = copy.deepcopy(conv)
    assert use_lean_frozen_convolutions(lean) == 1

    def run(module, context=nullcontext):
        leaf = x.clone().requires_grad_(True)
        saved = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(case.get("autocast"))), context():
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
                out = module(leaf * 1.0)  # a non-leaf input, as inside a network
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
        out.backward(grad)
        return out.detach(), leaf.grad, saved

    context = Float32Products if case.get("emulated") else nullcontext
    own, own_grad, _ = run(conv, context)
    out, grad, saved = run(lean, context)
    _, _, own_saved = run(conv)
    assert torch.equal(out, own) and torch.equal(grad, own_grad)
    assert any(t.shape == x.shape for t in own_saved)  # autograd's convolution keeps its input ...
    assert not any(t.shape == x.shape for t in saved)  # ... the lean one does not
    assert grad.abs().sum() > 0


def test_frozen_conv2d_refuses_a_weight_that_trains():
    conv = nn.Conv2d(2, 2, 3)
    with pytest.raises(ValueError, match="frozen convolution"):
        FrozenConv2d.apply(torch.randn(1, 2, 5, 5, requires_grad=True), conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def test_a_lean_convolution_copies_pickles_and_is_freed_like_a_plain_one():
    """A deep copy and a pickled copy compute with their own weights; the module and its forward
    hold no reference cycle, so a dropped convolution goes at once, without the cyclic collector."""
    conv = nn.Conv2d(2, 3, 3, padding=1).requires_grad_(False)
    use_lean_frozen_convolutions(conv)
    x = torch.randn(1, 2, 5, 5)
    for twin in (copy.deepcopy(conv), torch.load(io.BytesIO(_saved(conv)), weights_only=False)):
        assert twin.forward.conv is twin
        with torch.no_grad():
            twin.weight.zero_()
            twin.bias.zero_()
            assert not twin(x).any() and conv(x).any()
    gc.disable()
    try:
        dropped = nn.Conv2d(2, 3, 3)
        use_lean_frozen_convolutions(dropped)
        ref = weakref.ref(dropped)
        del dropped
        assert ref() is None
    finally:
        gc.enable()


def _saved(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module, buffer)
    return buffer.getvalue()


def test_convolutions_that_train_or_take_no_gradient_use_their_own_forward():
    conv = nn.Conv2d(2, 3, 3)
    use_lean_frozen_convolutions(conv)
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    out = conv(x)  # the weight trains: autograd's convolution
    assert type(out.grad_fn).__name__ == "ConvolutionBackward0"
    out.sum().backward()
    assert conv.weight.grad is not None
    conv.requires_grad_(False)
    assert type(conv(x).grad_fn).__name__ == "FrozenConv2dBackward"
    assert conv(x.detach()).grad_fn is None
