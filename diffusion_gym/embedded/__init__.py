"""The embedded default's runtime parts: a small text-to-image diffusion model of a toy world,
trained by this project and shipped as package data, so that the env, the agents and the
benchmarks do real work offline on a CPU. Nothing here imports the rest of the package but
`diffusion_gym.images`: the model loader, the prompt sets and the rewards build on it.

- `weights/`: the model (a diffusers pipeline folder) and the networks below;
- `world`: the procedural image world, its captions and its held-out combinations;
- `captioner`: reads images back into attributes (the evaluation instrument, the alignment
  task's judge, and, trained apart, its gold judge);
- `paraphrase`: the world in words the generator never saw, and the comparator that reads them
  (the alignment task's prompts and judge);
- `taste`, `aesthetic`: the hidden taste (the aesthetic task's gold) and the predictor learned
  from ratings of it (the aesthetic task's reward);

Its tools sit above the env, in `embedded_tools/`: the model's architecture, the scripts that
reproduce the weights, and the evaluations they are judged by.
"""

from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parent / "weights"
"""The shipped pipeline folder (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/),
the captioner (captioner/), the gold judge (captioner_gold/) and the aesthetic predictor's head
(aesthetic/)."""

EMBEDDED_FLOW_DIR = EMBEDDED_DIR / "flow"
"""The embedded flow model: the same networks trained as a rectified flow (model_index.json,
unet/, text_encoder/, tokenizer/, scheduler/ with a `FlowMatchEulerDiscreteScheduler`)."""
