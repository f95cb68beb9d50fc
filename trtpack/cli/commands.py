"""The ``trtpack`` command: a thin layer over the library.

Commands that only read a pack's manifest (``inspect``, ``verify``) never import torch, so
they start in tens of milliseconds. Errors print one line to stderr and exit 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import TrtpackError


def _report(args: argparse.Namespace, data: dict, line: str) -> int:
    """One result: a JSON object with --json, else one human line."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        print(line)
    return 0


def _written(info: object) -> dict:
    """What a command that wrote a pack reports: path, digest, format, variants."""
    m = info.manifest  # type: ignore[attr-defined]
    return {"path": str(info.path), "digest": info.digest,  # type: ignore[attr-defined]
            "format_version": list(m.format_version),
            "variants": [v.name for v in m.engines]}  # fmt: skip


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ..errors import NotAPackError
    from ..reading import inspect, render

    if args.pack.startswith("oci://"):
        return _inspect_oci(args)  # the pack's manifest from a registry, without its members
    try:
        info = inspect(args.pack)
    except NotAPackError:
        return _inspect_other(args)  # not a pack: say what it is and how it would migrate
    if args.json:
        sys.stdout.write(json.dumps(info.manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render(info))
    return 0


def _inspect_other(args: argparse.Namespace) -> int:
    from ..migrations.legacy import ENGINE, PRE_PT2, convert, detect, open_migrated
    from ..reading import render

    kind = detect(args.pack)  # raises NotAPackError naming what it found
    if kind == ENGINE:
        from ..engines.plan import parse_plan

        plan = parse_plan(Path(args.pack).read_bytes(), where=args.pack)
        gpus = ", ".join(plan.compute_capabilities) or "not in the header"
        if plan.future_gpus:
            gpus += " and newer"
        from ..engines.plan import quoted_tensor_names

        names = quoted_tensor_names(Path(args.pack).read_bytes())
        print(f"{args.pack}: a bare {plan.flavor} {plan.trt_version} engine, GPUs {gpus}")
        if names:
            print(f"tensor names  {', '.join(names)}  (the bindings, as far as its bytes tell; "
                  "which are inputs, and their shapes, only a GPU runtime reads)")  # fmt: skip
        else:
            print("tensor names  not readable without a GPU (a standard TensorRT plan)")
        print(f"not a .trtpack: `trtpack pack {args.pack} --input-spec NAME:DTYPE[DIMS] "
              "--output-spec NAME:DTYPE[DIMS] -o OUT`")  # fmt: skip
        return 0
    if kind == PRE_PT2:  # its weights are pickles: describe it from the program JSON alone
        return _inspect_pre_pt2(args)
    converted = convert(args.pack)
    with open_migrated(converted, args.pack) as (_, info):
        pass
    if args.json:
        sys.stdout.write(json.dumps(info.manifest.to_dict(), indent=2, sort_keys=True) + "\n")
        return 0
    print(f"{args.pack}: a {converted.kind}, without trtpack metadata")
    print(f"would be migrated (`trtpack migrate {args.pack} OUT.trtpack`; trtpack.load migrates "
          "it in memory) to:\n")  # fmt: skip
    sys.stdout.write(render(info))
    for note in converted.notes:
        print(f"note: {note}")
    return 0


def _inspect_pre_pt2(args: argparse.Namespace) -> int:
    from ..format.manifest import _to_json_value
    from ..migrations.legacy import describe_pre_pt2
    from ..reading import render_interface

    kind, iface = describe_pre_pt2(args.pack)
    if args.json:
        out = {"kind": kind, **_to_json_value(iface)}
        sys.stdout.write(json.dumps(out, indent=2, sort_keys=True) + "\n")
        return 0
    print(f"{args.pack}: a {kind}, without trtpack metadata")
    print(
        f"would be migrated by `trtpack migrate {args.pack} OUT.trtpack` (which needs torch, "
        "to read its pickled weights with torch's weights_only loader); its interface:\n"
    )
    sys.stdout.write(render_interface(iface))
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from ..migrations.legacy import migrate

    info = migrate(args.input, args.output, overwrite=args.force, in_place=args.in_place,
                   variant=args.variant, progress=_progress(args))  # fmt: skip
    major, minor = info.manifest.format_version
    line = f"{info.path}: trtpack format {major}.{minor}  {info.digest}"
    return _report(args, _written(info), line)


def _cmd_pack(args: argparse.Namespace) -> int:
    from ..migrations.engine_file import read_description
    from ..migrations.legacy import migrate

    inputs: list = list(args.input_spec or [])
    outputs: list = list(args.output_spec or [])
    if args.inputs_json:
        more_in, more_out = read_description(args.inputs_json)
        inputs += more_in
        outputs += more_out
    info = migrate(args.engine, args.output, overwrite=args.force, inputs=inputs,
                   outputs=outputs, variant=args.variant, progress=_progress(args),
                   version_compatible=_vc(args.version_compatible))  # fmt: skip
    line = f"{info.path}: engine variant {info.manifest.engines[0].name}  {info.digest}"
    return _report(args, _written(info), line)


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..reading import human_size
    from ..signing import signature_path, verify

    if args.key is None and args.signature is not None:
        raise SystemExit("trtpack: error: --signature needs --key (the signer's public key)")
    # the signature and every member's hash, in one open of the file
    try:
        info = verify(args.pack, key=args.key, signature=args.signature,
                      progress=_progress(args))  # fmt: skip
    except (TrtpackError, OSError) as e:
        if args.json:  # a script reading --json gets JSON either way; the line on stderr too
            error = {"type": type(e).__name__, "message": str(e)}
            error |= {k: str(getattr(e, k)) for k in ("member", "field") if getattr(e, k, None)}
            data = {"path": str(args.pack), "ok": False, "error": error}
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        raise
    default_sig = signature_path(args.pack)
    sig = str(args.signature or default_sig) if args.key is not None else None
    # a signature lying beside the pack that nobody checked: say so, never a bare OK
    unchecked = str(default_sig) if args.key is None and default_sig.is_file() else None
    n = len(info.manifest.members)
    total = sum(m.size for m in info.manifest.members.values())
    data = {"path": str(info.path), "ok": True, "digest": info.digest, "members": n,
            "bytes": total, "signature": sig, "unchecked_signature": unchecked}  # fmt: skip
    line = f"OK  {info.path}  {n} members, {human_size(total)} verified  {info.digest}"
    if sig is not None:
        line = f"OK  {args.pack}  signature {sig} verified with {args.key}\n{line}"
    if unchecked is not None:
        line += (f"\nnote: signature {unchecked} NOT checked (pass --key PUBLIC_KEY): the "
                 "hashes show only that the pack matches its own manifest")  # fmt: skip
    return _report(args, data, line)


def _cmd_sign(args: argparse.Namespace) -> int:
    from ..signing import sign

    out = sign(args.pack, args.key, output=args.signature)
    return _report(args, {"path": str(args.pack), "signature": str(out)},
                   f"signed {args.pack}: {out}")  # fmt: skip


def _cmd_add_engine(args: argparse.Namespace) -> int:
    from ..writing.add import add_engine

    info = add_engine(args.pack, args.source, variant=args.variant, out=args.output,
                      version_compatible=_vc(args.version_compatible),
                      overwrite=args.force, progress=_progress(args),
                      entry_point=args.entry_point)  # fmt: skip
    m = info.manifest.entry(args.entry_point or info.manifest.default_entry_point)
    names = ", ".join(v.name for v in m.engines)
    of = f" of entry point {args.entry_point}" if args.entry_point else ""
    return _report(args, _written(info),
                   f"{info.path}: engine variants{of} {names}  {info.digest}")  # fmt: skip


def _cmd_engines(args: argparse.Namespace) -> int:
    from ..reading import human_size, inspect

    m = inspect(args.pack).manifest
    rows: list[dict[str, Any]] = []
    for v in m.engines:
        size = sum(m.members[e.member].size for e in v.engines)
        rows.append({"name": v.name, "flavor": v.target.flavor,
                     "trt_version": v.target.trt_version,
                     "compute_capabilities": list(v.target.compute_capabilities),
                     "engines": len(v.engines), "engine_bytes": size,
                     "whole_graph": v.program is None})  # fmt: skip
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2, sort_keys=True) + "\n")
        return 0
    if not rows:
        print(f"{args.pack}: no engine variant (the program runs everywhere)")
    for r in rows:
        gpus = ", ".join(r["compute_capabilities"]) or "any"
        print(f"{r['name']}  {r['flavor']} {r['trt_version']}  GPUs {gpus}  "
              f"{r['engines']} engine(s), {human_size(r['engine_bytes'])}")  # fmt: skip
    return 0


