"""What a pack says about itself, read from its manifest alone. No torch.

``inspect`` opens the zip's central directory and reads ``manifest.json``: its cost does not
grow with the pack. ``verify`` also hashes every member. ``render`` draws the table that
``trtpack inspect`` prints.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import (
    IntegrityError,
    MissingMemberError,
    NotAPackError,
    UnsafePackError,
)
from .format.container import PackReader, PathLike
from .format.limits import MAX_MANIFEST_BYTES, parse_manifest_json, refuse
from .format.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Interface,
    IOSpec,
    Manifest,
    Symbol,
    parse_dim,
)
from .format.progress import Progress, ProgressArg, human_size


@dataclass(frozen=True)
class PackInfo:
    """The facts of a pack: its manifest, digest and size."""

    path: Path
    manifest: Manifest
    #: ``sha256:<hex>`` of manifest.json. The manifest records every member's SHA-256, so
    #: this names the whole content; it is also the OCI config digest when pushed.
    digest: str
    file_size: int
    #: the format version the file was written in, when older than this trtpack's
    upgraded_from: tuple[int, int] | None = None


@contextmanager
def open_pack(
    path: PathLike, *, program_guards: bool = True
) -> Iterator[tuple[PackReader, PackInfo]]:
    """Open and check a pack's structure and manifest (no member data is read, except, for
    a format-1.0 pack with ``program_guards``, its graph JSON: see ``with_program_guards``)."""
    with PackReader(path) as reader:
        yield reader, read_info(reader, program_guards=program_guards)


def read_info(reader: PackReader, *, program_guards: bool = True) -> PackInfo:
    if MANIFEST_NAME not in reader:
        names = ", ".join(sorted(reader.members)[:5]) or "none"
        raise NotAPackError(
            f"{reader.path} is a zip without {MANIFEST_NAME} (members: {names}), so not a "
            "trtpack pack; `trtpack migrate` converts torch.export and torch_tensorrt files"
        )
    size = reader.info(MANIFEST_NAME).size
    if size > MAX_MANIFEST_BYTES:
        raise refuse(f"size of {MANIFEST_NAME} in bytes", MAX_MANIFEST_BYTES, size,
                     str(reader.path))  # fmt: skip
    raw = reader.read(MANIFEST_NAME)
    data = parse_manifest_json(raw, str(reader.path))
    upgraded_from = None
    version = data.get("format_version") if isinstance(data, dict) else None
    if (
        isinstance(version, list)
        and len(version) == 2
        and all(type(v) is int and v >= 0 for v in version)
        and tuple(version) < FORMAT_VERSION
    ):
        from .format.upgrade import upgrade  # an older format: upgraded in memory

        upgraded_from = (int(version[0]), int(version[1]))
        data, renames, _ = upgrade(data)
        reader.aliases.update(renames)
    manifest = Manifest.from_dict(data)
    _check_members(reader, manifest)
    info = PackInfo(
        path=reader.path,
        manifest=manifest,
        digest="sha256:" + hashlib.sha256(raw).hexdigest(),
        file_size=reader.file_size,
        upgraded_from=upgraded_from,
    )
    return with_program_guards(reader, info) if program_guards else info


def with_program_guards(reader: PackReader, info: PackInfo, *, verify: bool = False) -> PackInfo:
    """A format-1.0 manifest recorded no guards: read them from its program's JSON, so an
    upgraded pack checks every call as a 1.1 pack does. (``load`` calls this only after a
    required signature has verified: it reads a member besides the manifest.) ``verify``:
    hash that member first (guards are a check on every call: never from unhashed bytes
    when the caller asked for hashing)."""
    manifest = info.manifest
    if info.upgraded_from is None or info.upgraded_from >= (1, 1) or manifest.program is None:
        return info
    from .format.limits import loads
    from .program.derive import SerializedProgram
    from .program.graph_check import check_graph

    graph = manifest.program.graph
    if verify:
        reader.verify(graph, manifest.members[graph])
    data = loads(reader.read(graph), f"{reader.path}: {graph}", IntegrityError)
    check_graph(data, graph)
    program = SerializedProgram(data, where=f"{reader.path}: {graph}")
    guards = program.guards(list(manifest.inputs))
    iface = dataclasses.replace(manifest.interface, guards=guards)
    return dataclasses.replace(info, manifest=manifest.replace(interface=iface))


def _check_members(reader: PackReader, manifest: Manifest) -> None:
    """The zip holds exactly the manifest's members, at the recorded sizes."""
    for name, member in manifest.members.items():
        if name not in reader:
            raise MissingMemberError(
                f"{reader.path}: the manifest lists {name!r}, the zip lacks it"
            )
        size = reader.info(name).size
        if size != member.size:
            raise IntegrityError(
                f"{reader.path}: member {name!r} is {size} bytes, the manifest says {member.size}"
            )
    in_file = {reader.aliases.get(n, n) for n in manifest.members}
    for name in reader.members:
        if name != MANIFEST_NAME and name not in in_file:
            raise UnsafePackError(f"{reader.path}: member {name!r} is not listed in the manifest")


