"""TensorRT engines in a pack, in the order data flows:

- ``plan``         what a plan's header says (flavour, TensorRT version, GPUs)        (no torch)
- ``packed_info``  torch_tensorrt's packed engine info as plain data                   (no torch)
- ``variants``     engine facts from any source -> a manifest variant (the one builder) (no torch)
- ``select``       which variant fits this machine, and why not                        (no torch)
- ``loading``      variant -> runner, or the one-line reason for falling back
- ``torchtrt``     the only module that imports torch_tensorrt / TensorRT: compile, wire
                   a compiled module into its serialized program, build a runner

Importing this package imports nothing heavy; each module is imported where it is used.
"""
