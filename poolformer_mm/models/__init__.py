from .backbones import MetaFormer, PoolFormer

__all__ = ['MetaFormer', 'PoolFormer']
