"""Model families: what differs between Stable Diffusion, SDXL, SD3/SD3.5 and FLUX.1, one file each.

A family is recognised from the classes of a model's parts (`family_of`), so a hub id, a local
folder and a model built in code all get theirs without being told.
"""

from diffusion_gym.models.families.base import Conditioning, ModelFamily
from diffusion_gym.models.families.flux import Flux
from diffusion_gym.models.families.sd3 import SD3
from diffusion_gym.models.families.sdxl import SDXL
from diffusion_gym.models.families.stable_diffusion import StableDiffusion

# Tried in order: the first that matches a model is its family.
FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (SD3(), Flux(), SDXL(), StableDiffusion())}


def family_of(model) -> ModelFamily:
    """The family of a `DiffusionModel`, or a ValueError naming its denoiser's class."""
    for family in FAMILIES.values():
        if family.matches(model):
            return family
    raise ValueError(
        f"{model.name!r}: no model family takes a {type(model.denoiser).__name__} with these text encoders; "
        f"the families are {list(FAMILIES)} (diffusion_gym/models/families/)."
    )


__all__ = ["Conditioning", "FAMILIES", "ModelFamily", "family_of"]
