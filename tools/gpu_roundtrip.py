"""The round trip on a GPU machine, across torch versions, plus GPU load timings.

    python tools/gpu_roundtrip.py prepare DIR   # here (CI's torch): write packs of every test model
    python tools/gpu_roundtrip.py run DIR       # there (another torch, CUDA): load and compare

``run`` loads each pack written by ``prepare`` onto CUDA and compares its outputs with the same
model rebuilt eagerly on that machine (the models are seeded, and their weights are compared
first); then does a same-machine export -> save -> load round trip on CUDA; then times load
to first inference against torch.export.load, each in a fresh process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def prepare(out: Path) -> None:
    import torch
    from models import CASES

    import trtpack

    out.mkdir(parents=True, exist_ok=True)
    for name, case in CASES.items():
        _, ep = case.export()
        trtpack.save(ep, out / f"{name}.trtpack")
    # the keywords model with real TensorRT-RTX engines (built here, on the CPU)
    import rtx

    engines = out / "engines" / "keywords_engines.trtpack"
    engines.parent.mkdir(exist_ok=True)
    engines.write_bytes((out / "keywords.trtpack").read_bytes())
    trtpack.add_engine(engines, rtx.keywords_plan(("8.0",)))
    trtpack.add_engine(engines, rtx.keywords_plan(None))
    print(f"wrote {len(CASES)} packs (+1 with engines) with torch {torch.__version__} to {out}")


def _to(obj, device):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


FIRST_INFERENCE = r"""
import sys, time, torch
t0 = time.perf_counter()
torch.cuda.init(); torch.zeros(1, device="cuda"); torch.cuda.synchronize()
x = torch.randn(8, 4096, device="cuda"); (x @ x.T).sum().item()  # CUDA context and cuBLAS
kind, path = sys.argv[1], sys.argv[2]
t1 = time.perf_counter()
if kind == "trtpack":
    import trtpack
    m = trtpack.load(path, device="cuda")
else:
    from torch.export.passes import move_to_device_pass
    m = move_to_device_pass(torch.export.load(path), "cuda").module()
