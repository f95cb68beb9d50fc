"""Generate the files in tests/fixtures/: real artifacts of every kind trtpack reads.

    .venv/bin/python tools/make_fixtures.py core      # torch 2.13: torch.export files (both
                                                      # layouts), TorchScript, a bare engine,
                                                      # packs of the current format
    .venv/bin/python tools/make_fixtures.py packs     # only the current format's packs
    .venv-trt/bin/python tools/make_fixtures.py trt   # torch 2.14.1 + torch-tensorrt-rtx:
                                                      # torch_tensorrt .ep files

Models come from tests/models.py (seeded), so the tests rebuild them eagerly and compare.
tests/fixtures/README.md says what each file is and which versions wrote it.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import trtpack  # noqa: E402


def core() -> None:
    import rtx
    from models import CASES, Pair
    from torch._export.serde.schema import SCHEMA_VERSION
    from torch._export.serde.serialize import serialize

    # torch.export.save needs namedtuples registered, as any user of it does
    torch.utils._pytree._register_namedtuple(Pair, serialized_type_name="models.Pair")
    v0 = FIXTURES / "v0"
    (v0 / "torch_export").mkdir(parents=True, exist_ok=True)
    for name in ("keywords", "derived", "with_buffers", "many_outputs"):
        _, ep = CASES[name].export()
        torch.export.save(ep, v0 / "torch_export" / f"{name}.pt2")

    # The layout torch.export.save wrote before torch 2.7 (torch/export/__init__.py of 2.6):
    # the program JSON beside torch.save pickles, at the zip's root. Written here with this
    # torch's serializer, member names and contents as that code wrote them.
    _, ep = CASES["keywords"].export()
    artifact = serialize(ep)
    with zipfile.ZipFile(v0 / "torch_export" / "keywords_pre27.pt2", "w") as z:
        z.writestr("serialized_exported_program.json", artifact.exported_program)
        z.writestr("serialized_state_dict.pt", artifact.state_dict)
        z.writestr("serialized_constants.pt", artifact.constants)
        z.writestr("serialized_example_inputs.pt", artifact.example_inputs)
        z.writestr("version", ".".join(map(str, SCHEMA_VERSION)))

    (v0 / "torchscript").mkdir(exist_ok=True)
    torch.jit.save(
        torch.jit.script(CASES["one_tensor"].make()), v0 / "torchscript" / "one_tensor.ts"
    )

    (v0 / "engine").mkdir(exist_ok=True)
    (v0 / "engine" / "keywords.plan").write_bytes(rtx.keywords_plan(("8.6",)))
    description = {
        "inputs": [
            {
                "name": "x",
                "dtype": "float32",
                "shape": [{"name": "batch", "min": 1, "opt": 4, "max": 64}, 6],
            },
            {"name": "mask", "dtype": "float32", "shape": ["batch", 6]},
            {"name": "bias", "dtype": "float32", "shape": [6]},
        ],
        "outputs": [{"name": "output0", "dtype": "float32", "shape": ["batch", 6]}],
    }
    (v0 / "engine" / "keywords.inputs.json").write_text(json.dumps(description, indent=1) + "\n")

    packs()
    print(f"core fixtures written with torch {torch.__version__}")


def packs() -> None:
    """Packs of the current format, in v<major.minor>/ (a released version's folder is
    never rewritten: its packs are what every later trtpack must read)."""
    import rtx
    from models import CASES

    version = ".".join(map(str, trtpack.FORMAT_VERSION))
    folder = FIXTURES / f"v{version}"
    if folder.exists() and any(folder.iterdir()):
        print(f"{folder} exists: not rewritten")
        multi_entry(folder)
        return
    folder.mkdir()
    _, ep = CASES["keywords"].export()
    trtpack.save(ep, folder / "keywords.trtpack", metadata={"fixture": f"format {version}"})
    engines = folder / "keywords_engines.trtpack"
    engines.write_bytes((folder / "keywords.trtpack").read_bytes())
    trtpack.add_engine(engines, rtx.keywords_plan(("8.0",)))
    _, ep = CASES["guarded"].export()
    trtpack.save(ep, folder / "guarded.trtpack", metadata={"fixture": f"format {version}"})
    _, ep = CASES["keywords"].export()  # reference samples (format 1.2)
    trtpack.save(ep, folder / "keywords_samples.trtpack", samples=3,
                 metadata={"fixture": f"format {version}"})  # fmt: skip
    from models import CUSTOM_OP

    _, ep = CUSTOM_OP.export()  # a custom operator, recorded in program.custom_ops (format 1.4)
    trtpack.save(ep, folder / "custom_op.trtpack", metadata={"fixture": f"format {version}"})
    multi_entry(folder)  # entry points and state (format 1.4)
    print(f"format {version} fixtures written in {folder}")


def multi_entry(folder: Path) -> None:
    """Format 1.4: a transformers Llama with a static cache as prefill + decode (tests/llm.py),
    written once (a released fixture is never rewritten)."""
    path = folder / "llama_prefill_decode.trtpack"
    if trtpack.FORMAT_VERSION < (1, 4) or path.exists():
        return
    import llm

    trtpack.save(llm.export_entry_points(llm.llama()()), path,
                 metadata={"fixture": "format 1.4, two entry points"})  # fmt: skip


def trt() -> None:
    """torch_tensorrt's own save path; only the GPU-side engine deserialization (and the
    device queries) are bypassed, as in tests/tt_cpu.py: every byte written comes from
    torch_tensorrt.save."""
    import tt_cpu

    tt = tt_cpu.import_torch_tensorrt()
    from models import Net
    from torch_tensorrt.dynamo.runtime._TRTEngine import EngineSerializer

    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=32)
    ep = torch.export.export(Net().eval(), (torch.randn(4, 8),), {"bias": torch.randn(4, 4)},
                             dynamic_shapes={"x": {0: batch}, "bias": {0: batch}})  # fmt: skip
    out = FIXTURES / "v0" / "torch_tensorrt"
    out.mkdir(parents=True, exist_ok=True)
    common = {"device": tt.Device("cuda:0"), "offload_module_to_cpu": True, "min_block_size": 1}
    for name, extra in (
        ("net_whole", {}),
        ("net_partitioned", {"torch_executed_ops": {torch.ops.aten.relu.default}}),
    ):
        with tt_cpu.cpu_compile():
            module = tt.dynamo.compile(ep, arg_inputs=[], kwarg_inputs={}, **common, **extra)
        with tt_cpu.device_queries():
            for child in module.children():
                if type(child).__name__ == "TorchTensorRTModule":
                    child.engine = EngineSerializer(child._pack_engine_info())
            tt.save(
                module, str(out / f"{name}.ep"), output_format="exported_program", retrace=False
            )
    print(f"torch_tensorrt fixtures: torch {torch.__version__}, torch_tensorrt {tt.__version__}")


if __name__ == "__main__":
    {"core": core, "trt": trt, "packs": packs}[sys.argv[1]]()
