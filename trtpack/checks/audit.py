"""``trtpack audit``: what loading a model file with its own tool would execute or trust,
found without loading it. No torch, no unpickling, bounded work on any input.

Kinds: a torch.export ``.pt2`` / torch_tensorrt ``.ep`` (PT2 archive), a bare TensorRT
``.plan``, an ``.onnx`` model (when the ``onnx`` package is installed; external data is never
loaded), and a ``.trtpack``. Each finding has a rule id, a severity (info < low < medium <
high), the member it is about and a message; the CLI prints a table, JSON or SARIF 2.1.0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import EngineError, MissingDependencyError, NotAPackError, TrtpackError
from ..format.container import PackReader
from ..format.limits import loads

PathLike = str | os.PathLike[str]

SEVERITIES = ("info", "low", "medium", "high")

#: globals a weights pickle needs (torch's own weights_only allowlist, in substance): loading
#: them rebuilds tensors and containers; anything else is a callable the pickle may run
_TENSOR_GLOBALS = frozenset(
    {
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch.storage.UntypedStorage",
        "torch.Size",
        "torch.FloatStorage",
        "torch.DoubleStorage",
        "torch.HalfStorage",
        "torch.BFloat16Storage",
        "torch.LongStorage",
        "torch.IntStorage",
        "torch.ShortStorage",
        "torch.CharStorage",
        "torch.ByteStorage",
        "torch.BoolStorage",
        "collections.OrderedDict",
        "torch.device",
        "torch.float32",
        "torch.float16",
        "torch.bfloat16",
        "torch.int64",
        "torch.int32",
        "torch.bool",
        "torch.uint8",
        "torch.int8",
        "builtins.set",
        "builtins.frozenset",
    }
)
#: torch_tensorrt's engine constant: read by trtpack's restricted unpickler, run by torch_tensorrt
_TRT_ENGINE_GLOBAL = "torch_tensorrt.dynamo.runtime._TRTEngine._reconstruct_trt_engine"
#: tensor_values entries no node uses, over which a file is flagged as amplification
AMPLIFICATION_UNUSED = 1_000
#: bytes of one member read to look inside it (a pickle, a nested torch.save zip, JSON)
MAX_READ = 256 << 20


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    message: str
    member: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditReport:
    """One file's findings, worst first."""

    path: str
    kind: str
    findings: list[Finding]
    seconds: float = 0.0

    @property
    def worst(self) -> str | None:
        return max((f.severity for f in self.findings), key=SEVERITIES.index, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "worst": self.worst,
            "seconds": round(self.seconds, 4),
            "findings": [asdict(f) for f in self.findings],
        }


def audit(path: PathLike, *, key: PathLike | None = None) -> AuditReport:
    """Audit one file. ``key``: a signer's public key, to check a .trtpack's signature.
    A file no reader accepts is one ``high`` finding (``refused``), not an exception; a missing
    file is a FileNotFoundError."""
    start = time.perf_counter()
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(8)
    findings: list[Finding] = []
    kind = "unknown"
    try:
        if head[:4] in (b"ftrt", b"vtrt"):
            kind = "TensorRT plan"
            findings = list(_audit_plan(p))
        elif head[:4] == b"PK\x03\x04":
            with PackReader(p, require_stored=False) as reader:
                from ..format.manifest import MANIFEST_NAME
                from ..migrations.pt2 import archive_root

                if MANIFEST_NAME in reader.members:
                    kind = "trtpack"
                    findings = list(_audit_trtpack(p, key))
                elif (root := archive_root(reader)) is not None:
                    kind = "PT2 archive (torch.export / torch_tensorrt)"
                    findings = list(_audit_pt2(reader, root))
                elif "serialized_exported_program.json" in reader.members:
                    kind = "torch.export archive (before torch 2.7)"
                    findings = list(_audit_pre_pt2(reader))
                else:
                    kind = "zip"
                    findings = list(_audit_zip_members(reader, ""))
        elif p.suffix == ".onnx":
            kind = "ONNX"
            findings = list(_audit_onnx(p))
        else:
            raise NotAPackError(f"{p}: not a .pt2/.ep, .plan, .onnx or .trtpack (starts {head!r})")
    except MissingDependencyError:
        raise
    except TrtpackError as e:
        findings.append(Finding("refused", "high", f"trtpack's readers refuse this file: {e}"))
    findings.sort(key=lambda f: -SEVERITIES.index(f.severity))
    return AuditReport(str(p), kind, findings, time.perf_counter() - start)


# --- pickles ------------------------------------------------------------------------------------


