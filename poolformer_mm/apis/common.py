"""What the analysis and benchmark APIs share: the backbone arch names
(:func:`resolve_arch`, :func:`build_backbone`), quieting the package's INFO
logs while they run (:func:`quiet_logs`), and the one-line exit of a
command line tool on bad input (:func:`exit_on_error`).
"""
import contextlib
import logging
import sys
from typing import Iterator, NamedTuple, Optional

import torch.nn as nn
from mmengine.logging import MMLogger

from ..errors import CheckpointError, InputError
from ..models import MetaFormer, PoolFormer


class Arch(NamedTuple):
    """A backbone arch, as :func:`resolve_arch` found it.

    Args:
        cls (type): :class:`~poolformer_mm.PoolFormer` or
            :class:`~poolformer_mm.MetaFormer`.
        name (str): The key of ``cls.arch_settings``, e.g. 's12'.
        timm_name (str): timm's model of the same network, e.g.
            'poolformer_s12'.
    """
    cls: type
    name: str
    timm_name: str

    @property
    def is_poolformer_v1(self) -> bool:
        return self.cls is PoolFormer

    def build(self, **kwargs) -> nn.Module:
        """The backbone, ``kwargs`` passed to its constructor."""
        return self.cls(self.name, **kwargs)


def resolve_arch(arch: str) -> Arch:
    """The backbone an arch name means.

    Args:
        arch (str): A PoolFormer arch (s12, s24, s36, m36, m48, also as
            poolformer_s12, ...) or a MetaFormer arch (poolformerv2_s12,
            convformer_s18, caformer_s18, ...), any case.

    Returns:
        Arch: Its class, arch key and timm name.

    Raises:
        InputError: No such arch; the message lists the accepted ones.
    """
    name = str(arch).lower()
    v1 = name[len('poolformer_'):] if name.startswith('poolformer_') else name
    if v1 in PoolFormer.arch_settings:
        return Arch(PoolFormer, v1, f'poolformer_{v1}')
    if name in MetaFormer.arch_settings:
        return Arch(MetaFormer, name, name)
    raise InputError(
        f'unknown arch {arch!r}: choose a PoolFormer arch '
        f'{sorted(PoolFormer.arch_settings)} (or poolformer_s12, ...) or a '
        f'MetaFormer arch {sorted(MetaFormer.arch_settings)}')


def build_backbone(arch: str, **kwargs) -> nn.Module:
    """``resolve_arch(arch).build(**kwargs)``: the backbone ``arch`` names.

    Raises:
        InputError: No such arch.
    """
    return resolve_arch(arch).build(**kwargs)


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Raise the current mmengine logger to WARNING while the block runs.

    The backbones log at INFO which modules run which impl, and the weight
    loader every key it read; the analyses report what they counted and
    loaded themselves. The level is restored afterwards.
    """
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def exit_on_error(prog: Optional[str] = None,
                  status: int = 2) -> Iterator[None]:
    """End a command line tool on bad input with one line on stderr and no
    traceback.

    :class:`~poolformer_mm.errors.InputError` and
    :class:`~poolformer_mm.errors.CheckpointError` raised in the block
    become ``<prog>: error: <message>`` (``error: <message>`` without
    ``prog``), the message joined into one line, and exit status
    ``status``; any other exception is a bug and keeps its traceback.

    Args:
        prog (str, optional): The tool's name, e.g. 'get_flops.py'.
        status (int): Exit status. Defaults to 2, as argparse's errors.
    """
    try:
        yield
    except (InputError, CheckpointError) as exc:
        message = ' '.join(str(exc).split())
        prefix = f'{prog}: ' if prog else ''
        print(f'{prefix}error: {message}', file=sys.stderr)
        sys.exit(status)


__all__ = [
    'Arch', 'build_backbone', 'exit_on_error', 'quiet_logs', 'resolve_arch'
]
