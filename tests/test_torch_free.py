"""The format, inspect, verify, migrate-from-.pt2, add-engine-from-a-plan and sign paths never
import torch: run in a process where importing torch fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"

CODE = r"""
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
import trtpack, trtpack.format.manifest, trtpack.format.container, trtpack.info, trtpack.format.limits
import trtpack.format.guards, trtpack.graph_check, trtpack.format.weights, trtpack.format.atomic
import trtpack.derive, trtpack.migrations.pt2, trtpack.format.upgrade
from trtpack.cli import main
out = sys.argv[1]
info = trtpack.migrate(sys.argv[2], out + "/m.trtpack")          # a torch.export file
trtpack.add_engine(out + "/m.trtpack", sys.argv[3], variant="sm86")  # a bare plan
trtpack.verify(out + "/m.trtpack")
assert main(["inspect", "--json", out + "/m.trtpack"]) == 0
assert main(["inspect", sys.argv[4]]) == 0                       # pre-2.7 layout
assert main(["verify", sys.argv[5]]) == 0                        # a 1.0 pack, upgraded
print("TORCH-FREE OK", "torch" in sys.modules and sys.modules["torch"] is None)
"""


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
