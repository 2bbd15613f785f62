"""Switching a whole model's backbones between execution paths.

A backbone of this package executes by its ``impl`` (see
:mod:`poolformer_mm.models.fast`); a detector or segmentor holds it as
``model.backbone``, an inferencer or a TTA wrapper one level deeper. This
module finds them: :func:`switch_impl` is the one way the tools, the hooks
and the APIs switch a model, and :func:`switch_model_to_deploy` the deploy
switch of ``tools/test.py --deploy`` and ``SwitchToDeployHook``.
"""
from typing import List

import torch.nn as nn

from ..errors import InputError


def backbones(model: nn.Module) -> List[str]:
    """Names of the outermost modules of ``model`` (``''``: ``model``
    itself) that execute by an ``impl`` (``switch_impl``)."""
    found: List[str] = []
    for name, module in model.named_modules():
        if any(name == f or name.startswith(f + '.') for f in found if f):
            continue
        if '' in found:
            break
        if callable(getattr(module, 'switch_impl', None)):
            found.append(name)
    return found


def switch_impl(model: nn.Module, impl: str) -> List[str]:
    """Run every backbone of ``model`` (see :func:`backbones`) by ``impl``.

    Args:
        model (nn.Module): A backbone, detector, segmentor or a wrapper.
        impl (str): One of :data:`poolformer_mm.models.fast.IMPLS`.

    Returns:
        list[str]: The switched modules' names (``''`` for ``model``).

    Raises:
        InputError: ``model`` holds no backbone of this package.
        ValueError: ``impl`` is not an execution path.
    """
    names = backbones(model)
    if not names:
        raise InputError(
            f'{type(model).__name__} holds no PoolFormer or MetaFormer '
            f"backbone, so there is no execution path to switch to "
            f'{impl!r}')
    modules = dict(model.named_modules())
    for name in names:
        modules[name].switch_impl(impl)
    return names


def switch_model_to_deploy(model: nn.Module) -> List[str]:
    """``switch_impl(model, 'deploy')``: the folded inference path of every
    backbone; inference only, the state dict stays.

    Raises:
        InputError: ``model`` holds no backbone of this package.
    """
    return switch_impl(model, 'deploy')