def inspect(path: PathLike) -> PackInfo:
    """Read a pack's manifest and digest, without torch and without reading its members."""
    with open_pack(path) as (_, info):
        return info


def verify(path: PathLike, *, progress: ProgressArg = None) -> PackInfo:
    """Check every member's SHA-256 and size against the manifest, and every engine plan's
    header against its variant's target. Raises IntegrityError or EngineError.
    (``trtpack.verify(path, key=...)``, in trtpack/signing.py, checks a signature first, in
    the same open of the file.) ``progress``: the bytes hashed (``trtpack.format.progress``)."""
    with open_pack(path) as (reader, info):
        verify_members(reader, info, progress=progress)
        return info


def verify_members(reader: PackReader, info: PackInfo, *, progress: ProgressArg = None) -> None:
    """Every member's hash and every plan's header, of a pack already open; the bytes hashed
    counted on ``progress`` (as ``save``'s)."""
    from .engines.plan import check_variant_plans

    members = info.manifest.members
    with Progress("verify", progress) as bar:
        bar.total = sum(m.size for m in members.values())
        for name, member in members.items():
            reader.verify(name, member, progress=bar if bar.active else None)
        for variant in info.manifest.engines:
            check_variant_plans(reader.view, variant, f"{reader.path}: ")
        bar.close(f"{reader.path}  {len(members)} members, {human_size(bar.total)} hashed")


# --- the table ---------------------------------------------------------------------------


def format_shape(shape: tuple, symbols: dict[str, Symbol]) -> str:
    parts = []
    for d in shape:
        if isinstance(d, int):
            parts.append(str(d))
            continue
        try:
            expr = parse_dim(d)
        except Exception:
            parts.append(d)  # an output's free-form expression
            continue
        sym = symbols.get(expr.symbol)
        if sym is not None and str(expr) == expr.symbol:
            hi = "inf" if sym.max is None else sym.max
            parts.append(f"{d}({sym.min}..{hi}, opt {sym.opt})")
        else:
            parts.append(d)
    return "[" + ", ".join(parts) + "]"


def _describe(spec: IOSpec, symbols: dict[str, Symbol]) -> tuple[str, str, str]:
    if spec.is_tensor:
        fmt = format_shape(spec.shape or (), symbols)
        if spec.memory_format not in (None, "contiguous"):
            fmt += f"  {spec.memory_format}"
        return spec.path, spec.dtype or "?", fmt
    if spec.symbol is not None:
        return spec.path, spec.kind, format_shape((spec.symbol,), symbols)[1:-1]
    return spec.path, spec.kind, f"= {spec.value!r}"


