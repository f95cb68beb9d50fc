"""torch.export's serde facts, kept once: the enum tables of torch/_export/serde/schema.py and
the Python callables a serialized graph may name. No torch: the safety check
(``graph_check``) and the manifest derivation (``derive``) read these torch-free; the direct
GraphModule build (``graph_module``) resolves them against torch.
"""

from __future__ import annotations

#: the serde schema major of torch/_export/serde/schema.py (``SCHEMA_VERSION[0]``) that the
#: derivation and the direct GraphModule build follow; a program of another major is refused
#: by ``derive`` (a major bump removes or renames fields) and built by torch's deserializer
SCHEMA_MAJOR = 8
#: the schema minors the direct build was tested on, with the torch that writes each (checked
#: in tests/test_graph_module.py against the installed torch): a newer minor may add an
#: argument kind or a field whose meaning the builder would not see, so the loader takes
#: torch's deserializer for it and says why (``fast_path_reason``). torch 2.13.0 and 2.14.1
#: both write 8.20; add a minor here only with a node-for-node run on a torch that writes it
#: (tools/torch_version_check.py prints the installed torch's minor and the run's result).
TESTED_SCHEMA_MINORS: dict[int, str] = {
    17: "torch 2.11.0 (GPU machine, tools/torch_version_check.py --try-this-minor, 2026-12-07)",
    20: "torch 2.13.0, 2.14.1",
}

#: ScalarType -> the dtype name torch gives it (``getattr(torch, name)``)
SCALAR_TYPES: dict[int, str] = {
    1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32",
    8: "float64", 9: "complex32", 10: "complex64", 11: "complex128", 12: "bool",
    13: "bfloat16", 28: "uint16", 29: "float8_e4m3fn", 30: "float8_e5m2",
    31: "float8_e4m3fnuz", 32: "float8_e5m2fnuz", 33: "float8_e8m0fnu", 34: "uint32",
    35: "uint64",
}  # fmt: skip
#: dtypes a program may hold that the manifest has no name for (schema/manifest.v1.schema.json
#: ``$defs/dtype``): an input or weight of one is refused when the manifest is derived
NOT_IN_MANIFEST = frozenset({"complex32", "float8_e8m0fnu"})
#: Layout -> the torch attribute
LAYOUTS: dict[int, str] = {1: "sparse_coo", 2: "sparse_csr", 3: "sparse_csc", 4: "sparse_bsr",
                           5: "sparse_bsc", 6: "_mkldnn", 7: "strided"}  # fmt: skip
#: MemoryFormat -> the torch attribute
MEMORY_FORMATS: dict[int, str] = {1: "contiguous_format", 2: "channels_last",
                                  3: "channels_last_3d", 4: "preserve_format"}  # fmt: skip
#: ArgumentKind
POSITIONAL, KEYWORD = 1, 2

# The Python callables torch.export serializes by name: getitem and symbolic arithmetic
# (operator, math, torch.sym_*), and torch.export's wrappers for torch.vmap (transformers'
# attention masks), which torch imports with itself.
_OPERATOR = ("getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos",
             "abs", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert",
             "lshift", "rshift", "matmul")  # fmt: skip
_SYM = ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sqrt",
        "sym_sum", "_sym_sqrt")  # fmt: skip
_MATH = ("trunc", "ceil", "floor", "sqrt")
_VMAP = ("_add_batch_dim", "_remove_batch_dim", "_vmap_increment_nesting",
         "_vmap_decrement_nesting", "lazy_load_decompositions")  # fmt: skip

#: serialized name -> (module, attribute path), resolved by getattr as torch's deserializer
#: does: the callables the direct GraphModule build reproduces
PYTHON_CALLS: dict[str, tuple[str, str]] = {
    **{f"_operator.{n}": ("operator", n) for n in _OPERATOR},
    **{f"torch.{n}": ("torch", n) for n in _SYM},
    **{f"math.{n}": ("math", n) for n in _MATH},
    **{f"torch._functorch.predispatch.{n}": ("torch", f"_functorch.predispatch.{n}")
       for n in _VMAP},
}  # fmt: skip
#: every Python callable a graph may name (the safety check's allowlist): the above, and the
#: runtime asserts torch.export records
CALL_TARGETS = frozenset([*PYTHON_CALLS, "torch._check", "torch._check_is_size"])