def _pickle_finding(data: bytes, member: str) -> Finding:
    from ..engines.packed_info import pickle_globals

    globals_ = pickle_globals(data, where=member)
    unknown = [g for g in globals_ if g not in _TENSOR_GLOBALS]
    if unknown == [_TRT_ENGINE_GLOBAL]:
        return Finding(
            "pickle-trt-engine",
            "medium",
            "torch_tensorrt engine constant: torch_tensorrt unpickles it with "
            f"weights_only=False (imports {_TRT_ENGINE_GLOBAL})",
            member,
            {"globals": globals_},
        )
    if unknown:
        return Finding(
            "pickle-code",
            "high",
            f"a pickle that imports and may call {', '.join(unknown)} when loaded "
            "with weights_only=False",
            member,
            {"globals": globals_},
        )
    return Finding(
        "pickle",
        "low",
        "a pickle (tensor rebuild globals only: torch.load with weights_only=True accepts it)",
        member,
        {"globals": globals_},
    )


def _is_pickle(data: bytes | memoryview) -> bool:
    return len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5


def _audit_zip_members(reader: PackReader, prefix: str, nested: bool = False) -> Iterator[Finding]:
    """Pickles, shared objects and nested torch.save zips among a zip's members."""
    for name, info in reader.members.items():
        where = f"{prefix}{name}"
        if name.endswith((".so", ".dll", ".dylib")) or (
            info.compressed_size is None
            and info.size >= 4
            and bytes(reader.view(name)[:4]) == b"\x7fELF"
        ):
            yield Finding(
                "shared-object",
                "high",
                "a native shared object: AOTInductor loaders dlopen it (runs native "
                "code with the process's rights)",
                where,
                {"bytes": info.size},
            )
            continue
        if info.size > MAX_READ:
            continue
        head = bytes(reader.view(name)[:4]) if info.compressed_size is None else None
        if name.endswith((".pkl", ".pickle")) or (head is not None and _is_pickle(head)):
            yield _pickle_finding(reader.read(name), where)
        elif head == b"PK\x03\x04" and not nested:  # torch.save's zip (sample inputs)
            inner = PackReader(
                f"{reader.path}:{name}", require_stored=False, data=bytearray(reader.read(name))
            )
            with inner:
                yield from _audit_zip_members(inner, f"{where}:", nested=True)


# --- torch.export / torch_tensorrt PT2 archives ------------------------------------------------


def _oversized(reader: PackReader) -> Iterator[Finding]:
    big = [n for n, i in reader.members.items() if i.size > MAX_READ and n.endswith(".json")]
    if big:  # a deflated member can declare gigabytes: never inflate past the cap
        yield Finding(
            "oversized-member",
            "high",
            f"{len(big)} JSON member(s) over trtpack's {MAX_READ}-byte audit limit: not read "
            "(a loader would have to)",
            big[0],
            {"members": big[:10]},
        )


def _graph_findings(data: Any, member: str, size: int) -> Iterator[Finding]:
    from ..program.graph_check import check_graph

    try:
        check_graph(data, member)
    except TrtpackError as e:
        yield Finding("graph-code", "high", f"torch would turn this into code: {e}", member)
    yield from _unused_tensor_values(data, member, size)


def _audit_pt2(reader: PackReader, root: str) -> Iterator[Finding]:
    from ..migrations.pt2 import model_json

    oversized = list(_oversized(reader))
    if oversized:
        yield from oversized
        yield from _audit_zip_members(reader, "")
        return
    member, data = model_json(reader, root)
    yield from _graph_findings(data, member, reader.members[member].size)
    yield from _unused_payloads(reader, root)
    engines = []
    for name in reader.members:
        if name.startswith(f"{root}data/") and "/opaque_obj" in name:
            engines.append(name)
    yield from _audit_zip_members(reader, "")
    for name in engines:
        yield from _trt_engine(reader.read(name), name)


def _audit_pre_pt2(reader: PackReader) -> Iterator[Finding]:
    """torch.export.save before torch 2.7: the program JSON and three torch.save zips."""
    member = "serialized_exported_program.json"
    oversized = list(_oversized(reader))
    yield from oversized
    if not oversized:
        data = loads(reader.read(member), f"{reader.path}: {member}")
        yield from _graph_findings(data, member, reader.members[member].size)
    yield from _audit_zip_members(reader, "")


def _trt_engine(data: bytes, member: str) -> Iterator[Finding]:
    from ..engines.packed_info import read_engine_pickle
    from ..engines.plan import parse_plan

    try:
        packed = read_engine_pickle(data, where=member)
    except EngineError as e:
        yield Finding("pickle-trt-engine-refused", "high", str(e), member)
        return
    try:
        plan = parse_plan(packed.engine, where=member)
        yield from _plan_findings(plan, member)
    except EngineError as e:
        yield Finding("plan-unreadable", "medium", str(e), member)


