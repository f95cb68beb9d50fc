"""Everything that writes a pack goes through one assembler:

- ``assemble``  pack parts (interface, members, variants) -> manifest -> one container write
- ``save``      ``trtpack.save``: an ExportedProgram or a compiled module -> a pack
- ``add``       ``trtpack.add_engine``: a pack + an engine variant -> a new pack
- ``build``     ``trtpack.build``: a pack + TensorRT-RTX engines built from its program

Importing this package imports nothing else.
"""
