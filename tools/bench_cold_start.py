"""Cold start: load-to-first-inference of a pack's program in a fresh process (issue 13).

    python tools/bench_cold_start.py [--gib 0.25] [--device cpu|cuda] [--repeat 3]
        [--model mlp|bert] [--cache warm|cold|both]

Writes one model three ways (a trtpack pack, torch.export.save, a safetensors file of the
same tensors), then times, each in a fresh Python process and best of ``--repeat``:

- ``trtpack.load(path, verify=True)`` and ``verify=False``, then the first call; the same
  with ``mmap=True`` (CPU weights view the file's map instead of memory of their own; on a
  GPU both copy to the device from the map);
- on a GPU, the plain variants copy from the file's map (``TRTPACK_GPU_STAGING=0``) and the
  ``staged`` ones take the default GPU load (pinned buffers, each piece hashed and copied on
  from the same buffer, ``trtpack.program.staging``);
- torch's own: ``torch.export.load(path)``, moved to the device with
  ``torch.export.passes.move_to_device_pass`` (which rewrites the device arguments baked into
  the graph: ``.module().to(device)`` fails on real transformers with "Tensor device
  mismatch"), ``.module()``, then the first call; where even that fails, the row says why;
- the floor: ``safetensors.torch.load_file(path, device=device)``, then, for the MLP, the
  same forward written as plain ``F.linear``/``relu`` calls on those tensors; for a
  transformers model (``--model bert``: 24 layers, hidden 1024; ``--model llama``: a
  LlamaForCausalLM of TinyLlama's shapes, 16 layers, 3.4 GiB; random weights from their
  configs, no download), the model built on the meta device, ``load_state_dict(assign=True)``
  and called (transformers is imported before the clock, for every loader: the outputs are
  its pytree-registered ModelOutput classes).

``--cache``: ``warm`` (the files in the page cache), ``cold`` (each file's pages dropped
before every run with ``posix_fadvise(DONTNEED)`` after an fsync, so the bytes come from
storage; a raw read of the safetensors file is timed both ways to show the drop took), or
``both``.

The clock starts after ``import torch, trtpack, safetensors.torch`` and after CUDA is
initialised (and the input is on the device); it stops when the first output is computed
(synchronised). Imports a loader makes on its own (torch.export.load's deserializer and the
torch._dynamo it imports) are inside the clock: they are part of its cost. The files are in
the page cache, and every module's bytecode in a cache of the run's own: an untimed first
process imports everything (PYTHONDONTWRITEBYTECODE would otherwise have trtpack's modules,
unlike torch's, compiled in every run). Needs torch and safetensors (and transformers for
``--model bert``).
"""

from __future__ import annotations

import argparse
import contextlib
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
    "trtpack_verify": "trtpack.load verify=True (GPU: mapped)",
    "trtpack_noverify": "trtpack.load verify=False (GPU: mapped)",
    "trtpack_mmap_verify": "trtpack.load mmap=True verify=True",
    "trtpack_mmap_noverify": "trtpack.load mmap=True verify=False",
    "trtpack_staged_verify": "trtpack.load verify=True, staged",
    "trtpack_staged_noverify": "trtpack.load verify=False, staged",
    "torch_export": "torch.export.load + move_to_device",
    "floor": "floor: safetensors load_file + forward",
}


