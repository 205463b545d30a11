"""The layer rule of docs/architecture.md, checked on the real imports of every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import distmtl

PACKAGE_ROOT = Path(distmtl.__file__).parent

# Higher numbers are higher layers; a module may import only from its own layer or below.
LAYERS = {
    "errors": 0, "io": 0,
    "tasks": 1, "weighting": 1,
    "losses": 2, "relatedness": 2, "models": 2,
    "evaluation": 3, "data": 3, "config": 3, "faces": 3,
    "training": 4,
    "study": 5, "inference": 5,
    "cli": 6,
}


def unit_of(module: str) -> str:
    """The layout unit of a dotted module name: its first component below ``distmtl``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """Every distmtl module a file imports, at any depth (function-level and TYPE_CHECKING too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "distmtl"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "distmtl":
                found.append((node.lineno, name))
    return found


def upward_imports(root: Path = PACKAGE_ROOT) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        this = module_name(path, root)
        unit = unit_of(this)
        if unit == "__init__":
            continue  # the package root re-exports public names lazily
        if unit not in LAYERS:
            problems.append(f"{path.relative_to(root)}: '{unit}' has no layer in LAYERS (docs/architecture.md)")
            continue
        for line, target in imported_modules(path, root):
            target_unit = unit_of(target)
            if target_unit == "__init__":
                continue  # `import distmtl` for __version__
            if target_unit not in LAYERS:
                problems.append(f"{path.relative_to(root)}:{line}: imports '{target}', which has no layer")
            elif LAYERS[target_unit] > LAYERS[unit]:
                problems.append(f"{path.relative_to(root)}:{line}: {unit} (layer {LAYERS[unit]}) imports "
                                f"{target} (layer {LAYERS[target_unit]})")
    return problems


def test_no_module_imports_a_higher_layer():
    assert upward_imports() == []


def test_every_top_level_unit_has_a_layer():
    units = {p.stem for p in PACKAGE_ROOT.glob("*.py") if p.stem != "__init__"}
    units |= {p.name for p in PACKAGE_ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert units <= set(LAYERS), sorted(units - set(LAYERS))


def test_the_rule_catches_an_upward_import(tmp_path):
    fake = tmp_path / "distmtl"
    (fake / "losses").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "losses" / "__init__.py").write_text("")
    (fake / "losses" / "bad.py").write_text("def f():\n    from distmtl.training.module import X\n")
    (fake / "losses" / "good.py").write_text("from distmtl.tasks import Task\nfrom . import bad\n")
    problems = upward_imports(fake)
    assert problems == ["losses/bad.py:2: losses (layer 2) imports distmtl.training.module (layer 4)"]


@pytest.mark.parametrize("name", ["Predictor", "Relatedness", "load_config", "run_compare",
                                  "train_from_config", "export_model", "Task", "DistmtlError"])
def test_public_names_import_from_the_top(name):
    assert getattr(distmtl, name) is not None
    assert name in distmtl.__all__


def test_old_flat_module_paths_are_gone():
    for old in ("evaluate", "evaluation", "predict", "predict_cli", "relatedness_estimate", "runner",
                "experiment", "study", "report", "export", "compound", "curves", "verification"):
        assert not (PACKAGE_ROOT / f"{old}.py").exists(), old