def _unused_tensor_values(data: Any, member: str, size: int) -> Iterator[Finding]:
    """tensor_values entries no node, input, output or signature names: torch.export.load
    builds a fake tensor for every one (the amplification the issue's proof of concept uses)."""
    graph = (
        ((data or {}).get("graph_module") or {}).get("graph") if isinstance(data, dict) else None
    )
    values = graph.get("tensor_values") if isinstance(graph, dict) else None
    if not isinstance(values, dict) or not values:
        return
    used: set[str] = set()
    stack: list[Any] = [data]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            for k, v in obj.items():
                if v is values:
                    continue
                if k == "name" and isinstance(v, str):
                    used.add(v)
                elif isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(obj, list):
            stack.extend(v for v in obj if isinstance(v, (dict, list)))
    unused = [n for n in values if n not in used]
    if not unused:
        return
    severity = "high" if len(unused) >= AMPLIFICATION_UNUSED else "low"
    yield Finding(
        "unused-tensor-values",
        severity,
        f"{len(unused)} of {len(values)} tensor_values are used by no node "
        f"(graph JSON {size} bytes): torch.export.load deserializes each one"
        + (" — amplification" if severity == "high" else ""),
        member,
        {"unused": len(unused), "total": len(values), "examples": unused[:5]},
    )


def _unused_payloads(reader: PackReader, root: str) -> Iterator[Finding]:
    for folder in ("weights", "constants"):
        config_name = f"{root}data/{folder}/model_{folder}_config.json"
        if config_name not in reader.members or reader.members[config_name].size > MAX_READ:
            continue
        config = loads(reader.read(config_name), config_name)
        config = config.get("config", {}) if isinstance(config, dict) else {}
        named = {
            f"{root}data/{folder}/{m.get('path_name')}"
            for m in config.values()
            if isinstance(m, dict)
        }
        extra = [
            n
            for n in reader.members
            if n.startswith(f"{root}data/{folder}/") and n != config_name and n not in named
        ]
        if extra:
            size = sum(reader.members[n].size for n in extra)
            yield Finding(
                "unused-payload",
                "low",
                f"{len(extra)} {folder} member(s), {size} bytes, named by no config",
                f"{root}data/{folder}/",
                {"members": extra[:10]},
            )
        for fqn, meta in config.items():
            # opaque_obj: a torch_tensorrt engine, reported with its pickle's globals above
            if (
                isinstance(meta, dict)
                and meta.get("use_pickle")
                and not str(meta.get("path_name")).startswith("opaque_obj")
            ):
                yield Finding(
                    "pickled-tensor",
                    "medium",
                    f"tensor {fqn!r} is stored pickled (a tensor subclass): torch unpickles it",
                    f"{root}data/{folder}/{meta.get('path_name')}",
                )


# --- plans --------------------------------------------------------------------------------------


def _plan_findings(plan: Any, member: str) -> Iterator[Finding]:
    gpus = ", ".join(plan.compute_capabilities) or "not in the header"
    yield Finding("plan", "info", f"{plan.flavor} {plan.trt_version} plan, GPUs {gpus}", member)
    if plan.flavor == "tensorrt":
        yield Finding(
            "plan-host-code",
            "medium",
            "a standard TensorRT plan built version-compatible embeds the lean "
            "runtime (host code TensorRT runs when engine_host_code_allowed is set); "
            "its header does not say whether this one does",
            member,
        )


def _audit_plan(path: Path) -> Iterator[Finding]:
    from ..engines.plan import parse_plan

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(min(size, 1 << 20))  # the header and section table are at the start
    yield from _plan_findings(
        parse_plan(head if size <= 1 << 20 else path.read_bytes(), where=str(path)), path.name
    )


# --- ONNX ---------------------------------------------------------------------------------------


def _audit_onnx(path: Path) -> Iterator[Finding]:
    try:
        import onnx
    except ImportError as e:
        raise MissingDependencyError(
            f"auditing an .onnx file needs onnx ({e}): pip install onnx"
        ) from e
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: a malformed file
        raise NotAPackError(f"{path}: onnx cannot parse it: {type(e).__name__}: {e}") from None
    base = path.parent.resolve()
    for t in _onnx_tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (base / loc).resolve()
        if os.path.isabs(loc) or not target.is_relative_to(base):
            yield Finding(
                "external-data-escape",
                "high",
                f"tensor {t.name!r} reads external data from {loc!r}, outside the model's folder",
                "graph",
                {"location": loc},
            )
        else:
            yield Finding(
                "external-data", "info", f"tensor {t.name!r} has external data {loc!r}", "graph"
            )
    for node in _onnx_nodes(model.graph):
        if node.op_type == "EPContext":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            embedded = attrs.get("embed_mode", 1) == 1
            yield Finding(
                "epcontext",
                "medium",
                f"EPContext node {node.name!r}: a precompiled engine "
                + (
                    "embedded in the model"
                    if embedded
                    else f"at {attrs.get('ep_cache_context', b'')!r}"
                )
                + "; the execution provider deserializes it as is",
                node.name,
            )
        elif node.domain not in ("", "ai.onnx", "ai.onnx.ml"):
            yield Finding(
                "custom-op",
                "low",
                f"node {node.name!r} is {node.domain}::"
                f"{node.op_type}, a custom op: it needs a plugin library",
                node.name,
            )