def _table(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    if not rows:
        return [indent + "(none)"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]


def _engine_lines(m: Manifest) -> list[str]:
    lines = []
    for v in m.engines:
        t = v.target
        gpus = ", ".join(t.compute_capabilities) or "any"
        if t.future_gpus:
            gpus += " and newer"
        flags = [f"hardware-compatible: {t.hardware_compatibility}"]
        flags.append("version-compatible" if t.version_compatible else "not version-compatible")
        if t.embeds_lean_runtime is not None:
            flags.append("lean runtime embedded (host code: loads only signed or trusted)"
                         if t.embeds_lean_runtime else "lean runtime excluded")  # fmt: skip
        if t.platform:
            flags.append(t.platform)
        if t.cuda_runtime:
            flags.append(f"CUDA >= {t.cuda_runtime}")
        wiring = "one whole-graph engine" if v.whole_graph else (
            f"{len(v.engines)} engine(s) wired by a program"
            + (" with PyTorch fallback" if v.program is not None else "")
        )  # fmt: skip
        flavor = "TensorRT-RTX" if t.flavor == "tensorrt_rtx" else "TensorRT"
        lines.append(f"  {v.name}  {flavor} {t.trt_version}  GPUs {gpus}  {wiring}")
        lines.append(f"    {'; '.join(flags)}")
        if v.described:
            lines.append("    bindings described, not recorded (a bare plan): unchecked until "
                         "a GPU runtime loads it and confirms them")  # fmt: skip
        for sym, (lo, hi) in v.ranges.items():
            s = m.symbols[sym]
            lines.append(
                f"    profile covers {sym} in [{lo}, {'inf' if hi is None else hi}] only "
                f"(exported [{s.min}, {'inf' if s.max is None else s.max}])"
            )
        for e in v.engines:
            member = m.members[e.member]
            abi = f"  torch_tensorrt ABI {e.abi_version}" if e.abi_version else ""
            ins = ", ".join(f"{b.name}{format_shape(b.shape, {})}" for b in e.inputs)
            outs = ", ".join(f"{b.name}{format_shape(b.shape, {})}" for b in e.outputs)
            lines.append(
                f"    {e.name}  {human_size(member.size)}  sha256:{member.sha256[:16]}…{abi}"
            )
            lines.append(f"      ({ins}) -> ({outs})")
    return lines


def render_interface(iface: Interface) -> str:
    """The inputs, outputs, symbols and guards tables."""
    inputs, outputs, symbols, guards = iface.inputs, iface.outputs, iface.symbols, iface.guards
    lines = ["inputs"]
    lines += _table([(i.name, *_describe(i, symbols)) for i in inputs])
    lines.append("outputs")
    lines += _table([(o.name, *_describe(o, symbols)) for o in outputs])
    lines.append("symbols")
    lines += _table(
        [
            (
                name,
                f"min {s.min}",
                f"max {'inf' if s.max is None else s.max}",
                f"opt {s.opt}",
                f"({s.opt_source})",
            )
            for name, s in symbols.items()
        ]
    )
    if guards:
        lines.append("guards   (checked on every call)")
        lines += [
            f"  {g.expr}" if g.expr else f"  {g.source}  (torch's text: checked by the program)"
            for g in guards
        ]
    return "\n".join(lines) + "\n"


def render(info: PackInfo) -> str:
    """The human-readable summary printed by ``trtpack inspect``."""
    m = info.manifest
    lines = [
        f"{info.path.name}  {human_size(info.file_size)}  trtpack format "
        f"{m.format_version[0]}.{m.format_version[1]}",
        f"digest   {info.digest}",
    ]
    if m.metadata:
        lines.append("metadata " + "  ".join(f"{k}={v}" for k, v in sorted(m.metadata.items())))
    if not m.entry_points:
        lines += _program_lines(m)
    else:  # format 1.4: each entry point as a pack of one program, then the shared state
        for name in m.entry_point_names:
            default = " (default: the top level)" if name == m.default_entry_point else ""
            lines.append(f"== entry point {name}{default}")
            lines += _program_lines(m.entry(name))
    if m.state is not None:
        lines.append("state    (written in place; one tensor for every entry point naming it)")
        rows: list[tuple[str, ...]] = []
        for t, spec in sorted(m.state.tensors.items()):
            uses = m.state.entry_points
            reads = ",".join(n for n, u in sorted(uses.items()) if t in u.reads) or "-"
            writes = ",".join(n for n, u in sorted(uses.items()) if t in u.mutates) or "-"
            rows.append((t, f"{spec.dtype}{list(spec.shape)}", f"read by {reads}",
                         f"written by {writes}"))  # fmt: skip
        lines += _table(rows)
        for n, u in sorted(m.state.entry_points.items()):
            if u.mutated_inputs:
                lines.append(f"  {n} writes its inputs {', '.join(u.mutated_inputs)} in place")
    lines.append("members")
    lines += _table(
        [
            (name, human_size(mem.size), f"sha256:{mem.sha256[:16]}…")
            for name, mem in sorted(m.members.items())
        ]
    )
    p = m.producer
    made = [f"trtpack {p.trtpack}", f"python {p.python}"]
    made += [
        f"{k} {v}"
        for k, v in (
            ("torch", p.torch),
            ("torch_tensorrt", p.torch_tensorrt),
            ("tensorrt", p.tensorrt),
        )
        if v
    ]
    lines.append("producer " + " · ".join(made))
    return "\n".join(lines) + "\n"


def _program_lines(m: Manifest) -> list[str]:
    """One program's part of ``inspect``: interface, program, engines, samples."""
    lines = [render_interface(m.interface).rstrip("\n")]
    if m.program is not None:
        lines.append(
            f"program  ExportedProgram (torch.export schema "
            f"{m.program.serde_schema[0]}.{m.program.serde_schema[1]})"
        )
        if m.program.custom_ops:
            lines.append(
                "         calls custom operators "
                + ", ".join(m.program.custom_ops)
                + " (not in the pack: load(..., allow_ops=...) with them registered)"
            )
    else:
        lines.append("program  (none: engines only)")
    lines.append("engines")
    lines += _engine_lines(m) or ["  (none)"]
    if m.samples is not None:
        tol = m.samples.tolerance
        each = [f"program atol {tol.atol:g} rtol {tol.rtol:g}"]
        each += [f"{n} atol {t.atol:g} rtol {t.rtol:g}" for n, t in m.samples.variants.items()]
        lines.append(f"samples  {m.samples.count} reference call(s), `trtpack check`: "
                     + "; ".join(each))  # fmt: skip
    return lines