def _inputs(files: dict, dev: object, batch: int) -> tuple[tuple, dict]:
    import torch

    torch.manual_seed(0)
    if files["model"] == "mlp":
        return (torch.randn(batch, files["width"], device=dev),), {}
    ids = torch.randint(0, 1000, (batch, files["seq"]), device=dev)
    if files["model"] == "llama":  # a causal LM: no padding mask (see _mask_without_vmap)
        return (), {"input_ids": ids}
    return (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _first_leaf(y: object) -> object:
    import torch.utils._pytree as pytree

    return pytree.tree_leaves(y)[0]


def _floor(files: dict, device: str, args: tuple, kwargs: dict) -> object:
    """The least a user who knows the model's code does: weights straight onto the device
    from safetensors, the model's own forward."""
    import safetensors.torch
    import torch

    w = safetensors.torch.load_file(files["safetensors"], device=device)
    with torch.inference_mode():
        if files["model"] == "mlp":
            y = args[0]
            for i in range(files["layers"]):
                y = torch.nn.functional.linear(y, w[f"{2 * i}.weight"], w[f"{2 * i}.bias"])
                if i < files["layers"] - 1:
                    y = torch.relu(y)
            return y
        model = _transformers_model(files)  # on the meta device: no init, no allocation
        persistent = set(model.state_dict())
        model.load_state_dict({k: v for k, v in w.items() if k in persistent}, assign=True)
        for name, t in w.items():  # non-persistent buffers (position ids) are saved too
            if name not in persistent:
                owner, _, leaf = name.rpartition(".")
                model.get_submodule(owner)._buffers[leaf] = t
        return model(*args, **kwargs)


def _transformers_model(files: dict, meta: bool = True) -> object:
    import torch
    import transformers

    config = getattr(transformers, files["config_class"]).from_dict(files["config"])
    with torch.device("meta" if meta else "cpu"):
        model = getattr(transformers, files["model_class"])(config)
    return model.eval()


def _torch_export(files: dict, dev: object, args: tuple, kwargs: dict) -> tuple[object, str]:
    import torch

    ep = torch.export.load(files["pt2"])
    if getattr(dev, "type", "cpu") != "cpu":
        from torch.export.passes import move_to_device_pass

        ep = move_to_device_pass(ep, dev)
    with torch.inference_mode():
        return ep.module()(*args, **kwargs), "move_to_device_pass"


def _child(variant: str, files: dict, device: str, batch: int) -> None:
    """One measurement, in this (fresh) process; prints one JSON line."""
    import safetensors.torch  # noqa: F401
    import torch

    import trtpack

    if files["model"] != "mlp":
        # every loader needs it: the outputs are transformers' ModelOutput classes, which
        # transformers registers with torch's pytree (and the floor needs the model's code)
        import transformers.modeling_outputs

        if variant == "floor":  # transformers imports a model's module lazily: not on the clock
            import transformers

            getattr(transformers, files["model_class"])
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.init()
        torch.zeros(1, device=dev)
        torch.cuda.synchronize()
    args, kwargs = _inputs(files, dev, batch)
    extra: dict = {}
    start = time.perf_counter()
    try:
        if variant.startswith("trtpack"):
            # on a GPU: the staged load (the default) or the mapped one (TRTPACK_GPU_STAGING=0)
            os.environ["TRTPACK_GPU_STAGING"] = "1" if "_staged" in variant else "0"
            pack = trtpack.load(files["pack"], device=dev, verify=variant.endswith("_verify"),
                                mmap="_mmap" in variant)  # fmt: skip
            y = pack(*args, **kwargs)
            extra["fast_path_reason"] = pack.fast_path_reason
        elif variant == "torch_export":
            y, extra["how"] = _torch_export(files, dev, args, kwargs)
        else:
            y = _floor(files, device, args, kwargs)
        y = _first_leaf(y)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    except Exception as e:  # the row says why this loader failed; the others still run
        print(json.dumps({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}))
        return
    seconds = time.perf_counter() - start
    extra["dynamo_imported"] = "torch._dynamo" in sys.modules
    print(json.dumps({"seconds": seconds, "sum": float(y.double().sum()), **extra}))


def _drop_cache(paths: list[str]) -> None:
    """Evict these files' pages from the page cache (clean pages only: fsync first). As
    root, the whole page cache is dropped (a VM of its own, like the lent GPU machine, where
    posix_fadvise alone was seen to leave the pages in); else each file is advised out."""
    if os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK):
        os.sync()
        try:
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
            return
        except OSError:
            pass
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read_seconds(path: str) -> float:
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(64 << 20):
            pass
    return time.perf_counter() - t


