"""Artifacts saved without trtpack metadata ("version 0") and packs of older format versions:
recognized, described, converted.

- a trtpack pack of an older format version: the step chain (``steps.py``); no torch
- a ``torch.export.save`` file (PT2 archive): ``pt2.py``; no torch
- a ``torch_tensorrt.save(..., output_format="exported_program")`` file: ``pt2.py`` and a
  restricted unpickler for its engines; no torch
- a ``torch.export.save`` file of torch < 2.7 (``serialized_*`` members): torch, with
  ``weights_only`` loads of its pickled weights
- a bare TensorRT plan with an input description: ``engine_file.py``; no torch
- TorchScript (``output_format="torchscript"``): recognized and refused, saying what to do
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..writing.assemble import PackParts

if TYPE_CHECKING:
    from ..reading import PackInfo
from ..errors import MigrationError, NotAPackError, OutputExistsError
from ..format.container import PackReader, PathLike, Source
from ..format.manifest import MANIFEST_NAME, Interface, Producer
from ..format.progress import Progress, ProgressArg
from .pt2 import archive_root, convert_pt2

TRTPACK, PT2, PRE_PT2, TORCHSCRIPT, ENGINE = "trtpack", "pt2", "pre_pt2", "torchscript", "engine"

_PRE_PT2_MEMBERS = ("version", "serialized_exported_program.json")


def detect(path: PathLike) -> str:
    """What a file is: one of TRTPACK, PT2, PRE_PT2, TORCHSCRIPT, ENGINE; else MigrationError
    naming what was found."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {p}") from None
    except IsADirectoryError:
        raise NotAPackError(f"{p} is a directory, not a model file") from None
    if head[:4] in (b"ftrt", b"vtrt"):
        return ENGINE
    if head[:4] != b"PK\x03\x04":
        raise NotAPackError(
            f"{p} is none of the known kinds (a .trtpack, a torch.export or torch_tensorrt "
            f"file, TorchScript, a TensorRT plan): it starts with {head!r}"
        )
    with PackReader(p, require_stored=False) as reader:
        names = set(reader.members)
        if MANIFEST_NAME in names:
            return TRTPACK
        if archive_root(reader) is not None:
            return PT2
        if all(n in names for n in _PRE_PT2_MEMBERS):
            return PRE_PT2
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names) and any(
            "/code/" in n or n.endswith("constants.pkl") for n in names
        ):
            return TORCHSCRIPT
        shown = ", ".join(sorted(names)[:6]) or "no members"
    raise NotAPackError(
        f"{p} is a zip, but none of the known kinds (a .trtpack has manifest.json, a "
        f"torch.export file archive_format or serialized_exported_program.json); it has {shown}"
    )


def convert(
    path: PathLike,
    *,
    inputs: Sequence[str | dict] | None = None,
    outputs: Sequence[str | dict] = (),
    variant: str | None = None,
    version_compatible: str | None = None,
) -> PackParts:
    """Read any known artifact as the pieces of a current-format pack. ``version_compatible``
    (a bare TensorRT plan only): ``"lean_embedded"`` or ``"lean_excluded"``, as it was built."""
    p = Path(path)
    kind = detect(p)
    if kind == ENGINE:
        return _convert_engine(p, inputs, outputs, variant, version_compatible)
    if version_compatible is not None:
        raise MigrationError(f"{p} is not a bare plan; version_compatible describes bare plans")
    if inputs is not None:
        raise MigrationError(
            f"{p} describes its own inputs; an input description is for bare engines"
        )
    if kind == TORCHSCRIPT:
        raise MigrationError(
            f"{p} is TorchScript (e.g. torch_tensorrt.save(..., output_format='torchscript')). "
            "trtpack packs ExportedPrograms: export the model with torch.export and use "
            "trtpack.compile + trtpack.save, or save with torch_tensorrt.save(..., "
            "output_format='exported_program') and migrate that file"
        )
    # zip CRC-32 checked on every member read: these files have no stronger digest
    with PackReader(p, require_stored=kind != PRE_PT2, check_crc=kind != TRTPACK) as reader:
        if kind == TRTPACK:
            return _convert_pack(reader)
        if kind == PT2:
            try:
                return convert_pt2(reader, torch_tensorrt_variant=variant)
            except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
                # torch.export's JSON of another shape than the one it writes (damaged or
                # crafted): the reader walks it as torch wrote it, any other shape ends here
                raise MigrationError(
                    f"{p}: the torch.export program is not in the shape torch.export writes "
                    f"({type(e).__name__}: {e})"
                ) from None
        return _convert_pre_pt2(reader)


