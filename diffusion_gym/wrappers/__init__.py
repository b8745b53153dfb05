"""Adapters for RL libraries we did not write.

- `observations.PromptIndexObservation`: the prompt as an index into the env's prompt set, and
  finite action bounds that never clip a policy sample (any library).
- `sb3`: a stable-baselines3 VecEnv and `DiffusionActorCriticPolicy` (imports stable-baselines3).
- `tianshou`: a tianshou vector env and an actor for `ProbabilisticActorPolicy` (imports tianshou).
"""

from diffusion_gym.wrappers.observations import ACTION_BOUND, PromptIndexObservation

__all__ = ["ACTION_BOUND", "PromptIndexObservation"]
