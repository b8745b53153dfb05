"""Spaces of the environments, where Gymnasium's own do not carry what these envs return.

- `PromptText`: Gymnasium's `Text` whose shared memory (`AsyncVectorEnv`, on by default) is read
  when an observation is taken, not once when the vector env is made: with plain `Text`, every
  prompt of an async vector env reads back as "000…" (the buffer's zeros at creation), because
  strings, unlike arrays, are not views of the buffer.
- `TensorBox`, `TensorDiscrete`, `TensorMultiDiscrete`: with `array_type="torch"` observations
  are torch tensors; these spaces check them as the numpy arrays they stand for, so that
  `observation_space.contains(obs)` holds. Batched (`batch_space`), they stay tensor spaces.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium.spaces import Box, Discrete, MultiDiscrete, Text
from gymnasium.vector.utils import batch_space, read_from_shared_memory


class PromptText(Text):
    """`Text` for prompts, with shared memory that async vector envs read live."""


class _LivePrompts(Sequence[str]):
    """The prompts in an async vector env's shared memory, decoded when read. A deep copy (what
    `AsyncVectorEnv` returns with `copy=True`, its default) is a plain tuple of strings."""

    def __init__(self, space: PromptText, buffer: np.ndarray):
        self.space, self.buffer = space, buffer  # (n, max_length) int32, a view of the shared memory

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self)[index]
        codes = self.buffer[index]
        return "".join(self.space.character_list[c] for c in codes if c < len(self.space.character_set))

    def __len__(self) -> int:
        return len(self.buffer)

    def __deepcopy__(self, memo: dict) -> tuple[str, ...]:
        return tuple(self)

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, list, _LivePrompts)) else other)

    def __repr__(self) -> str:
        return repr(tuple(self))


@read_from_shared_memory.register(PromptText)  # creating and writing it are Text's
def _read(space: PromptText, shared_memory, n: int = 1) -> _LivePrompts:
    return _LivePrompts(space, np.frombuffer(shared_memory.get_obj(), dtype=np.int32).reshape(n, space.max_length))


def _numpy(x: Any) -> Any:
    """A torch tensor as the numpy array it stands for; anything else as it is."""
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return x


class TensorBox(Box):
    """A `Box` that also checks torch tensors (array_type="torch")."""

    def contains(self, x: Any) -> bool:
        return super().contains(_numpy(x))


class TensorDiscrete(Discrete):
    """A `Discrete` that also checks a 0-d torch tensor."""

    def contains(self, x: Any) -> bool:
        return super().contains(_numpy(x))


class TensorMultiDiscrete(MultiDiscrete):
    """A `MultiDiscrete` that also checks a torch tensor (the batched timesteps)."""

    def contains(self, x: Any) -> bool:
        return super().contains(_numpy(x))


@batch_space.register(TensorBox)
def _batch_box(space: TensorBox, n: int = 1) -> TensorBox:
    batched = batch_space.dispatch(Box)(space, n)
    return TensorBox(batched.low, batched.high, dtype=batched.dtype, seed=space.np_random)


@batch_space.register(TensorDiscrete)
def _batch_discrete(space: TensorDiscrete, n: int = 1) -> TensorMultiDiscrete:
    batched = batch_space.dispatch(Discrete)(space, n)
    return TensorMultiDiscrete(batched.nvec, dtype=batched.dtype, seed=space.np_random, start=batched.start)
