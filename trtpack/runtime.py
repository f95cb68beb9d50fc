"""``load``: a .trtpack file -> a callable with the model's own calling convention.

The call path is: check the call against the manifest's contract (microseconds), then run
the TensorRT engines where a variant fits this machine, else the ExportedProgram.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.export import ExportedProgram

from .container import PathLike
from .contract import Contract
from .errors import ManifestError
from .info import PackInfo, open_pack
from .manifest import Manifest
from .program import load_program, runnable


def default_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def _normalize(device: str | torch.device | None) -> torch.device:
    if device is None:
        return default_device()
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


class LoadedPack:
    """A loaded pack. Call it like the model: ``pack(x, mask=m)``.

    Attributes: ``manifest``, ``exported_program`` (None for an engines-only pack),
    ``device``, ``backend`` (``"tensorrt"`` or ``"exported_program"``), ``fallback_reason``
    (why engines are not used, or None), ``info`` (path, digest, size).
    """

    def __init__(
        self,
        info: PackInfo,
        *,
        device: torch.device,
        exported_program: ExportedProgram | None,
        module: Any,
        backend: str,
        fallback_reason: str | None,
        contract: Contract,
    ) -> None:
        self.info = info
        self.manifest: Manifest = info.manifest
        self.device = device
        self.exported_program = exported_program
        self.backend = backend
        self.fallback_reason = fallback_reason
        self._module = module
        self._contract = contract

    @property
    def digest(self) -> str:
        return self.info.digest

    @property
    def module(self) -> Any:
        """The underlying runnable (a GraphModule); calling it skips the input check."""
        return self._module

    def check_inputs(self, *args: Any, **kwargs: Any) -> None:
        """Check a call against the manifest without running it. Raises InputMismatchError."""
        self._contract(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._contract(args, kwargs)
        return self._module(*args, **kwargs)

    def __repr__(self) -> str:
        names = ", ".join(i.name for i in self.manifest.inputs)
        return (
            f"<LoadedPack {self.info.path.name} inputs=({names}) backend={self.backend} "
            f"device={self.device}>"
        )


def load(
    path: PathLike,
    *,
    device: str | torch.device | None = None,
    verify: bool = True,
) -> LoadedPack:
    """Load a pack and return a callable that checks each call against the manifest.

    ``device``: where to run (default: the current CUDA device if any, else CPU).
    ``verify``: check the SHA-256 of every member that is loaded, before using it.
    """
    dev = _normalize(device)
    with open_pack(path) as (reader, info):
        manifest = info.manifest
        if manifest.program is None:
            raise ManifestError(f"{info.path}: the pack has no ExportedProgram")
        if verify:
            for name in (manifest.program.graph, manifest.program.weights):
                member = manifest.members[name]
                reader.verify(name, member.sha256, member.size)
        ep = load_program(reader, manifest.program, device=dev)
    return LoadedPack(
        info,
        device=dev,
        exported_program=ep,
        module=runnable(ep),
        backend="exported_program",
        fallback_reason=None,
        contract=Contract(manifest, device=dev),
    )
