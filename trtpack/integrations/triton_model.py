"""The Triton python-backend model of a trtpack pack. ``trtpack export-triton --backend python``
copies this file to ``REPO/NAME/1/model.py``, beside the pack (``REPO/NAME/1/model.trtpack``).

It runs the pack with ``trtpack.load`` (engines where a variant can run, else the
ExportedProgram) on the instance's device, takes Triton's input tensors by the manifest's
input names (inputs torch.export specialized to a constant take their exported value), checks
every call against the manifest and returns the tensor outputs by the manifest's output names.
A call the manifest refuses gets a Triton error (INVALID_ARG) whose message is trtpack's own.
With ``max_batch_size`` > 0 the requests of one ``execute`` (dynamic batching) run as one call
where their shapes allow it.

Where the packages come from. Triton's stub (``triton_python_backend_stub``) embeds the Python
it was built for (``libpython3.X``) in isolated mode: PYTHONPATH, the user site and any
virtualenv are ignored, and it runs that Python's own prefix (on Debian, ``/usr``). The stub
imports ``triton_python_backend_utils`` (which imports numpy) right after this file, before
``initialize``; so this file, when imported, puts the folders named by ``TRTPACK_SITE_DIRS``
(the server's environment, ``os.pathsep``-separated) and by ``SITE_DIRS`` below (written by
``export-triton --site-dir``) first on ``sys.path``, read as site-packages (their ``.pth``
files too: an editable install of trtpack works). numpy, torch and trtpack are imported from
there.

Tensors cross the stub through DLPack, never through NumPy: the stub's pybind11 predates NumPy 2
(it imports ``numpy.core.multiarray`` and reads NumPy 1's array-descriptor layout), and under
NumPy 2 an array handed to ``pb_utils.Tensor`` reaches the client with 0 bytes of data ("cannot
reshape array of size 0"; "output tensor shape does not match size of output" where Triton
checks). With DLPack the NumPy version does not matter, and bfloat16 (which the stub's NumPy
conversion refuses) works. tests/test_triton.py::test_the_stubs_numpy_abi shows both.
"""

from __future__ import annotations

import json
import os
import site
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SITE_DIRS_ENV = "TRTPACK_SITE_DIRS"
SITE_DIRS: list[str] = []  # export-triton --site-dir: the folders, written here


def site_dirs(recorded: list[str], environ: Mapping[str, str] = os.environ) -> list[str]:
    """The folders to import from: ``TRTPACK_SITE_DIRS`` first, then those recorded."""
    from_env = [d for d in environ.get(SITE_DIRS_ENV, "").split(os.pathsep) if d]
    return [*from_env, *recorded]


def add_site_dirs(dirs: list[str]) -> list[str]:
    """Put ``dirs`` (and what their ``.pth`` files name) first on ``sys.path``, in order.
    Returns the entries added."""
    before = list(sys.path)
    for d in dirs:
        site.addsitedir(d)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before
    return added


if __name__ != "trtpack.integrations.triton_model":  # model.py in Triton, not the library
    add_site_dirs(site_dirs(SITE_DIRS))


