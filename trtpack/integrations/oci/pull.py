"""Reading a pushed pack: ``fetch_manifest``, ``inspect`` (the pack's manifest only) and
``pull`` (the pack, or some of its engine variants, written atomically)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import (
    NoUsableEngineError,
    OutputExistsError,
    PackWriteError,
    RegistryError,
    TrtpackError,
)
from ...format.container import FileSlice, PathLike, write_pack
from ...format.limits import MAX_MANIFEST_BYTES, parse_manifest_json
from ...format.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest, dumps_canonical
from ...reading import PackInfo, human_size, render
from ...reading import inspect as inspect_pack
from .blobs import _download, _get_manifest, _size
from .layouts import _layout_of
from .progress import ProgressArg, _Progress
from .referrers import _find_signature
from .transport import _connect, _Registry, parse_reference

#: what ``pull(variants=...)`` takes besides a list of names
VARIANT_CHOICES = ("all", "auto", "none")
#: bytes of members a pull writes at most unless ``max_size`` (``--max-size``) raises it
DEFAULT_MAX_SIZE = 64 << 30


# --- reading ---------------------------------------------------------------------------------


def fetch_manifest(
    ref: str,
    *,
    plain_http: bool | None = None,
    registry_config: PathLike | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """The OCI manifest of a pushed pack (what ``oras manifest fetch`` shows), either layout;
    RegistryError if the artifact is not a pack."""
    reg = _connect(parse_reference(ref), plain_http, registry_config, timeout)
    manifest, _ = _get_manifest(reg)
    assert manifest is not None
    _layout_of(manifest, ref)
    return manifest


@dataclass(frozen=True)
class RemotePack:
    """What ``inspect(ref)`` read: the OCI manifest and the pack's own manifest."""

    reference: str
    layout: str
    manifest_digest: str
    oci_manifest: dict[str, Any]
    #: the pack's facts; ``file_size`` is the members' total (the zip adds its headers)
    info: PackInfo
    #: bytes of blobs downloaded to read it: the pack's manifest.json, nothing else
    bytes_downloaded: int


def _manifest_from(raw: bytes, where: str, upgrade_old: bool = True) -> Manifest:
    """The pack's manifest from its manifest.json bytes (``upgrade_old``: upgraded in memory
    as ``inspect`` upgrades an older format). Whatever is wrong with it is a RegistryError
    (the ManifestError or UnsafePackError saying what, as its cause): the registry served it."""
    try:
        data = parse_manifest_json(raw, where)
        version = data.get("format_version") if isinstance(data, dict) else None
        if (
            upgrade_old
            and isinstance(version, list)
            and len(version) == 2
            and all(
                type(v) is int
                for v in version  # ["1", "0"] is for the schema check to refuse
            )
            and tuple(version) < FORMAT_VERSION
        ):
            from ...format.upgrade import upgrade

            data, _, _ = upgrade(data)
        return Manifest.from_dict(data)
    except TrtpackError as e:
        raise RegistryError(
            f"{where}: the pack's {MANIFEST_NAME} is not a valid trtpack manifest: {e}",
            reference=where,
            field=MANIFEST_NAME,
        ) from e
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as e:
        # what a reader that checks later than it reads (format.upgrade) may still raise on a
        # hand-made manifest: the registry served it, so it is the registry's answer at fault
        raise RegistryError(f"{where}: the pack's {MANIFEST_NAME} is not a valid trtpack "
                            f"manifest ({type(e).__name__}: {str(e)[:200]})", reference=where,
                            field=MANIFEST_NAME) from e  # fmt: skip


def _read_pack_manifest(reg: _Registry, desc: dict[str, Any], where: str,
                        bar: _Progress) -> bytes:  # fmt: skip
    size = _size(desc, MANIFEST_NAME, where, MAX_MANIFEST_BYTES)
    return _download(reg, str(desc.get("digest")), size, MANIFEST_NAME, bar)


