"""The embedded default: a small text-to-image diffusion model of a toy world, trained by this
project (`python -m diffusion_gym.embedded.train`) and shipped as package data, so that the env,
the agents and the benchmarks do real work offline on a CPU.

- `world`: the procedural image world, its captions and its held-out combinations;
- `model`: the model's architecture (the same diffusers/transformers classes as Stable Diffusion);
- `captioner`: reads images back into attributes (the evaluation instrument);
- `train`: the script that reproduces the shipped weights;
- `evaluate`: the figures the weights are judged by.
"""

from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parent / "weights"
"""The shipped pipeline folder (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/)
and the captioner (captioner/)."""
