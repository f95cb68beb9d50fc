"""Peak extra private memory of save and load, trtpack against torch.export, in one run; and
of loading a legacy torch.export ``.pt2`` with ``trtpack.load`` (migrated on load). With
``--build``: the peak resident memory of ``trtpack.build`` (TensorRT-RTX, on the CPU).

    .venv/bin/python tools/bench_memory.py [--mb 200]
    .venv/bin/python tools/bench_memory.py --build 256 512 [--target 8.9] [--json]

``--build``: for each size, a pack of an MLP (two square Linear layers, float32) is saved by
one process, and built by a fresh one: it imports torch, trtpack, tensorrt_rtx, onnx and
onnxscript first (the fixed cost, not counted), then runs ``trtpack.build``, reading its
peak resident memory (VmHWM, file-backed pages included) at each step the build names on its
``progress=`` callback and resetting it (/proc/self/clear_refs) for the next. Printed: each
step's peak over the memory before the build, the build's peak over it and over the weights,
the whole process's peak over the weights (imports included), and, from two sizes or more,
the slope: how much the peak grows per byte of weights.

Each measurement runs in a fresh subprocess: build the model (and export or load it), note
the resident memory, then run the operation while a thread samples /proc/self/statm every
millisecond. Printed: the peak private (anonymous) resident memory above that starting point
(and the peak of all resident memory, file-backed pages included), and the ratios.
File-backed pages (a memory-mapped pack) are not private: the kernel shares
them between processes that map the same file and can drop them under pressure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, sys, threading, time
import torch, trtpack
op, mb, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
page = os.sysconf("SC_PAGE_SIZE")
def statm():
    with open("/proc/self/statm") as f:
        return [int(x) for x in f.read().split()]
def rss():  # private (anonymous) resident memory: resident minus file-backed pages
    fields = statm()
    return (fields[1] - fields[2]) * page
def resident():  # all resident memory, file-backed pages included
    return statm()[1] * page
width = int((mb * 2**20 / 4 / 2) ** 0.5)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Linear(width, width))
if op.startswith("save"):
    ep = torch.export.export(model, (torch.randn(2, width),))
    del model
    fn = (lambda: torch.export.save(ep, d + "/m.pt2")) if op == "save_torch" else (
        lambda: trtpack.save(ep, d + "/m.trtpack", overwrite=True))
else:
    del model
    import warnings
    warnings.simplefilter("ignore")  # load_legacy: the "migrated in memory" notice
    fn = {"load_torch": lambda: torch.export.load(d + "/m.pt2"),
          "load_legacy": lambda: trtpack.load(d + "/m.pt2", device="cpu"),
          "load_trtpack": lambda: trtpack.load(d + "/m.trtpack", device="cpu"),
          "load_trtpack_mmap": lambda: trtpack.load(d + "/m.trtpack", device="cpu", mmap=True),
          }[op]
    fn()  # warm imports; the result is dropped
import gc; gc.collect()
base, base_all = rss(), resident(); peak, peak_all = base, base_all; done = False
def sample():
    global peak, peak_all
    while not done:
        peak, peak_all = max(peak, rss()), max(peak_all, resident()); time.sleep(0.001)
t = threading.Thread(target=sample); t.start()
result = fn()
peak, peak_all = max(peak, rss()), max(peak_all, resident()); done = True; t.join()
print(json.dumps({"extra_peak": peak - base, "retained": rss() - base,
                  "resident_peak": peak_all - base_all}))
"""


BUILD_CHILD = r"""
import json, os, sys, time
mb, path, target = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import torch, trtpack
if not os.path.exists(path):  # this process saves the pack, a fresh one builds it
    width = int((mb * 2**20 / 4 / 2) ** 0.5)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                                torch.nn.Linear(width, width))
    trtpack.save(torch.export.export(model, (torch.randn(2, width),)), path, progress=False)
    sys.exit(0)
import gc, onnx, onnxscript, tensorrt_rtx, torch.onnx  # the fixed cost of a build's imports
import trtpack.engines.build, trtpack.writing.build
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)
def reset_peak():  # VmHWM := VmRSS (Linux 4.0+)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
gc.collect()
reset_peak()
base = status("VmRSS")
steps, current, started = [], ["start"], time.monotonic()
def close_step(name):
    steps.append({"step": current[0], "peak": status("VmHWM") - base,
                  "after": status("VmRSS") - base,
                  "s": round(time.monotonic() - started, 2)})
    reset_peak()
    current[0] = name
def on_event(e):
    name = "write the pack" if e.total else e.step  # the bytes are known once writing
    if name and name != current[0]:
        close_step(name)
trtpack.build(path, target, progress=on_event, out=path + ".built", overwrite=True)
close_step("")
weights = sum(m.size for n, m in trtpack.inspect(path).manifest.members.items()
              if n.endswith(".safetensors"))
print(json.dumps({"mb": mb, "weights": weights, "base": base, "steps": steps}))
"""


