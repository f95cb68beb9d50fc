"""Cold start: load-to-first-inference of a pack's program in a fresh process (issue 13).

    python tools/bench_cold_start.py [--gib 0.25] [--device cpu|cuda] [--repeat 3]

Writes one MLP of ``--gib`` GiB of float32 weights three ways (a trtpack pack,
torch.export.save, a safetensors file of the same tensors), then times, each in a fresh
Python process and best of ``--repeat``:

- ``trtpack.load(path, verify=True)`` and ``verify=False``, then the first call; the same
  with ``mmap=True`` (CPU weights view the file's map instead of memory of their own; on a
  GPU both copy to the device from the map);
- ``torch.export.load(path).module().to(device)``, then the first call;
- the floor: ``safetensors.torch.load_file(path, device=device)``, then the same forward
  written as plain ``F.linear``/``relu`` calls on those tensors.

The clock starts after ``import torch, trtpack, safetensors.torch`` and after CUDA is
initialised (and the input is on the device); it stops when the first output is computed
(synchronised). Imports a loader makes on its own (torch.export.load's deserializer and the
torch._dynamo it imports) are inside the clock: they are part of its cost. The files are in
the page cache, and every module's bytecode in a cache of the run's own: an untimed first
process imports everything (PYTHONDONTWRITEBYTECODE would otherwise have trtpack's modules,
unlike torch's, compiled in every run). Needs torch and safetensors only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's trtpack, in this process and the children

VARIANTS = {
    "trtpack_verify": "trtpack.load verify=True",
    "trtpack_noverify": "trtpack.load verify=False",
    "trtpack_mmap_verify": "trtpack.load mmap=True verify=True",
    "trtpack_mmap_noverify": "trtpack.load mmap=True verify=False",
    "torch_export": "torch.export.load + module() + .to",
    "floor": "floor: safetensors load_file + F.linear",
}


def _child(variant: str, files: dict, device: str, batch: int) -> None:
    """One measurement, in this (fresh) process; prints one JSON line."""
    import safetensors.torch
    import torch

    import trtpack

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.init()
        torch.zeros(1, device=dev)
        torch.cuda.synchronize()
    x = torch.randn(batch, files["width"], device=dev)
    extra: dict = {}
    start = time.perf_counter()
    if variant.startswith("trtpack"):
        pack = trtpack.load(files["pack"], device=dev, verify=variant.endswith("_verify"),
                            mmap="_mmap" in variant)  # fmt: skip
        y = pack(x)
        extra["fast_path_reason"] = pack.fast_path_reason
    elif variant == "torch_export":
        module = torch.export.load(files["pt2"]).module().to(dev)
        with torch.inference_mode():
            y = module(x)
    else:
        w = safetensors.torch.load_file(files["safetensors"], device=device)
        with torch.inference_mode():
            y = x
            for i in range(files["layers"]):
                y = torch.nn.functional.linear(y, w[f"{2 * i}.weight"], w[f"{2 * i}.bias"])
                if i < files["layers"] - 1:
                    y = torch.relu(y)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    extra["dynamo_imported"] = "torch._dynamo" in sys.modules
    print(json.dumps({"seconds": seconds, "sum": float(y.double().sum()), **extra}))


def _write(folder: Path, gib: float, width: int, batch: int) -> dict:
    import safetensors.torch
    import torch

    import trtpack

    layers = max(1, round(gib * 2**30 / (4 * width * (width + 1))))
    torch.manual_seed(0)
    mods: list = []
    for i in range(layers):
        lin = torch.nn.Linear(width, width, device="meta")
        lin.weight = torch.nn.Parameter(torch.empty(width, width).uniform_(-1, 1) / width**0.5)
        lin.bias = torch.nn.Parameter(torch.empty(width).uniform_(-0.1, 0.1))
        mods += [lin, torch.nn.ReLU()] if i < layers - 1 else [lin]
    model = torch.nn.Sequential(*mods).eval()
    dim = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (torch.randn(batch, width),), dynamic_shapes=({0: dim},))
    files = {"width": width, "layers": layers}
    files["pack"] = str(trtpack.save(ep, folder / "mlp.trtpack").path)
    torch.export.save(ep, folder / "mlp.pt2")
    files["pt2"] = str(folder / "mlp.pt2")
    safetensors.torch.save_file(model.state_dict(), folder / "mlp.safetensors")
    files["safetensors"] = str(folder / "mlp.safetensors")
    files["bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    return files


def _machine(device: str) -> str:
    import torch

    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "no GPU used"
    return (f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), {gpu}; "
            f"torch {torch.__version__}, python {platform.python_version()}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=0.25, help="weights, GiB (default 0.25)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per variant")
    ap.add_argument("--width", type=int, default=None, help="layer width (default by size)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dir", default=None, help="where to write the files (default: temp)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, json.loads(args.files), args.device, args.batch)
        return 0

    width = args.width or (8192 if args.gib >= 1 else 4096)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t = time.perf_counter()
        files = _write(Path(tmp), args.gib, width, args.batch)
        gib = files["bytes"] / 2**30
        print(f"cold start: a {gib:.2f} GiB MLP ({files['layers']} x Linear({width}, {width}), "
              f"float32), batch {args.batch}, on {args.device}; files written in "
              f"{time.perf_counter() - t:.0f} s")  # fmt: skip
        print(f"machine: {_machine(args.device)}")
        print("clock: from after `import torch, trtpack, safetensors.torch`"
              + (" and CUDA initialisation" if args.device.startswith("cuda") else "")
              + f" to the first output computed; a fresh process per run, best of "
              f"{args.repeat} (files in the page cache, bytecode compiled)")  # fmt: skip
        best: dict[str, float] = {}
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        warm = "import torch, safetensors.torch, trtpack.runtime, torch._export.serde.serialize"
        subprocess.run([sys.executable, "-c", warm], env=env, check=True, cwd=ROOT)
        for variant, label in VARIANTS.items():
            runs, notes = [], ""
            for _ in range(args.repeat):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", variant, "--files", json.dumps(files),
                     "--device", args.device, "--batch", str(args.batch)],
                    capture_output=True, text=True, check=False, env=env,
                )  # fmt: skip
                if out.returncode != 0:
                    print(f"  {label}: failed\n{out.stderr[-2000:]}")
                    return 1
                result = json.loads(out.stdout.strip().splitlines()[-1])
                runs.append(result["seconds"])
                if variant.startswith("trtpack"):
                    reason = result["fast_path_reason"]
                    notes = "fast path" if reason is None else f"torch's deserializer: {reason}"
                    notes += ", torch._dynamo imported" if result["dynamo_imported"] else ""
                elif variant == "torch_export" and result["dynamo_imported"]:
                    notes = "imports torch._dynamo"
            best[variant] = min(runs)
            shown = " ".join(f"{r:.3f}" for r in runs)
            print(f"  {label:38} {best[variant]:7.3f} s   (runs {shown}) {notes}")
    floor, anchor = best["floor"], best["torch_export"]
    for variant in ("trtpack_verify", "trtpack_noverify", "trtpack_mmap_verify",
                    "trtpack_mmap_noverify"):  # fmt: skip
        t = best[variant]
        print(f"{VARIANTS[variant]:36} / torch.export {t / anchor:5.2f} ({anchor / t:4.1f}x "
              f"faster)   / floor {t / floor:5.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
