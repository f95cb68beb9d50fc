"""trtpack contract: the request schema refuses what the pack refuses, where a schema can say it,
checked with real validators (jsonschema, openapi-spec-validator) against the pack's own
input check (LoadedPack.check_inputs)."""

from __future__ import annotations

import json

import pytest

import trtpack
from tests.test_torch_free import FIXTURES
from trtpack.cli.commands import main

jsonschema = pytest.importorskip("jsonschema")

KEYWORDS = FIXTURES / "v1.3" / "keywords.trtpack"


def _tensor(name, shape, datatype="FP32", data=None, n=None):
    count = n if n is not None else (0 if not shape else __import__("math").prod(shape))
    return {"name": name, "shape": shape, "datatype": datatype,
            "data": data if data is not None else [0.5] * count}  # fmt: skip


def _request(b=4, **change):
    inputs = {"x": _tensor("x", [b, 6]), "mask": _tensor("mask", [b, 6]),
              "bias": _tensor("bias", [6])}  # fmt: skip
    for name, value in change.items():
        if value is None:
            del inputs[name]
        else:
            inputs[name] = value
    return {"inputs": list(inputs.values())}


# (request, the pack accepts it, a JSON Schema can express why not)
CASES = {
    "opt": (_request(), True, True),
    "min": (_request(1), True, True),
    "max": (_request(64), True, True),
    "with outputs and id": (
        {**_request(), "id": "r1", "outputs": [{"name": "output"}]},
        True,
        True,
    ),
    "dim over max": (_request(65), False, True),
    "dim under min": (_request(0), False, True),
    # a huge declared dim with little data (Triton's HTTP frontend aborts on it): the shape's max
    "declared dim huge": (_request(x=_tensor("x", [2**40, 6], n=6)), False, True),
    "input given twice": (_request(mask=_tensor("x", [4, 6])), False, True),
    "fixed dim wrong": (_request(bias=_tensor("bias", [5])), False, True),
    "rank wrong": (_request(bias=_tensor("bias", [1, 6])), False, True),
    "datatype wrong": (_request(x=_tensor("x", [4, 6], "FP16")), False, True),
    "input missing": (_request(mask=None), False, True),
    "input unknown": (_request(z=_tensor("z", [6])), False, True),
    "element not a number": (_request(bias=_tensor("bias", [6], data=["a"] * 6)), False, True),
    "data too long": (_request(x=_tensor("x", [64, 6], n=64 * 6 + 1)), False, True),
    # the schema cannot say these: the pack still refuses them
    "shared dim differs": (_request(mask=_tensor("mask", [5, 6])), False, False),
    "data shorter than shape": (_request(x=_tensor("x", [4, 6], n=7)), False, False),
}


def _pack_accepts(pack, request) -> bool:
    """The pack's own check of a call built from the request, as a server would build it."""
    import numpy as np
    import torch

    dtypes = {"FP32": np.float32, "FP16": np.float16}
    tensors = {}
    try:
        for i in request["inputs"]:
            array = np.asarray(i["data"], dtype=dtypes[i["datatype"]]).reshape(i["shape"])
            tensors[i["name"]] = torch.from_numpy(array)
        pack.check_inputs(tensors.pop("x"), **tensors)
    except (trtpack.TrtpackError, KeyError, ValueError, TypeError):
        return False
    return True


@pytest.fixture(scope="module")
def loaded():
    return trtpack.load(KEYWORDS, device="cpu")


@pytest.mark.parametrize("case", list(CASES))
def test_schema_accepts_what_the_pack_accepts(case, loaded):
    schema = trtpack.request_contract(KEYWORDS)
    jsonschema.Draft202012Validator.check_schema(schema)
    request, accepted, expressible = CASES[case]
    valid = jsonschema.Draft202012Validator(schema).is_valid(request)
    assert _pack_accepts(loaded, request) is accepted
    assert valid is (accepted or not expressible), case


def test_openapi_document_is_valid_and_its_request_body_is_the_schema(tmp_path, capsys):
    openapi_spec_validator = pytest.importorskip("openapi_spec_validator")
    out = tmp_path / "keywords.openapi.json"
    assert main(["contract", str(KEYWORDS), "--format", "openapi", "--name", "kw",
                 "-o", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    openapi_spec_validator.validate(doc)  # raises on an invalid OpenAPI 3.1 document
    post = doc["paths"]["/v2/models/kw/infer"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    validator = jsonschema.Draft202012Validator(body)
    for request, accepted, expressible in CASES.values():
        assert validator.is_valid(request) is (accepted or not expressible)
    broken = json.loads(json.dumps(doc))
    del broken["paths"]["/v2/models/kw/infer"]["post"]["requestBody"]["content"]
    with pytest.raises(Exception, match="content"):  # the validator does check
        openapi_spec_validator.validate(broken)


def test_shared_dims_and_guards_are_written_as_text(capsys):
    assert main(["contract", str(FIXTURES / "v1.3" / "guarded.trtpack")]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["x-trtpack-shared-dims"] == {"x_dim1": ["x.shape[1]", "y.shape[1]"]}
    assert "x.shape[1] % 4 == 0" in schema["x-trtpack-guards"]
    assert "x.shape[1] == y.shape[1]" in schema["description"]
    x = schema["properties"]["inputs"]["items"]["oneOf"][0]
    assert "maxItems" not in x["properties"]["data"]  # unbounded dims: no length cap to state
    assert "must equal the same expression of y.shape[1]" in x["description"]


def test_bad_format_and_not_a_pack(tmp_path, capsys):
    with pytest.raises(trtpack.TrtpackError, match="format must be jsonschema or openapi"):
        trtpack.request_contract(KEYWORDS, format="yaml")
    junk = tmp_path / "junk.trtpack"
    junk.write_bytes(b"not a zip")
    assert main(["contract", str(junk)]) == 1
    assert capsys.readouterr().err.startswith("trtpack: error: ")
