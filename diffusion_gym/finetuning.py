"""How a policy's denoiser (a UNet or a transformer) is fine-tuned: LoRA adapters (peft) or every
parameter, and the starting model kept as the reference for a KL penalty. A mixin of
`DiffusionPolicy` (as diffusers' models take their adapter methods from `PeftAdapterMixin`): it
reads and switches `self.denoiser` only."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from diffusion_gym.models.half import half_autocast

DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class FineTuning:
    """LoRA or full fine-tuning of `self.denoiser`, and `reference()`: the model it started from."""

    denoiser: nn.Module
    _reference_denoiser: nn.Module | None = None  # a frozen copy of the start, for full fine-tuning's KL
    merge_lora: bool = True
    """Sample and train (`merged_lora()`) with each LoRA layer's weights merged, W + s·B·A: one
    matrix product a layer instead of three, for the price of a copy of the adapted weights."""
    _merged: tuple[list, list | None] | None = None  # (the active adapters, the weights' pointers and versions; the merged weights)
    _lora_layers: tuple[tuple, list, tuple] | None = None  # ((the denoiser, its adapters' names, their configs' ids), its LoRA layers, the configs)
    _swapped: bool = False  # merged weights swapped in by a block without gradients
    _training_forwards: tuple[list, tuple, list | None] | None = None  # (the LoRA layers, what was checked; their training forwards)

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
        """Within this block each LoRA layer of the denoiser computes with its merged weight
        W + s·B·A in one pass of its base layer, instead of the base pass plus the adapter's two
        (peft's unmerged forward): the same function to float rounding, exactly the same while
        B = 0. The policy's passes (`denoise`) all run in it.

        Without gradients (sampling) the merged weights are kept until the weights change (an
        optimizer step); the base weights are swapped back untouched on leaving, never unmerged
        by subtraction. With gradients (training) each pass merges anew inside
        `MergedLoRALinear`, whose backward gives the adapters LoRA's own gradients (never the full
        weight's); both merge alike (`_merged_weight`), so sampling and training compute the same
        weights bit for bit.

        Nothing changes without LoRA, with the adapters disabled (`reference()`), with
        half-precision base weights or under half-precision autocast (W + s·B·A rounded to
        bfloat16 would lose a small update), with DoRA or another LoRA variant, LoRA biases or
        LoRA dropout, on sharded weights, or with `merge_lora` False; in training also with
        several active adapters, a trainable base layer or hooks on the layer's modules. A pass
        with gradients inside a block entered without them is refused (no gradient would reach
        the adapters)."""
        if self._swapped and torch.is_grad_enabled():
            raise RuntimeError(
                "A pass with gradients inside a merged_lora() block entered without them: its base weights hold W + s·B·A, "
                "through which no gradient reaches the adapters. Compute gradients outside that block (or enter it with gradients on)."
            )
        layers = self._lora_layers_found() if self.merge_lora else []
        if not layers or half_autocast(layers[0][1].device.type) or any(layer.disable_adapters or layer.merged for layer, _, _ in layers):
            yield
            return
        if torch.is_grad_enabled():
            with self._merged_in_training(layers):
                yield
            return
        # what the merged weights depend on: every weight's storage and version, the active adapters
        key = [tuple(layers[0][0].active_adapters)] + [(w.data_ptr(), w._version) for _, base, adapter in layers for w in (base, *adapter)]
        key += [tuple(layer.scaling.values()) for layer, _, _ in layers]  # `scale_layer` (diffusers' adapter weights) rescales in place
        if self._merged is None or self._merged[0] != key:
            self._merged = None  # the old copies go before the new ones are made
            self._merged = (key, self._merge(layers))
        merged, active = self._merged[1], key[0]
        if merged is None:  # not mergeable (`_mergeable`)
            yield
            return
        swapped = []
        try:
            for (layer, weight, _), merged_weight in zip(layers, merged):
                swapped.append((layer, weight, weight.data))
                weight.data = merged_weight
                layer.__dict__["merged_adapters"] = list(active)  # peft's forward then runs the base layer alone (set in __dict__: nn.Module's setattr is slower)
            self._swapped = True
            yield
        finally:
            self._swapped = False
            for layer, weight, original in swapped:
                weight.data = original
                layer.__dict__["merged_adapters"] = []

    @contextmanager
    def _merged_in_training(self, layers: list) -> Iterator[None]:
        """Each LoRA layer's forward is `MergedLoRALinear` within this block, if every layer can
        take it (`_mergeable`, checked again only when the layers, their active adapters, their
        train/eval mode or their dtype change); the layers' own forwards come back on leaving."""
        first, weight = layers[0][0], layers[0][1]
        if "forward" in first.__dict__:  # inside another merged_lora block (or another patch): left as it is
            yield
            return
        key = (tuple(first.active_adapters), first.training, weight.dtype)
        if self._training_forwards is None or self._training_forwards[0] is not layers or self._training_forwards[1] != key:
            forwards = [_training_forward(layer) for layer, _, _ in layers] if _mergeable(layers, training=True) else None
            self._training_forwards = (layers, key, forwards)
        forwards = self._training_forwards[2]
        if forwards is None:
            yield
            return
        try:
            for (layer, _, _), forward in zip(layers, forwards):
                layer.__dict__["forward"] = forward  # an instance attribute, as accelerate's hooks patch a forward
            yield
        finally:
            for layer, _, _ in layers:
                layer.__dict__.pop("forward", None)

    @staticmethod
    def _merge(layers: list) -> list[torch.Tensor] | None:
        """Each layer's W + s·B·A, or None unless every layer can be merged (`_mergeable`)."""
        if not _mergeable(layers, training=False):
            return None
        return [_merged_weight(layer, weight) for layer, weight, _ in layers]

    def _lora_layers_found(self) -> list[tuple[nn.Module, nn.Parameter, list[nn.Parameter]]]:
        """(layer, base weight, adapter weights) of the denoiser's peft LoRA layers ([] without
        LoRA), found once per denoiser and set of adapters (an adapter deleted and added again
        under its name is a new config object, so a new set)."""
        config = getattr(self.denoiser, "peft_config", None)  # not `finetuning`, which reads every parameter
        if not config:
            return []
        key = (self.denoiser, tuple(config), tuple(map(id, config.values())))
        if self._lora_layers is None or self._lora_layers[0] != key:
            from peft.tuners.lora import LoraLayer

            layers = [m for m in self.denoiser.modules() if isinstance(m, LoraLayer)]
            found = [(layer, layer.get_base_layer().weight, [p for p in layer.parameters() if p.requires_grad]) for layer in layers]
            self._lora_layers = (key, found, tuple(config.values()))  # the configs kept alive: their ids stay theirs
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


# ---------------------------------------------------------------- merged LoRA layers
def _mergeable(layers: list, training: bool) -> bool:
    """Whether every LoRA layer computes W + s·B·A exactly as peft's unmerged forward does up to
    float rounding: plain LoRA (no DoRA, no LoRA bias, no dropout) on an unsharded float32 base
    weight; in training also one active adapter on a frozen `nn.Linear` (what
    `MergedLoRALinear` differentiates) whose forward nothing else has replaced."""
    for layer, weight, _ in layers:
        names = _active(layer)
        variants = getattr(layer, "lora_variant", {})  # DoRA and peft's other LoRA variants compute otherwise
        if (type(weight.data) is not torch.Tensor or weight.dtype != torch.float32
                or any(name in variants or layer.use_dora.get(name) or layer.lora_bias.get(name) for name in names)
                or any(layer.training and not isinstance(layer.lora_dropout[name], nn.Identity) for name in names)):  # fmt: skip
            return False
        if training:
            base = layer.get_base_layer()
            modules = [base] + [m for name in names for m in (layer.lora_A[name], layer.lora_B[name])]
            if (len(names) != 1 or type(base) is not nn.Linear or getattr(layer, "fan_in_fan_out", False) or "forward" in layer.__dict__
                    or any(p.requires_grad for p in base.parameters())
                    or any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ for m in modules)):  # fmt: skip  # hooks the merged pass would skip
                return False
    return True


