"""The torch.export side of a pack, in the order data flows:

- ``serde``         torch.export's serde enums and call-target allowlists, kept once (no torch)
- ``treespec``      manifest pytree JSON <-> torch ``TreeSpec``
- ``gcpause``       Python's cyclic GC held off while a big graph is converted         (no torch)
- ``graph_check``   the safety check of a serialized graph before torch sees it      (no torch)
- ``derive``        the manifest's interface, derived from the serialized program     (no torch)
- ``describe``      one call for every writer: an ExportedProgram -> members, ref, interface
- ``serialize``     an ExportedProgram <-> its two members (graph JSON, safetensors weights)
- ``graph_module``  the direct GraphModule build from the graph JSON (no torch deserializer)

Importing this package imports nothing else; each module is imported where it is used.
"""
