"""The real-model corpus, as a table: trtpack save/load vs torch.export.save/load (the anchor).

    .venv/bin/python tools/corpus_report.py        # ExportDB + transformers
    .venv-trt/bin/python tools/corpus_report.py    # + torchvision + timm (where installed)

For each case: export with its dynamic dims, then through each tool: save, load, call at
the example size and at other sizes in range, compare with eager (rtol 1e-4, atol 1e-5); for
trtpack also a call past a range (must be refused) and `inspect --json` against
ep.range_constraints. ExportDB cases run at their example inputs, bit-exactly. Prints one
line per case and the pass rate of each tool; a failure of trtpack alone is marked "<<".
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _exportdb(tmp: Path) -> list:
    import torch
    from corpus import cases
    from corpus.run import Result

    import trtpack

    out = []
    for case in cases():
        r = Result(case.name)
        model, args, kwargs, dyn = case.build()
        try:
            ep = torch.export.export(model, args, kwargs, dynamic_shapes=dyn, strict=False)
        except Exception as e:
            r.exported, r.trtpack, r.torch_export = False, "-", "-"
            r.notes.append(f"torch.export fails: {type(e).__name__}")
            out.append(r)
            continue

        def fresh(args=args, kwargs=kwargs):
            return torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, (args, kwargs))

        a, k = fresh()
        want = ep.module()(*a, **k)
        for tool in ("trtpack", "torch_export"):
            try:
                a, k = fresh()
                if tool == "trtpack":
                    trtpack.save(ep, tmp / "m.trtpack", overwrite=True)
                    got = trtpack.load(tmp / "m.trtpack")(*a, **k)
                else:
                    torch.export.save(ep, tmp / "m.pt2")
                    got = torch.export.load(tmp / "m.pt2").module()(*a, **k)
                torch.testing.assert_close(got, want, rtol=0, atol=0)
            except Exception as e:
                setattr(r, tool, f"{type(e).__name__}: {str(e).splitlines()[0][:100]}")
        out.append(r)
    return out


def main() -> int:
    from corpus.models import TRANSFORMERS, VISION
    from corpus.run import run_case

    warnings.simplefilter("ignore")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results += _exportdb(Path(tmp))
        groups = []
        if importlib.util.find_spec("transformers"):
            groups.append(TRANSFORMERS)
        if importlib.util.find_spec("torchvision") and importlib.util.find_spec("timm"):
            groups.append(VISION)
        for group in groups:
            for name, build in sorted(group.items()):
                with tempfile.TemporaryDirectory() as case_tmp:
                    results.append(run_case(name, build, Path(case_tmp)))
    import torch

    print(f"corpus on torch {torch.__version__}, {sys.platform}")
    print(f"{'case':44} {'trtpack':10} {'torch.export':12} note")
    for r in results:
        t = "pass" if r.trtpack == "pass" else ("-" if r.trtpack == "-" else "FAIL")
        a = "pass" if r.torch_export == "pass" else ("-" if r.torch_export == "-" else "FAIL")
        mark = " <<" if t == "FAIL" and a == "pass" else ""
        why = r.notes[-1] if r.notes else (r.trtpack if t == "FAIL" else
                                           (r.torch_export if a == "FAIL" else ""))  # fmt: skip
        print(f"{r.name:44} {t:10} {a:12} {why[:90]}{mark}")
    ran = [r for r in results if r.exported]
    for family in sorted({r.name.split("/")[0] for r in ran}):
        rs = [r for r in ran if r.name.startswith(family + "/")]
        t = sum(r.trtpack == "pass" for r in rs)
        a = sum(r.torch_export == "pass" for r in rs)
        print(
            f"{family:14} exported {len(rs):3}   trtpack {t}/{len(rs)}   torch.export {a}/{len(rs)}"
        )
    only = [r.name for r in ran if r.trtpack != "pass" and r.torch_export == "pass"]
    print(f"trtpack-only failures: {len(only)} {only}")
    return 1 if only else 0


if __name__ == "__main__":
    raise SystemExit(main())
