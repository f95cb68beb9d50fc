"""The ``trtpack`` command: a thin layer over the library.

Commands that only read a pack's manifest (``inspect``, ``verify``) never import torch, so
they start in tens of milliseconds. Errors print one line to stderr and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ._version import __version__
from .errors import TrtpackError


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .info import inspect, render

    info = inspect(args.pack)
    if args.json:
        sys.stdout.write(json.dumps(info.manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render(info))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .info import human_size, verify

    info = verify(args.pack)
    n = len(info.manifest.members)
    total = sum(m.size for m in info.manifest.members.values())
    print(f"OK  {info.path}  {n} members, {human_size(total)} verified  {info.digest}")
    return 0


def _cmd_add_engine(args: argparse.Namespace) -> int:
    from .engines.saving import add_engine

    if args.output and not args.force and Path(args.output).exists():
        print(f"trtpack: error: {args.output} exists (use --force to replace it)", file=sys.stderr)
        return 1
    info = add_engine(args.pack, args.source, variant=args.variant, out=args.output)
    names = ", ".join(v.name for v in info.manifest.engines)
    print(f"{info.path}: engine variants {names}  {info.digest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trtpack",
        description="Self-describing TensorRT deployment artifacts (.trtpack).",
    )
    parser.add_argument("--version", action="version", version=f"trtpack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="show a pack's inputs, outputs, engines and members")
    p.add_argument("pack", help="path to a .trtpack file")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("verify", help="check every member's SHA-256 against the manifest")
    p.add_argument("pack", help="path to a .trtpack file")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser(
        "add-engine",
        help="add a TensorRT engine variant to a pack (other members are copied byte for byte)",
    )
    p.add_argument("pack", help="the .trtpack to add to (replaced atomically unless -o)")
    p.add_argument("source", help="a .plan (whole-graph engine) or a .trtpack with variants")
    p.add_argument("--variant", help="name of the new variant (default: from its target GPUs)")
    p.add_argument("-o", "--output", help="write the result here instead of replacing PACK")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(func=_cmd_add_engine)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except TrtpackError as e:
        print(f"trtpack: error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, IsADirectoryError, PermissionError) as e:
        print(f"trtpack: error: {e}", file=sys.stderr)
        return 1