def inspect(
    ref: str,
    *,
    plain_http: bool | None = None,
    registry_config: PathLike | None = None,
    timeout: float | None = None,
) -> RemotePack:
    """Read a pushed pack's manifest without pulling it: the OCI manifest, then the pack's
    ``manifest.json`` blob (a few KiB); no weights, no engines."""
    reference = parse_reference(ref)
    reg = _connect(reference, plain_http, registry_config, timeout)
    oci, digest = _get_manifest(reg)
    assert oci is not None
    layout, desc, _ = _layout_of(oci, ref)
    raw = _read_pack_manifest(reg, desc, ref, _Progress("inspect", False))
    manifest = _manifest_from(raw, ref)
    size = len(raw) + sum(m.size for m in manifest.members.values())
    info = PackInfo(Path("pack"), manifest, "sha256:" + hashlib.sha256(raw).hexdigest(), size)
    return RemotePack(f"oci://{reference.target}", layout, digest, oci, info, len(raw))


def render_remote(remote: RemotePack) -> str:
    """``trtpack inspect oci://...``: the table of a local inspect, headed by the reference."""
    first, rest = render(remote.info).split("\n", 1)
    first = remote.reference + first[len(remote.info.path.name) :]
    digest, rest = rest.split("\n", 1)
    where = f"registry {remote.layout} layout, OCI manifest {remote.manifest_digest}"
    return "\n".join([first, digest, where, rest])


# --- pull ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pulled(PackInfo):
    """The pulled pack's facts (a PackInfo) and what the pull did."""

    reference: str = ""
    layout: str = ""
    #: the engine variants the written pack holds
    variants: tuple[str, ...] = ()
    #: variants left out, with why (not asked for, or cannot run here)
    left_out: dict[str, str] = field(default_factory=dict)
    #: bytes of blobs downloaded
    bytes_downloaded: int = 0
    #: where the pack's signature was written (``OUT.sig``), or None
    signature: str | None = None
    #: why no signature was written, when none was
    signature_note: str = ""


def _choose(manifest: Manifest, variants: str | Sequence[str] | None, environment: Any,
            ref: str) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    names = [v.name for v in manifest.engines]
    if variants is None or variants == "all":
        return names, {}
    if variants == "none":
        return [], {n: "not asked for (--variants none)" for n in names}
    if variants == "auto":
        from ...engines.select import choose

        if environment is None:
            from ...engines.torchtrt import probe_environment

            environment = probe_environment()
        choice = choose(manifest.engines, environment)
        keep = [v.name for v in choice.fitting]
        if not keep and manifest.program is None:
            raise NoUsableEngineError(
                f"{ref}: {choice.summary()}, and the pack has no program to run instead; "
                "name the variants to pull: variants=[NAME] (--variant)"
            )
        return [n for n in names if n in keep], dict(choice.refused)
    if isinstance(variants, str):
        variants = [variants]
    unknown = sorted(set(variants) - set(names))
    if unknown:
        raise RegistryError(
            f"{ref} has no engine variant {', '.join(map(repr, unknown))} (it has: "
            f"{', '.join(names) or 'none'}); name one of those with variants=[NAME] (--variant), "
            f"or choose variants={'|'.join(VARIANT_CHOICES)} (--variants)"
        )
    keep = [n for n in names if n in set(variants)]
    if not keep and manifest.program is None:
        raise RegistryError(
            f"{ref} has no program: pull at least one engine variant, variants=[NAME] (--variant)"
        )
    return keep, {n: "not asked for" for n in names if n not in keep}


