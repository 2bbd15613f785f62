"""The MetaFormer family as dense-prediction backbones, in plain PyTorch:
the layers (:mod:`.layers`), the arch specs (:mod:`.specs`) and the
backbones built of them (:mod:`.metaformer`, :mod:`.poolformer`)."""
from .metaformer import MetaFormer
from .poolformer import PoolFormer

__all__ = ['MetaFormer', 'PoolFormer']
