"""The README's Python examples run as written (tiny-random, offline)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run_in_order():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for index, block in enumerate(blocks):  # they build on each other as a reader runs them
        exec(compile(block, f"README.md python block {index}", "exec"), namespace)
    assert namespace["images"].shape == (8, 32, 32, 3)
    grads = [p.grad for p in namespace["policy"].trainable_parameters()]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)  # the LoRA adapters got gradients
    assert namespace["metrics"]["grad_norm"] > 0  # the GRPO example trained
