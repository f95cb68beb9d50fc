"""Save and load speed against torch.export and a raw write of the same bytes, in one run.

    .venv/bin/python tools/bench_save_load.py [--mb 100] [--repeat 5] [--device cpu|cuda]

Prints best-of-N wall times and the ratios. Every timing uses the same ~100 MB model and
the same disk directory; trtpack.save fsyncs (its atomic save needs it), torch.export.save
does not, so the raw write is shown both ways.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import trtpack
from trtpack.format.container import Chunks, digest
from trtpack.program.serialize import derive_interface, program_members


def best(fn, repeat: int) -> float:
    return best_with_cpu(fn, repeat)[0]


def best_with_cpu(fn, repeat: int) -> tuple[float, float]:
    """The best wall time, and the least CPU time (all threads, user + system) of a run."""
    walls, cpus = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def model_of(mb: int) -> tuple[torch.nn.Module, torch.Tensor]:
    width = int((mb * 2**20 / 4 / 2) ** 0.5)  # two square layers of float32
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width)
    ).eval()
    return model, torch.randn(4, width)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()

    model, x = model_of(args.mb)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    size = sum(t.numel() * t.element_size() for t in ep.state_dict.values())
    print(
        f"model: {size / 2**20:.1f} MiB of weights; torch {torch.__version__}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"python {platform.python_version()}"
    )

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        blobs, _ = program_members(ep)
        payload = b"".join(
            b"".join(bytes(memoryview(p).cast("B")) for p in v.parts)
            if isinstance(v, Chunks)
            else v
            for v in blobs.values()
        )

        def raw_write(sync: bool) -> None:
            with open(d / "raw.bin", "wb") as f:
                f.write(payload)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())

        t_raw = best(lambda: raw_write(False), args.repeat)
        t_raw_sync, cpu_raw_sync = best_with_cpu(lambda: raw_write(True), args.repeat)
        t_torch_save = best(lambda: torch.export.save(ep, d / "m.pt2"), args.repeat)
        t_save = best(lambda: trtpack.save(ep, d / "m.trtpack", overwrite=True), args.repeat)
        # where trtpack.save spends its time
        t_derive = best(lambda: derive_interface(ep), args.repeat)
        t_serialize = best(lambda: program_members(ep), args.repeat)
        t_hash, cpu_hash = best_with_cpu(lambda: [digest(b) for b in blobs.values()], args.repeat)

        torch.export.load(d / "m.pt2")  # warm both paths once: the first load pays imports
        trtpack.load(d / "m.trtpack", device=args.device)
        t_torch_load = best(lambda: torch.export.load(d / "m.pt2"), args.repeat)
        t_load = best(lambda: trtpack.load(d / "m.trtpack", device=args.device), args.repeat)
        t_load_nv = best(
            lambda: trtpack.load(d / "m.trtpack", device=args.device, verify=False), args.repeat
        )
        # the opt-in zero-copy CPU mode (weights view the file's map), in the same run
        t_load_mm = best(
            lambda: trtpack.load(d / "m.trtpack", device=args.device, mmap=True), args.repeat
        )
        t_load_nv_mm = best(
            lambda: trtpack.load(d / "m.trtpack", device=args.device, verify=False, mmap=True),
            args.repeat,
        )
        sizes = (d / "m.pt2").stat().st_size, (d / "m.trtpack").stat().st_size

        def raw_read() -> None:  # the same file, from the page cache, into memory
            buf = bytearray(sizes[1])
            with open(d / "m.trtpack", "rb", buffering=0) as f:
                f.readinto(buf)

        t_raw_read = best(raw_read, args.repeat)
        t_verify = best(lambda: trtpack.verify(d / "m.trtpack"), args.repeat)

    rows = [
        ("raw write of the same bytes (no fsync)", t_raw),
        ("raw write of the same bytes + fsync", t_raw_sync),
        ("torch.export.save (no fsync)", t_torch_save),
        ("trtpack.save (atomic: temp file + fsync + rename)", t_save),
        ("  of which: derive the manifest", t_derive),
        ("  of which: serialize the graph, lay out the weights", t_serialize),
        ("  (alone: SHA-256 + CRC-32 of the members; overlaps the write)", t_hash),
        ("torch.export.load (warm)", t_torch_load),
        (f"trtpack.load(device={args.device!r}) verify=True (hash checked)", t_load),
        (f"trtpack.load(device={args.device!r}) verify=False", t_load_nv),
        ("  the same with mmap=True (weights view the file), verify=True", t_load_mm),
        ("  the same with mmap=True, verify=False", t_load_nv_mm),
        ("raw read of the pack file (page cache)", t_raw_read),
        ("trtpack.verify (every member's digests)", t_verify),
    ]
    for name, t in rows:
        print(f"{name:58s} {t * 1000:9.1f} ms")
    print(f"file sizes: .pt2 {sizes[0] / 2**20:.1f} MiB, .trtpack {sizes[1] / 2**20:.1f} MiB")
    print("ratios:")
    print(f"  trtpack.save / torch.export.save        {t_save / t_torch_save:5.2f}x")
    print(f"  trtpack.save / raw write + fsync        {t_save / t_raw_sync:5.2f}x")
    print(f"  torch.export.save / raw write (no sync) {t_torch_save / t_raw:5.2f}x")
    print(f"  trtpack.load verify / torch.export.load {t_load / t_torch_load:5.2f}x")
    print(f"  trtpack.load no-verify / torch.export.load {t_load_nv / t_torch_load:5.2f}x")
    print(f"  trtpack.load verify: default / mmap=True  {t_load / t_load_mm:5.2f}x")
    print(f"  trtpack.load no-verify: default / mmap=True {t_load_nv / t_load_nv_mm:5.2f}x")
    print(f"  trtpack.verify speed / raw read speed   {t_raw_read / t_verify:5.2f}  (goal >= 0.80)")
    print("  (goal for save: <= 1.20x raw write + fsync)")
    # save must both write the bytes and hash them (SHA-256 of each member and of each piece,
    # CRC-32): on few cores the CPU that needs, spread over every core, can exceed the disk time
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    floor = max(t_raw_sync, (cpu_hash + cpu_raw_sync) / (cores or 1))
    print(
        f"  floor for save on {cores} cores: max(raw write + fsync, CPU of (hashing + raw write) "
        f"/ cores) = {floor * 1000:.0f} ms; trtpack.save / floor {t_save / floor:5.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
