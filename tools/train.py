"""Train a detector or segmentor from a config (MMDetection's options).

The config's default_scope (mmdet or mmseg) decides which framework runs it,
and its runner_type which runner (configs/_base_ name SafeRunner, so this
tool and MMDetection's / MMSegmentation's tools/train.py run the same thing).

Example:
    python tools/train.py configs/retinanet_poolformer_s12.py
"""
import argparse
import os
import sys

from mmengine.config import DictAction

from poolformer_mm.apis.runs import train
from poolformer_mm.errors import InputError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train a PoolFormer detector or segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='enable automatic mixed precision training (without CUDA: '
        'bfloat16 autocast on the CPU)')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate by total batch / base batch size')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint, or without a value from the '
        'latest complete checkpoint in the work dir')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value (e.g. '
        'train_dataloader.batch_size=4)')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        train(args.config, args.work_dir, args.cfg_options, args.amp,
              args.auto_scale_lr, args.resume, args.launcher)
    except InputError as exc:
        sys.exit(f'error: {exc}')


if __name__ == '__main__':
    main()
