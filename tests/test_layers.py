"""The package's layers (docs/architecture.md, the contract in pyproject.toml): every import points
down, stages never import each other, every module is placed in a layer, and there is no import
circle, not even one closed by an import inside a function."""

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def contracts():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def lint(src: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the repository's contract over the package under `src`."""
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", str(ROOT / "pyproject.toml"),
                           "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})


def test_the_layer_contract_is_kept():
    result = lint(ROOT / "src")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract bites: the data layer importing a stage fails the lint."""
    import shutil

    shutil.copytree(ROOT / "src" / "teddy", tmp_path / "teddy", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "teddy" / "data.py", "a") as f:
        f.write("\nfrom teddy.stages import distill  # noqa: an import that points up\n")
    result = lint(tmp_path)
    assert result.returncode != 0, result.stdout[-3000:]
    assert "broken" in result.stdout and "teddy.data -> teddy.stages.distill" in result.stdout


def test_every_module_has_its_layer():
    layers = next(c for c in contracts() if c["type"] == "layers")["layers"]
    placed = {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}
    graph = grimp.build_graph("teddy")
    top = {".".join(m.split(".")[:2]) for m in graph.modules if m != "teddy"}
    assert top - placed == set(), "place these modules in a layer of pyproject.toml's contract"
    assert placed - top == set(), "the contract names modules that do not exist"


def test_the_import_graph_has_no_circle():
    graph = grimp.build_graph("teddy")
    circles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith(module + "."):
                continue  # a package importing its own modules (teddy.methods finds its methods)
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back and not module.startswith(imported + "."):
                circles.append(" -> ".join((module, *back)))
    assert circles == []