def _subset(raw: bytes, keep: Sequence[str], where: str) -> bytes:
    """The pack's manifest.json with only the ``keep`` engine variants and their members."""
    data = parse_manifest_json(raw, where)

    def members_of(variant: dict[str, Any]) -> set[str]:
        out = {e["member"] for e in variant.get("engines") or []}
        program = variant.get("program")
        if isinstance(program, dict):
            out |= {program["graph"], program["weights"]}
        return out

    engines = data.get("engines") or []
    kept = [v for v in engines if v["name"] in keep]
    used = members_of({"program": data.get("program")})
    dropped: set[str] = set()
    for v in engines:
        (used if v in kept else dropped).update(members_of(v))
    dropped -= used
    data["engines"] = kept
    data["members"] = {n: m for n, m in data["members"].items() if n not in dropped}
    out = dumps_canonical(data)
    Manifest.from_json(out)  # still a valid, consistent manifest
    return out


def pull(
    ref: str,
    out: PathLike,
    *,
    overwrite: bool = False,
    variants: str | Sequence[str] | None = None,
    environment: Any = None,
    plain_http: bool | None = None,
    registry_config: PathLike | None = None,
    progress: ProgressArg = None,
    signature: bool = True,
    max_size: int | None = None,
    timeout: float | None = None,
) -> Pulled:
    """Fetch the pack at ``ref`` into ``out`` (atomically), every blob checked. Either layout.

    ``variants`` None or ``"all"``: the pack as pushed, byte for byte. A list of names: the
    program and those engine variants only. ``"auto"``: the variants that can run on this
    machine (``trtpack.engines.select``; ``environment`` overrides what is probed). ``"none"``:
    the program only. Blobs of variants left out are never downloaded.

    ``signature``: the signature attached to the pushed manifest (an OCI referrer, as ``push``
    attaches ``PACK.sig``) is written to ``OUT.sig``, so that ``trtpack verify --key`` checks
    the pulled pack; ``OUT.sig`` is an output like ``out`` (``overwrite`` replaces it, and a
    stale one is removed). A pull of some variants only has another manifest.json than the one
    signed: no signature is written then.

    ``max_size``: the most bytes of members the pull writes (default DEFAULT_MAX_SIZE): a pack
    declaring more is refused before anything is downloaded. ``timeout``: seconds the registry
    may stay silent (default ``TRTPACK_OCI_TIMEOUT`` or DEFAULT_TIMEOUT). Nothing is written
    but ``out`` (and ``OUT.sig``), through temporary files beside it that a failure removes."""
    from ...signing import signature_path

    out_path = Path(out)
    limit = DEFAULT_MAX_SIZE if max_size is None else max_size
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise RegistryError(f"max_size must be a number of bytes, not {max_size!r}")
    if out_path.exists() and not overwrite:
        raise OutputExistsError(out)
    sig_path = signature_path(out_path)
    if signature and sig_path.exists() and not overwrite:
        raise OutputExistsError(sig_path)
    reference = parse_reference(ref)
    reg = _connect(reference, plain_http, registry_config, timeout)
    oci, manifest_digest = _get_manifest(reg)
    assert oci is not None
    layout, desc, layers = _layout_of(oci, ref)
    note = ""
    with _Progress("pull", progress) as bar:
        raw = _read_pack_manifest(reg, desc, ref, bar)
        downloaded = len(raw)
        manifest = _manifest_from(raw, ref, upgrade_old=False)
        keep, left_out = _choose(manifest, variants, environment, ref)
        subset = len(keep) != len(manifest.engines)
        if subset:
            raw = _subset(raw, keep, ref)
            manifest = _manifest_from(raw, ref, upgrade_old=False)
        wanted = sorted(manifest.members.items())
        for name, member in wanted:  # every layer is there before anything large is fetched
            layer = layers.get(name)
            if layer is None or layer.get("digest") != f"sha256:{member.sha256}" or \
                    layer.get("size") != member.size:  # fmt: skip
                raise RegistryError(f"{ref}: no layer holds member {name!r} of its manifest",
                                    reference=ref, field=name)  # fmt: skip
        total = sum(m.size for _, m in wanted)
        if total > limit:
            raise RegistryError(
                f"{ref}: its members are {total} bytes ({human_size(total)}), over the limit of "
                f"{limit} ({human_size(limit)}); raise it with max_size=BYTES (--max-size) if "
                "you trust this pack", reference=ref, field="max_size", limit=limit, value=total,
            )  # fmt: skip
        parent = out_path.parent if str(out_path.parent) else Path(".")
        _check_space(parent, out_path, total)
        bundle: bytes | None = None
        if signature and not subset:
            found = _find_signature(reg, manifest_digest)
            if found is None:
                note = "the registry holds no signature for it"
            else:
                bundle = found[0]
                downloaded += len(bundle)
        elif signature:
            note = ("not written: the pulled pack holds some engine variants only, and its "
                    "manifest.json is not the one signed")  # fmt: skip
        bar.total = downloaded + total
        bar.done = downloaded
        try:
            tmp_dir = tempfile.TemporaryDirectory(dir=parent, prefix=".trtpack-pull-")
        except OSError as e:
            raise PackWriteError(out_path, e) from None
        with tmp_dir as tmp:
            members = {}
            for i, (name, member) in enumerate(wanted):
                path = Path(tmp) / f"member{i}"
                try:
                    f = open(path, "wb")
                except OSError as e:
                    raise PackWriteError(out_path, e) from None
                with f:
                    _download(reg, f"sha256:{member.sha256}", member.size, name, bar, f,
                              out_path)  # fmt: skip
                bar.note(name, member.size, "received")
                downloaded += member.size
                members[name] = FileSlice(path, 0, member.size)
            final = raw
            stale = signature and sig_path.exists()  # only with overwrite (checked above)
            with warnings.catch_warnings():
                if signature:
                    # write_pack removes OUT.sig, which signed the bytes OUT had, and warns
                    # "sign again"; here the registry's signature takes its place below, or
                    # signature_note says it was removed
                    warnings.filterwarnings("ignore", message=r"trtpack: removed .*\.sig")
                write_pack(out_path, members, lambda _digests: final, overwrite=overwrite)
        if stale and bundle is None:
            note += f"; removed the stale {sig_path}"
        written = _place_signature(out_path, sig_path, bundle, signature)
        bar.close(f"{len(wanted)} member(s), {human_size(downloaded)} received")
    info = inspect_pack(out_path)
    fields = {f.name: getattr(info, f.name) for f in dataclasses.fields(PackInfo)}
    return Pulled(**fields, reference=f"oci://{reference.target}", layout=layout,
                  variants=tuple(keep), left_out=left_out, bytes_downloaded=downloaded,
                  signature=None if written is None else str(written),
                  signature_note=note)  # fmt: skip


def _check_space(parent: Path, out_path: Path, total: int) -> None:
    """Refuse at once when the disk cannot hold the members twice (the temporary copies and
    the pack written from them) rather than fill it."""
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return  # the write says why, if it fails
    need = 2 * total + (1 << 20)
    if need > free:
        cause = OSError(errno.ENOSPC, f"needs about {human_size(need)} (the members twice), "
                                      f"{human_size(free)} free")  # fmt: skip
        raise PackWriteError(out_path, cause)


def _place_signature(out_path: Path, sig_path: Path, bundle: bytes | None,
                     signature: bool) -> Path | None:  # fmt: skip
    """Write ``bundle`` to ``sig_path`` beside the pulled pack, or remove a stale one there
    (``overwrite`` was checked before anything was downloaded). If the signature cannot be
    written, neither is the pack: it is removed, and the error says why."""
    from ...format.atomic import atomic_write

    if not signature:
        return None
    if bundle is None:
        try:
            sig_path.unlink(missing_ok=True)  # another pack's signature would never verify
        except OSError as e:
            raise PackWriteError(sig_path, e) from None
        return None
    try:
        with atomic_write(sig_path) as f:
            f.write(bundle)
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    return sig_path
