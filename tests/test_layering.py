"""The package layering of `north_lightning/`: every import of ours follows an allowed arrow, and no loop.

The table below is the architecture: which of our packages each package may import. It is read from the
source (AST), not by importing, so imports inside functions count as much as module-level ones, and so do
the module names handed to `importlib` (registries such as the harness and backend tables hold them as
strings: any string constant that is a dotted `north_lightning.` module path counts as an import).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "north_lightning"

# package -> the packages of ours it may import (besides itself). `model` is plain torch: nothing of ours, no
# Lightning. `formats` (records, harnesses) is what SFT and RL share, so it needs neither. Environments know
# nothing of policies or training; the RL machinery knows nothing of Lightning modules or datamodules.
ALLOWED: dict[str, set[str]] = {
    "model": set(),
    "assets": set(),
    "formats": set(),
    "envs": {"model", "formats", "assets"},
    "rl": {"model", "formats", "envs", "assets"},
    "datamodules": {"model", "formats", "rl", "assets"},
    "modules": {"model", "rl", "assets"},
    "humaneval": {"model", "formats", "envs", "rl", "assets"},
    "callbacks": {"model", "formats", "envs", "rl", "datamodules", "modules", "assets"},
    "cli": {"model", "formats", "envs", "rl", "datamodules", "modules", "callbacks", "humaneval", "assets"},
    "__main__": {"cli"},
    "__init__": set(),
}
# third-party packages a package must not import (the model stays usable without a trainer)
FORBIDDEN_EXTERNAL: dict[str, set[str]] = {
    "model": {"lightning", "pytorch_lightning"},
    "formats": {"lightning", "pytorch_lightning", "torch", "docker", "vllm"},
}
MODULE_STRING = re.compile(r"^north_lightning(\.\w+)+(:\w+)?$")


def package_of(module: str) -> str:
    """`north_lightning.rl.engines.server` -> `rl`; the top-level `north_lightning` itself -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file: statements anywhere, relative ones resolved, and dotted
    `north_lightning.` strings (importlib targets)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = module_name(path)
    is_pkg = path.name == "__init__.py"
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = this.split(".")[: len(this.split(".")) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            if target in {"north_lightning", *(f"north_lightning.{p}" for p in ALLOWED)}:
                # `from north_lightning.rl import rollout` imports the submodule
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
              and MODULE_STRING.match(node.value) and package_of(node.value) in ALLOWED):
            # (our Docker labels are dotted `north_lightning.` strings too, but name no package)
            found.append((node.lineno, node.value.split(":")[0]))
    return found


def source_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "bundled" not in p.parts)


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(from package, to package) -> the `file:line` places that make the arrow."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in source_files():
        src = package_of(module_name(path))
        for line, target in imported_modules(path):
            if target == "north_lightning" or target.startswith("north_lightning."):
                dst = package_of(target)
                if dst != src and dst != "__init__":
                    edges.setdefault((src, dst), []).append(f"{path.relative_to(ROOT.parent)}:{line}")
    return edges


def test_every_package_is_in_the_table() -> None:
    packages = {package_of(module_name(p)) for p in source_files()}
    assert packages <= set(ALLOWED), f"packages missing from the layering table: {packages - set(ALLOWED)}"


def test_imports_follow_the_allowed_arrows() -> None:
    wrong = [f"{src} -> {dst} at {', '.join(places)}" for (src, dst), places in sorted(package_edges().items())
             if dst not in ALLOWED[src]]
    assert not wrong, "imports against the layering table:\n" + "\n".join(wrong)


def test_forbidden_third_party_imports() -> None:
    wrong = []
    for path in source_files():
        banned = FORBIDDEN_EXTERNAL.get(package_of(module_name(path)), set())
        wrong += [f"{path.relative_to(ROOT.parent)}:{line} imports {target}"
                  for line, target in imported_modules(path) if target.split(".")[0] in banned]
    assert not wrong, "\n".join(wrong)


def find_cycle(edges: set[tuple[str, str]]) -> list[str] | None:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, stack + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_no_package_cycle() -> None:
    edges = package_edges()
    cycle = find_cycle(set(edges))
    assert cycle is None, "package loop " + " -> ".join(cycle) + ": " + "; ".join(
        f"{a}->{b} at {edges[(a, b)][0]}" for a, b in zip(cycle, cycle[1:]))


def test_the_checker_sees_what_it_must(tmp_path: Path) -> None:
    """The reader finds imports inside functions, relative imports, `from pkg import submodule` and importlib
    strings, and the cycle finder finds a loop: so a green layering test means something."""
    pkg = tmp_path / "north_lightning" / "envs"
    pkg.mkdir(parents=True)
    sample = pkg / "sample.py"
    sample.write_text('"""north_lightning.rl.docstring_is_not_an_import"""\n'
                      "def f():\n    from north_lightning.rl import rollout\n"
                      "from ..formats import records\n"
                      "REGISTRY = {'x': 'north_lightning.modules.sft:SFTModule'}\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path / "north_lightning"
    try:
        targets = {t for _, t in imported_modules(sample)}
    finally:
        ROOT = saved
    assert {"north_lightning.rl.rollout", "north_lightning.formats.records", "north_lightning.modules.sft"} <= targets
    assert "north_lightning.rl.docstring_is_not_an_import" not in targets
    assert find_cycle({("a", "b"), ("b", "c"), ("c", "a")}) is not None
    assert find_cycle({("a", "b"), ("b", "c"), ("a", "c")}) is None


@pytest.mark.parametrize("doc", ["README.md"])
def test_readme_concepts_name_existing_paths(doc: str) -> None:
    """The README's Concepts table points at paths that exist (it is the reader's map of this layering)."""
    text = (ROOT.parent / doc).read_text()
    table = text[text.index("## Concepts"):]
    table = table[: table.index("\n## ", 3)]
    paths = re.findall(r"`((?:north_lightning/)?(?:model|formats|envs|rl|datamodules|modules|callbacks|cli|humaneval)"
                       r"/[\w/]*(?:\.py)?)`", table)
    assert paths, "no package paths found in the Concepts table"
    missing = [p for p in paths if not (ROOT / p.removeprefix("north_lightning/")).exists()]
    assert not missing, f"{doc} Concepts table names paths that do not exist: {missing}"
