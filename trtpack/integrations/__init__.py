"""Hand-off to model registries and servers, each optional and imported only when used:

- ``mlflow``   log/register a pack as an MLflow pyfunc model (``trtpack.mlflow``)
- ``triton``   write a Triton model repository for the TensorRT backend (no torch)
- ``oci``      push/pull a pack to an OCI registry, one layer per member (no torch)
"""
