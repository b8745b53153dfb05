"""Frozen convolutions that keep only what their input's gradient needs.

Autograd's convolution keeps its input for the backward whether or not the weight trains: one
formula gives the input's, the weight's and the bias's gradients. A denoiser fine-tuned with LoRA
on its attention layers trains no convolution, yet every convolution that a gradient passes
through keeps its input, a large share of a training pass's memory in a UNet. The input's
gradient needs only the weight (a transposed convolution of the output's gradient), so
`FrozenConv2d` keeps the weight alone, and computes the same values forward (the same `conv2d`)
and backward (the same `convolution_backward`, asked for the input's gradient only, as autograd
asks it when the weight is frozen). `use_lean_frozen_convolutions` gives a denoiser's
convolutions a forward that takes it wherever nothing else is needed; compiled passes
(`torch.compile`) trace the module's own forward.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from diffusion_gym.models.half import emulated_on_cpu


class FrozenConv2d(torch.autograd.Function):
    """`F.conv2d` with a weight and bias that take no gradient: the backward gives the input's
    gradient only, from the weight and the input's shape and memory format (the input itself is
    not kept). Under autocast the weight is cast in the backward as autocast cast it forward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple, padding: tuple, dilation: tuple, groups: int) -> torch.Tensor:
        if weight.requires_grad or (bias is not None and bias.requires_grad):
            raise ValueError("FrozenConv2d is for a frozen convolution: its weight and bias get no gradient. Use F.conv2d for one that trains.")
        ctx.save_for_backward(weight)
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        ctx.input = (x.shape, torch.channels_last if channels_last else torch.contiguous_format)
        ctx.conv = (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        (weight,) = ctx.saved_tensors
        (shape, memory_format), (stride, padding, dilation, groups) = ctx.input, ctx.conv
        # a half dtype the CPU has no matrix instructions for: float32 kernels (`diffusion_gym.models.half`)
        compute = torch.float32 if grad.device.type == "cpu" and emulated_on_cpu(grad.dtype) else grad.dtype
        # the input's values are not read for its own gradient: an unfilled stand-in of its shape and layout
        stand_in = torch.empty(shape, dtype=compute, device=grad.device, memory_format=memory_format)
        grad_input = torch.ops.aten.convolution_backward(
            grad.to(compute), stand_in, weight.to(grad.dtype).to(compute), None, stride, padding, dilation, False, [0, 0], groups, [True, False, False]
        )[0]
        return grad_input.to(grad.dtype), None, None, None, None, None, None


class _LeanForward:
    """A frozen `nn.Conv2d`'s forward: `FrozenConv2d` when a gradient flows through an input
    and neither weight nor bias trains, else the module's own forward (and always under
    `torch.compile`). It holds its module weakly (the module holds it), and deep copies and
    pickles rebuild it around the module's copy."""

    def __init__(self, conv: nn.Conv2d):
        self._conv = weakref.ref(conv)

    def __reduce__(self) -> tuple:
        return (_LeanForward, (self._conv(),))

    @property
    def conv(self) -> nn.Conv2d:
        return self._conv()

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        conv = self._conv()
        if (not (input.requires_grad and torch.is_grad_enabled()) or conv.weight.requires_grad or (conv.bias is not None and conv.bias.requires_grad)
                or torch.compiler.is_compiling()):  # fmt: skip
            return nn.Conv2d.forward(conv, input)
        return FrozenConv2d.apply(input, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def use_lean_frozen_convolutions(denoiser: nn.Module) -> int:
    """Give each plain `nn.Conv2d` of `denoiser` (zero padding given in numbers, forward not
    replaced already) the lean forward; returns how many. Whether a convolution trains is read at
    every call, so full fine-tuning and LoRA on convolutions stay as they are."""
    changed = 0
    for module in denoiser.modules():
        if type(module) is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str) and "forward" not in module.__dict__:
            module.forward = _LeanForward(module)
            changed += 1
    return changed
