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
    merge_lora_when_sampling: bool = True
    """Sample (`merged_lora()`) with each LoRA layer's weights merged, W + s·B·A: one matrix
    product a layer instead of three, for the price of a copy of the adapted weights."""
    _merged: tuple[list, list | None] | None = None  # (the active adapters, the weights' pointers and versions; the merged weights)
    _lora_layers: tuple[tuple, list] | None = None  # ((the denoiser, its adapters' names), its LoRA layers)

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

    @contextmanager
    def merged_lora(self) -> Iterator[None]:
        """Within this block (no gradients), each LoRA layer of the denoiser computes with its merged
        weight W + s·B·A in one pass of its base layer, instead of the base pass plus the adapter's
        two (peft's unmerged forward): the same function to float rounding, exactly the same while
        B = 0. The merged weights are kept until the weights change (an optimizer step); the base
        weights are swapped back untouched on leaving, never unmerged by subtraction. Nothing
        changes without LoRA, with the adapters disabled (`reference()`), with gradients on, with
        half-precision base weights (W + s·B·A rounded to bfloat16 would lose a small update), with
        DoRA or LoRA biases, on sharded weights, or with `merge_lora_when_sampling` False."""
        layers = self._lora_layers_found() if self.merge_lora_when_sampling and not torch.is_grad_enabled() else []
        if not layers or any(layer.disable_adapters or layer.merged for layer, _, _ in layers):
            yield
            return
        # what the merged weights depend on: every weight's storage and version, the active adapters
        key = [tuple(layers[0][0].active_adapters)] + [(w.data_ptr(), w._version) for _, base, adapter in layers for w in (base, *adapter)]
        if self._merged is None or self._merged[0] != key:
            self._merged = None  # the old copies go before the new ones are made
            self._merged = (key, self._merge(layers))
        merged, active = self._merged[1], key[0]
        if merged is None:  # not mergeable (`_merge`)
            yield
            return
        swapped = []
        try:
            for (layer, weight, _), merged_weight in zip(layers, merged):
                swapped.append((layer, weight, weight.data))
                weight.data = merged_weight
                layer.merged_adapters = list(active)  # peft's forward then runs the base layer alone
            yield
        finally:
            for layer, weight, original in swapped:
                weight.data = original
                layer.merged_adapters = []

    @staticmethod
    def _merge(layers: list) -> list[torch.Tensor] | None:
        """Each layer's W + s·B·A, or None unless every layer is plain LoRA (no DoRA, no LoRA bias)
        on an unsharded float32 base weight."""
        for layer, weight, _ in layers:
            if (type(weight.data) is not torch.Tensor or weight.dtype != torch.float32
                    or any(layer.use_dora.get(name) or layer.lora_bias.get(name) for name in layer.active_adapters)):  # fmt: skip
                return None
        return [weight + sum(layer.get_delta_weight(name) for name in layer.active_adapters) for layer, weight, _ in layers]

    def _lora_layers_found(self) -> list[tuple[nn.Module, nn.Parameter, list[nn.Parameter]]]:
        """(layer, base weight, adapter weights) of the denoiser's peft LoRA layers ([] without
        LoRA), found once per denoiser and set of adapters."""
        config = getattr(self.denoiser, "peft_config", None)  # not `finetuning`, which reads every parameter
        if not config:
            return []
        if self._lora_layers is None or self._lora_layers[0] != (self.denoiser, tuple(config)):
            from peft.tuners.lora import LoraLayer

            layers = [m for m in self.denoiser.modules() if isinstance(m, LoraLayer)]
            found = [(layer, layer.get_base_layer().weight, [p for p in layer.parameters() if p.requires_grad]) for layer in layers]
            self._lora_layers = ((self.denoiser, tuple(config)), found)
        return self._lora_layers[1]

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