def _cmd_remove_engine(args: argparse.Namespace) -> int:
    from ..writing.remove import remove_engine

    info = remove_engine(args.pack, args.variant, out=args.output, overwrite=args.force,
                         entry_point=args.entry_point)  # fmt: skip
    m = info.manifest.entry(args.entry_point or info.manifest.default_entry_point)
    names = ", ".join(v.name for v in m.engines) or "none"
    return _report(args, _written(info), f"{info.path}: engine variants {names}  {info.digest}")


def _cmd_build(args: argparse.Namespace) -> int:
    import time

    from ..writing.build import DEFAULT_TARGETS, build, parse_range

    ranges = dict(parse_range(text) for text in args.range or ())
    start = time.perf_counter()
    targets = ",".join(args.target or DEFAULT_TARGETS)  # the same default as build()
    info = build(args.pack, targets, variant=args.variant, out=args.output, ranges=ranges,
                 overwrite=args.force, progress=_progress(args),
                 entry_point=args.entry_point)  # fmt: skip
    seconds = time.perf_counter() - start
    m = info.manifest.entry(args.entry_point or info.manifest.default_entry_point)
    v = m.engines[-1]  # the variant just added
    engine = info.manifest.members[v.engines[0].member]
    data = {**_written(info), "variant": v.name, "flavor": v.target.flavor,
            "trt_version": v.target.trt_version,
            "compute_capabilities": list(v.target.compute_capabilities),
            "engine_bytes": engine.size, "seconds": round(seconds, 3)}  # fmt: skip
    return _report(args, data, f"{info.path}: built variant {v.name} (TensorRT-RTX "
                   f"{v.target.trt_version}, compute capability "
                   f"{', '.join(v.target.compute_capabilities)}, {engine.size} bytes) in "
                   f"{seconds:.1f} s  {info.digest}")  # fmt: skip


