"""The package's layers: a module imports its own layer and those below it, never one above;
modules import each other without cycles; nothing inside the package imports the root."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "condnet"

# From the bottom up. The root package (the public names) sits on top of everything.
LAYERS = (
    (
        "condnet.errors",
        "condnet.version",
        "condnet.files",
        "condnet.memory",
        "condnet.paper",
        "condnet.timing",
        "condnet.checks",
        "condnet.choices",
    ),
    ("condnet.models",),
    ("condnet.config",),
    ("condnet.data",),
    ("condnet.engine",),
    ("condnet.deploy", "condnet.report"),
    ("condnet.reproduce",),
    ("condnet.commands", "condnet.cli"),
    ("condnet",),
)


def modules(package: Path) -> dict[str, Path]:
    """Every module of `package` (a folder named like the package) by dotted name."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:  # `from package import submodule` imports the submodule
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {name for name in found if name in known}


def layer(module: str) -> int:
    matches = [
        (len(prefix), i)
        for i, group in enumerate(LAYERS)
        for prefix in group
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def upward_imports(package: Path) -> list[str]:
    """'a imports b' for each import of a module from a layer above the importer's."""
    found = modules(package)
    return [
        f"{name} imports {target}"
        for name, path in found.items()
        for target in sorted(imports(path, set(found)))
        if layer(target) > layer(name)
    ]


def cycles(package: Path) -> list[list[str]]:
    """The import cycles between modules, each as the path that closes it."""
    found = modules(package)
    graph = {name: imports(path, set(found)) - {name} for name, path in found.items()}
    state, loops = {}, []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                loops.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return loops


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(PACKAGE) == []


def test_modules_import_each_other_without_cycles():
    assert cycles(PACKAGE) == []


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "condnet"


def test_the_checks_find_an_upward_import_a_root_import_and_a_cycle(tmp_path):
    package = write(
        tmp_path,
        {
            "condnet/__init__.py": "",
            "condnet/models/__init__.py": "",
            "condnet/models/net.py": "def build():\n    from condnet.engine import trainer\n",
            "condnet/engine/__init__.py": "",
            "condnet/engine/trainer.py": "import condnet\nfrom condnet.engine.loop import step\n",
            "condnet/engine/loop.py": "from condnet.engine import trainer\n",
        },
    )
    assert upward_imports(package) == [
        "condnet.engine.trainer imports condnet",
        "condnet.models.net imports condnet.engine.trainer",
    ]
    assert cycles(package) == [
        ["condnet.engine.loop", "condnet.engine.trainer", "condnet.engine.loop"]
    ]