def _onnx_nodes(graph: Any) -> Iterator[Any]:
    stack = [graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            yield node
            stack.extend(a.g for a in node.attribute if a.HasField("g"))
            stack.extend(sub for a in node.attribute for sub in a.graphs)


def _onnx_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for node in _onnx_nodes(graph):
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t


# --- packs --------------------------------------------------------------------------------------


def _audit_trtpack(path: Path, key: PathLike | None) -> Iterator[Finding]:
    from ..program.graph_check import check_graph
    from ..reading import open_pack
    from ..signing import signature_path

    sig = signature_path(path)
    if key is not None:
        from ..signing import verify_reader

        with PackReader(path) as reader:
            try:
                verify_reader(reader, key, sig if sig.exists() else None)
                yield Finding("signature", "info", f"signature {sig} verified with {key}")
            except TrtpackError as e:
                yield Finding("signature-invalid", "high", f"the signature does not verify: {e}")
    elif sig.exists():
        yield Finding("signature-unchecked", "low", f"signed ({sig}), not checked: pass --key")
    else:
        yield Finding("unsigned", "medium", "no signature: nothing says who made this pack")
    with open_pack(path) as (reader, info):
        m = info.manifest
        for name, member in m.members.items():
            try:
                reader.verify(name, member)
            except TrtpackError as e:
                yield Finding("digest-mismatch", "high", str(e), name)
        yield Finding(
            "members",
            "info",
            f"{len(m.members)} members, "
            f"{sum(x.size for x in m.members.values())} bytes, all in the manifest",
            details={"members": sorted(m.members)},
        )
        if m.program is not None:
            try:
                check_graph(reader.read(m.program.graph), m.program.graph)
            except TrtpackError as e:
                yield Finding(
                    "graph-code", "high", f"torch would turn this into code: {e}", m.program.graph
                )
        for v in m.engines:
            if v.target.embeds_lean_runtime:
                yield Finding(
                    "plan-host-code",
                    "medium",
                    f"variant {v.name}: its plans embed TensorRT's lean runtime (host "
                    "code); load runs it only for a verified signature or "
                    "trust_engine_host_code=True",
                    v.engines[0].member if v.engines else None,
                )
        yield Finding(
            "no-pickle",
            "info",
            "a .trtpack holds no pickle: weights are safetensors, the program JSON",
        )


# --- output -------------------------------------------------------------------------------------


def render(reports: list[AuditReport]) -> str:
    lines = []
    for r in reports:
        lines.append(f"{r.path}  {r.kind}  worst: {r.worst or 'none'}  ({r.seconds:.2f} s)")
        for f in r.findings:
            where = f"  [{f.member}]" if f.member else ""
            lines.append(f"  {f.severity:<6} {f.rule:<26} {f.message}{where}")
    return "\n".join(lines) + "\n"


_SARIF_LEVEL = {"info": "note", "low": "note", "medium": "warning", "high": "error"}


def to_sarif(reports: list[AuditReport]) -> dict[str, Any]:
    """SARIF 2.1.0: one run, one result per finding, located at the file (member in the
    message and in a logical location)."""
    rules = sorted({f.rule for r in reports for f in r.findings})
    results = []
    for r in reports:
        for f in r.findings:
            location: dict[str, Any] = {
                "physicalLocation": {"artifactLocation": {"uri": Path(r.path).as_posix()}}
            }
            if f.member:
                location["logicalLocations"] = [{"name": f.member, "kind": "member"}]
            results.append(
                {
                    "ruleId": f.rule,
                    "ruleIndex": rules.index(f.rule),
                    "level": _SARIF_LEVEL[f.severity],
                    "message": {"text": f.message},
                    "locations": [location],
                    "properties": {
                        "severity": f.severity,
                        **({"details": f.details} if f.details else {}),
                    },
                }
            )
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "trtpack audit",
                        "version": __version__,
                        "rules": [
                            {"id": rule, "shortDescription": {"text": rule}} for rule in rules
                        ],
                    }
                },
                "results": results,
            }
        ],
    }
