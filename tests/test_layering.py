"""The layout is enforced, not hoped for: import contracts, no private reach, no cycles.

The contracts live in pyproject.toml (``[tool.importlinter]``); this runs them in ``make test``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = ("veil.sdk", "veil.enclave", "veil.privacy", "veil.watermark", "veil.v1")
FOLDERS = ("sdk", "enclave", "privacy", "watermark", "protos")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*DISTRIBUTIONS, cache_dir=None, exclude_type_checking_imports=False)


def _owner(module: str) -> str:
    return next(d for d in DISTRIBUTIONS if module == d or module.startswith(d + "."))


def test_import_contracts_hold() -> None:
    # In a process of its own: import-linter configures logging (dictConfig), which would
    # disable every logger this test process already has.
    probe = (
        "import sys; from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={str(REPO / 'pyproject.toml')!r}, "
        "no_cache=True, no_logo=True))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, f"an import contract is broken:\n{out.stdout}{out.stderr}"


def test_no_package_imports_another_packages_private_modules(graph: grimp.ImportGraph) -> None:
    reaches = sorted(
        f"{importer} -> {imported}"
        for imported in graph.modules
        if any(part.startswith("_") and part != "__main__" for part in imported.split("."))
        for importer in graph.find_modules_that_directly_import(imported)
        if importer in graph.modules and _owner(importer) != _owner(imported)
    )
    assert reaches == [], "use the public module instead:\n" + "\n".join(reaches)


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.find_modules_directly_imported_by(node):
            if nxt not in graph.modules:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph.modules)))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert cycles == []


def test_importing_the_sdk_loads_no_server_runtime() -> None:
    probe = (
        "import sys, veil.sdk, veil.sdk.cli, veil.sdk.attestation, veil.sdk.audit; "
        "heavy = {'torch', 'onnx', 'onnxruntime', 'opacus'} & set(sys.modules); "
        "ours = {m for m in sys.modules if m.startswith(('veil.enclave', 'veil.privacy', "
        "'veil.watermark'))}; "
        "print(sorted(heavy | ours))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_veil_is_a_namespace_in_every_distribution() -> None:
    for folder in FOLDERS:
        src = REPO / folder / "src"
        assert (src / "veil").is_dir(), folder
        assert not (src / "veil" / "__init__.py").exists(), f"{folder}: veil/__init__.py"
        assert (folder == "protos") or (src / "veil" / folder / "py.typed").is_file(), folder
        assert (REPO / folder / "pyproject.toml").is_file(), folder
    assert (REPO / "protos/src/veil/v1/py.typed").is_file()
    import veil

    assert not hasattr(veil, "__file__") or veil.__file__ is None