torch.cuda.synchronize()
t2 = time.perf_counter()
y = m(x)
torch.cuda.synchronize()
t3 = time.perf_counter()
y = m(x)
torch.cuda.synchronize()
t4 = time.perf_counter()
print(t2 - t1, t3 - t2, t4 - t3, t1 - t0)
"""


def run(src: Path) -> int:
    import torch
    from models import CASES, Pair, assert_same

    import trtpack

    print(
        f"torch {torch.__version__}, python {sys.version.split()[0]}, "
        f"{torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}"
    )
    failures = 0
    for name, case in CASES.items():
        path = src / f"{name}.trtpack"
        producer = trtpack.inspect(path).manifest.producer.torch
        try:
            pack = trtpack.load(path)  # default device: CUDA here
        except trtpack.TrtpackError as e:
            print(f"[cross-version] {name}: written by torch {producer}: {type(e).__name__}: {e}")
            failures += 1
            continue
        model, _ = case.export()
        sd = pack.exported_program.state_dict
        same_weights = all(
            torch.equal(sd[k].cpu(), v) for k, v in model.state_dict().items() if k in sd
        )
        model = model.to("cuda")
        try:
            for args, kwargs in [(case.args, case.kwargs), *case.calls]:
                a, k = _to(args, "cuda"), _to(kwargs, "cuda")
                with torch.no_grad():
                    want = model(*a, **k)
                    got = pack(*a, **k)
                assert_same(got, want)
            print(
                f"[cross-version] {name}: written by torch {producer}, loaded on "
                f"{pack.device}: outputs equal eager (weights identical: {same_weights})"
            )
        except Exception as e:  # report, keep going
            print(f"[cross-version] {name}: MISMATCH {type(e).__name__}: {e}")
            failures += 1

    # same machine: export on CUDA, save, load, compare
    out = Path("/tmp/gpu_roundtrip")
    out.mkdir(exist_ok=True)
    for name in ("keywords", "with_buffers", "derived", "many_outputs"):
        case = CASES[name]
        torch.manual_seed(0)
        model = case.make().eval().to("cuda")
        args, kwargs = _to(case.args, "cuda"), _to(case.kwargs, "cuda")
        ep = torch.export.export(model, args, kwargs, dynamic_shapes=case.dynamic_shapes)
        trtpack.save(ep, out / f"{name}.trtpack")
        pack = trtpack.load(out / f"{name}.trtpack", device="cuda")
        for a, k in [(args, kwargs), *((_to(x, "cuda"), _to(y, "cuda")) for x, y in case.calls)]:
            with torch.no_grad():
                assert_same(pack(*a, **k), model(*a, **k))
        try:
            pack(*_to(args, "cpu"), **_to(kwargs, "cpu"))
            print(f"[same-machine] {name}: a CPU input was NOT refused")
            failures += 1
        except trtpack.InputMismatchError as e:
            print(f"[same-machine] {name}: CUDA round trip equals eager; CPU input refused: {e}")

    # engines that cannot run here: a clean fallback with the reason, or a clear error
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pack = trtpack.load(src / "engines" / "keywords_engines.trtpack")
    case = CASES["keywords"]
    model, _ = case.export()
    args, kwargs = _to(case.args, "cuda"), _to(case.kwargs, "cuda")
    with torch.no_grad():
        assert_same(pack(*args, **kwargs), model.to("cuda")(*args, **kwargs))
    print(f"[engines] backend={pack.backend} fallback_reason={pack.fallback_reason!r}")
    print(f"[engines] warning: {[str(w.message) for w in caught]}")
    try:
        trtpack.load(src / "engines" / "keywords_engines.trtpack", require_engine=True)
        print("[engines] require_engine did NOT raise")
        failures += 1
    except trtpack.NoUsableEngineError as e:
        print(f"[engines] require_engine=True: NoUsableEngineError: {e}")

    # files saved without trtpack (written by torch 2.13 / torch_tensorrt 2.14): migrated on load
    fixtures = ROOT / "tests" / "fixtures" / "v0"
    torch.utils._pytree._register_namedtuple(Pair, serialized_type_name="models.Pair")
    for name in ("keywords", "derived", "with_buffers", "many_outputs", "keywords_pre27"):
        case = CASES[name.removesuffix("_pre27")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pack = trtpack.load(fixtures / "torch_export" / f"{name}.pt2")
        model, _ = case.export()
        model = model.to("cuda")
        args, kwargs = _to(case.args, "cuda"), _to(case.kwargs, "cuda")
        with torch.no_grad():
            assert_same(pack(*args, **kwargs), model(*args, **kwargs))
        print(f"[legacy] {name}: migrated in memory, equals eager on {pack.device}")
    for name in ("net_whole", "net_partitioned"):
        try:
            trtpack.load(fixtures / "torch_tensorrt" / f"{name}.ep")
            print(f"[legacy] {name}: loaded?!")
            failures += 1
        except trtpack.TrtpackError as e:
            print(f"[legacy] {name}: {type(e).__name__}: {e}")

    # load to first inference, fresh process each, 100 MiB model
    torch.manual_seed(0)
    big = torch.nn.Sequential(
        torch.nn.Linear(4096, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 2048)
    )
    ep = torch.export.export(big, (torch.randn(8, 4096),))
    trtpack.save(ep, out / "big.trtpack")
    torch.export.save(ep, out / "big.pt2")
    times: dict[str, list[list[float]]] = {"trtpack": [], "torch": []}
    for _ in range(3):
        for kind, path in (("trtpack", out / "big.trtpack"), ("torch", out / "big.pt2")):
            r = subprocess.run([sys.executable, "-c", FIRST_INFERENCE, kind, str(path)],
                               capture_output=True, text=True, check=True)  # fmt: skip
            times[kind].append([float(v) for v in r.stdout.strip().splitlines()[-1].split()])
    best = {k: min(v, key=lambda row: row[0] + row[1]) for k, v in times.items()}
    print("[load-to-first-inference] seconds, best of 3 fresh processes (CUDA context made first)")
    for kind, (load, first, second, setup) in best.items():
        print(f"  {kind:8s} load {load:.3f}  first call {first:.3f}  second call {second:.4f}"
              f"  (CUDA setup before: {setup:.2f})")  # fmt: skip
    ratio = (best["trtpack"][0] + best["trtpack"][1]) / (best["torch"][0] + best["torch"][1])
    print(f"  ratio trtpack/torch.export (load + first call): {ratio:.2f}")
    print(json.dumps(times))

    # per-call overhead on CUDA tensors
    case = CASES["keywords"]
    pack = trtpack.load(out / "keywords.trtpack", device="cuda")
    module = pack.exported_program.module()
    a, k = _to(case.args, "cuda"), _to(case.kwargs, "cuda")
    for label, fn in (
        ("pack(...)", lambda: pack(*a, **k)),
        ("ep.module()(...)", lambda: module(*a, **k)),
        ("check only", lambda: pack.check_inputs(*a, **k)),
    ):
        for _ in range(200):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(2000):
            fn()
        torch.cuda.synchronize()
        print(f"[per-call cuda] {label}: {(time.perf_counter() - t) / 2000 * 1e6:.1f} us")
    print("FAILURES", failures)
    return 1 if failures else 0


if __name__ == "__main__":
    cmd, where = sys.argv[1], Path(sys.argv[2])
    if cmd == "prepare":
        prepare(where)
    else:
        sys.exit(run(where))