def _cmd_run(args: argparse.Namespace) -> int:
    from .run import render, run_pack

    inputs = dict(_given_input(text) for text in args.input or ())
    # a variant the user names must run: running the program instead would be a false pass
    report = run_pack(args.pack, inputs=inputs, size=args.size, seed=args.seed,
                      device=args.device, variant=args.variant,
                      require_engine=args.variant is not None,
                      max_sample_bytes=args.max_sample_size,
                      allow_ops=args.allow_op or ())  # fmt: skip
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render(report))
    worst = report.max_abs_diff
    if args.atol is not None and not report.compared:
        why = report.fallback_reason or "the pack holds no engine variant"
        print(f"trtpack: error: --atol {args.atol}: nothing was compared, only the program ran "
              f"({why})", file=sys.stderr)  # fmt: skip
        return 1
    if args.atol is not None and worst is not None and worst > args.atol:
        print(f"trtpack: error: max |engine - program| = {worst:.3g} > --atol "
              f"{args.atol}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from ..errors import SampleMismatchError
    from ..runtime import load
    from ..samples import check_entry_points

    # a named variant must run here: checking the program instead would be a false pass
    pack = load(args.pack, device=args.device, variant=args.variant,
                require_engine=args.variant is not None,
                allow_ops=args.allow_op or ())  # fmt: skip
    names = [args.entry_point] if args.entry_point else None
    if names:
        pack[args.entry_point]  # ManifestError naming the entry points if it has none such
    multi = len(pack.entry_points) > 1
    try:
        reports = check_entry_points(pack, names)
    except SampleMismatchError as e:
        if args.json and e.report is not None:
            sys.stdout.write(json.dumps(e.report.to_dict(), indent=2, sort_keys=True) + "\n")  # type: ignore[attr-defined]
        raise
    lines = []
    for name, report in reports.items():
        where = f"{report.backend}" + (f" (variant {report.variant})" if report.variant else "")
        worst = ", ".join(f"{k} {v:.3g}" for k, v in report.worst().items()) or "no tensor outputs"
        tol = report.tolerance
        of = f"  entry point {name}:" if multi else ""
        lines.append(f"OK  {args.pack}{of}  {report.samples} reference sample(s) on "
                     f"{where} within atol {tol.atol:g} rtol {tol.rtol:g}; max |error|: "
                     f"{worst}")  # fmt: skip
    # one program (or --entry-point): its report as before; several: one per entry point
    data = (next(iter(reports.values())).to_dict() if names or not multi
            else {"entry_points": {n: r.to_dict() for n, r in reports.items()}})  # fmt: skip
    return _report(args, data, "\n".join(lines))


def _cmd_audit(args: argparse.Namespace) -> int:
    from ..checks.audit import SEVERITIES, audit, render, to_sarif

    reports = [audit(path, key=args.key) for path in args.files]
    if args.sarif:
        sys.stdout.write(json.dumps(to_sarif(reports), indent=2) + "\n")
    elif args.json:
        data = {"files": [r.to_dict() for r in reports]}
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render(reports))
    if args.fail_on == "never":
        return 0
    bar = SEVERITIES.index(args.fail_on)
    worst = max((SEVERITIES.index(r.worst) for r in reports if r.worst), default=-1)
    return 2 if worst >= bar else 0


