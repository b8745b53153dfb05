"""Model loading: hub ids, local diffusers folders and models built in code share one path."""

from diffusion_gym.models.loading import BUILTIN_MODELS, load_model, resolve_device, resolve_dtype
from diffusion_gym.models.pipeline import DiffusionModel
from diffusion_gym.models.tiny import build_tiny_random

__all__ = ["BUILTIN_MODELS", "DiffusionModel", "build_tiny_random", "load_model", "resolve_device", "resolve_dtype"]
