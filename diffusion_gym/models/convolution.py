"""Frozen convolutions that keep only what their input's gradient needs.

Autograd's convolution keeps its input for the backward whether or not the weight trains: one
formula gives the input's, the weight's and the bias's gradients. A denoiser fine-tuned with LoRA
on its attention layers trains no convolution, yet every convolution that a gradient passes
through keeps its input, a large share of a training pass's memory in a UNet. The input's
gradient needs only the weight (a transposed convolution of the output's gradient), so
`FrozenConv2d` keeps the weight alone, and computes the same values forward (the same `conv2d`)
and backward (the same `convolution_backward`, asked for the input's gradient only, as autograd
asks it when the weight is frozen). `use_lean_frozen_convolutions` gives a denoiser's
convolutions a forward that takes it wherever nothing else is needed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


class FrozenConv2d(torch.autograd.Function):
    """`F.conv2d` with a weight and bias that take no gradient: the backward gives the input's
    gradient only, from the weight and the input's shape (the input itself is not kept)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple, padding: tuple, dilation: tuple, groups: int) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.shape, ctx.conv = x.shape, (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        (weight,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        grad_input = torch.nn.grad.conv2d_input(ctx.shape, weight, grad, stride, padding, dilation, groups)
        return grad_input, None, None, None, None, None, None


class _LeanForward:
    """A frozen `nn.Conv2d`'s forward: `FrozenConv2d` when a gradient flows through an input
    and neither weight nor bias trains, else the module's own forward (which also serves
    `torch.compile`, whose graphs plan their own memory). An object rather than a closure, so
    that a deep copy of the denoiser gets a forward of its own copy."""

    def __init__(self, conv: nn.Conv2d):
        self.conv = conv

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if (not (x.requires_grad and torch.is_grad_enabled()) or conv.weight.requires_grad or (conv.bias is not None and conv.bias.requires_grad)
                or torch.compiler.is_compiling()):  # fmt: skip
            return nn.Conv2d.forward(conv, x)
        return FrozenConv2d.apply(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


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