def _cmd_preflight(args: argparse.Namespace) -> int:
    from ..checks.preflight import preflight, read_targets, render

    targets = list(args.target or [])
    for path in args.targets or ():
        targets += read_targets(path)
    reports = preflight(args.pack, targets)
    if args.json:
        data = {"pack": args.pack, "targets": [r.to_dict() for r in reports]}
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render(reports))
    if args.require_engine:
        missing = [r.target for r in reports if r.outcome != "engine"]
        if missing:
            print(f"trtpack: error: no engine variant would run on {len(missing)} target(s): "
                  f"{'; '.join(missing)}", file=sys.stderr)  # fmt: skip
            return 1
    return 0


def _cmd_contract(args: argparse.Namespace) -> int:
    from ..integrations.kserve import request_contract

    doc = request_contract(args.pack, format=args.format, name=args.name)
    text = json.dumps(doc, indent=2) + "\n"
    if args.output:
        from ..format.atomic import atomic_write

        with atomic_write(args.output) as f:
            f.write(text.encode())
    else:
        sys.stdout.write(text)
    return 0


def _byte_size(text: str) -> int:
    """``1073741824``, ``512MiB``, ``4GiB``, ``500MB``, ``2G`` -> bytes (K, M, G, T: powers of
    1000; Ki, Mi, Gi, Ti: powers of 1024). Every size flag of the CLI reads through it."""
    units = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
             "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}  # fmt: skip
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1073741824, 4GiB)")
    return int(float(match.group(1)) * units[match.group(2) or ""])


def _given_input(text: str) -> tuple[str, object]:
    """``NAME=FILE.npy`` (a tensor) or ``NAME=NUMBER``."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise TrtpackError(f"--input {text!r}: expected NAME=FILE.npy or NAME=NUMBER")
    if value.endswith(".npy"):
        import numpy as np
        import torch

        return name, torch.from_numpy(np.load(value, allow_pickle=False))
    try:
        return name, int(value)
    except ValueError:
        try:
            return name, float(value)
        except ValueError:
            raise TrtpackError(
                f"--input {text!r}: {value!r} is neither a .npy file nor a number"
            ) from None


def _cmd_export_triton(args: argparse.Namespace) -> int:
    from ..integrations.triton import export_triton

    model = export_triton(
        args.pack, args.repository, name=args.name, backend=args.backend,
        max_batch_size=args.max_batch_size, dynamic_batching=args.dynamic_batching,
        max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
        instance_kind=args.instance_kind, overwrite=args.force,
        site_dirs=() if args.no_site_dirs else args.site_dirs,  # None: this environment's
        entry_point=args.entry_point,
    )  # fmt: skip
    data = {"path": str(model.path), "backend": model.backend, "plans": model.plans,
            "config": model.config, "site_dirs": list(model.site_dirs)}  # fmt: skip
    if model.backend == "python":
        line = f"{model.path}: config.pbtxt and 1/ (python backend: model.py, model.trtpack)"
        dirs = ", ".join(model.site_dirs) or "none (the server's TRTPACK_SITE_DIRS)"
        line += f"\n  imports trtpack, torch and numpy from: {dirs}"
    else:
        plans = ", ".join(f"{cc}: {f}" for cc, f in model.plans.items())
        line = f"{model.path}: config.pbtxt and 1/ ({plans})"
    return _report(args, data, line)


def _progress(args: argparse.Namespace) -> bool | None:
    """--progress: always; --quiet: never; else only when stderr is a terminal."""
    return True if args.progress else False if args.quiet else None


def _cmd_push(args: argparse.Namespace) -> int:
    from ..integrations.oci import push
    from ..reading import human_size

    signature = False if args.no_signature else args.signature or True
    pushed = push(args.pack, args.reference, layout=args.layout, plain_http=args.plain_http,
                  registry_config=args.registry_config, progress=_progress(args),
                  signature=signature, timeout=args.timeout)  # fmt: skip
    data = {"reference": f"oci://{pushed.reference}", "manifest_digest": pushed.manifest_digest,
            "layout": pushed.layout, "uploaded": pushed.uploaded, "skipped": pushed.skipped,
            "bytes_uploaded": pushed.bytes_uploaded,
            "signature": pushed.signature}  # fmt: skip
    signed = f", signature {pushed.signature}" if pushed.signature else ""
    return _report(
        args,
        data,
        f"{pushed.reference}  {pushed.manifest_digest}  "
        f"{len(pushed.uploaded)} member(s) uploaded, {len(pushed.skipped)} already "
        f"there ({human_size(pushed.bytes_uploaded)} sent, {pushed.layout} layout{signed})",
    )


def _cmd_pull(args: argparse.Namespace) -> int:
    from ..integrations.oci import pull

    variants = args.variant if args.variant else args.variants
    info = pull(args.reference, args.output, overwrite=args.force, variants=variants,
                plain_http=args.plain_http, registry_config=args.registry_config,
                progress=_progress(args), signature=not args.no_signature,
                max_size=args.max_size, timeout=args.timeout)  # fmt: skip
    line = f"{info.path}  {info.digest}"
    if info.left_out:
        line += f"  engine variants: {', '.join(info.variants) or 'none (the program only)'}"
        if not args.quiet and not args.json:
            for name, why in info.left_out.items():
                print(f"trtpack: note: left out variant {name}: {why}", file=sys.stderr)
    if info.signature:
        line += f"  signature {info.signature}"
    elif "removed the stale" in info.signature_note and not args.quiet and not args.json:
        print(f"trtpack: note: no signature: {info.signature_note}", file=sys.stderr)
    data = {**_written(info), "reference": info.reference, "layout": info.layout,
            "left_out": info.left_out, "bytes_downloaded": info.bytes_downloaded,
            "signature": info.signature, "signature_note": info.signature_note}  # fmt: skip
    return _report(args, data, line)


def _inspect_oci(args: argparse.Namespace) -> int:
    from ..integrations.oci import inspect, render_remote

    remote = inspect(args.pack, plain_http=args.plain_http, registry_config=args.registry_config,
                     timeout=args.timeout)  # fmt: skip
    if args.json:
        data = remote.info.manifest.to_dict()
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_remote(remote))
    return 0


def _registry_options(p: argparse.ArgumentParser, transfer: bool = True) -> None:
    """push, pull and inspect oci://: how to reach the registry (and show progress)."""
    p.add_argument(
        "--plain-http",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="HTTP without TLS (default: only for localhost/127.0.0.0/8)",
    )
    p.add_argument(
        "--registry-config",
        metavar="PATH",
        help="a Docker config.json with credentials (besides ~/.docker/)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="how long the registry may stay silent (default: $TRTPACK_OCI_TIMEOUT, else 30)",
    )
    if transfer:
        _progress_options(p)


