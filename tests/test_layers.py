"""The house rules, read from the source: imports run one way, nobody imports another module's private names,
no import cycles at module level, nothing edits sys.path, and only ``dlcbench`` is installed at the top level."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from dlcbench_test_support import ROOT

PACKAGE = ROOT / "dlcbench"

#: Layers, lowest first: a module may import its own layer and the layers below it.
#: Direct children of ``dlcbench`` not named here (errors, config, compat...) are the base layer 0.
LAYERS = {
    "dlcbench.models": 1,
    "dlcbench.compilers": 2,
    "dlcbench.measure": 3,
    "dlcbench.orchestrate": 4, "dlcbench.results": 4, "dlcbench.coverage": 4, "dlcbench.stage": 4,
    "dlcbench.cli": 5, "dlcbench.__main__": 5,
}
#: Declared exceptions: the conformance suite runs jobs; ``python -m`` entry points are CLI shims.
ALLOWED_UPWARD = {
    ("dlcbench.compilers.testing", "dlcbench.measure"),
    ("dlcbench.models.__main__", "dlcbench.cli"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> tuple[str, int]:
    for prefix, layer in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, layer
    return "base", 0


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` of each dlcbench import in a file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "dlcbench"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] == "dlcbench":
                found.append((base, [a.name for a in node.names], node.lineno))
    return found


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_layers_import_one_way_only():
    wrong = []
    for path in sources():
        me = module_name(path)
        my_prefix, my_layer = layer_of(me)
        for target, _, line in imports(path):
            prefix, layer = layer_of(target)
            if layer > my_layer and not any(me == a and (target == b or target.startswith(b + "."))
                                            for a, b in ALLOWED_UPWARD):
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({my_prefix}, layer {my_layer}) imports {target} "
                             f"({prefix}, layer {layer})")
    assert not wrong, "imports from a lower layer to a higher one:\n" + "\n".join(wrong)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_imports_another_modules_private_names():
    """Neither ``from m import _x`` nor ``m._x`` on a dlcbench module imported under a name."""
    modules = {module_name(p) for p in sources()}
    wrong = []
    for path in sources():
        me = module_name(path)
        aliases: dict[str, str] = {}
        for target, names, line in imports(path):
            private = [n for n in names if _private(n)]
            if private and target != me:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {', '.join(private)} from {target}")
            aliases.update({n: f"{target}.{n}" for n in names if f"{target}.{n}" in modules})
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
            elif isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.asname and f"{node.module}.{a.name}" in modules:
                        aliases[a.asname] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and _private(node.attr) and aliases[node.value.id] != me):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_at_module_level():
    graph = {module_name(p): {t for t, _, _ in imports(p, top_level_only=True)} for p in sources()}
    modules = set(graph)
    graph = {m: {t for t in targets if t in modules and t != m} for m, targets in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_nothing_edits_sys_path():
    offenders = [str(p.relative_to(ROOT)) for folder in ("dlcbench", "scripts", "benchmarks")
                 for p in (ROOT / folder).rglob("*.py")
                 if "sys.path.insert" in p.read_text() or "sys.path.append" in p.read_text()]
    # A stage's run.py (its text is in build.py) and its runner put the stage's own dlcbench and packages first on
    # the path, by design: the target machine has no dlcbench installed.
    assert sorted(offenders) == ["dlcbench/stage/build.py", "dlcbench/stage/runner.py"], offenders


def test_only_dlcbench_is_a_top_level_package(tmp_path):
    """``pip install`` of the project places nothing but ``dlcbench`` at the top level of site-packages."""
    import shutil

    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "out",
                                                                 "results", "reports", "benchmarks", "tests"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import zipfile

    (wheel,) = tmp_path.glob("dlcbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"dlcbench"}, top
    top_level = next(n for n in names if n.endswith("top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["dlcbench"]


@pytest.mark.parametrize("code, ok", [
    ("import dlcbench.compilers.base", True),
    ("import compilers", False),
    ("import models", False),
    ("import runner", False),
])
def test_imports_outside_the_repository(tmp_path, code, ok):
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (proc.returncode == 0) == ok, proc.stderr[-1000:]


def test_the_old_plugin_path_still_works_with_a_warning(tmp_path):
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "import dlcbench\n"
            "try:\n    from compilers.base import Adapter\nexcept DeprecationWarning as w:\n    print('warned:', w)\n"
            "warnings.simplefilter('ignore')\n"
            "from compilers.base import Adapter\nfrom dlcbench.compilers.base import Adapter as New\n"
            "print('same:', Adapter is New)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert "warned: 'compilers' is deprecated" in proc.stdout and "same: True" in proc.stdout
