"""Calling a loaded pack with the numpy inputs serving systems pass (MLflow's pyfunc), and
returning numpy outputs by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import InputMismatchError
from ..format.manifest import Manifest


def predict(pack: Any, model_input: Any) -> Any:
    """``model_input``: a dict of arrays by input name (a pandas DataFrame of array columns
    works too), or one array when the model takes one tensor. Non-tensor inputs take the
    values the program was exported with. Returns a dict of arrays by output name, or one
    array when the model returns one tensor."""
    manifest: Manifest = pack.manifest
    tensors = [i for i in manifest.inputs if i.is_tensor]
    if isinstance(model_input, np.ndarray) or torch.is_tensor(model_input):
        if len(tensors) != 1:
            names = [i.name for i in tensors]
            raise InputMismatchError(f"the model takes {len(tensors)} tensors {names}; pass a dict")
        given = {tensors[0].name: model_input}
    elif isinstance(model_input, Mapping):
        given = dict(model_input)
    elif hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # pandas
        given = {c: np.stack(model_input[c].to_numpy()) for c in model_input.columns}
    else:
        raise InputMismatchError(
            f"pass a dict of arrays by input name, not {type(model_input).__name__}"
        )
    unknown = set(given) - {i.name for i in manifest.inputs}
    missing = [i.name for i in tensors if i.name not in given]
    if unknown or missing:
        raise InputMismatchError(
            f"inputs {sorted(unknown)} are not the model's, {missing} are missing "
            f"(the model takes {[i.name for i in tensors]})"
        )
    leaves = []
    for spec in manifest.inputs:
        if not spec.is_tensor:
            leaves.append(given.get(spec.name, spec.value))
            continue
        value = given[spec.name]
        t = value if torch.is_tensor(value) else torch.from_numpy(_contiguous(value))
        leaves.append(t.to(device=pack.device, dtype=getattr(torch, spec.dtype or "float32")))
    args, kwargs = pack.call_of(leaves)
    with torch.no_grad():
        out = pack(*args, **kwargs)
    flat = torch.utils._pytree.tree_leaves(out)
    result = {spec.name: _numpy(v) for spec, v in zip(manifest.outputs, flat)}
    return next(iter(result.values())) if len(result) == 1 else result


def _contiguous(value: Any) -> np.ndarray:
    """A C-contiguous array of the same shape: ``np.ascontiguousarray`` would turn a 0-d
    array (a scalar input such as a scale) into shape ``(1,)``, which the manifest refuses."""
    arr = np.asarray(value)
    return arr if arr.flags.c_contiguous else np.array(arr, order="C")


def _numpy(value: Any) -> Any:
    if not torch.is_tensor(value):
        return value
    value = value.detach().cpu()
    return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
