"""The trtpack file format, with nothing above it: it imports no other trtpack package (only
``trtpack.errors``) and never torch, not even lazily (``tests/test_torch_free.py`` imports
it with torch unimportable).

- ``manifest``  the manifest's dataclasses and dim expressions; JSON in and out, schema-checked
- ``guards``    the manifest's guard language: parse, check, evaluate
- ``pytree``    pytree specs as manifest JSON: leaf paths, output names
- ``weights``   the weights member's layout (safetensors): planned, parsed, bounds-checked
- ``container`` the zip: aligned STORED members, ZIP64, digests, safe reads; the one writer
- ``atomic``    atomic replace, crash-hook, the pack lock
- ``limits``    caps on what a reader accepts (members, nesting, manifest bytes)
- ``upgrade``   one step per format version: an older manifest upgraded in memory
"""
