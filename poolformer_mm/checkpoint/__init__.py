"""Checkpoints: reading any file safely, writing plain data.

- :mod:`.files`: :func:`read_checkpoint`, the one reader of checkpoint and
  weights files (local, URL, safetensors), and :func:`reading`, the one
  place where a torn or unsafe file becomes a
  :class:`~poolformer_mm.errors.CheckpointError`;
- :mod:`.plain`: :func:`to_plain` / :func:`from_plain`, the plain-data form
  of every checkpoint this package writes, which torch's default
  ``weights_only`` loader reads in any process;
- :mod:`.legacy`: validating stand-ins for the mmengine and numpy objects
  of older checkpoints, in scope only while this package reads a file;
- :mod:`.naming`: the public namings of PoolFormer / MetaFormer weights and
  their mapping onto this package's names;
- :mod:`.fitting`: the one policy that fits a checkpoint to a model
  (:func:`read_weights`, :func:`fit_weights`), and the initialisation of a
  backbone from pretrained weights (:func:`load_pretrained`).
"""
from ..errors import CheckpointError
from .files import load_training_checkpoint, read_checkpoint, reading
from .fitting import (Weights, fit_weights, load_pretrained, load_weights,
                      read_weights, weights_from_checkpoint)
from .naming import convert_backbone_state_dict, detect_format
from .plain import from_plain, to_plain

__all__ = [
    'CheckpointError', 'Weights', 'convert_backbone_state_dict',
    'detect_format', 'fit_weights', 'from_plain', 'load_pretrained',
    'load_training_checkpoint', 'load_weights', 'read_checkpoint',
    'read_weights', 'reading', 'to_plain', 'weights_from_checkpoint'
]
