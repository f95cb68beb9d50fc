"""The program-path round trip on whatever torch is installed, with a one-screen summary.

    python tools/torch_version_check.py [--device cpu|cuda] [--packs DIR] [--json OUT]
                                        [--try-this-minor]

For every test model (tests/models.py): export -> trtpack.save -> trtpack.load, then

- the direct GraphModule build's node-for-node check against torch's own deserializer
  (``ep.module()`` of the program torch.export.load would make), weights included;
- the pack's outputs against ``ep.module()``'s on the exported inputs and every further call
  the model lists, bit for bit;
- whether the direct build was taken, and why not (``fast_path_reason``).

With ``--packs DIR`` (packs written on another torch, e.g. by ``tools/gpu_roundtrip.py
prepare``), each ``<model>.trtpack`` there is loaded and run against the model rebuilt here
too: the cross-version case. It prints the facts issue 22.8 asks about (serde schema version,
PT2 archive version, whether torch.export takes a dynamic_spec ShapesSpec) and exits 1 if any
model failed. Needs torch and trtpack's own dependencies only (no pytest, no jsonschema).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def _canonical(gm: Any) -> list:
    """(op, target, args, kwargs) per node, values as node positions (names aside)."""
    import torch

    index: dict[Any, int] = {}
    out = []
    for i, n in enumerate(gm.graph.nodes):
        index[n] = i
        args, kwargs = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: f"%{index[a]}")
        target = n.target if n.op != "output" else "output"
        out.append((n.op, str(target), repr(args), repr(kwargs)))
    return out


def _same_module(fast: Any, ref: Any) -> str | None:
    import torch

    if _canonical(fast) != _canonical(ref):
        return "graphs differ node for node"
    a, b = fast.state_dict(keep_vars=True), ref.state_dict(keep_vars=True)
    if list(a) != list(b) or not all(torch.equal(a[k], b[k]) for k in b):
        return "weights differ"
    return None


def _equal(got: Any, want: Any) -> bool:
    import torch
    import torch.utils._pytree as pytree

    g, g_spec = pytree.tree_flatten(got)
    w, w_spec = pytree.tree_flatten(want)
    if g_spec != w_spec or len(g) != len(w):
        return False
    return all(
        torch.equal(x.cpu(), y.cpu()) if isinstance(y, torch.Tensor) else x == y
        for x, y in zip(g, w)
    )


def _to(obj: Any, device: str) -> Any:
    import torch
    import torch.utils._pytree as pytree

    return pytree.tree_map_only(torch.Tensor, lambda t: t.clone().to(device), obj)


def _run_pack(pack: Any, model: Any, case: Any, device: str) -> str | None:
    import torch

    model = model.to(device)
    for args, kwargs in [(case.args, case.kwargs), *case.calls]:
        with torch.inference_mode():
            got = pack(*_to(args, device), **_to(kwargs, device))
            want = model(*_to(args, device), **_to(kwargs, device))
        if not _equal(got, want):
            return "outputs differ from the model's"
    return None


def check_case(name: str, case: Any, device: str, work: Path) -> dict[str, Any]:
    import torch

    import trtpack
    from trtpack.program.serialize import load_program, runnable
    from trtpack.reading import open_pack

    row: dict[str, Any] = {"model": name}
    t0 = time.perf_counter()
    try:
        _, ep = case.export()
        path = work / f"{name}.trtpack"
        trtpack.save(ep, path)
        pack = trtpack.load(path, device=device)
        row["fast_path_reason"] = pack.fast_path_reason
        problem = None
        if pack.fast_path_reason is None:  # the direct build: node for node against torch's
            with open_pack(path) as (reader, info):
                ref = runnable(load_program(reader, info.manifest, device=torch.device(device)))
            problem = _same_module(pack.module, ref)
        # torch's documented way to put a program on a device: ``ep.module().to("cuda")``
        # keeps device arguments baked into the graph (a factory's device=, a CPU constant)
        # and fails with "Tensor device mismatch" on such programs
        if device == "cpu":
            module = ep.module()
        else:
            from torch.export.passes import move_to_device_pass

            module = move_to_device_pass(ep, device).module()
        for args, kwargs in [(case.args, case.kwargs), *case.calls]:
            with torch.inference_mode():
                got = pack(*_to(args, device), **_to(kwargs, device))
                want = module(*_to(args, device), **_to(kwargs, device))
            if problem is None and not _equal(got, want):
                problem = "outputs differ from ep.module()'s"
        row["result"] = problem or "ok"
    except Exception as e:  # every failure is reported, the next model still runs
        row["result"] = f"{type(e).__name__}: {str(e)[:300]}"
        row["traceback"] = traceback.format_exc(limit=4)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def check_packs(packs: Path, cases: dict[str, Any], device: str) -> list[dict[str, Any]]:
    import trtpack

    rows = []
    for path in sorted(packs.glob("*.trtpack")):
        row: dict[str, Any] = {"pack": path.name}
        case = cases.get(path.stem)
        try:
            pack = trtpack.load(path, device=device)
            row["written_by_torch"] = trtpack.inspect(path).manifest.producer.torch
            row["fast_path_reason"] = pack.fast_path_reason
            if case is None:
                row["result"] = "loaded (no model of that name here to compare with)"
            else:
                model, _ = case.export()
                row["result"] = _run_pack(pack, model, case, device) or "ok"
        except Exception as e:
            row["result"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(row)
    return rows


def facts() -> dict[str, Any]:
    """What this torch writes and offers, as issue 22.8 asks."""
    import torch
    from torch._export.serde.schema import SCHEMA_VERSION

    from trtpack.program.serde import SCHEMA_MAJOR, TESTED_SCHEMA_MINORS

    out: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "python": sys.version.split()[0],
        "serde_schema": f"{SCHEMA_VERSION[0]}.{SCHEMA_VERSION[1]}",
        "direct_build_tested_on_this_minor": SCHEMA_VERSION[0] == SCHEMA_MAJOR
        and SCHEMA_VERSION[1] in TESTED_SCHEMA_MINORS,
    }
    try:
        from torch.export.pt2_archive.constants import ARCHIVE_VERSION_VALUE

        out["pt2_archive_version"] = ARCHIVE_VERSION_VALUE
    except ImportError as e:
        out["pt2_archive_version"] = f"unknown ({e})"
    try:
        from torch.fx.experimental.dynamic_spec import ShapesSpec, ShapeVar, TensorSpec

        b = ShapeVar("B")
        spec = ShapesSpec({"x": TensorSpec([b, None])}, assumptions=[b % 16 == 0])

        class Blocks(torch.nn.Module):
            def forward(self, x):
                return x.reshape(-1, 16, x.shape[1]).sum(1)

        try:
            torch.export.export(Blocks(), (torch.randn(32, 4),), dynamic_shapes=spec)
            out["dynamic_spec"] = "export takes a ShapesSpec"
        except Exception as e:
            out["dynamic_spec"] = f"module present; export refuses it ({type(e).__name__})"
    except ImportError:
        out["dynamic_spec"] = "no torch.fx.experimental.dynamic_spec"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if any)")
    parser.add_argument("--packs", type=Path, help="packs written elsewhere, to load here")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    parser.add_argument(
        "--try-this-minor",
        action="store_true",
        help="let the direct build take this torch's serde minor for this run even if it is "
        "not in TESTED_SCHEMA_MINORS, so its node-for-node check runs (the evidence for "
        "adding the minor there)",
    )
    ns = parser.parse_args()
    import torch
    from models import CASES

    found = facts()  # before --try-this-minor widens the set
    if ns.try_this_minor:
        from torch._export.serde.schema import SCHEMA_VERSION

        from trtpack.program.serde import TESTED_SCHEMA_MINORS

        # the dict graph_module reads: this process only
        TESTED_SCHEMA_MINORS.setdefault(SCHEMA_VERSION[1], "tried by this run")

    device = ns.device or ("cuda" if torch.cuda.is_available() else "cpu")
    summary: dict[str, Any] = {"facts": found, "device": device, "tried": ns.try_this_minor}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary["models"] = [check_case(n, c, device, Path(tmp)) for n, c in CASES.items()]
    if ns.packs:
        summary["packs"] = check_packs(ns.packs, CASES, device)
    summary["seconds"] = round(time.perf_counter() - t0, 1)

    for key, value in summary["facts"].items():
        print(f"{key:36} {value}")
    print(f"{'device':36} {device}")
    rows = summary["models"] + summary.get("packs", [])
    for row in rows:
        label = row.get("model") or f"pack {row['pack']}"
        if "fast_path_reason" not in row:
            fast = "-"
        else:
            fast = "direct" if row["fast_path_reason"] is None else "torch's path"
        print(f"  {label:30} {row['result'][:90]:90} [{fast}]")
    failed = [r for r in rows if r["result"] != "ok" and not r["result"].startswith("loaded")]
    print(f"{len(rows) - len(failed)}/{len(rows)} ok in {summary['seconds']} s")
    if ns.json:
        ns.json.write_text(json.dumps(summary, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
