"""The ``trtpack`` command (``trtpack.cli:main`` is the console script):

- ``commands``  the command table, argument parsing and each command's output
- ``run``       ``trtpack run``: run a pack on sample inputs and compare with its program
"""

from .commands import main

__all__ = ["main"]
