"""``load``: a .trtpack file -> a callable with the model's own calling convention.

The call path is: check the call against the manifest's contract (microseconds), then run
the TensorRT engines where a variant fits this machine, else the ExportedProgram.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch.export import ExportedProgram

from .container import PackReader, PathLike
from .contract import Contract
from .errors import ManifestError
from .info import PackInfo, open_pack
from .manifest import Manifest
from .program import load_program, runnable

T = TypeVar("T")


def _verified(reader: PackReader, manifest: Manifest, verify: bool, build: Callable[[], T]) -> T:
    """Run ``build`` with the program's members verified. The graph (small, and parsed) is
    checked first; the weights (large, only mapped, never computed on while loading) are hashed
    on a second thread while the program is rebuilt, and the result is returned only once
    that hash has matched."""
    if not verify or manifest.program is None:
        return build()
    graph, weights = manifest.program.graph, manifest.program.weights
    reader.verify(graph, manifest.members[graph].sha256, manifest.members[graph].size)
    with ThreadPoolExecutor(1) as pool:
        check = pool.submit(
            reader.verify, weights, manifest.members[weights].sha256, manifest.members[weights].size
        )
        try:
            result = build()
        finally:
            check.result()  # an IntegrityError here wins over anything build() raised
    return result


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
        ep = _verified(reader, manifest, verify, lambda: load_program(reader, manifest, device=dev))
    return LoadedPack(
        info,
        device=dev,
        exported_program=ep,
        module=runnable(ep),
        backend="exported_program",
        fallback_reason=None,
        contract=Contract(manifest, device=dev),
    )
