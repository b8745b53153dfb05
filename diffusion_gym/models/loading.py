"""Loading a `DiffusionModel` from a hub id, a local pipeline folder, or a name built in code.

Hub ids and local folders take the same path: read `model_index.json`, then load each part with
the class it names (the denoiser, `unet` or `transformer`; up to three text encoders and their
tokenizers; the `scheduler`; the `vae` if there is one). The family (Stable Diffusion, SDXL,
SD3, FLUX) follows from the classes (`diffusion_gym.models.families`).
Parts a policy never needs (Stable Diffusion's safety checker, its feature extractor) are skipped.
Nothing waits on an unreachable hub: the local cache is tried first, and if the model is not
there and the hub cannot be reached, a `ValueError` says how to provide the model.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Callable

import torch

from diffusion_gym.embedded import EMBEDDED_DIR, EMBEDDED_FLOW_DIR
from diffusion_gym.models.hub import load_offline_first, quiet_libraries
from diffusion_gym.models.pipeline import COMPONENTS, DENOISERS, REQUIRED_COMPONENTS, DiffusionModel
from diffusion_gym.models.tiny import build_tiny_flux, build_tiny_random, build_tiny_sd3, build_tiny_sdxl

def load_embedded(flow: bool = False) -> DiffusionModel:
    """The embedded default, or with `flow` the embedded flow model, from the pipeline folder shipped inside the package."""
    folder, name, command = (EMBEDDED_FLOW_DIR, "embedded-flow", " --objective flow") if flow else (EMBEDDED_DIR, "embedded", "")
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"The {name} model's weights are missing from {folder}; reinstall diffusion-gym, or train them with `python -m embedded_tools.train{command}`.")
    model = _load_pipeline_parts(str(folder), local_files_only=True)
    model.name = name  # the env's and the policy's defaults for it are looked up by this name
    return model


# Models by name: built in code, or shipped with the package.
BUILTIN_MODELS: dict[str, Callable[[], DiffusionModel]] = {
    "tiny-random": build_tiny_random,
    "tiny-random-pixel": lambda: build_tiny_random(pixel_space=True),
    "tiny-random-pixel-flow": lambda: build_tiny_random(pixel_space=True, flow=True),
    "tiny-random-sdxl": build_tiny_sdxl,
    "tiny-random-sd3": build_tiny_sd3,
    "tiny-random-flux": build_tiny_flux,
    "embedded": load_embedded,
    "embedded-flow": lambda: load_embedded(flow=True),
}

# The libraries a model_index.json may name classes from.
_ALLOWED_LIBRARIES = ("diffusers", "transformers")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" means CUDA if there is a GPU, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for but no CUDA GPU is available; use device='cpu' or 'auto'.")
    return device


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from a dtype or its name ("float32", "float16", "bfloat16")."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_model(
    model: str | DiffusionModel,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
) -> DiffusionModel:
    """Load a text-to-image diffusion model, ready for sampling (eval mode, frozen weights).

    Args:
        model: a name built in code ("tiny-random"), a local folder in diffusers pipeline format,
            a Hugging Face hub id ("CompVis/stable-diffusion-v1-4"), or a `DiffusionModel`: a
            new one is frozen like a loaded one; one that went through `load_model` before (an
            env's, a policy's: `policy.model`) is only moved, so an env can share the model of a
            policy in training without freezing its adapters.
        device: "auto", "cpu", "cuda", ...
        dtype: the networks' dtype ("float32", "float16", "bfloat16").
    """
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    if isinstance(model, DiffusionModel):
        if model.prepared:  # loaded before, maybe in training now (an env sharing a policy's model): as it is
            with quiet_libraries():
                return model.to(device=device, dtype=dtype)
        loaded = model
    elif not isinstance(model, (str, os.PathLike)):
        raise ValueError(f"model must be a name, a folder, a hub id or a DiffusionModel, got {type(model).__name__}")
    elif str(model) in BUILTIN_MODELS:
        loaded = BUILTIN_MODELS[str(model)]()
    elif Path(model).is_dir():
        loaded = _load_pipeline_parts(str(model), local_files_only=True)
    elif Path(model).exists():
        raise ValueError(f"model={str(model)!r} is a file; pass the pipeline folder that holds model_index.json.")
    else:
        loaded = _load_from_hub(str(model))
    for module in loaded.modules:
        module.requires_grad_(False).eval()
    loaded.prepared = True
    with quiet_libraries():  # diffusers warns on any `.to(dtype)` of its models ("should be kept in float32: []")
        return loaded.to(device=device, dtype=dtype)


def _load_from_hub(repo_id: str) -> DiffusionModel:
    return load_offline_first(
        repo_id,
        lambda local_files_only: _load_pipeline_parts(repo_id, local_files_only=local_files_only),
        f"On a machine with hub access, download it (`huggingface-cli download {repo_id} --local-dir DIR`, "
        f"or `pipeline.save_pretrained(DIR)`) and pass model='DIR'; or use one of the models built in code: "
        f"{sorted(BUILTIN_MODELS)}.",
    )


def _read_model_index(model: str, local_files_only: bool) -> dict:
    if Path(model).is_dir():
        path = Path(model) / "model_index.json"
        if not path.is_file():
            raise ValueError(
                f"{model!r} has no model_index.json, so it is not a diffusers pipeline folder; "
                "write one with `pipeline.save_pretrained(folder)` or `DiffusionModel.save_pretrained(folder)`."
            )
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(model, "model_index.json", local_files_only=local_files_only))
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{str(path)!r} is not valid JSON ({error}); restore it, or write the folder again with `pipeline.save_pretrained(folder)`."
        ) from None
    if not isinstance(index, dict):
        raise ValueError(f"{str(path)!r} holds a {type(index).__name__}, not an object of parts; write the folder again with `pipeline.save_pretrained(folder)`.")
    return index


def _load_pipeline_parts(model: str, local_files_only: bool) -> DiffusionModel:
    """Each part named by model_index.json, loaded with its class. A broken folder (a part's folder
    or weights missing, a class that does not exist, a config that does not parse, a tokenizer
    without its vocabulary) fails here with a ValueError naming the folder, the part and the fix,
    not later in sampling."""
    index = _read_model_index(model, local_files_only)
    missing = [part for part in REQUIRED_COMPONENTS if not _names_a_class(index.get(part))]
    if not any(_names_a_class(index.get(part)) for part in DENOISERS):
        missing.append(" or ".join(DENOISERS))
    if missing:
        raise ValueError(
            f"The pipeline at {model!r} lacks {missing} in its model_index.json; a text-to-image pipeline needs "
            f"{list(REQUIRED_COMPONENTS)} and a denoiser ({' or '.join(DENOISERS)})."
        )
    parts = {}
    for part in COMPONENTS:
        entry = index.get(part)
        if not _names_a_class(entry):
            parts[part] = None
            continue
        parts[part] = _load_part(model, part, *entry, local_files_only=local_files_only)
    for suffix in ("", "_2", "_3"):
        if parts[f"text_encoder{suffix}"] is not None:
            _check_tokenizer(model, parts[f"tokenizer{suffix}"], parts[f"text_encoder{suffix}"], f"tokenizer{suffix}")
    # the pipeline's own settings (SDXL's force_zeros_for_empty_prompt), not parts it skips ([null, null] or a class)
    settings = {key: value for key, value in index.items() if not key.startswith("_") and key not in COMPONENTS and isinstance(value, (bool, int, float, str))}
    sample_size = settings.pop("diffusion_gym_sample_size", None)
    loaded = DiffusionModel(**parts, name=model, sample_size=sample_size, pipeline_config=settings)
    loaded.family  # noqa: B018  (a model no family takes fails here, with its classes named)
    return loaded


def _load_part(model: str, part: str, library: str, class_name: str, local_files_only: bool):
    where = f"{model!r}: its {part} ({library}.{class_name})"
    if library not in _ALLOWED_LIBRARIES:
        raise ValueError(f"{model!r}: {part} names a class from {library!r}; only {_ALLOWED_LIBRARIES} are loaded.")
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(
            f"{where}: {library} has no loadable class {class_name!r}; correct the name in model_index.json, "
            f"or install the {library} version that wrote it."
        )
    if Path(model).is_dir() and not (Path(model) / part).is_dir():
        raise ValueError(f"{where}: model_index.json names it but the folder has no {part}/ subfolder; copy it in, or save the pipeline again.")
    try:
        with quiet_libraries():
            return cls.from_pretrained(model, subfolder=part, local_files_only=local_files_only)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, json.JSONDecodeError) as error:
        reason = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{where} could not be loaded from {part}/: {reason}. Its weights or config are missing or damaged; "
            "copy the part again from a good copy of the pipeline, or save the pipeline again with `save_pretrained`."
        ) from error


def _check_tokenizer(model: str, tokenizer, text_encoder, part: str = "tokenizer") -> None:
    """A tokenizer that loads can still be empty (no vocabulary file: every word the unknown token)
    or not the text encoder's; catch that here, not as garbage samples or an overflow in `act`."""
    if tokenizer is None:
        raise ValueError(f"{model!r}: model_index.json names a text encoder for {part} but no {part}; add it, or save the pipeline again.")
    where = f"{model!r}: its {part} ({type(tokenizer).__name__})"
    fix = f"copy {part}/ (vocabulary, merges, tokenizer_config.json) from a good copy of the pipeline, or save it again with `tokenizer.save_pretrained`"
    max_length = getattr(tokenizer, "model_max_length", None)
    positions = getattr(text_encoder.config, "max_position_embeddings", None)
    if not isinstance(max_length, int) or max_length > 100_000:
        raise ValueError(f"{where} has no usable model_max_length ({max_length!r}): its tokenizer_config.json is missing or lacks it; {fix}.")
    if positions is not None and max_length > positions:
        raise ValueError(f"{where} pads prompts to {max_length} tokens but the text encoder has {positions} positions; {fix}.")
    vocab_size = getattr(text_encoder.config, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ValueError(f"{where} has {len(tokenizer)} tokens but the text encoder embeds {vocab_size}: they are not a pair; {fix}.")
    ids = tokenizer("a photo of a red cat", add_special_tokens=False).input_ids
    if len(tokenizer) < 8 or (tokenizer.unk_token_id is not None and all(i == tokenizer.unk_token_id for i in ids)):
        raise ValueError(f"{where} reads every word as the unknown token ({len(tokenizer)} tokens): its vocabulary is missing; {fix}.")


def _names_a_class(entry: object) -> bool:
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(x, str) for x in entry)