def _progress_options(p: argparse.ArgumentParser) -> None:
    """Every command that can take seconds: a progress line on stderr when it is a terminal
    (trtpack.format.progress, the one mechanism), --progress forces it, --quiet silences it."""
    shown = p.add_mutually_exclusive_group()
    shown.add_argument(
        "--progress",
        action="store_true",
        help="progress on stderr even when it is not a terminal",
    )
    shown.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress line (results and warnings still print)",
    )


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pack", help="path to a .trtpack file, or oci://HOST/REPOSITORY:TAG")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    _registry_options(p, transfer=False)


def _verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pack", help="path to a .trtpack file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--key", help="the signer's PEM public key: check the signature first")
    p.add_argument("--signature", help="the signature bundle (default: PACK.sig)")
    _progress_options(p)


def _sign_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pack", help="path to a .trtpack file")
    p.add_argument("--key", required=True, help="an elliptic-curve private key (PEM)")
    p.add_argument("--signature", help="where to write the bundle (default: PACK.sig)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pack", help="the .trtpack to add to (replaced atomically unless -o)")
    p.add_argument("source", help="a .plan (whole-graph engine) or a .trtpack with variants")
    p.add_argument("--variant", help="name of the new variant (default: from its target GPUs)")
    _entry_point_option(p)
    _version_compatible_option(p)
    p.add_argument("-o", "--output", help="write the result here instead of replacing PACK")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    _progress_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _engines_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pack", help="a .trtpack")
    p.add_argument("--json", action="store_true", help="print the variants as JSON")


def _remove_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pack", help="the .trtpack to remove from (replaced atomically unless -o)")
    p.add_argument("variant", help="the engine variant's name (`trtpack engines PACK` lists them)")
    _entry_point_option(p, adds=False)
    p.add_argument("-o", "--output", help="write the result here instead of replacing PACK")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _entry_point_option(p: argparse.ArgumentParser, adds: bool = True) -> None:
    refused = "; one that writes state in place is refused" if adds else ""
    p.add_argument("--entry-point", metavar="NAME",
                   help="a multi-entry pack: the entry point the variant belongs to (default: "
                   f"the default one){refused}")  # fmt: skip


