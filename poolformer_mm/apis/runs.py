"""Training and testing runs from a config, as ``tools/train.py`` and
``tools/test.py`` start them: :func:`train` and :func:`test`, and what they
and the other tools share: reading the config with the command line's
options (:func:`load_config`), building the runner the config names
(:func:`build_runner`) or only its model (:func:`build_model`).

Nothing here substitutes hooks, wrappers or runners: what runs is what the
config says (the ``configs/_base_`` files name
:class:`~poolformer_mm.engine.SafeRunner` and
:class:`~poolformer_mm.engine.SafeCheckpointHook`), so MMDetection's and
MMSegmentation's own ``tools/train.py`` run the same thing. The one option
that differs is ``--amp`` without CUDA (:func:`enable_amp`).
"""
import logging
import os.path as osp
from typing import List, Optional

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..errors import InputError

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

    Raises:
        InputError: No such file, or not a config of MMDetection or
            MMSegmentation.
    """
    if not osp.isfile(path):
        raise InputError(f'config file not found: {path!r}')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise InputError(
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
        raise InputError(
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
        raise InputError(
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


def train(config: str,
          work_dir: Optional[str] = None,
          cfg_options: Optional[dict] = None,
          amp: bool = False,
          auto_scale_lr: bool = False,
          resume: Optional[str] = None,
          launcher: str = 'none') -> torch.nn.Module:
    """Train the config's model, as MMDetection's ``tools/train.py`` does.

    Args:
        config (str): Config file.
        work_dir (str, optional): Where logs and checkpoints go; the
            config's, or ``./work_dirs/<config name>``.
        cfg_options (dict, optional): Overrides, as ``--cfg-options``.
        amp (bool): Mixed precision (:func:`enable_amp`). Defaults to False.
        auto_scale_lr (bool): Scale the learning rate by the total batch
            size (:func:`enable_auto_scale_lr`). Defaults to False.
        resume (str, optional): 'auto' or a checkpoint (:func:`set_resume`).
        launcher (str): 'none', 'pytorch', 'slurm' or 'mpi'.

    Returns:
        nn.Module: The trained model.
    """
    from ..engine.distributed import close_distributed
    cfg = load_config(config, cfg_options, launcher, work_dir)
    if amp:
        enable_amp(cfg)
    if auto_scale_lr:
        enable_auto_scale_lr(cfg)
    set_resume(cfg, resume)
    model = build_runner(cfg).train()
    close_distributed()
    return model


def test(config: str,
         checkpoint: str,
         work_dir: Optional[str] = None,
         cfg_options: Optional[dict] = None,
         out: Optional[str] = None,
         show: bool = False,
         show_dir: Optional[str] = None,
         wait_time: float = 2,
         tta: bool = False,
         deploy: bool = False,
         launcher: str = 'none') -> dict:
    """Evaluate a checkpoint of the config's model, as MMDetection's
    ``tools/test.py`` does. The checkpoint must fit the model
    (:mod:`poolformer_mm.checkpoint.fitting`).

    Args:
        config (str): Config file.
        checkpoint (str): The checkpoint.
        work_dir (str, optional): Where the metrics are written.
        cfg_options (dict, optional): Overrides, as ``--cfg-options``.
        out (str, optional): Detection: dump the predictions to this
            ``.pkl`` file; segmentation: save the predicted masks as PNGs
            into this directory.
        show (bool): Show the predictions. Defaults to False.
        show_dir (str, optional): Draw the predictions into this directory
            (relative: under the work dir).
        wait_time (float): Seconds each shown image stays. Defaults to 2.
        tta (bool): Test-time augmentation (the config's ``tta_model`` and
            ``tta_pipeline``). Defaults to False.
        deploy (bool): Test on the folded inference path
            (``SwitchToDeployHook``, after the checkpoint is loaded).
            Defaults to False.
        launcher (str): 'none', 'pytorch', 'slurm' or 'mpi'.

    Returns:
        dict: The metrics.

    Raises:
        InputError: ``out`` is not a ``.pkl`` file (detection), or the
            config lacks what ``show`` / ``tta`` need.
    """
    from ..engine.distributed import close_distributed
    cfg = load_config(config, cfg_options, launcher, work_dir)
    cfg.load_from = checkpoint
    if show or show_dir:
        _enable_visualization(cfg, show, show_dir, wait_time)
    if tta:
        _enable_tta(cfg)
    if out is not None and cfg.default_scope == 'mmdet' and not out.endswith(
            ('.pkl', '.pickle')):
        raise InputError(f'out must be a .pkl or .pickle file, got {out!r}')
    if out is not None and cfg.default_scope == 'mmseg':
        cfg.test_evaluator['output_dir'] = out
        cfg.test_evaluator['keep_results'] = True
    if deploy:
        # Registered by poolformer_mm.engine; switches after the checkpoint
        # is loaded.
        cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [
            dict(type='SwitchToDeployHook')
        ]
    runner = build_runner(cfg)
    if out is not None and cfg.default_scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=out))
    metrics = runner.test()
    close_distributed()
    return metrics


def _enable_visualization(cfg: Config, show: bool, show_dir: Optional[str],
                          wait_time: float) -> None:
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise InputError(
            'show / show_dir need default_hooks.visualization '
            '(DetVisualizationHook or SegVisualizationHook) in the config')
    hooks.visualization.draw = True
    if show:
        hooks.visualization.show = True
        hooks.visualization.wait_time = wait_time
    if show_dir:
        if cfg.default_scope == 'mmdet':
            hooks.visualization.test_out_dir = show_dir
        else:
            # MMSegmentation's visualizer writes to save_dir as given, i.e.
            # relative to the current directory; keep it in the work dir as
            # MMDetection does.
            cfg.visualizer.save_dir = osp.join(cfg.work_dir, show_dir)
            hooks.visualization.interval = 1


def _enable_tta(cfg: Config) -> None:
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise InputError(
            f'tta: the config defines no tta_model / tta_pipeline '
            f'({cfg.filename})')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


__all__: List[str] = [
    'build_model', 'build_runner', 'enable_amp', 'enable_auto_scale_lr',
    'load_config', 'set_resume', 'test', 'train'
]
