"""The architecture as a rule: each module imports only from its own layer or the layers below
it (lazy imports inside functions count too), so that the runtime parts never depend on the tools
built on them. The layers, low to high, as the README's Layout section draws them."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = (
    ("diffusion_gym.coerce", "diffusion_gym.images"),
    ("diffusion_gym.embedded",),  # the embedded model's runtime parts: world, weights, captioner
    ("diffusion_gym.prompts", "diffusion_gym.samplers", "diffusion_gym.models"),
    ("diffusion_gym.rewards",),
    ("diffusion_gym.envs",),
    ("diffusion_gym.policy", "diffusion_gym.finetuning"),
    ("diffusion_gym.rollout", "diffusion_gym.wrappers", "diffusion_gym.demo"),
    ("diffusion_gym",),  # the package root: registration and the public names
    ("agents",),
    ("embedded_tools", "benchmarks"),
)


def layer(module: str) -> int:
    """The layer of a module: its longest matching prefix in LAYERS."""
    matches = [(len(prefix), i) for i, names in enumerate(LAYERS) for prefix in names if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1] if matches else -1


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return [name for name in names if layer(name) >= 0]


def upward_imports() -> list[str]:
    found = []
    for package in ("diffusion_gym", "agents", "embedded_tools", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if ".trl" in path.parts:
                continue
            module = module_name(path)
            for name in project_imports(path):
                if layer(name) > layer(module):
                    found.append(f"{module} (layer {layer(module)}) imports {name} (layer {layer(name)})")
    return sorted(set(found))


def test_no_module_imports_from_a_layer_above_its_own():
    assert upward_imports() == []


def test_the_env_module_imports_nothing_from_the_policy():
    imports = project_imports(ROOT / "diffusion_gym" / "envs" / "diffusion_env.py")
    assert not [name for name in imports if name.startswith("diffusion_gym.policy")]


@pytest.mark.parametrize("module, expected", [("diffusion_gym.embedded.world", 1), ("diffusion_gym.models.loading", 2), ("diffusion_gym", 7), ("embedded_tools.train", 9)])
def test_layers_are_read_from_the_longest_prefix(module, expected):
    assert layer(module) == expected


def test_the_readme_draws_the_layers_top_to_bottom():
    """The Layout section lists every layer, the highest first, as LAYERS orders them."""
    readme = (ROOT / "README.md").read_text()
    drawing = readme[readme.index("## Layout") :].split("```")[1]

    def shown_as(module: str) -> str:
        if module == "diffusion_gym":
            return "diffusion_gym/__init__"
        path = ROOT / module.replace(".", "/")
        return path.name + ("/" if path.is_dir() else ".py")

    for module in (m for names in LAYERS for m in names):
        assert shown_as(module) in drawing, f"{shown_as(module)} is missing from the README's Layout"
    positions = [min(drawing.index(shown_as(m)) for m in names) for names in LAYERS]
    assert positions == sorted(positions, reverse=True), "the README's Layout must list the layers from the highest down"
