"""The layering rule of docs/architecture.md: each package imports only from layers below it,
and nothing below the Lightning layer imports lightning, wandb or tensorboard."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_devinterp"
LAYERS = [
    "components",
    "sampling",
    "estimators",
    "milestones",
    "reporting",
    "callbacks",
    "demo",
    "cli",
]
FRAMEWORKS = ("lightning", "pytorch_lightning", "wandb", "tensorboard")
#: Beside the stack: example models and data (LightningModules), which import no other layer.
SIDE = ("demos",)
#: The package's facade, which may import from every layer.
FACADE = "__init__"


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "lightning_devinterp" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def test_every_subpackage_and_module_has_a_place_in_the_layers():
    entries = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries - {FACADE} == set(LAYERS) | set(SIDE)


def test_demos_import_no_other_layer():
    bad = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in (PACKAGE / "demos").rglob("*.py")
        for name in imports(path)
        if layer_of(name) is not None
    ]
    assert not bad, bad


def test_no_module_imports_from_a_layer_above_it():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        own = rel[0].removesuffix(".py")
        if own not in LAYERS:
            continue
        for name in imports(path):
            other = layer_of(name)
            if other and LAYERS.index(other) > LAYERS.index(own):
                bad.append(f"{'/'.join(rel)} imports {name}")
            if name.startswith("lightning_devinterp.demos") and own not in ("demo", "cli"):
                bad.append(f"{'/'.join(rel)} imports {name}")
            if LAYERS.index(own) < LAYERS.index("reporting") and name.split(".")[0] in FRAMEWORKS:
                bad.append(f"{'/'.join(rel)} imports {name}")
    assert not bad, bad
