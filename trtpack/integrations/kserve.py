"""The request a server should accept, derived from a pack's manifest (``trtpack contract``).

A JSON Schema (2020-12) of a KServe v2 / Triton inference request, JSON body: one entry per
input the server feeds (tensors, and dynamic ints as shape-[1] INT64 tensors, as
``export-triton`` does), each with its KServe datatype, its rank, each dim's min and max, the
element type of ``data`` and bounds on its length. What a JSON Schema cannot hold — one dim
equal to another (a shared symbol), the pack's guards, ``len(data)`` equal to the product of
the declared shape — is written as text (``description``) and as ``x-trtpack-*`` annotations,
so a gateway that wants them can check them itself. And an OpenAPI 3.1 document for
``POST /v2/models/NAME/infer`` with that schema as its request body. No torch.

The schema reads ``data`` flattened (row-major), the form Triton and KServe clients send; the
binary-data extension (``parameters.binary_data_size``) is not described.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import RegistryError, TrtpackError
from ..format.container import PathLike
from ..format.manifest import IOSpec, Manifest, Symbol, parse_dim
from ..reading import inspect

DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: trtpack dtype -> KServe v2 datatype (BF16 is Triton's extension)
KSERVE_DATATYPES = {
    "float32": "FP32", "float16": "FP16", "bfloat16": "BF16", "float64": "FP64",
    "int64": "INT64", "int32": "INT32", "int16": "INT16", "int8": "INT8", "uint8": "UINT8",
    "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64", "bool": "BOOL",
}  # fmt: skip
#: a dynamic scalar input is fed as a shape-[1] tensor of this dtype
_SCALAR_DTYPES = {"int": "int64", "float": "float64", "bool": "bool"}


def _element(dtype: str) -> dict[str, Any]:
    """The JSON type of one element of ``data``."""
    if dtype == "bool":
        return {"type": "boolean"}
    if dtype.startswith(("int", "uint")):
        bits = int(dtype.removeprefix("u").removeprefix("int"))
        lo, hi = (
            (0, 2**bits - 1) if dtype.startswith("u") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        )
        return {"type": "integer", "minimum": lo, "maximum": hi}
    return {"type": "number"}


def _dim_range(dim: int | str, symbols: dict[str, Symbol], where: str) -> tuple[int, int | None]:
    if isinstance(dim, int):
        return dim, dim
    e = parse_dim(dim, where=where)
    s = symbols[e.symbol]
    lo, hi = e.value(s.min), None if s.max is None else e.value(s.max)
    return (lo, hi) if e.coef > 0 else (hi if hi is not None else lo, lo)


def _fed(manifest: Manifest) -> list[IOSpec]:
    """The inputs a server feeds: tensors and dynamic scalars (constants were specialized)."""
    return [i for i in manifest.inputs if i.is_tensor or i.symbol is not None]


def _input_schema(spec: IOSpec, manifest: Manifest, shared: dict[str, list[str]]) -> dict:
    symbols = manifest.symbols
    if spec.is_tensor:
        dtype = spec.dtype or "float32"
        dims = list(spec.shape or ())
    else:  # a dynamic int/float/bool: a one-element tensor, the symbol's range on the value
        dtype = _SCALAR_DTYPES[spec.kind]
        dims = [1]
    if dtype not in KSERVE_DATATYPES:
        raise RegistryError(f"input {spec.name!r} is {dtype}, which has no KServe v2 datatype")
    shape_items, notes = [], []
    lo_count, hi_count = 1, 1
    bounded = True
    for i, dim in enumerate(dims):
        lo, hi = _dim_range(dim, symbols, f"{spec.name}.shape[{i}]")
        item: dict[str, Any] = {"type": "integer", "minimum": lo}
        if hi is not None:
            item["maximum"] = hi
        if isinstance(dim, str):
            symbol = parse_dim(dim).symbol
            others = [p for p in shared.get(symbol, []) if p != f"{spec.name}.shape[{i}]"]
            item["description"] = f"{dim} (symbol {symbol})" + (
                f"; must equal the same expression of {', '.join(others)}" if others else ""
            )
            if others:
                notes.append(item["description"])
        shape_items.append(item)
        lo_count *= lo
        if hi is None:
            bounded = False
        else:
            hi_count *= hi
    element = _element(dtype)
    if not spec.is_tensor and spec.symbol is not None:
        s = symbols[spec.symbol]
        element = {**element, "minimum": s.min, **({} if s.max is None else {"maximum": s.max})}
    data: dict[str, Any] = {"type": "array", "items": element, "minItems": lo_count}
    if bounded:  # a gateway can refuse an oversized body before parsing every element
        data["maxItems"] = hi_count
    desc = f"input {spec.name!r} ({spec.path}): {dtype}[{', '.join(map(str, dims))}]"
    if notes:
        desc += "; " + "; ".join(notes)
    desc += "; len(data) must equal the product of shape (row-major, flattened)"
    return {
        "type": "object",
        "description": desc,
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"const": spec.name},
            "shape": {
                "type": "array",
                "prefixItems": shape_items,
                "items": False,
                "minItems": len(dims),
                "maxItems": len(dims),
            },
            "datatype": {"const": KSERVE_DATATYPES[dtype]},
            "parameters": {"type": "object"},
            "data": data,
        },
    }


def _shared_dims(manifest: Manifest) -> dict[str, list[str]]:
    places: dict[str, list[str]] = {}
    for spec in _fed(manifest):
        for i, dim in enumerate(spec.shape or () if spec.is_tensor else ()):
            if isinstance(dim, str):
                places.setdefault(parse_dim(dim).symbol, []).append(f"{spec.name}.shape[{i}]")
    return places


def request_schema_of(manifest: Manifest, name: str) -> dict[str, Any]:
    """The JSON Schema of a KServe v2 inference request body for ``manifest``'s inputs."""
    shared = _shared_dims(manifest)
    fed = _fed(manifest)
    one_of = [_input_schema(spec, manifest, shared) for spec in fed]
    guards = [g.expr or g.source for g in manifest.guards]
    shared_text = {s: p for s, p in shared.items() if len(p) > 1}
    description = (
        f"A KServe v2 / Triton inference request for model {name!r}: inputs "
        f"{', '.join(s.name for s in fed)}, each once."
    )
    if shared_text:
        description += (
            " Dims that must be equal (a JSON Schema cannot check it): "
            + "; ".join(" == ".join(p) for p in shared_text.values())
            + "."
        )
    if guards:
        description += " The pack also checks (not expressible here): " + "; ".join(guards) + "."
    outputs = [o.name for o in manifest.outputs if o.is_tensor]
    return {
        "$schema": DIALECT,
        "title": f"{name} inference request (KServe v2)",
        "description": description,
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {
                "type": "array",
                "minItems": len(fed),
                "maxItems": len(fed),
                "items": {"oneOf": one_of},
                # each input present (with maxItems: each exactly once)
                "allOf": [
                    {"contains": {"properties": {"name": {"const": s.name}}, "required": ["name"]}}
                    for s in fed
                ],
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"enum": outputs}, "parameters": {"type": "object"}},
                },
            },
        },
        "x-trtpack-shared-dims": shared_text,
        "x-trtpack-guards": guards,
    }