def _write(folder: Path, gib: float, width: int, batch: int, model_name: str) -> dict:
    import safetensors.torch
    import torch

    import trtpack

    if model_name != "mlp":
        return _write_transformers(folder, model_name, batch)
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
    files = {"model": "mlp", "width": width, "layers": layers}
    files["pack"] = str(trtpack.save(ep, folder / "mlp.trtpack").path)
    torch.export.save(ep, folder / "mlp.pt2")
    files["pt2"] = str(folder / "mlp.pt2")
    safetensors.torch.save_file(model.state_dict(), folder / "mlp.safetensors")
    files["safetensors"] = str(folder / "mlp.safetensors")
    files["bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    return files


def _write_transformers(folder: Path, model_name: str, batch: int) -> dict:
    import safetensors.torch
    import torch
    import transformers
    from torch.export import Dim

    import trtpack

    if model_name == "bert":
        config = transformers.BertConfig(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
        )
        classes = ("BertConfig", "BertModel")
    else:  # a Llama of a few GiB: TinyLlama's shapes, the prompt's logits (no KV cache)
        config = transformers.LlamaConfig(hidden_size=2048, intermediate_size=5632,
                                          num_hidden_layers=16, num_attention_heads=32,
                                          num_key_value_heads=4, vocab_size=32000,
                                          use_cache=False)  # fmt: skip
        classes = ("LlamaConfig", "LlamaForCausalLM")
    files: dict = {"model": model_name, "seq": 128, "config_class": classes[0],
                   "model_class": classes[1], "config": config.to_dict()}  # fmt: skip
    torch.manual_seed(0)
    model = _transformers_model(files, meta=False)
    ids = torch.randint(0, 1000, (2, files["seq"]))  # batch 1 would specialize the Dim
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if model_name == "llama":
        # transformers builds the causal mask with torch.vmap, which torch.export.save cannot
        # serialize; its ExecuTorch integration's mask without vmap is what exporters use
        _mask_without_vmap(model)
        del kwargs["attention_mask"]
    dims = {0: Dim("batch", min=1, max=64), 1: Dim("seq", min=2, max=512)}
    if model_name == "llama":  # torch 2.11 + transformers 5 could not prove a guard on seq
        dims = {0: dims[0]}
    with torch.no_grad():
        ep = torch.export.export(model, (), kwargs, dynamic_shapes={k: dims for k in kwargs})
    files["pack"] = str(trtpack.save(ep, folder / "model.trtpack").path)
    torch.export.save(ep, folder / "model.pt2")
    files["pt2"] = str(folder / "model.pt2")
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()},
                                folder / "model.safetensors")  # fmt: skip
    files["safetensors"] = str(folder / "model.safetensors")
    files["bytes"] = sum(t.numel() * t.element_size() for t in tensors.values())
    files["nodes"] = len(ep.graph.nodes)
    return files