def _convert_pack(reader: PackReader) -> PackParts:
    from ..reading import read_info

    info = read_info(reader)  # upgrades an older format in memory
    m = info.manifest
    iface = m.interface
    members: dict[str, Source] = {n: reader.slice(n) for n in m.members}
    notes = []
    if info.upgraded_from:
        notes.append(f"format {info.upgraded_from[0]}.{info.upgraded_from[1]} upgraded")
    return PackParts(iface, members, m.program, m.engines, dict(m.metadata), m.producer,
                     notes=notes, samples=m.samples)  # fmt: skip


def _convert_engine(
    path: Path,
    inputs: Sequence[str | dict] | None,
    outputs: Sequence[str | dict],
    variant: str | None,
    version_compatible: str | None,
) -> PackParts:
    from ..engines.variants import build_variant, declare_version_compatible, facts_from_plan
    from .engine_file import parse_description

    if not inputs:
        raise MigrationError(
            f"{path} is a bare TensorRT engine, which cannot tell its inputs without a GPU: "
            "describe them (trtpack pack ENGINE --input-spec 'x:float32[1..64@8,3,224,224]', or "
            "inputs=[...] in Python)"
        )
    plan = path.read_bytes()
    from ..engines.plan import check_described_names, parse_plan, quoted_tensor_names

    header = parse_plan(plan, where=str(path))  # the header first
    if not outputs:
        names = [_spec_name(s) for s in inputs]
        others = [n for n in quoted_tensor_names(plan) if n not in names]
        known = (
            f"the names its bytes quote, besides the inputs, are {others}"
            if others
            else "its bytes name no other tensor"
            if header.flavor == "tensorrt_rtx"
            else "a standard TensorRT plan's bytes are not searched for names"
        )
        example = others[0] if others else "out"
        raise MigrationError(
            f"{path}: describe the engine's outputs as well, outputs=[...] (--output-spec): "
            f"a plan's bindings cannot be read without a GPU, and {known}; e.g. "
            f"--output-spec '{example}:{_spec_dtype(inputs)}[...]' with its dims (N, a dim name "
            "of an input, or ? for unknown)"
        )
    iface = parse_description(inputs, outputs)
    check_described_names(plan, [i.name for i in iface.inputs if i.is_tensor],
                          [o.name for o in iface.outputs], where=str(path))  # fmt: skip
    facts = facts_from_plan(plan, iface, where=str(path),
                            output_names=[o.name for o in iface.outputs])  # fmt: skip
    v, members = build_variant([facts], iface, wiring=None, name=variant)
    v = dataclasses.replace(v, described=True)  # only a GPU runtime can confirm the bindings
    v = declare_version_compatible(v, version_compatible, where=str(path))
    return PackParts(iface, dict(members), None, (v,), producer=Producer(trtpack="-", python="-"),
                     kind=f"bare {v.target.flavor} {v.target.trt_version} engine")  # fmt: skip


def _spec_name(spec: str | dict) -> str:
    """An input description's name (compact ``NAME:DTYPE[...]`` or JSON), for messages."""
    if isinstance(spec, dict):
        return str(spec.get("name", ""))
    return str(spec).split(":", 1)[0].strip()


def _spec_dtype(inputs: Sequence[str | dict]) -> str:
    """The first input's dtype, for an example in a message."""
    first = inputs[0]
    if isinstance(first, dict):
        return str(first.get("dtype", "float32"))
    return str(first).split(":", 1)[-1].split("[", 1)[0].strip() or "float32"


def describe_pre_pt2(path: PathLike) -> tuple[str, Interface]:
    """The interface of a pre-2.7 torch.export file, read from its program JSON alone (no
    torch: the weights are pickles, which only migration reads, with torch's weights_only
    loader). Returns (kind, interface)."""
    from ..format.limits import loads
    from ..program.derive import SerializedProgram
    from ..program.graph_check import check_graph

    with PackReader(path, require_stored=False, check_crc=True) as reader:
        version = reader.read("version").decode(errors="replace").strip()
        member = f"{reader.path}:serialized_exported_program.json"
        data = loads(reader.read("serialized_exported_program.json"), member, MigrationError)
    check_graph(data, member)
    if not isinstance(data, dict):
        raise MigrationError(f"{member} is not a torch.export program JSON")
    try:
        iface, _ = SerializedProgram(data, where=member).interface()
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        raise MigrationError(
            f"{member}: the program is not in the shape torch.export writes "
            f"({type(e).__name__}: {e})"
        ) from None
    return f"torch.export program (pre-2.7 layout, schema {version})", iface