def _build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pack", help="the .trtpack to build from and add to (replaced unless -o)")
    _entry_point_option(p)
    p.add_argument(
        "--target",
        action="append",
        metavar="CC[,CC...]",
        help="compute capabilities to build for, e.g. 8.6,8.9,12.0 (repeatable; default 8.6,8.9, "
        "as trtpack.build)",
    )
    p.add_argument("--variant", help="name of the new variant (default: from its targets)")
    p.add_argument(
        "--range",
        action="append",
        metavar="SYMBOL=MIN..MAX[@OPT]",
        help="narrow (or bound) a symbol for this engine's profile (repeatable)",
    )
    p.add_argument("-o", "--output", help="write the result here instead of replacing PACK")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    _progress_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _migrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="a .pt2/.ep file, or a .trtpack of an older format")
    p.add_argument("output", help="the .trtpack to write (atomically)")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument("--in-place", action="store_true", help="allow OUTPUT to be INPUT")
    p.add_argument("--variant", help="name for the engine variant of a torch_tensorrt file")
    _progress_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _pack_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("engine", help="a serialized TensorRT / TensorRT-RTX engine (.plan)")
    p.add_argument(
        "--input-spec",
        action="append",
        metavar="SPEC",
        help="an input, in call order: NAME:DTYPE[DIMS], a dim N, MIN..MAX@OPT or "
        "NAME=MIN..MAX@OPT (a named dim is shared by name), e.g. 'x:float32[1..64@8,3,224,224]'",
    )
    p.add_argument("--output-spec", action="append", metavar="SPEC",
                   help="an output, same form (dims: N or a dim name)")  # fmt: skip
    p.add_argument("--inputs-json", help='a JSON file {"inputs": [...], "outputs": [...]}')
    p.add_argument("--variant", help="name of the engine variant (default: from its GPUs)")
    _version_compatible_option(p)
    p.add_argument("-o", "--output", required=True, help="the .trtpack to write")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    _progress_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


#: the exit statuses of every command (run and check name their own cases of 1)
_EXIT_STATUS = "exit status: 0 done; 1 an error (one line on stderr); 2 a usage error"


def _check_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "exit status: 0 every sample within tolerance on the backend that ran; 1 an error, a "
        "sample outside tolerance, or a --variant that cannot run here; 2 a usage error"
    )
    p.add_argument("pack", help="a .trtpack saved with samples=")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: the GPU if any)")
    p.add_argument("--variant", help="check this engine variant (exit 1 if it cannot run here)")
    p.add_argument("--entry-point", metavar="NAME",
                   help="a multi-entry pack: check only this entry point's samples (default: "
                   "every entry point that has samples)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _allow_op_argument(p)


def _allow_op_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-op",
        action="append",
        metavar="NS::OP",
        help="let the program call this custom operator (a pattern such as 'mylib::*' too); "
        "it must be registered in this process",
    )


def _audit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="a .pt2 / .ep, .plan, .onnx or .trtpack (never loaded)")  # fmt: skip
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print the findings as JSON")
    shown.add_argument("--sarif", action="store_true", help="print SARIF 2.1.0 (code scanning)")
    p.add_argument("--fail-on", choices=["info", "low", "medium", "high", "never"],
                   default="high", help="exit 2 if a finding is this severe or worse "
                   "(default: high)")  # fmt: skip
    p.add_argument("--key", help="a .trtpack signer's PEM public key: check its signature")