def _mask_without_vmap(model: object) -> None:
    try:
        from transformers.integrations import executorch
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        executorch.sdpa_mask_without_vmap  # noqa: B018
    except (ImportError, AttributeError) as e:  # another transformers: its own mask is tried
        print(f"(no sdpa_mask_without_vmap in this transformers: {e})")
        return

    ALL_MASK_ATTENTION_FUNCTIONS.register("sdpa_without_vmap", executorch.sdpa_mask_without_vmap)
    ALL_ATTENTION_FUNCTIONS.register("sdpa_without_vmap", ALL_ATTENTION_FUNCTIONS["sdpa"])
    model.config._attn_implementation = "sdpa_without_vmap"  # type: ignore[attr-defined]


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
    ap.add_argument("--model", choices=("mlp", "bert", "llama"), default="mlp")
    ap.add_argument("--cache", choices=("warm", "cold", "both"), default="both")
    ap.add_argument("--dir", default=None, help="where to write the files (default: temp)")
    ap.add_argument("--variants", default=None,
                    help=f"comma-separated subset of: {', '.join(VARIANTS)} (default: all that "
                    "apply; the staged ones on a GPU only)")  # fmt: skip
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the files (their folder is printed), e.g. for tools/profile_load.py",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, json.loads(args.files), args.device, args.batch)
        return 0

    variants = {v: label for v, label in VARIANTS.items()
                 if "_staged" not in v or not args.device.startswith("cpu")}  # fmt: skip
    if args.variants:
        chosen = args.variants.split(",")
        unknown = [v for v in chosen if v not in VARIANTS]
        if unknown:
            ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
        variants = {v: VARIANTS[v] for v in chosen}
    width = args.width or (8192 if args.gib >= 1 else 4096)
    caches = ("warm", "cold") if args.cache == "both" else (args.cache,)
    kept = tempfile.mkdtemp(dir=args.dir) if args.keep else None
    with contextlib.nullcontext(kept) if kept else tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t = time.perf_counter()
        files = _write(Path(tmp), args.gib, width, args.batch, args.model)
        gib = files["bytes"] / 2**30
        if args.model == "mlp":
            what = f"a {gib:.2f} GiB MLP ({files['layers']} x Linear({width}, {width}), float32)"
        else:
            c = files["config"]
            what = (f"{files['model_class']} ({c['num_hidden_layers']} layers, hidden "
                    f"{c['hidden_size']}, {gib:.2f} GiB float32, {files['nodes']} nodes, seq "
                    f"{files['seq']})")  # fmt: skip
        print(f"cold start: {what}, batch {args.batch}, on {args.device}; files written in "
              f"{time.perf_counter() - t:.0f} s")  # fmt: skip
        print(f"machine: {_machine(args.device)}")
        if kept:
            print(f"files kept in {tmp}: the pack is {files['pack']}")
        print("clock: from after `import torch, trtpack, safetensors.torch`"
              + (" and CUDA initialisation" if args.device.startswith("cuda") else "")
              + f" to the first output computed; a fresh process per run, best of "
              f"{args.repeat} (bytecode compiled)")  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        warm = "import torch, safetensors.torch, trtpack.runtime, torch._export.serde.serialize"
        if args.model != "mlp":
            warm += ", transformers"
        subprocess.run([sys.executable, "-c", warm], env=env, check=True, cwd=ROOT)
        own = {v: "pack" for v in VARIANTS if v.startswith("trtpack")}
        own.update(torch_export="pt2", floor="safetensors")
        results: dict[str, dict[str, float]] = {}
        for cache in caches:
            if cache == "cold":
                _read_seconds(files["safetensors"])
                hot = _read_seconds(files["safetensors"])
                _drop_cache([files["safetensors"]])
                cold = _read_seconds(files["safetensors"])
                # on a VM whose disk the host caches, storage reads nearly as fast as the
                # page cache: the probe then shows a small ratio though the drop took
                rate = os.path.getsize(files["safetensors"]) / cold / 1e9
                print(
                    f"page cache: {cache}; a raw read of the safetensors file: {cold:.3f} s "
                    f"after the drop ({rate:.1f} GB/s), {hot:.3f} s from the cache "
                    f"({cold / hot:.2f}x)"
                )
            else:
                print(f"page cache: {cache} (the files were read just before)")
            best = results.setdefault(cache, {})
            for variant, label in variants.items():
                runs, notes, error = [], "", ""
                for _ in range(args.repeat):
                    if cache == "cold":
                        _drop_cache([files[own[variant]]])
                    else:
                        _read_seconds(files[own[variant]])
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", variant, "--files",
                         json.dumps(files), "--device", args.device, "--batch", str(args.batch)],
                        capture_output=True, text=True, check=False, env=env,
                    )  # fmt: skip
                    if out.returncode != 0:
                        print(f"  {label}: failed\n{out.stderr[-2000:]}")
                        return 1
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    if "error" in result:
                        error = result["error"]
                        break
                    runs.append(result["seconds"])
                    if variant.startswith("trtpack"):
                        reason = result["fast_path_reason"]
                        notes = "fast path" if reason is None else f"torch's deserializer: {reason}"
                        notes += ", torch._dynamo imported" if result["dynamo_imported"] else ""
                    elif variant == "torch_export" and result["dynamo_imported"]:
                        notes = "imports torch._dynamo"
                if error:
                    print(f"  {label:38} failed: {error}")
                    continue
                best[variant] = min(runs)
                shown = " ".join(f"{r:.3f}" for r in runs)
                print(f"  {label:38} {best[variant]:7.3f} s   (runs {shown}) {notes}")
    for cache, best in results.items():
        floor, anchor = best.get("floor"), best.get("torch_export")
        for variant in [v for v in variants if v.startswith("trtpack")]:
            if variant not in best:
                continue
            t = best[variant]
            vs_torch = (f"/ torch.export {t / anchor:5.2f} ({anchor / t:4.1f}x faster)"
                        if anchor else "/ torch.export: it failed" if "torch_export" in variants
                        else "")  # fmt: skip
            vs_floor = f"/ floor {t / floor:5.2f}" if floor else ""
            print(f"{cache} cache: {VARIANTS[variant]:36} {vs_torch}   {vs_floor}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
