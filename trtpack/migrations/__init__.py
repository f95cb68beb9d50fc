"""Artifacts saved without trtpack metadata, into current packs (each becomes the same
``assemble.PackParts`` that ``save`` writes; a pack of an older format version is upgraded
by ``format/upgrade.py``).

- ``pt2``          torch.export / torch_tensorrt PT2 archives -> pack parts          (no torch)
- ``engine_file``  a bare plan + an input description                               (no torch)
- ``legacy``       detect, describe, convert, migrate

Importing this package imports nothing else.
"""
