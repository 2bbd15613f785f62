"""Where weights were read and converted before :mod:`poolformer_mm.checkpoint`
(kept so that code importing it keeps working): the namings are in
:mod:`poolformer_mm.checkpoint.naming`, the loading into a backbone in
:mod:`poolformer_mm.checkpoint.fitting`, the reading of files in
:mod:`poolformer_mm.checkpoint.files`.
"""
from .checkpoint.files import read_checkpoint, refused_global
from .checkpoint.fitting import init_weights, load_pretrained
from .checkpoint.naming import (FORMATS, convert_backbone_state_dict,
                                detect_format, unwrap_state_dict)
from .errors import CheckpointError

__all__ = [
    'CheckpointError', 'FORMATS', 'convert_backbone_state_dict',
    'detect_format', 'init_weights', 'load_pretrained', 'read_checkpoint',
    'refused_global', 'unwrap_state_dict'
]