def _preflight_arguments(p: argparse.ArgumentParser) -> None:
    from ..engines.select import TARGET_KEYS

    keys = "; ".join(f"{k}: {v}" for k, v in TARGET_KEYS.items())
    p.add_argument("pack", help="a .trtpack")
    p.add_argument("--target", action="append", metavar="SPEC",
                   help="a machine as KEY=VALUE,... e.g. 'sm=8.9,trt=10.13,os=linux,"
                   f"arch=x86_64' (repeatable). Keys: {keys}")  # fmt: skip
    p.add_argument("--targets", action="append", metavar="FILE",
                   help="a fleet: one SPEC per line, # comments (repeatable)")  # fmt: skip
    p.add_argument("--require-engine", action="store_true",
                   help="exit 1 if any target would fall back to the program")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _contract_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pack", help="a .trtpack")
    p.add_argument("--format", choices=["jsonschema", "openapi"], default="jsonschema",
                   help="jsonschema (default): a KServe v2 / Triton inference request body; "
                   "openapi: an OpenAPI 3.1 document for POST /v2/models/NAME/infer")  # fmt: skip
    p.add_argument("--name", help="the model's name on the server (default: the file's stem)")
    p.add_argument("-o", "--output", help="write the document here (default: stdout)")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "exit status: 0 ran (and with --atol: engine and program compared within it); 1 an "
        "error, a --variant that cannot run here, engine and program differing by more than "
        "--atol, or --atol given while no engine ran (nothing compared); 2 a usage error"
    )
    p.add_argument("pack", help="a .trtpack (or any file load migrates)")
    p.add_argument(
        "--input",
        action="append",
        metavar="NAME=VALUE",
        help="give an input: NAME=FILE.npy or NAME=NUMBER (others are sampled)",
    )
    p.add_argument(
        "--size",
        choices=["opt", "min", "max", "random"],
        default="opt",
        help="sampled dynamic dims: each symbol's opt (default), min, max, random",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled inputs")
    p.add_argument(
        "--max-sample-size",
        type=_byte_size,
        default=256 << 20,
        metavar="SIZE",
        help="refuse sampled inputs larger than this in all (default 256MiB; e.g. 4GiB, 500MB)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: the GPU if any)")
    p.add_argument("--variant", help="run this engine variant (exit 1 if it cannot run here)")
    _allow_op_argument(p)
    p.add_argument(
        "--atol",
        type=float,
        help="exit 1 if engine and program differ by more, or if no engine ran (nothing compared)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _export_triton_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pack", help="a .trtpack")
    p.add_argument("repository", help="the model repository folder")
    p.add_argument("--name", help="the model's name (default: the pack's file name)")
    p.add_argument("--entry-point", metavar="NAME",
                   help="a multi-entry pack: the entry point this model serves, one model per "
                   "entry point (default: the pack's default); one that shares state with "
                   "another is refused")  # fmt: skip
    p.add_argument(
        "--backend",
        choices=("tensorrt", "python"),
        help="tensorrt: the whole-graph engine as model.plan; python: the pack itself, run by "
        "trtpack.load in Triton's Python backend (engines where they can run, else the "
        "ExportedProgram). Default: tensorrt if the pack has a whole-graph engine, else python",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=0,
        help="> 0: Triton batches along the first dim, which must be dynamic",
    )
    p.add_argument("--dynamic-batching", action="store_true",
                   help="Triton's dynamic batcher (needs --max-batch-size)")  # fmt: skip
    p.add_argument("--max-queue-delay-us", type=int, metavar="US",
                   help="the batcher's queue delay (implies --dynamic-batching)")  # fmt: skip
    p.add_argument("--instances", type=int, metavar="N", help="instance_group count")
    p.add_argument(
        "--instance-kind",
        type=lambda s: s.upper() if s.upper().startswith("KIND_") else f"KIND_{s.upper()}",
        choices=("KIND_AUTO", "KIND_CPU", "KIND_GPU"),
        help="instance_group kind: KIND_CPU, KIND_GPU or KIND_AUTO (cpu/gpu/auto work too)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--site-dir",
        dest="site_dirs",
        action="append",
        metavar="DIR",
        help="python backend: a site-packages folder the model imports trtpack, torch and "
        "numpy from (Triton's stub ignores PYTHONPATH; TRTPACK_SITE_DIRS on the server also "
        "works); repeatable. Default: the folders this environment imports them from",
    )
    where.add_argument(
        "--no-site-dirs",
        action="store_true",
        help="python backend: record no folder (the server's TRTPACK_SITE_DIRS names them)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing model directory")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _push_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pack", help="the .trtpack to push")
    p.add_argument("reference", help="oci://HOST[:PORT]/REPOSITORY:TAG")
    p.add_argument(
        "--layout",
        choices=["modelpack", "trtpack"],
        default="modelpack",
        help="modelpack (default): CNCF ModelPack, listed by ModelPack tools; trtpack: "
        "artifactType application/vnd.trtpack.v1, the pack's manifest.json as config",
    )
    signed = p.add_mutually_exclusive_group()
    signed.add_argument(
        "--signature",
        metavar="PATH",
        help="the signature bundle to attach (default: PACK.sig, if there is one)",
    )
    signed.add_argument(
        "--no-signature", action="store_true", help="attach no signature, even if PACK.sig exists"
    )
    _registry_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _pull_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", help="oci://HOST[:PORT]/REPOSITORY:TAG (or @sha256:...)")
    p.add_argument("-o", "--output", required=True, help="the .trtpack to write")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--variant",
        action="append",
        metavar="NAME",
        help="pull the program and this engine variant only (repeatable)",
    )
    which.add_argument(
        "--variants",
        choices=["all", "auto", "none"],
        default="all",
        help="all (default): the pack as pushed, byte for byte; auto: the variants that can "
        "run on this machine; none: the program only",
    )
    p.add_argument(
        "--max-size",
        type=_byte_size,
        metavar="SIZE",
        help="refuse a pack whose members are larger (bytes, or e.g. 200GiB; default 64 GiB)",
    )
    p.add_argument(
        "--no-signature",
        action="store_true",
        help="do not fetch the signature attached in the registry (default: write OUTPUT.sig)",
    )
    _registry_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


