"""The package's layers: a module imports only from the layers below its own (docs/layout.md).

Read from the source with ``ast``; nothing is imported. A unit is a top-level module or a
subpackage of one_layer_lottery (``__init__`` is the package's own __init__.py); units of one
layer do not import each other, and a unit imports itself freely.
"""
import ast
import re
from pathlib import Path

from conftest import ROOT

PACKAGE = "one_layer_lottery"
# Bottom to top.
LAYERS = (
    ("console", ("console",)),
    ("building blocks", ("atomic", "fairseq_checkpoint", "fairseq_logs", "masking")),
    ("model", ("models",)),
    ("fairseq patches", ("fairseq_patches",)),
    ("subnetwork", ("subnetwork",)),
    ("model files", ("model_files",)),
    ("checkpoint tools", ("checkpoints",)),
    ("tools", ("__init__", "analyze", "average_checkpoints", "bench", "curves", "dump_embeddings", "export",
               "paper_batch", "sample_corpus")),
    ("studies", ("study",)),
    ("pretrained", ("pretrained",)),
    ("translation", ("translate",)),
)
UPWARD = "a module imports only from the layers below its own"
SIDEWAYS = "units of one layer do not import each other"


def _unit(relative: Path) -> str:
    return relative.parts[0].removesuffix(".py")


def _imported(tree, package: list) -> list:
    """The absolute names of the modules of ``PACKAGE`` a file imports (``package``: its package's parts)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            # `from . import x` and `from one_layer_lottery import x` import x itself
            names += [f"{module}.{a.name}" for a in node.names] if module == PACKAGE else [module]
    return [n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")]


def layer_violations(package_dir: Path, layers=LAYERS) -> list:
    """One message per import against the layer order, and per unit that has no layer."""
    layer_of = {unit: (rank, name) for rank, (name, units) in enumerate(layers) for unit in units}
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir)
        unit = _unit(relative)
        shown = f"{package_dir.name}/{relative.as_posix()}"
        if unit not in layer_of:
            problems.append(f"{shown}: the unit {unit} has no layer (add it to LAYERS and docs/layout.md)")
            continue
        package = [PACKAGE, *relative.parts[:-1]]
        for module in _imported(ast.parse(path.read_text(), str(path)), package):
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else "__init__"
            if target == unit or target not in layer_of:  # a unit of its own, or not a module here
                continue
            (mine, my_layer), (theirs, their_layer) = layer_of[unit], layer_of[target]
            if theirs >= mine:
                rule = UPWARD if theirs > mine else SIDEWAYS
                problems.append(f"{shown} ({my_layer} layer) imports {module} ({their_layer} layer): {rule}")
    return problems


def test_every_import_goes_down_the_layers():
    assert layer_violations(ROOT / PACKAGE) == []


def _package(tmp_path, files):
    root = tmp_path / PACKAGE
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_an_upward_or_sideways_import_is_named_with_its_rule(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "from . import models\n",
        "console.py": "import os\n",
        "atomic.py": "from .console import ToolError\n",
        "masking/__init__.py": "from .modules import x\n",
        "masking/modules.py": "from ..fairseq_logs import read\n\ndef f():\n    from ..models.one import m\n",
        "fairseq_logs.py": "",
        "models/one.py": "from one_layer_lottery import console\nimport one_layer_lottery\n",
    })
    assert layer_violations(root) == [
        f"{PACKAGE}/masking/modules.py (building blocks layer) imports {PACKAGE}.fairseq_logs (building blocks "
        f"layer): {SIDEWAYS}",
        f"{PACKAGE}/masking/modules.py (building blocks layer) imports {PACKAGE}.models.one (model layer): {UPWARD}",
        f"{PACKAGE}/models/one.py (model layer) imports {PACKAGE} (tools layer): {UPWARD}",
    ]


def test_a_unit_without_a_layer_is_named(tmp_path):
    root = _package(tmp_path, {"console.py": "", "newtool.py": "from .console import ToolError\n"})
    assert layer_violations(root) == [f"{PACKAGE}/newtool.py: the unit newtool has no layer (add it to LAYERS "
                                      "and docs/layout.md)"]


def _drawn_layers(layout: str):
    """(name, units) of each row of the first code block under "## Layers", top to bottom."""
    block = layout.split("\n## Layers", 1)[1].split("```", 2)[1]
    rows = []
    for line in block.strip("\n").splitlines():
        if line.startswith(" "):  # more units of the row above
            rows[-1][1].extend(line.split())
        else:
            name, units = re.split(r"\s{2,}", line, maxsplit=1)
            rows.append((name, units.split()))
    return [(name, tuple(sorted(u.rstrip("/").removesuffix(".py") for u in units))) for name, units in rows]


def test_docs_layout_draws_these_layers():
    drawn = _drawn_layers((ROOT / "docs" / "layout.md").read_text())
    assert drawn == [(name, tuple(sorted(units))) for name, units in reversed(LAYERS)]