def _active(layer: nn.Module) -> list[str]:
    """The active adapters a LoRA layer holds (an adapter may target only some layers; peft skips
    it in the others)."""
    return [name for name in layer.active_adapters if name in layer.lora_A]


def _merged_weight(layer: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """W + s·B·A of a peft LoRA layer's active adapters: the one merge of sampling and training
    (`_merge_linear` for a linear layer's adapter, peft's delta for any other)."""
    linear = type(layer.get_base_layer()) is nn.Linear and not getattr(layer, "fan_in_fan_out", False)
    for name in _active(layer):
        if linear:
            weight = _merge_linear(weight, layer.lora_A[name].weight, layer.lora_B[name].weight, layer.scaling[name])
        else:
            weight = weight + layer.get_delta_weight(name)
    return weight


def _merge_linear(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    return torch.addmm(weight, lora_b, lora_a, alpha=scaling)


class MergedLoRALinear(torch.autograd.Function):
    """A LoRA linear layer in training as one pass on its merged weight: y = x (W + s·B·A)ᵀ + b.

    Forward, one matrix product instead of peft's three (base, A, B) and its two elementwise
    passes over the output (scaling, sum). Backward, ∂x = g (W + s·B·A) and the adapters'
    gradients without ever the base weight's: from the weight-sized product M = gᵀx
    (∂A = s BᵀM, ∂B = s M Aᵀ) where it is cheap, its size at most 4 × that of LoRA's own thin
    products (small layers, where each operation's overhead outweighs its arithmetic), else
    from those thin products, as peft's backward computes them: ∂A = s (g B)ᵀ x, ∂B = s gᵀ (x Aᵀ)."""

    @staticmethod
    def forward(ctx, x, lora_a, lora_b, weight, bias, scaling):
        ctx.save_for_backward(x, weight, lora_a, lora_b)  # the merged weight is made again in the backward, not kept
        ctx.scaling = scaling
        return F.linear(x, _merge_linear(weight, lora_a, lora_b, scaling), bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, lora_a, lora_b = ctx.saved_tensors
        grad_x = grad @ _merge_linear(weight, lora_a, lora_b, ctx.scaling) if ctx.needs_input_grad[0] else None
        grad_a = grad_b = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            (rank, d_in), d_out = lora_a.shape, lora_b.shape[0]
            g, x = grad.reshape(-1, d_out), x.reshape(-1, d_in)
            if d_in * d_out <= 8 * rank * (d_in + d_out):
                m = g.t() @ x
                grad_a, grad_b = lora_b.t() @ m, m @ lora_a.t()
            else:
                grad_a, grad_b = (g @ lora_b).t() @ x, g.t() @ (x @ lora_a.t())
            if ctx.scaling != 1:
                grad_a, grad_b = grad_a * ctx.scaling, grad_b * ctx.scaling
        return grad_x, grad_a, grad_b, None, None, None


def _training_forward(layer: nn.Module):
    """`layer`'s forward as `MergedLoRALinear`, reading the layer as it is at each call: peft's own
    forward wherever that would compute otherwise (per-sample adapters, adapters disabled or
    merged, as `reference()` or a nested block without gradients leaves them, another active
    adapter, a trainable base weight, hooks on the base layer) or without gradients."""
    base = layer.get_base_layer()

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        names = layer.active_adapters
        if (args or kwargs or layer.disable_adapters or layer.merged or len(names) != 1 or names[0] not in layer.lora_A
                or base.weight.requires_grad or base._forward_hooks or base._forward_pre_hooks or not torch.is_grad_enabled()):  # fmt: skip
            return type(layer).forward(layer, x, *args, **kwargs)
        name = names[0]
        return MergedLoRALinear.apply(x, layer.lora_A[name].weight, layer.lora_B[name].weight, base.weight, base.bias, layer.scaling[name])

    return forward
