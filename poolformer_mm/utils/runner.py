"""What tools/train.py and tools/test.py share: config loading and the
runner, for MMDetection and MMSegmentation configs alike (the config's
``default_scope`` decides)."""
import logging
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..engine import init_cpu_process_group
from .training_checkpoint import (find_resumable_checkpoint,
                                  guard_checkpoint_loading)

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
    use_safe_checkpoint_hook(cfg)
    if launcher != 'none' and not torch.cuda.is_available():
        configure_cpu_distributed(cfg)
    return cfg


def use_safe_checkpoint_hook(cfg: Config) -> None:
    """Save checkpoints with :class:`~poolformer_mm.engine.SafeCheckpointHook`
    (same options, atomic writes) where the config asks for mmengine's
    ``CheckpointHook``."""
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if hook is not None and hook.get('type') == 'CheckpointHook':
        hook.type = 'SafeCheckpointHook'


def configure_cpu_distributed(cfg: Config) -> None:
    """Multi-process training without CUDA: gloo, and a DDP wrapper that
    passes no ``device_ids`` (see :mod:`poolformer_mm.engine.distributed`).

    ``find_unused_parameters`` keeps the config's value (False unless the
    config sets it, and no config of this project does).
    """
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper_type = wrapper.get('type', 'MMDistributedDataParallel')
    if wrapper_type in ('MMDistributedDataParallel',
                        'CPUDistributedDataParallel'):
        wrapper['type'] = 'CPUDistributedDataParallel'
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters',
                           cfg.get('find_unused_parameters', False))
        cfg.model_wrapper_cfg = wrapper
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    dist_cfg['backend'] = 'gloo'


def register_scope_modules(scope: str) -> None:
    """Import the framework's modules so that its registries are full."""
    if scope == 'mmdet':
        from mmdet.utils import register_all_modules
    else:
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)


def build_runner(cfg: Config) -> Runner:
    """Build the runner the config asks for (``runner_type`` or Runner).

    Without CUDA, a multi-process run's gloo process group is opened here,
    before mmengine would try (and fail) to pick a GPU. The runner loads
    checkpoints (``load_from``, resume) with the allowlist of
    :func:`~poolformer_mm.utils.training_checkpoint.allow_mmengine_types`.
    """
    register_scope_modules(cfg.default_scope)
    if cfg.get('launcher', 'none') != 'none' and not torch.cuda.is_available():
        dist_cfg = (cfg.get('env_cfg') or {}).get('dist_cfg') or {}
        init_cpu_process_group(cfg.launcher, dist_cfg.get('backend', 'gloo'),
                               dist_cfg.get('timeout'))
    if 'runner_type' in cfg:
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    guard_checkpoint_loading(runner)
    return runner


def close_distributed() -> None:
    """Leave the process group at the end of a multi-process run.

    Without it the interpreter can exit while gloo's threads still run;
    torchrun then sees a rank die with SIGABRT ("terminate called without an
    active exception") after the work is done, and reports the run failed.
    """
    if torch.distributed.is_available() and (
            torch.distributed.is_initialized()):
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def enable_amp(cfg: Config) -> None:
    """Switch the optimizer wrapper to mixed precision.

    With CUDA as MMDetection's ``--amp`` does: ``AmpOptimWrapper``, float16
    autocast with dynamic loss scaling. Without CUDA (mmengine's
    ``AmpOptimWrapper`` refuses to start there): bfloat16 autocast on the
    CPU with :class:`~poolformer_mm.engine.AutocastOptimWrapper`, which needs
    no loss scaling; a log line says so.
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
    if 'auto_scale_lr' not in cfg or 'base_batch_size' not in (
            cfg.auto_scale_lr or {}):
        raise RuntimeError(
            '--auto-scale-lr needs `auto_scale_lr = dict(enable=..., '
            'base_batch_size=...)` in the config')
    cfg.auto_scale_lr.enable = True


def set_resume(cfg: Config, resume: Optional[str]) -> None:
    """``--resume`` with no value: the latest complete checkpoint of the work
    dir (see ``find_resumable_checkpoint`` in :mod:`.training_checkpoint`: a
    torn newest file is skipped with a warning, none at all starts from
    scratch); with a path: that checkpoint."""
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = find_resumable_checkpoint(cfg.work_dir)
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume
