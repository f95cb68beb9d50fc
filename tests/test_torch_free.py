"""The format, inspect, verify, migrate-from-.pt2, add-engine-from-a-plan and sign paths never
import torch: run in a process where importing torch fails."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"

CODE = r"""
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
sys.modules["jsonschema"] = None  # nor is jsonschema needed: the schema check is generated
import trtpack, trtpack.reading, trtpack.program.graph_check, trtpack.program.derive
import trtpack.writing.assemble
import trtpack.engines.variants, trtpack.writing.add, trtpack.migrations.pt2
from trtpack.cli import main
out = sys.argv[1]
info = trtpack.migrate(sys.argv[2], out + "/m.trtpack")          # a torch.export file
trtpack.add_engine(out + "/m.trtpack", sys.argv[3], variant="sm86")  # a bare plan
trtpack.verify(out + "/m.trtpack")
assert main(["inspect", "--json", out + "/m.trtpack"]) == 0
assert main(["inspect", sys.argv[4]]) == 0                       # pre-2.7 layout
assert main(["verify", sys.argv[5]]) == 0                        # a 1.0 pack, upgraded
assert main(["preflight", out + "/m.trtpack", "--target", "sm=8.6,rtx=1.6.1"]) == 0
assert main(["audit", "--fail-on", "never", sys.argv[2], sys.argv[3], out + "/m.trtpack"]) == 0
assert main(["contract", out + "/m.trtpack", "--format", "openapi", "-o", out + "/o.json"]) == 0
print("TORCH-FREE OK", "torch" in sys.modules and sys.modules["torch"] is None)
"""


FORMAT = Path(__file__).resolve().parent.parent / "trtpack" / "format"

FORMAT_CODE = r"""
import sys, json, zipfile
sys.modules["torch"] = None  # any import of torch now raises ImportError
sys.modules["jsonschema"] = None
from trtpack.format import atomic, container, guards, limits, manifest, pytree, upgrade, weights
path = sys.argv[1]
with container.PackReader(path) as reader:          # the zip, checked
    m = manifest.Manifest.from_json(reader.read(manifest.MANIFEST_NAME))
    tensors, _ = weights.parse_safetensors(reader.view(m.program.weights), m.program.weights)
    assert tensors, "the weights header parsed"
    assert pytree.leaf_paths(m.input_tree, "call") == [i.path for i in m.inputs]
    assert upgrade.chain((1, 0)), "a 1.0 manifest has a step to the current version"
print("FORMAT OK", sorted(n for n in sys.modules if n.startswith("trtpack.")))
"""


def test_format_package_imports_and_reads_a_pack_with_torch_unimportable():
    out = subprocess.run(
        [sys.executable, "-c", FORMAT_CODE, str(FIXTURES / "v1.1" / "keywords.trtpack")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = eval(out.stdout.split("FORMAT OK", 1)[1])
    # nothing above the format package was imported (trtpack/__init__ and errors are leaves)
    above = [n for n in loaded if not n.startswith("trtpack.format") and n not in
             ("trtpack._version", "trtpack.errors")]  # fmt: skip
    assert above == [], above


def test_format_package_never_imports_torch_or_anything_above_it():
    """Not even lazily, inside a function: every import statement under trtpack/format/ names
    the standard library, trtpack.errors or the format package itself (the manifest's schema
    is checked by generated code, trtpack/format/schema_check.py, not by jsonschema)."""
    allowed_roots = set(sys.stdlib_module_names)
    problems = []
    for path in sorted(FORMAT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    continue  # from .x: the format package
                if node.level == 2:
                    names = [f"trtpack.{node.module}"]
                else:
                    names = [node.module or ""]
            else:
                continue
            for name in names:
                if name in ("trtpack.errors", "trtpack._version"):
                    continue
                if name.split(".")[0] not in allowed_roots:
                    problems.append(f"{path.name}:{node.lineno} imports {name}")
    assert problems == []


def test_torch_free_paths_never_import_torch(tmp_path):
    args = [
        str(tmp_path),
        str(FIXTURES / "v0" / "torch_export" / "keywords.pt2"),
        str(FIXTURES / "v0" / "engine" / "keywords.plan"),
        str(FIXTURES / "v0" / "torch_export" / "keywords_pre27.pt2"),
        str(FIXTURES / "v1.0" / "keywords.trtpack"),
    ]
    out = subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TORCH-FREE OK True" in out.stdout


CLI_CODE = r"""
import sys
sys.modules["torch"] = None  # the torch-free install: any import of torch raises ImportError
from trtpack.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_torch_commands_say_what_to_install_without_a_traceback(tmp_path):
    """run, check and build in the torch-free install: one line naming trtpack[torch] (and
    the extras of push/pull and sign), exit 1, as every other error."""
    pack = str(FIXTURES / "v1.3" / "keywords_samples.trtpack")
    for command in (
        ["run", pack],
        ["check", pack],
        ["build", pack, "--target", "8.6", "-o", str(tmp_path / "b.trtpack")],
    ):
        out = subprocess.run([sys.executable, "-c", CLI_CODE, *command], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert out.returncode == 1, (command, out.stderr[-2000:])
        assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith(f"trtpack: error: trtpack {command[0]} needs torch")
        assert "pip install 'trtpack[torch]'" in out.stderr
        assert "push and pull need [oci], sign needs [sign]" in out.stderr
    assert not (tmp_path / "b.trtpack").exists()


def test_python_api_without_torch_names_the_extras():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import trtpack\n"
        "try:\n    trtpack.load\n"
        "except trtpack.MissingDependencyError as e:\n    print('MISSING', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("MISSING trtpack.load needs torch")
    assert "[oci]" in out.stdout and "[sign]" in out.stdout
