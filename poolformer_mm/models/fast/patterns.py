"""Which reference modules fit the patterns of the fused and folded paths.

The checks look at a module's configuration only (types, kernel sizes,
strides, groups), never at a device or dtype: whether a fast module applies
is decided once, when the backbone switches its ``impl``, and what runs for
a given input is decided by the fast module itself (:mod:`.cpu`,
:mod:`.cuda`, :mod:`.folded`). A module that does not fit keeps its
reference class.
"""
from typing import Optional, Tuple

import torch.nn as nn
from torch import Tensor

from ..backbones.layers import Scale


def pool_window(pool: nn.Module) -> Optional[int]:
    """The window of PoolFormer's pooling (an ``nn.AvgPool2d`` with an odd
    square window, stride 1, padding ``k // 2``, ``count_include_pad=False``),
    None for any other module."""

    def square(value) -> Optional[int]:
        if isinstance(value, int):
            return value
        return value[0] if value[0] == value[1] else None

    if type(pool) is not nn.AvgPool2d:
        return None
    k, stride, padding = (square(pool.kernel_size), square(pool.stride),
                          square(pool.padding))
    if (k is None or k % 2 == 0 or stride != 1 or padding != k // 2
            or pool.count_include_pad or pool.ceil_mode
            or pool.divisor_override is not None):
        return None
    return k


def is_pointwise_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a plain 1x1 ``nn.Conv2d`` (stride 1, no
    padding, one group)."""
    return (type(module) is nn.Conv2d and module.kernel_size == (1, 1)
            and module.stride == (1, 1) and module.groups == 1
            and module.padding in ((0, 0), 0) and module.dilation == (1, 1))


def is_group_norm1(norm: nn.Module) -> bool:
    """Whether ``norm`` is a GroupNorm with one group."""
    return isinstance(norm, nn.GroupNorm) and norm.num_groups == 1


def channel_scale(module: nn.Module) -> Tuple[bool, Optional[Tensor]]:
    """``(True, scale)`` for a per-channel :class:`Scale` of maps,
    ``(True, None)`` for ``nn.Identity``, ``(False, None)`` otherwise."""
    if isinstance(module, nn.Identity):
        return True, None
    if type(module) is Scale and module.shape[1:] == (1, 1):
        return True, module.scale
    return False, None
