"""Half-precision passes on a CPU: which half dtypes it multiplies in hardware, and float32
kernels for the ones it does not.

A CPU with matrix instructions for a half dtype (AVX-512 BF16 or AMX for bfloat16, AVX-512 FP16
or AMX-FP16 for float16) runs torch's half-precision linear layers and convolutions in oneDNN
kernels made for them. Without (AVX2 only), torch has no such kernels: a bfloat16 convolution
falls back to its generic `slow_conv2d` (im2col and a generic matrix product) and a bfloat16
linear layer to a generic matrix product, both far slower than the float32 kernels on the same
CPU. Both kinds of kernel multiply the half-precision operands and
accumulate in float32 (the fallback convolution's backward in part in half precision), then
round the result to half precision.

`Float32Products` computes exactly that with the float32 kernels: the operands rounded to the
half dtype (as autocast, or half-precision weights, give them), their products accumulated in
float32, the result rounded to the half dtype; its backward alike (`Float32Linear`,
`Float32Conv2d`), keeping the half-precision tensors, as a half-precision kernel would. What is
computed is a half-precision kernel's, to the order of float32 summation. `half_products`
gives it for the passes that need it: on a CPU, in a half dtype that CPU does not multiply in
hardware; everything else (float32, GPUs, CPUs with the instructions) runs as torch runs it.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

HALF = (torch.bfloat16, torch.float16)


def _cpu_multiplies_in_hardware() -> dict[torch.dtype, bool]:
    """For each half dtype, whether this CPU has matrix instructions for it
    (`torch.cpu.get_capabilities`; False where this torch cannot tell)."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return {
        torch.bfloat16: bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16")),
        torch.float16: bool(capabilities.get("avx512_fp16") or capabilities.get("amx_fp16")),
    }


# read once: which half dtypes this machine's CPU multiplies in hardware (tests set it either way)
CPU_HALF_IN_HARDWARE = _cpu_multiplies_in_hardware()


def half_autocast(device_type: str) -> bool:
    """Whether autocast on `device_type` is on and computes in bfloat16 or float16."""
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) in HALF


def cpu_half_dtype(tensor: torch.Tensor) -> torch.dtype | None:
    """The half dtype a CPU operation on `tensor` computes its products in (autocast's, else the
    tensor's), or None."""
    if half_autocast("cpu") and tensor.dtype in (torch.float32, *HALF):  # what autocast casts
        return torch.get_autocast_dtype("cpu")
    return tensor.dtype if tensor.dtype in HALF else None


def emulated_on_cpu(dtype: torch.dtype | None) -> bool:
    """Whether `dtype` is a half dtype this CPU has no matrix instructions for."""
    return dtype in HALF and not CPU_HALF_IN_HARDWARE.get(dtype, False)


def _float32(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if t is None else t.float() for t in tensors]


class Float32Linear(torch.autograd.Function):
    """`F.linear` of half-precision operands computed by float32 kernels, the result rounded to
    their dtype; the backward alike. Keeps the input only for the weight's gradient and the weight
    only for the input's, in half precision."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        needs_x, needs_weight = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x if needs_weight else None, weight if needs_x else None)
        ctx.has_bias = bias is not None
        return F.linear(*_float32(x, weight, bias)).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        half, g = grad.dtype, grad.float()
        with torch.autocast("cpu", enabled=False):
            grad_x = (g @ weight.float()).to(half) if ctx.needs_input_grad[0] else None
            rows = g.reshape(-1, g.shape[-1])
            grad_weight = (rows.T @ x.float().reshape(-1, x.shape[-1])).to(half) if ctx.needs_input_grad[1] else None
            grad_bias = rows.sum(0).to(half) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


class Float32Conv2d(torch.autograd.Function):
    """`F.conv2d` (a batched input, zero padding given in numbers) of half-precision operands
    computed by float32 kernels, the result rounded to their dtype; the backward alike
    (`convolution_backward`, asked for the gradients that are needed). Keeps the input only for
    the weight's gradient, in half precision."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any, padding: Any, dilation: Any, groups: int) -> torch.Tensor:
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        ctx.input = (x.shape, torch.channels_last if channels_last else torch.contiguous_format)
        ctx.conv = (_pair(stride), _pair(padding), _pair(dilation), groups)
        ctx.has_bias = bias is not None
        return F.conv2d(*_float32(x, weight, bias), stride, padding, dilation, groups).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        (shape, memory_format), (stride, padding, dilation, groups) = ctx.input, ctx.conv
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        needs_bias = needs_bias and ctx.has_bias
        # the input's values are read only for the weight's gradient: else an unfilled stand-in of its shape and layout
        x = x.float() if x is not None else torch.empty(shape, dtype=torch.float32, device=grad.device, memory_format=memory_format)
        with torch.autocast("cpu", enabled=False):
            grads = torch.ops.aten.convolution_backward(
                grad.float(), x, weight.float(), [weight.shape[0]] if needs_bias else None, stride, padding, dilation, False, [0, 0], groups,
                [needs_x, needs_weight, needs_bias],
            )  # fmt: skip
        return (*(None if g is None else g.to(grad.dtype) for g in grads), None, None, None, None)


def _pair(value: Any) -> list[int]:
    return [value, value] if isinstance(value, int) else list(value)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _linear(half: torch.dtype, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    operands = (input.to(half), weight.to(half), None if bias is None else bias.to(half))
    if not _needs_grad(*operands):  # sampling: no graph to record
        return F.linear(*_float32(*operands)).to(half)
    return Float32Linear.apply(*operands)


def _conv2d(half: torch.dtype, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1) -> torch.Tensor:
    operands = (input.to(half), weight.to(half), None if bias is None else bias.to(half))
    if isinstance(padding, str) or input.dim() != 4:  # "same" / "valid", or an unbatched input: torch's own kernel
        return F.conv2d(*operands, stride, padding, dilation, groups)
    if not _needs_grad(*operands):
        return F.conv2d(*_float32(*operands), stride, padding, dilation, groups).to(half)
    return Float32Conv2d.apply(*operands, stride, padding, dilation, groups)


_PRODUCTS = {F.linear: _linear, F.conv2d: _conv2d}


class Float32Products(TorchFunctionMode):
    """While on, the CPU's linear layers and convolutions (`F.linear`, `F.conv2d`) that compute in
    a half dtype it has no matrix instructions for (autocast's, else their input's) run on the
    float32 kernels (`Float32Linear`, `Float32Conv2d`): the same products of the same
    half-precision operands, accumulated in float32 and rounded to half precision. Every other
    operation runs as it would without it."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        product = _PRODUCTS.get(func)
        if product is not None and args and args[0].device.type == "cpu":
            half = cpu_half_dtype(args[0])
            if emulated_on_cpu(half):
                if half_autocast("cpu"):  # the operands are cast here, as autocast would cast them
                    with torch.autocast("cpu", enabled=False):
                        return product(half, *args, **kwargs)
                if all(t.dtype == half for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)):
                    return product(half, *args, **kwargs)
                # operands of different dtypes without autocast: torch's own kernel, and its error
        return func(*args, **kwargs)


def half_products(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """`Float32Products` for a pass on `device` whose networks hold `dtype` (or whose autocast
    computes in a half dtype) where that half dtype is one the CPU has no matrix instructions for;
    else a context that changes nothing."""
    if device.type != "cpu":
        return nullcontext()
    if emulated_on_cpu(dtype) or (half_autocast("cpu") and emulated_on_cpu(torch.get_autocast_dtype("cpu"))):
        return Float32Products()
    return nullcontext()