def measure_build(mb: int, d: str, target: str) -> dict:
    path = f"{d}/mlp{mb}.trtpack"
    cmd = [sys.executable, "-c", BUILD_CHILD, str(mb), path, target]
    subprocess.run(cmd, check=True)  # save
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)  # build
    return json.loads(out.stdout.strip().splitlines()[-1])


def main_build(sizes: list[int], target: str, as_json: bool) -> int:
    mib = 2**20
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for mb in sizes:
            r = measure_build(mb, d, target)
            r["peak"] = max(s["peak"] for s in r["steps"])
            rows.append(r)
    slopes = [(b["peak"] - a["peak"]) / (b["weights"] - a["weights"])
              for a, b in itertools.pairwise(rows)]  # fmt: skip
    if as_json:
        print(json.dumps({"rows": rows, "slopes": slopes}, indent=2))
        return 0
    print(f"trtpack.build for compute capability {target}: peak resident memory (VmHWM)")
    for r in rows:
        w = r["weights"]
        print(f"MLP {r['mb']} MiB ({w / mib:.1f} MiB of weights), "
              f"imports {r['base'] / mib:.0f} MiB")  # fmt: skip
        for s in r["steps"]:
            print(f"  {s['step']:48s} peak {s['peak'] / mib:8.1f} MiB ({s['peak'] / w:4.2f}x)  "
                  f"after {s['after'] / mib:7.1f} MiB  at {s['s']:6.1f} s")  # fmt: skip
        print(
            f"  build's peak over the imports: {r['peak'] / mib:.0f} MiB = "
            f"{r['peak'] / w:.2f}x the weights; the process's peak: "
            f"{(r['base'] + r['peak']) / mib:.0f} MiB = {(r['base'] + r['peak']) / w:.2f}x"
        )
    for (a, b), slope in zip(itertools.pairwise(rows), slopes):
        print(f"slope {a['mb']} -> {b['mb']} MiB: the peak grows {slope:.2f}x the added weights")
    return 0


def measure(op: str, mb: int, d: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, op, str(mb), d], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--build", type=int, nargs="+", metavar="MB",
                    help="measure trtpack.build of MLPs of these sizes instead")  # fmt: skip
    ap.add_argument("--target", default="8.9", help="with --build: the compute capability")
    ap.add_argument("--json", action="store_true", help="with --build: print JSON")
    args = ap.parse_args()
    if args.build:
        return main_build(args.build, args.target, args.json)
    with tempfile.TemporaryDirectory() as d:
        ops = (
            "save_torch",
            "save_trtpack",
            "load_torch",
            "load_trtpack",
            "load_trtpack_mmap",
            "load_legacy",
        )
        rows = {op: measure(op, args.mb, d) for op in ops}
    mib = 2**20
    print(f"model: {args.mb} MiB of float32 weights; peak private memory above the start")
    for op, r in rows.items():
        print(
            f"  {op:17s} extra peak {r['extra_peak'] / mib:8.1f} MiB   "
            f"still held after {r['retained'] / mib:8.1f} MiB   "
            f"(all resident, file pages too: peak {r['resident_peak'] / mib:8.1f} MiB)"
        )
    st, sp = rows["save_torch"]["extra_peak"], rows["save_trtpack"]["extra_peak"]
    lt, lp = rows["load_torch"]["extra_peak"], rows["load_trtpack"]["extra_peak"]
    print(f"ratios: save trtpack/torch {sp / max(st, 1):.2f}x, ", end="")
    print(f"load trtpack/torch {lp / max(lt, 1):.2f}x")
    print(
        "(trtpack.load reads the weights into memory of their own, so that the process "
        "survives anything done to the file later; load(mmap=True) maps them from the pack "
        "instead: file-backed pages, shared by every process that maps the same pack)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
