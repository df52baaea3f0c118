"""Every function in the package reads at once: at most 60 lines and 8 parameters (`self`
and `cls` not counted), checked on the source."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "condnet"
MAX_LINES, MAX_PARAMETERS = 60, 8


def functions(source: str):
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def parameters(node: ast.FunctionDef) -> int:
    a = node.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    count = len(names) + (a.vararg is not None) + (a.kwarg is not None)
    return count - (bool(names) and names[0].arg in ("self", "cls"))


def oversized(source: str, where: str) -> list[str]:
    found = []
    for node in functions(source):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_LINES or parameters(node) > MAX_PARAMETERS:
            found.append(
                f"{where}:{node.lineno} {node.name}: {lines} lines, {parameters(node)} parameters"
            )
    return found


def test_no_function_is_longer_than_60_lines_or_takes_more_than_8_parameters():
    found = [
        line
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in oversized(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    ]
    assert not found, "\n".join(found)


def test_the_check_sees_long_functions_and_long_parameter_lists():
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    assert oversized(f"def long():\n{body}\n", "m") == ["m:1 long: 61 lines, 0 parameters"]
    assert oversized(f"def fits():\n{body[:-12]}\n", "m") == []
    nine = ", ".join(f"a{i}" for i in range(9))
    assert oversized(f"def wide({nine}):\n    pass\n", "m") == ["m:1 wide: 2 lines, 9 parameters"]
    assert (
        oversized("class C:\n    def f(self, a, b, *c, d, e, f, **g):\n        pass\n", "m") == []
    )
