"""Fail if a package module passes 400 lines or a function passes 60 (house style)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def problems(root: Path) -> list[str]:
    """Every module and function of ``root`` over its limit, one line each."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            found.append(f"{path}: {lines} lines (limit {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(
                        f"{path}:{node.lineno}: {node.name} is {length} lines "
                        f"(limit {MAX_FUNCTION_LINES})"
                    )
    return found


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runflow_async")
    report = problems(root)
    for line in report:
        print(line)  # noqa: T201 - a command-line check
    sys.exit(1 if report else 0)
