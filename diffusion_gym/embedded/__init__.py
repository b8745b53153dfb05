"""The embedded default: a small text-to-image diffusion model of a toy world, trained by this
project (`python -m diffusion_gym.embedded.train`) and shipped as package data, so that the env,
the agents and the benchmarks do real work offline on a CPU.

- `world`: the procedural image world, its captions and its held-out combinations;
- `model`: the model's architecture (the same diffusers/transformers classes as Stable Diffusion);
- `captioner`: reads images back into attributes (the evaluation instrument, the alignment
  task's judge, and, trained apart, its gold judge);
- `paraphrase`: the world in words the generator never saw, and the comparator that reads them
  (the alignment task's prompts and judge);
- `taste`, `aesthetic`: the hidden taste (the aesthetic task's gold) and the predictor learned
  from ratings of it (the aesthetic task's reward);
- `train`, `train_aesthetic`: the scripts that reproduce the shipped weights;
- `evaluate`, `evaluate_tasks`: the figures the weights and the tasks are judged by.
"""

from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parent / "weights"
"""The shipped pipeline folder (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/),
the captioner (captioner/), the gold judge (captioner_gold/) and the aesthetic predictor's head
(aesthetic/)."""
