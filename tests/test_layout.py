"""The package's layout holds: every import (module-level, inside functions, under
TYPE_CHECKING) goes to the same layer or one below it, and no modules import each other in a
circle. Read from the source with ``ast``: nothing is imported, so an import hidden in a
function counts like any other. CONTRIBUTING.md explains the layers."""

from __future__ import annotations

import ast
import functools
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "trtpack"

#: bottom to top; a module belongs to the layer of its longest listed prefix. A module may
#: import its own layer and the layers below, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("trtpack._version", "trtpack.errors")),
    ("format", ("trtpack.format",)),  # torch-free: records, zip, digests, guards, pytree
    ("program", ("trtpack.program",)),  # the torch.export side
    ("contract", ("trtpack.contract",)),  # the per-call check
    ("engines", ("trtpack.engines",)),
    ("reading", ("trtpack.reading",)),  # open, inspect, verify
    ("samples", ("trtpack.samples",)),
    ("writing", ("trtpack.writing",)),  # save, add-engine, build: one assembler
    ("migrations", ("trtpack.migrations",)),
    ("signing", ("trtpack.signing",)),
    ("cuda_graphs", ("trtpack.cuda_graphs",)),  # CUDA graph replay of a loaded program
    ("runtime", ("trtpack.runtime",)),  # load -> a callable pack
    # answers about a file without loading it: audit, preflight (torch-free)
    ("checks", ("trtpack.checks",)),
    ("integrations", ("trtpack.integrations",)),
    ("cli", ("trtpack.cli",)),
    ("api", ("trtpack", "trtpack.__main__", "trtpack.mlflow")),  # the public surface
    # model code a server (Triton, MLflow) runs in its own process, through the public API
    ("served", ("trtpack.integrations.triton_model", "trtpack.integrations.pyfunc_model")),
]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def layer_of(module: str) -> int:
    best, found = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), i
    assert found is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return found


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """Every trtpack module ``name`` imports, with the line: each ``import`` statement
    anywhere in the file, resolved to the module it loads."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here[: len(here) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            # ``from pkg import sub`` loads pkg.sub when sub is a module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rsplit(".", 1)[0]  # import a.b.c: the deepest module known
            if target in known and target != name:
                found.append((target, node.lineno))
    return found


@functools.cache  # parsed once for the tests that read the real package
def graph(root: Path = PACKAGE) -> dict[str, list[tuple[str, int]]]:
    mods = modules(root)
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def upward(edges: dict[str, list[tuple[str, int]]]) -> list[str]:
    return [f"{a} (layer {LAYERS[layer_of(a)][0]}) imports {b} (layer {LAYERS[layer_of(b)][0]}) "
            f"at line {line}"
            for a, targets in edges.items() for b, line in targets
            if layer_of(b) > layer_of(a)]  # fmt: skip


def circles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_nothing_imports_upward():
    assert upward(graph()) == []


def test_no_import_circles():
    assert circles(graph()) == []


def test_every_module_has_a_layer_and_the_check_sees_function_local_imports():
    edges = graph()
    for name in edges:
        layer_of(name)
    # the check reads imports inside functions: runtime imports samples only there
    assert "trtpack.samples" in {t for t, _ in edges["trtpack.runtime"]}


def test_the_check_catches_an_upward_import_and_a_circle(tmp_path):
    """The checks themselves, on a copy of the package with one import added inside a
    function of format/limits.py: upward (format -> runtime) and closing a circle."""
    import shutil

    copy = tmp_path / "trtpack"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    limits = copy / "format" / "limits.py"
    limits.write_text(limits.read_text() + "\n\ndef _late():\n    from ..runtime import load\n")
    edges = {name: imports(name, path, set(modules(copy)))
             for name, path in modules(copy).items()}  # fmt: skip
    found = upward(edges)
    assert any(f.startswith("trtpack.format.limits (layer format) imports trtpack.runtime")
               for f in found), found  # fmt: skip
    assert any("trtpack.format.limits" in c and "trtpack.runtime" in c for c in circles(edges))


def test_format_never_imports_torch():
    """format/ stays torch-free even inside functions (test_torch_free runs it without torch)."""
    bad = []
    for name, path in modules().items():
        if name.startswith("trtpack.format"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
                bad += [f"{name}: {n}" for n in names if n.split(".")[0] == "torch"]
    assert bad == []


def test_serde_dtypes_the_manifest_cannot_name_are_exactly_those_missing_from_the_schema():
    from trtpack.program.serde import NOT_IN_MANIFEST, SCALAR_TYPES

    schema = json.loads((ROOT / "schema" / "manifest.v1.schema.json").read_text())
    named = set(schema["$defs"]["dtype"]["enum"])
    assert set(SCALAR_TYPES.values()) - named == NOT_IN_MANIFEST
    assert named <= set(SCALAR_TYPES.values())


def test_every_dtype_table_names_manifest_dtypes():
    """The tables that translate dtypes to other systems (TensorRT, safetensors, Triton) name
    only dtypes the manifest schema has: the schema's enum is the one list of names."""
    from trtpack.engines.build import TRT_DTYPES as BUILD
    from trtpack.engines.plan import TRT_DTYPES as PLAN
    from trtpack.format.weights import DTYPES as SAFETENSORS
    from trtpack.integrations.triton import _TYPES as TRITON

    schema = json.loads((ROOT / "schema" / "manifest.v1.schema.json").read_text())
    named = set(schema["$defs"]["dtype"]["enum"])
    for table in (set(PLAN.values()), set(BUILD), set(SAFETENSORS), set(TRITON)):
        assert table <= named, table - named
    assert BUILD == {dtype: trt for trt, dtype in PLAN.items()}


def _mapped_file(address: int) -> str | None:
    """The file behind the mapping that holds ``address`` (None: anonymous memory)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return fields[5] if len(fields) > 5 else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
@pytest.mark.parametrize("mmap", [False, True])
def test_a_legacy_file_loads_through_a_staged_file_not_a_copy_in_memory(
    tmp_path, monkeypatch, mmap
):
    """A .pt2 migrated on load is staged in a temporary file and read like any pack (no
    converted pack assembled in anonymous memory): by default the weights are read once into
    memory of the process's own, with ``mmap=True`` they are the staged file's pages; the
    file is gone after loading either way."""
    import tempfile

    import torch

    import trtpack

    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    x = torch.randn(3, 64)
    ep = torch.export.export(model, (x,))
    torch.export.save(ep, tmp_path / "m.pt2")
    with pytest.warns(UserWarning, match="migrated in memory"):
        pack = trtpack.load(tmp_path / "m.pt2", device="cpu", mmap=mmap)
    assert [p for p in staging.iterdir() if p.name.startswith("trtpack")] == []  # removed
    weight = dict(pack.module.named_parameters())["0.weight"]
    backing = _mapped_file(weight.data_ptr())
    if mmap:
        assert backing is not None and "migrated.trtpack" in backing, backing
    else:
        assert backing is None or "migrated.trtpack" not in backing, backing
    torch.testing.assert_close(pack(x), model(x))
