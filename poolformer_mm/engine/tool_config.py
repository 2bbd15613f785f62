"""What the tools share: reading the config, applying the command line
options that MMDetection's tools have, building the runner the config names
(``tools/train.py``, ``tools/test.py``) or only its model (the analysis and
export tools).

Nothing here substitutes hooks, wrappers or runners: what runs is what the
config says (the ``configs/_base_`` files name
:class:`~poolformer_mm.engine.SafeRunner` and
:class:`~poolformer_mm.engine.SafeCheckpointHook`), so MMDetection's and
MMSegmentation's own ``tools/train.py`` run the same thing. The one option
that differs is ``--amp`` without CUDA (:func:`enable_amp`).
"""
import logging
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

SCOPES = ('mmdet', 'mmseg')


def load_config(path: str,
                cfg_options: Optional[dict] = None,
                launcher: str = 'none',
                work_dir: Optional[str] = None) -> Config:
    """Read a config, apply command line overrides and pick a work dir.

    Args:
        path (str): Config file.
        cfg_options (dict, optional): ``--cfg-options`` overrides.
        launcher (str): Job launcher. Defaults to 'none'.
        work_dir (str, optional): ``--work-dir``; otherwise the config's
            ``work_dir`` or ``./work_dirs/<config name>``.

    Returns:
        Config: The config, ready for :func:`build_runner`.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'Config file not found: {path!r}')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(
            f'{path}: default_scope is {scope!r}; these tools run configs '
            f'of {SCOPES} (inherit an mmdet:: or mmseg:: base config)')
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(path))[0])
    return cfg


def build_model(cfg: Config) -> torch.nn.Module:
    """The config's model, built in its framework's registry, in eval mode,
    with seeded random weights: ``init_weights`` is not called, so no
    pretrained file is downloaded.

    Args:
        cfg (Config): From :func:`load_config`.
    """
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.default_scope)
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    torch.manual_seed(0)
    # SyncBN (in MMSegmentation's heads) needs a process group.
    return revert_sync_batchnorm(MODELS.build(cfg.model)).eval()


def build_runner(cfg: Config) -> Runner:
    """Build the runner the config names (``runner_type``), or mmengine's
    ``Runner``, as MMDetection's and MMSegmentation's tools do.

    A config without ``runner_type`` gets a warning: mmengine's ``Runner``
    cannot read its own training checkpoints under torch's weights-only
    loading (torch >= 2.6), nor train on several CPU processes.

    Args:
        cfg (Config): From :func:`load_config`.
    """
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    print_log(
        f'{cfg.filename} names no runner_type, so mmengine\'s Runner runs '
        'it; set runner_type=\'SafeRunner\' (as configs/_base_ do) to resume '
        'and load training checkpoints safely and to train on CPU '
        'processes.',
        logger='current',
        level=logging.WARNING)
    return Runner.from_cfg(cfg)


def enable_amp(cfg: Config) -> None:
    """Switch the optimizer wrapper to mixed precision (``--amp``).

    With CUDA as MMDetection's ``--amp`` does: ``AmpOptimWrapper``, float16
    autocast with dynamic loss scaling. Without CUDA (mmengine's
    ``AmpOptimWrapper`` refuses to start there): bfloat16 autocast on the
    CPU with :class:`~poolformer_mm.engine.AutocastOptimWrapper`, which needs
    no loss scaling; a log line says so.

    Args:
        cfg (Config): The config to change.
    """
    optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    amp_types = ('AmpOptimWrapper', 'AutocastOptimWrapper')
    if optim_wrapper not in ('OptimWrapper', ) + amp_types:
        raise ValueError(
            f'--amp needs optim_wrapper.type OptimWrapper, got '
            f'{optim_wrapper!r}')
    if not torch.cuda.is_available():
        if cfg.optim_wrapper.get('dtype') not in (None, 'bfloat16'):
            print_log(
                f'--amp: dtype {cfg.optim_wrapper.dtype!r} replaced by '
                'bfloat16 on the CPU',
                logger='current',
                level=logging.WARNING)
        cfg.optim_wrapper.type = 'AutocastOptimWrapper'
        cfg.optim_wrapper.pop('loss_scale', None)
        cfg.optim_wrapper.dtype = 'bfloat16'
        print_log(
            '--amp: no CUDA device, training under bfloat16 autocast on the '
            'CPU (AutocastOptimWrapper, no loss scaling needed)',
            logger='current')
        return
    if optim_wrapper in amp_types:
        return
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def enable_auto_scale_lr(cfg: Config) -> None:
    """Scale the learning rate by the total batch size (``--auto-scale-lr``).

    Args:
        cfg (Config): The config to change; it must have
            ``auto_scale_lr.base_batch_size``.
    """
    if 'auto_scale_lr' not in cfg or 'base_batch_size' not in (
            cfg.auto_scale_lr or {}):
        raise RuntimeError(
            '--auto-scale-lr needs `auto_scale_lr = dict(enable=..., '
            'base_batch_size=...)` in the config')
    cfg.auto_scale_lr.enable = True


def set_resume(cfg: Config, resume: Optional[str]) -> None:
    """Apply ``--resume`` as MMDetection's tools do.

    Args:
        cfg (Config): The config to change.
        resume (str, optional): 'auto' (``--resume`` without a value): the
            runner picks the checkpoint (``SafeRunner``: the newest complete
            one, see
            :func:`~poolformer_mm.engine.runner.find_resumable_checkpoint`);
            a path: that checkpoint; None: no resume.
    """
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume
