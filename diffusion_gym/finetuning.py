"""How a policy's denoiser (a UNet or a transformer) is fine-tuned: LoRA adapters (peft) or every
parameter, and the starting model kept as the reference for a KL penalty. A mixin of
`DiffusionPolicy` (as diffusers' models take their adapter methods from `PeftAdapterMixin`): it
reads and switches `self.denoiser` only."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class FineTuning:
    """LoRA or full fine-tuning of `self.denoiser`, and `reference()`: the model it started from."""

    denoiser: nn.Module
    _reference_denoiser: nn.Module | None = None  # a frozen copy of the start, for full fine-tuning's KL

    @property
    def finetuning(self) -> str | None:
        """"lora", "full" or None, read from the denoiser (which policies of one env share)."""
        if getattr(self.denoiser, "peft_config", None):
            return "lora"
        if all(p.requires_grad for p in self.denoiser.parameters()):
            return "full"
        return None

    def enable_lora(
        self, rank: int = 4, alpha: float | None = None, target_modules: Sequence[str] = DEFAULT_LORA_TARGETS, seed: int = 0
    ) -> None:
        """Freeze the denoiser and add LoRA adapters (peft) of the given rank to its attention layers.

        The adapters start at zero (B = 0), so the policy is unchanged until it is trained; A is
        drawn from `seed` alone (not the global RNG), so every process of a multi-process run,
        and every rerun, starts from the same adapters.
        """
        from peft import LoraConfig

        if self.finetuning == "lora":
            raise ValueError("LoRA adapters are already enabled on this policy.")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRA rank must be a positive int, got {rank!r}")
        names = [name for name, _ in self.denoiser.named_modules()]
        if not any(name == t or name.endswith("." + t) for t in target_modules for name in names):
            raise ValueError(
                f"No denoiser module matches the LoRA targets {list(target_modules)}; a target is the last part of a module's name, "
                f"e.g. {sorted({n.rsplit('.', 1)[-1] for n in names if n.endswith(('to_q', 'to_k', 'conv1'))})} (the default: {list(DEFAULT_LORA_TARGETS)})."
            )
        self.denoiser.requires_grad_(False)
        config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(target_modules))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.denoiser.add_adapter(config)

    def enable_full_finetuning(self, keep_reference: bool = False) -> None:
        """Make every denoiser parameter trainable (the text encoders stay frozen).

        Args:
            keep_reference: keep a frozen copy of the denoiser as it is now, for `reference()` (a KL
                penalty toward the starting model); costs a second denoiser in memory.
        """
        if self.finetuning == "lora":
            raise ValueError("This policy has LoRA adapters; full fine-tuning goes on a policy without them.")
        if keep_reference:
            # kept outside the module tree: not a parameter, not in state_dict()
            object.__setattr__(self, "_reference_denoiser", copy.deepcopy(self.denoiser).requires_grad_(False).eval())
        self.denoiser.requires_grad_(True)

    @contextmanager
    def reference(self) -> Iterator["FineTuning"]:
        """Within this block the policy is the model it started from: LoRA adapters disabled, or,
        for full fine-tuning, the copy kept by `enable_full_finetuning(keep_reference=True)`."""
        mode = self.finetuning
        if mode == "lora":
            self.denoiser.disable_adapters()
            try:
                yield self
            finally:
                self.denoiser.enable_adapters()
        elif mode == "full":
            if self._reference_denoiser is None:
                raise ValueError("No reference model: call enable_full_finetuning(keep_reference=True) before training.")
            live = self.denoiser
            self.denoiser = self._reference_denoiser
            try:
                yield self
            finally:
                self.denoiser = live
        else:
            yield self  # nothing is trained: the policy is its own reference

    def shard(self) -> None:
        """Shard the denoiser over the processes of the running torch.distributed group, for full
        fine-tuning whose gradients and optimizer state would not fit one device (FLUX.1's 12B
        transformer): each process keeps 1/N of every parameter, its gradient and its optimizer
        state, and a block's weights are gathered only while it runs. The model is loaded whole
        first, so it must fit one device once.

        The engine is torch's FSDP2 (`torch.distributed.fsdp.fully_shard`, which accelerate's FSDP
        plugin drives too): every block of the denoiser's top-level block lists (a UNet's
        down/up blocks, a transformer's blocks) is a unit, then the rest. FSDP averages the
        gradients over the processes itself (`agents.distributed.average_gradients` leaves
        sharded ones alone). A kept reference model is sharded alike. Call it after
        `enable_full_finetuning` and before the agent is made (its optimizer must hold the
        sharded parameters)."""
        import torch.distributed as dist
        from torch.distributed.fsdp import fully_shard

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "shard() spreads the denoiser over the processes of a torch.distributed group, and none is running: "
                "launch with `accelerate launch` or `torchrun`, which start one."
            )
        if self.finetuning != "full":
            raise ValueError("shard() is for full fine-tuning (call enable_full_finetuning() first); LoRA adapters are small enough to keep whole on every process.")
        for denoiser in [self.denoiser] + ([self._reference_denoiser] if self._reference_denoiser is not None else []):
            for child in denoiser.children():
                if isinstance(child, nn.ModuleList):
                    for block in child:
                        fully_shard(block)
            fully_shard(denoiser)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should update (empty until LoRA or full fine-tuning is enabled)."""
        return [p for p in self.denoiser.parameters() if p.requires_grad]