def _convert_pre_pt2(reader: PackReader) -> PackParts:
    """torch < 2.7 wrote the program JSON beside torch.save pickles of the weights: those are
    read with torch's weights_only loader (tensors and containers only)."""
    import torch
    from torch._export.serde.serialize import SerializedArtifact, deserialize

    from ..program.describe import describe

    def unpickle(name: str) -> Any:
        if name not in reader:
            return {}
        data = reader.read(name)
        if not data:
            return {}
        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except Exception as e:
            raise MigrationError(
                f"{reader.path}: {name} holds objects that torch's weights_only loader refuses "
                f"({type(e).__name__}); trtpack does not unpickle anything less restricted"
            ) from None

    version = reader.read("version").decode(errors="replace").strip()
    graph = reader.read("serialized_exported_program.json")
    from ..errors import UnsafePackError
    from ..program.graph_check import check_graph

    try:
        check_graph(graph, f"{reader.path}:serialized_exported_program.json")
        ep = deserialize(SerializedArtifact(graph, unpickle("serialized_state_dict.pt"),
                                            unpickle("serialized_constants.pt"), b""))  # fmt: skip
    except (MigrationError, UnsafePackError):
        raise
    except Exception as e:
        raise MigrationError(
            f"{reader.path}: torch {torch.__version__} cannot read this torch.export file "
            f"(schema {version}): {type(e).__name__}: {e}"
        ) from None
    described = describe(ep)
    return PackParts(described.interface, described.members, described.ref,
                     producer=Producer(trtpack="-", python="-"), checked=described.checked,
                     kind=f"torch.export program (pre-2.7 layout, schema {version})")  # fmt: skip


def to_pack(c: PackParts, path: PathLike, *, overwrite: bool = False,
            progress: Progress | None = None) -> PackInfo:  # fmt: skip
    """Write ``c`` as a current-format pack (atomically) at ``path``."""
    import dataclasses
    import platform

    from .._version import __version__
    from ..writing.assemble import write

    # this trtpack wrote the pack; the program is the torch version's that wrote it
    made_by = Producer(__version__, platform.python_version(),
                       torch=c.producer.torch if c.producer else None)  # fmt: skip
    parts = dataclasses.replace(c, producer=made_by)
    return write(parts, path, overwrite=overwrite, progress=progress)


@contextlib.contextmanager
def open_migrated(c: PackParts, path: PathLike) -> Iterator[tuple[PackReader, PackInfo]]:
    """``c`` (converted from the file at ``path``) as an open pack, for ``load`` and
    ``inspect``: written to a temporary file (in ``TMPDIR``) and read like any pack, its
    weights mapped from that file, never assembled in memory (a second full copy of them).
    The file is removed on exit; what was mapped from it stays valid (POSIX keeps an unlinked
    file's pages while they are mapped). Messages name ``path``."""
    from ..reading import read_info

    with tempfile.TemporaryDirectory(prefix="trtpack-migrated-") as folder:
        staged = Path(folder) / "migrated.trtpack"
        to_pack(c, staged)
        with PackReader(staged) as reader:
            reader.path = Path(path)  # opened already: from here on the path only names it
            yield reader, read_info(reader)


def migrate(
    src: PathLike,
    dst: PathLike,
    *,
    overwrite: bool = False,
    in_place: bool = False,
    inputs: Sequence[str | dict] | None = None,
    outputs: Sequence[str | dict] = (),
    variant: str | None = None,
    version_compatible: str | None = None,
    progress: ProgressArg = None,
) -> PackInfo:
    """Write ``src`` (any known artifact, or a pack of an older format) as a current pack at
    ``dst``, atomically. Never in place unless ``in_place=True``; an existing ``dst`` is
    replaced only with ``overwrite=True``. ``progress``: as for ``save``
    (``trtpack.format.progress``)."""
    bar = Progress("migrate", progress)
    s, d = Path(src), Path(dst)
    same = d.exists() and s.exists() and s.resolve() == d.resolve()
    if same and not in_place:
        raise MigrationError(
            f"{dst} is the input file; pass in_place=True (--in-place) to replace it"
        )
    if d.exists() and not (overwrite or same):
        raise OutputExistsError(dst)
    with bar:
        bar.step(f"read {s.name}")
        converted = convert(s, inputs=inputs, outputs=outputs, variant=variant,
                            version_compatible=version_compatible)  # fmt: skip
        return to_pack(converted, d, overwrite=True, progress=bar)
