"""Peak extra private memory of save and load, trtpack against torch.export, in one run; and
of loading a legacy torch.export ``.pt2`` with ``trtpack.load`` (migrated on load).

    .venv/bin/python tools/bench_memory.py [--mb 200]

Each measurement runs in a fresh subprocess: build the model (and export or load it), note
the resident memory, then run the operation while a thread samples /proc/self/statm every
millisecond. Printed: the peak private (anonymous) resident memory above that starting point
(and the peak of all resident memory, file-backed pages included), and the ratios.
File-backed pages (a memory-mapped pack) are not private: the kernel shares
them between processes that map the same file and can drop them under pressure.
"""

from __future__ import annotations

import argparse
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


def measure(op: str, mb: int, d: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, op, str(mb), d], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    args = ap.parse_args()
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
