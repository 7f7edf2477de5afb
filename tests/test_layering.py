"""eva_det's packages form layers, and no import runs upward (read with ``ast``, nothing imported).

A module may import modules of its own package and of packages in lower layers; not of a
package in its own layer or a higher one. Imports inside functions count as well.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Lowest first. An entry is a package or module of eva_det; a module belongs to the longest
#: entry that names it or a package above it.
LAYERS = [
    ["eva_det.errors"],
    ["eva_det.utils"],
    # the model-zoo table is plain data (names, hub locations), read by checkpoint.hub
    ["eva_det.layers", "eva_det.data", "eva_det.model_zoo.table"],
    ["eva_det.config"],
    ["eva_det.checkpoint", "eva_det.roi_heads"],
    ["eva_det.modeling"],
    ["eva_det.evaluation"],
    ["eva_det.engine"],
    ["eva_det.demo", "eva_det.submission", "eva_det.model_zoo", "eva_det.export"],
    # references and synthetic data for tests and benches: may use everything, used by nothing
    ["eva_det.utils.testing"],
]
_RANK = {entry: rank for rank, entries in enumerate(LAYERS) for entry in entries}
_TOP = {"eva_det", "eva_det.__init__"}  # the package's own __init__ (version only)


def _entry(module: str):
    """The LAYERS entry of ``module`` (dotted name), or None for ``eva_det`` itself."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        name = ".".join(parts[:n])
        if name in _RANK:
            return name
    return None


def _modules():
    """(dotted name, path) of every module of the package."""
    root = os.path.join(REPO, "eva_det")
    for folder, _, files in os.walk(root):
        for file in sorted(files):
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                yield ".".join(parts), path


def _imports(module: str, path: str):
    """(line, imported module) of every eva_det import in the file, relative ones resolved."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from eva_det.x import y" may name the module eva_det.x.y
            names = [f"{target}.{a.name}" for a in node.names] if target in _PACKAGES else []
            names = names or [target]
        else:
            continue
        for name in names:
            if name == "eva_det" or name.startswith("eva_det."):
                yield node.lineno, name


_PACKAGES = {m for m, p in _modules() if p.endswith("__init__.py")}


def upward_imports():
    """``path:line: importer (layer) -> imported (layer)`` for every import not going down."""
    problems = []
    for module, path in _modules():
        source = _entry(module)
        if source is None:
            assert module in _TOP, f"{module} belongs to no entry of LAYERS: add its package"
            continue
        for line, imported in _imports(module, path):
            target = _entry(imported)
            if target is None or target == source or imported.startswith(source + "."):
                continue
            if _RANK[target] >= _RANK[source]:
                problems.append(
                    f"{os.path.relpath(path, REPO)}:{line}: {module} (layer {_RANK[source]}) "
                    f"imports {imported} (layer {_RANK[target]})"
                )
    return problems


def test_every_package_has_a_layer():
    packages = {m for m in _PACKAGES if m.count(".") == 1}
    assert packages <= set(_RANK), sorted(packages - set(_RANK))


def test_no_import_runs_upward():
    assert upward_imports() == []


@pytest.mark.parametrize(
    "module, imported, upward",
    [
        ("eva_det.evaluation.x", "eva_det.engine.build", True),
        ("eva_det.engine.x", "eva_det.evaluation.inference", False),
        ("eva_det.layers.x", "eva_det.data.metadata", True),  # same layer
        ("eva_det.checkpoint.hub", "eva_det.model_zoo.table", False),
        ("eva_det.checkpoint.hub", "eva_det.model_zoo.model_zoo", True),
    ],
)
def test_the_rule(module, imported, upward):
    source, target = _entry(module), _entry(imported)
    assert (_RANK[target] >= _RANK[source] and source != target) is upward