#: a command: its help line, what defines its arguments, what runs it
_Command = tuple[
    str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]
]
_COMMANDS: dict[str, _Command] = {
    "inspect": (
        "show a pack's inputs, outputs, engines and members",
        _inspect_arguments,
        _cmd_inspect,
    ),
    "verify": (
        "check every member's SHA-256 against the manifest",
        _verify_arguments,
        _cmd_verify,
    ),
    "sign": (
        "sign a pack's manifest (OpenSSF model-signing bundle)",
        _sign_arguments,
        _cmd_sign,
    ),
    "add-engine": (
        "add a TensorRT engine variant to a pack (other members are copied byte for byte)",
        _add_engine_arguments,
        _cmd_add_engine,
    ),
    "engines": (
        "list a pack's engine variants",
        _engines_arguments,
        _cmd_engines,
    ),
    "remove-engine": (
        "remove an engine variant from a pack (other members are copied byte for byte)",
        _remove_engine_arguments,
        _cmd_remove_engine,
    ),
    "build": (
        "build a TensorRT-RTX engine variant from the pack's program, for named GPUs "
        "(on this machine: no GPU needed)",
        _build_arguments,
        _cmd_build,
    ),
    "migrate": (
        "write a torch.export / torch_tensorrt file, or an older pack, as a current .trtpack",
        _migrate_arguments,
        _cmd_migrate,
    ),
    "pack": (
        "pack a bare TensorRT engine with a description of its inputs",
        _pack_arguments,
        _cmd_pack,
    ),
    "check": (
        "run the pack's reference samples on this machine's backend, compare",
        _check_arguments,
        _cmd_check,
    ),
    "run": (
        "run a pack on sample (or given) inputs, on its engines and its program, and compare",
        _run_arguments,
        _cmd_run,
    ),
    "audit": (
        "what loading a .pt2/.ep/.plan/.onnx/.trtpack would execute or trust, without loading it",
        _audit_arguments,
        _cmd_audit,
    ),
    "preflight": (
        "which engine variant load would pick on described machines, and why not the others",
        _preflight_arguments,
        _cmd_preflight,
    ),
    "contract": (
        "the request a server should accept (JSON Schema of a KServe v2 request, or OpenAPI)",
        _contract_arguments,
        _cmd_contract,
    ),
    "export-triton": (
        "write a Triton model repository (TensorRT or Python backend)",
        _export_triton_arguments,
        _cmd_export_triton,
    ),
    "push": (
        "push a pack to an OCI registry (one layer per member)",
        _push_arguments,
        _cmd_push,
    ),
    "pull": (
        "pull a pack from an OCI registry",
        _pull_arguments,
        _cmd_pull,
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The trtpack command's parser; with ``command``, that subcommand's arguments alone
    (``main`` passes the one it runs: defining them all took longer than reading a pack)."""
    parser = argparse.ArgumentParser(
        prog="trtpack",
        description="Self-describing TensorRT deployment artifacts (.trtpack).",
    )
    parser.add_argument("--version", action="version", version=f"trtpack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, arguments, run) in _COMMANDS.items():
        if command is None or name == command:
            p = sub.add_parser(name, help=summary, epilog=_EXIT_STATUS)
            arguments(p)
            p.set_defaults(func=run)
    return parser


_PYTHON_AND_FLAG = re.compile(r"\b[a-z_]+=(?:\.\.\.|[^\s()]+) \((--[a-z][a-z-]*)\)")


def cli_text(message: str) -> str:
    """Library messages name the argument and the flag (``pass overwrite=True (--force)``);
    the command line shows the flag alone (``pass --force``)."""
    return _PYTHON_AND_FLAG.sub(r"\1", message)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, without Python's source location and code line."""
    text = cli_text(str(message)).removeprefix("trtpack: ")
    print(f"trtpack: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in _COMMANDS else None  # else: all, for help/errors
    args = build_parser(command).parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return func(args)
    except TrtpackError as e:
        print(f"trtpack: error: {cli_text(str(e))}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:  # an optional dependency (torch, oras...) not installed
        from ..errors import missing_dependency

        missing = missing_dependency(e, f"trtpack {args.command}")
        if missing is None:
            raise
        print(f"trtpack: error: {missing}", file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError) as e:
        print(f"trtpack: error: {e}", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown


def _version_compatible_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--version-compatible",
        choices=["lean-embedded", "lean-excluded"],
        help="the plan was built version-compatible (a standard TensorRT plan's header does not "
        "say), with the lean runtime embedded (host code: loaded only from a signed or trusted "
        "pack) or excluded (--excludeLeanRuntime)",
    )


def _vc(option: str | None) -> str | None:
    return option.replace("-", "_") if option else None
