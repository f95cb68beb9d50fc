"""Older formats and artifacts saved without trtpack metadata, into current packs.

- ``steps``        the chain of format-version steps (N -> N+1), composed by the reader (no torch)
- ``serde_json``   a manifest's interface from torch.export's program JSON          (no torch)
- ``pt2``          torch.export / torch_tensorrt PT2 archives -> pack members       (no torch)
- ``engine_file``  a bare plan + an input description                               (no torch)
- ``legacy``       detect, describe, convert, migrate

Importing this package imports nothing else: the version steps are ``trtpack/format/upgrade.py``.
"""