def _response_schema(manifest: Manifest, name: str) -> dict[str, Any]:
    outs = [o for o in manifest.outputs if o.is_tensor and (o.dtype or "") in KSERVE_DATATYPES]
    return {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "shape", "datatype"],
                    "properties": {
                        "name": {"enum": [o.name for o in outs]},
                        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                        "datatype": {
                            "enum": sorted({KSERVE_DATATYPES[o.dtype or ""] for o in outs})
                        },
                        "parameters": {"type": "object"},
                        "data": {"type": "array"},
                    },
                },
            },
        },
    }


def openapi_of(manifest: Manifest, name: str, digest: str = "") -> dict[str, Any]:
    """An OpenAPI 3.1 document for ``POST /v2/models/{name}/infer``."""
    request = {k: v for k, v in request_schema_of(manifest, name).items() if k != "$schema"}
    error = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": DIALECT,
        "info": {
            "title": f"{name} (KServe v2 inference protocol)",
            "version": digest or "1",
            "description": "Derived by trtpack from the pack's manifest" + (
                f" ({digest})" if digest else "") + ".",
        },
        "paths": {
            f"/v2/models/{name}/infer": {
                "post": {
                    "operationId": "infer",
                    "summary": f"run {name}",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/InferenceRequest"}}},
                    },
                    "responses": {
                        "200": {"description": "the outputs", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/InferenceResponse"}}}},
                        "400": {"description": "the request was refused", "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/InferenceError"}}}},
                    },
                }
            }
        },
        "components": {
            "schemas": {
                "InferenceRequest": request,
                "InferenceResponse": _response_schema(manifest, name),
                "InferenceError": error,
            }
        },
    }  # fmt: skip


FORMATS = ("jsonschema", "openapi")


def request_contract(
    pack: PathLike, *, format: str = "jsonschema", name: str | None = None
) -> dict:
    """The request contract of ``pack``: ``jsonschema`` (the request body) or ``openapi``
    (the infer endpoint). ``name``: the model's name on the server (default: the file's stem).
    Reads the manifest only; no torch."""
    if format not in FORMATS:
        raise TrtpackError(f"format must be {' or '.join(FORMATS)}, not {format!r}")
    info = inspect(pack)
    name = name or Path(pack).stem
    if format == "openapi":
        return openapi_of(info.manifest, name, info.digest)
    return request_schema_of(info.manifest, name)


__all__ = ["request_contract", "request_schema_of", "openapi_of", "KSERVE_DATATYPES"]
