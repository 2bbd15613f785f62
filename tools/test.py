"""Evaluate a checkpoint of a detector or segmentor (MMDetection's options).

The config's default_scope (mmdet or mmseg) decides which framework runs it.

Example:
    python tools/test.py configs/retinanet_poolformer_s12.py \
        work_dirs/retinanet_poolformer_s12/epoch_12.pth
    # the same on the inference fast path (docs/benchmark.md)
    python tools/test.py configs/retinanet_poolformer_s12.py \
        work_dirs/retinanet_poolformer_s12/epoch_12.pth --deploy
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction

from poolformer_mm.engine.distributed import close_distributed
from poolformer_mm.engine.tool_config import build_runner, load_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a PoolFormer detector or segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir',
        help='the directory to save the file containing evaluation metrics')
    parser.add_argument(
        '--out',
        help='detection: dump predictions to this .pkl file; segmentation: '
        'save predicted masks as PNGs into this directory')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where images drawn with predictions are saved; a '
        'relative one goes under the work dir (for detection under its '
        'timestamped run folder, as in MMDetection)')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument(
        '--tta', action='store_true', help='test time augmentation')
    parser.add_argument(
        '--deploy',
        action='store_true',
        help='test on the inference fast path: adds SwitchToDeployHook '
        '(switch_to_deploy() on the backbone after the checkpoint is loaded) '
        'to custom_hooks')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def enable_visualization(cfg: Config, args) -> None:
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise RuntimeError(
            '--show/--show-dir need default_hooks.visualization '
            '(DetVisualizationHook or SegVisualizationHook) in the config')
    hooks.visualization.draw = True
    if args.show:
        hooks.visualization.show = True
        hooks.visualization.wait_time = args.wait_time
    if args.show_dir:
        if cfg.default_scope == 'mmdet':
            hooks.visualization.test_out_dir = args.show_dir
        else:
            # MMSegmentation's visualizer writes to save_dir as given, i.e.
            # relative to the current directory; keep it in the work dir as
            # MMDetection does.
            cfg.visualizer.save_dir = osp.join(cfg.work_dir, args.show_dir)
            hooks.visualization.interval = 1


def enable_tta(cfg: Config) -> None:
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise RuntimeError(
            f'--tta: the config defines no tta_model / tta_pipeline '
            f'({cfg.filename})')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.launcher,
                      args.work_dir)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        enable_visualization(cfg, args)
    if args.tta:
        enable_tta(cfg)
    if args.out is not None and cfg.default_scope == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    if args.deploy:
        # Registered by poolformer_mm.engine; switches after the checkpoint
        # is loaded.
        cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [
            dict(type='SwitchToDeployHook')
        ]
    runner = build_runner(cfg)
    if args.out is not None and cfg.default_scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(
                f'--out must be a .pkl or .pickle file, got {args.out!r}')
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=args.out))
    metrics = runner.test()
    close_distributed()
    return metrics


if __name__ == '__main__':
    main()
