"""The public namespace: what is exported, sorted, and shown under its public path."""

from __future__ import annotations

import runflow_async
import runflow_async.emulator


def test_all_is_sorted_and_complete() -> None:
    names = runflow_async.__all__
    constants = [n for n in names if n.isupper()]
    rest = [n for n in names if not n.isupper() and n != "__version__"]
    assert constants == sorted(constants)
    assert rest == sorted(rest)
    for name in names:
        assert hasattr(runflow_async, name), name
    public = {n for n in dir(runflow_async) if not n.startswith("_")}
    assert public - set(names) <= {"emulator", "testing"}


def test_exported_classes_show_the_public_module() -> None:
    for name in runflow_async.__all__:
        obj = getattr(runflow_async, name)
        if isinstance(obj, type):
            assert obj.__module__ == "runflow_async", name


def test_emulator_all_is_sorted() -> None:
    names = runflow_async.emulator.__all__
    assert list(names) == sorted(names)
    for name in names:
        assert hasattr(runflow_async.emulator, name)


def test_the_emulator_never_imports_the_client() -> None:
    import ast
    from pathlib import Path

    allowed = {
        "runflow_async._pricing",
        "runflow_async._imagesize",
        "runflow_async._webhooks",
        "runflow_async._keywords",
    }
    package = Path(runflow_async.emulator.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("runflow_async") and not name.startswith(
                    "runflow_async.emulator"
                ):
                    assert name in allowed, f"{path.name} imports {name}"
