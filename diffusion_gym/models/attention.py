"""Which attention kernel a UNet's passes use.

diffusers' UNets attend through `AttnProcessor2_0`: torch's scaled-dot-product attention (SDPA),
whose CPU kernel is a flash kernel (blockwise, accumulating in float32). On a CPU with matrix
instructions for a half dtype (AVX-512 BF16 or AMX for bfloat16, AVX-512 FP16 or AMX-FP16 for
float16) the explicit attention (baddbmm, softmax, bmm: diffusers' `AttnProcessor`) runs its
products in that dtype in hardware, and there its backward is several times faster than the
flash kernel's, which costs a UNet training pass about half of its time.
Without those instructions (AVX2 only) half-precision matrix products are emulated, and the
flash kernel is the faster one, forward and backward (the linear layers and convolutions around
it then run on float32 kernels: `diffusion_gym.models.half`). Both compute the same attention, to
half-precision rounding. `SDPAOrExplicitAttention` takes the explicit one for every pass on a
CPU in a half precision it multiplies in hardware (weights or autocast), sampling included, so
that sampling and training round alike and the first importance ratio stays exactly 1, where a
sample's score matrix is small enough to hold (`EXPLICIT_MAX_SCORES`, a bound per sample so that
every batch size chooses alike). Every other pass (float32, GPUs, CPUs without those
instructions, large score matrices) keeps SDPA. The rule rests on bfloat16 timings on two CPUs
(`benchmarks/README.md`); float16 follows it by analogy.
"""

from __future__ import annotations

import functools
import inspect

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from diffusion_gym.models.half import CPU_HALF_IN_HARDWARE, cpu_half_dtype

# The explicit attention holds its scores, heads × queries × keys a sample (a training pass keeps
# them for the backward): 8 × 64 × 77 for the tiny UNet, 16 × 64 × 64 for the embedded one;
# Stable Diffusion's 8 × 4096 × 4096 at 64×64 latents stays with SDPA's flash kernel.
EXPLICIT_MAX_SCORES = 2**18


def takes_explicit(device_type: str, dtype: torch.dtype | None) -> bool:
    """Whether passes on `device_type` computing in `dtype` take the explicit attention (where a
    sample's scores are few enough): on a CPU, in a half dtype it multiplies in hardware."""
    return device_type == "cpu" and CPU_HALF_IN_HARDWARE.get(dtype, False)


class SDPAOrExplicitAttention:
    """An attention processor: diffusers' `AttnProcessor2_0` (SDPA), or its explicit
    `AttnProcessor` on a CPU in a half precision it multiplies in hardware (the module docstring
    says why)."""

    def __init__(self) -> None:
        self.sdpa, self.explicit = AttnProcessor2_0(), AttnProcessor()
        # diffusers' `Attention.forward` reads `inspect.signature(processor.__call__)` on every
        # call, to filter its keyword arguments: about 30 µs for a bound method, a few for a
        # callable that carries its signature. So `__call__` read off the instance is such a
        # callable (a partial, which deep copies follow); calling the processor is unchanged.
        call = functools.partial(type(self).__call__, self)
        call.__signature__ = inspect.signature(type(self).__call__.__get__(self))
        self.__call__ = call

    def uses_explicit(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None) -> bool:
        if hidden_states.device.type != "cpu" or not takes_explicit("cpu", cpu_half_dtype(hidden_states)):
            return False
        queries = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        keys = context.shape[1] if context.ndim == 3 else context.shape[2] * context.shape[3]
        return attn.heads * queries * keys <= EXPLICIT_MAX_SCORES

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        processor = self.explicit if self.uses_explicit(attn, hidden_states, encoder_hidden_states) else self.sdpa
        return processor(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


def use_fastest_attention(denoiser: torch.nn.Module) -> int:
    """Give every `AttnProcessor2_0` attention of `denoiser` a `SDPAOrExplicitAttention`
    (other processors, e.g. SD3's and FLUX's joint attention, are left alone); returns how many."""
    changed = 0
    for module in denoiser.modules():
        if isinstance(module, Attention) and type(module.processor) is AttnProcessor2_0:
            module.set_processor(SDPAOrExplicitAttention())
            changed += 1
    return changed
