"""Checkpoints: reading any file safely, writing plain data.

- :mod:`.files`: :func:`read_checkpoint`, the one reader of checkpoint and
  weights files (local, URL, safetensors), and :func:`reading`, the one
  place where a torn or unsafe file becomes a
  :class:`~poolformer_mm.errors.CheckpointError`;
- :mod:`.plain`: :func:`to_plain` / :func:`from_plain`, the plain-data form
  of every checkpoint this package writes, which torch's default
  ``weights_only`` loader reads in any process;
- :mod:`.legacy`: validating stand-ins for the mmengine and numpy objects
  of older checkpoints, in scope only while this package reads a file.
"""
from ..errors import CheckpointError
from .files import load_training_checkpoint, read_checkpoint, reading
from .plain import from_plain, to_plain

__all__ = [
    'CheckpointError', 'from_plain', 'load_training_checkpoint',
    'read_checkpoint', 'reading', 'to_plain'
]
