"""The embedded model's tools, above the env and the agents: its architecture (`model`), the
scripts that reproduce the shipped weights (`train`, `train_aesthetic`) and the evaluations the
weights and the tasks are judged by (`evaluate`, `evaluate_tasks`). The runtime parts they train
(world, captioner, aesthetic predictor, weights) live in `diffusion_gym.embedded`."""
