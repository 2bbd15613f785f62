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
import sys

from mmengine.config import DictAction

from poolformer_mm.apis.runs import test
from poolformer_mm.errors import CheckpointError, InputError


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


def main(argv=None):
    args = parse_args(argv)
    try:
        return test(args.config, args.checkpoint, args.work_dir,
                    args.cfg_options, args.out, args.show, args.show_dir,
                    args.wait_time, args.tta, args.deploy, args.launcher)
    except (InputError, CheckpointError) as exc:
        sys.exit('error: ' + str(exc).replace('\n', ' '))


if __name__ == '__main__':
    main()