class TritonPythonModel:
    """Triton's python-backend model interface: initialize, execute, finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        try:
            import torch
            import triton_python_backend_utils as pb_utils

            import trtpack
            from trtpack.integrations.triton import PACK_FILE, PACK_PARAMETER, python_interface
        except ImportError as e:
            raise ImportError(
                f"trtpack model {config.get('name')!r}: {e} in Triton's Python "
                f"{sys.version.split()[0]} ({sys.prefix}); name the site-packages folder that "
                f"holds trtpack, torch and numpy for Python "
                f"{sys.version_info[0]}.{sys.version_info[1]} with `trtpack export-triton "
                f"--site-dir` or {SITE_DIRS_ENV} in the server's environment "
                f"(sys.path: {sys.path})"
            ) from e
        self.torch, self.pb, self.trtpack = torch, pb_utils, trtpack
        params = config.get("parameters") or {}
        pack_file = (params.get(PACK_PARAMETER) or {}).get("string_value") or PACK_FILE
        path = Path(__file__).resolve().parent / pack_file
        kind = args.get("model_instance_kind")
        device = None  # KIND_MODEL: load()'s default
        if kind == "CPU":
            device = "cpu"
        elif kind == "GPU":
            device = f"cuda:{args.get('model_instance_device_id', 0)}"
        self.pack = trtpack.load(path, device=device, inference_mode=True)  # serving only
        entry = (params.get("trtpack_entry_point") or {}).get("string_value")
        if entry:  # a multi-entry pack (format 1.4): the entry point this model serves
            self.pack = self.pack[entry]
        self.batched = int(config.get("max_batch_size") or 0) > 0
        self.iface = python_interface(
            self.pack.manifest, int(config.get("max_batch_size") or 0), str(path)
        )
        for side, wanted in (("input", self.iface.inputs), ("output", self.iface.outputs)):
            named = [t.get("name") for t in config.get(side) or ()]
            if named != [t.name for t in wanted]:
                raise trtpack.RegistryError(
                    f"{path}: config.pbtxt's {side}s {named} are not the pack's "
                    f"{[t.name for t in wanted]}; export the model again"
                )
        self.by_name = {t.name: t for t in (*self.iface.inputs, *self.iface.outputs)}
        reason = f": {self.pack.fallback_reason}" if self.pack.fallback_reason else ""
        numpy = sys.modules.get("numpy")
        _log(
            pb_utils,
            f"trtpack: {config.get('name')} runs {path.name} on {self.pack.device} "
            f"({self.pack.backend}{reason}); Python {sys.version.split()[0]}, torch "
            f"{torch.__version__}, numpy {getattr(numpy, '__version__', None)}, "
            f"trtpack {trtpack.__version__}",
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        if self.batched and len(requests) > 1:
            try:
                return self._execute_together(requests)
            except Exception:  # each request then gets its own answer or error
                pass
        return [self._respond(r) for r in requests]

    def finalize(self) -> None:
        del self.pack  # engines and weights are released with the stub process anyway

    # --- one request -----------------------------------------------------------------------

    def _respond(self, request: Any) -> Any:
        try:
            outputs = self._call(self._inputs(request))
        except Exception as e:  # the client gets the error, the model lives on
            return self.pb.InferenceResponse(output_tensors=[], error=self._error(e))
        return self.pb.InferenceResponse(output_tensors=self._tensors(outputs))

    def _inputs(self, request: Any) -> dict[str, Any]:
        given = {}
        for t in self.iface.inputs:
            tensor = self.pb.get_input_tensor_by_name(request, t.name)
            if tensor is None:
                raise self.trtpack.InputMismatchError(f"input {t.name} is missing", input=t.name)
            given[t.name] = self.torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
        return given

    def _call(self, given: dict[str, Any]) -> dict[str, Any]:
        """Run the pack on tensors by input name; its tensor outputs by output name."""
        manifest, torch = self.pack.manifest, self.torch
        leaves = []
        for spec in manifest.inputs:
            t = self.by_name.get(spec.name)
            if t is None:
                leaves.append(spec.value)  # a constant torch.export specialized
                continue
            value = given[spec.name]
            if t.python_scalar:
                leaves.append(value.reshape(-1)[0].item() if value.numel() == 1 else value)
            else:
                leaves.append((value.reshape(()) if t.scalar else value).to(self.pack.device))
        args, kwargs = self.pack.call_of(leaves)
        out = self.pack(*args, **kwargs)
        flat = torch.utils._pytree.tree_leaves(out, is_leaf=lambda v: v is None)
        if len(flat) != len(manifest.outputs):
            raise self.trtpack.RegistryError(
                f"the model returned {len(flat)} values, the manifest names "
                f"{len(manifest.outputs)} outputs"
            )
        return {
            spec.name: value
            for spec, value in zip(manifest.outputs, flat)
            if spec.name in self.by_name
        }

    def _tensors(self, outputs: dict[str, Any]) -> list[Any]:
        tensors = []
        for t in self.iface.outputs:
            value = outputs[t.name].detach()
            if t.scalar:
                value = value.reshape(1)
            capsule = self.torch.utils.dlpack.to_dlpack(value.contiguous())
            tensors.append(self.pb.Tensor.from_dlpack(t.name, capsule))
        return tensors

    def _error(self, e: Exception) -> Any:
        error = self.pb.TritonError
        if isinstance(e, (self.trtpack.InputMismatchError, self.trtpack.ArgumentTypeError)):
            code = getattr(error, "INVALID_ARG", None)
        else:
            code = getattr(error, "INTERNAL", None)
        message = str(e) if isinstance(e, self.trtpack.TrtpackError) else f"{type(e).__name__}: {e}"
        return error(message) if code is None else error(message, code)

    # --- the requests of one execute() as one call (dynamic batching) ------------------------

    def _execute_together(self, requests: list[Any]) -> list[Any]:
        torch = self.torch
        givens = [self._inputs(r) for r in requests]
        for name in givens[0]:
            first = givens[0][name]
            if any(g[name].shape[1:] != first.shape[1:] or g[name].dtype != first.dtype
                   for g in givens):  # fmt: skip
                raise ValueError("the requests' shapes differ beyond the batch dim")
        sizes = [next(iter(g.values())).shape[0] for g in givens]
        joined = {name: torch.cat([g[name] for g in givens]) for name in givens[0]}
        outputs = self._call(joined)
        parts = {name: torch.split(v, sizes) for name, v in outputs.items()}
        return [
            self.pb.InferenceResponse(
                output_tensors=self._tensors({name: p[i] for name, p in parts.items()})
            )
            for i in range(len(requests))
        ]


def _log(pb_utils: Any, message: str) -> None:
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_info(message)
    else:
        print(message, file=sys.stderr, flush=True)
