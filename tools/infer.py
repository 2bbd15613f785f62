"""Draw a detector's or segmentor's predictions on images or a video.

The command line of :func:`poolformer_mm.apis.inference.infer`, whose
docstrings say what is written: under ``--out-dir``, ``vis/`` (the drawn
images, or the drawn video) and ``preds/`` (JSON per image, one for a
video; segmentation label maps as PNGs beside them).

CHECKPOINT may be a training checkpoint (``tools/train.py``), a whole-model
file (``tools/convert_weights.py --whole-model``) or backbone weights alone
(``tools/convert_weights.py``, any naming it reads); with backbone weights
the neck and heads are random and a warning says that the predictions are
meaningless. A checkpoint that does not fit the config's model is refused.
Bad input is one ``error: ...`` line (exit status 1), a bad option argparse's
usage message (exit status 2).

Example:
    python tools/infer.py configs/demo/retinanet_poolformer_s12_demo.py \
        work_dirs/demo/retinanet/epoch_7.pth data/demo/coco/val/
    python tools/infer.py configs/sem_fpn_poolformer_s12.py \
        sem_fpn_s12_ade20k.pth street.mp4 --out-dir outputs/street \
        --device cpu
"""
import argparse
import os.path as osp
import sys

import torch
from mmengine.config import DictAction

from poolformer_mm.apis.inference import check_device, check_score_thr, infer
from poolformer_mm.errors import CheckpointError, InputError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Draw and save the predictions of a PoolFormer detector '
        'or segmentor on an image, a folder of images or a video')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        'checkpoint',
        help='training checkpoint, whole-model file or backbone weights')
    parser.add_argument(
        'input', help='an image, a folder of images, or a video file')
    parser.add_argument(
        '--out-dir',
        default=osp.join('outputs', 'infer'),
        help='where vis/ and preds/ are written (default: outputs/infer)')
    parser.add_argument(
        '--score-thr',
        type=float,
        default=0.3,
        help='detection: draw and save instances scoring above this '
        '(default: 0.3); ignored for segmentation')
    parser.add_argument(
        '--device',
        default='cuda' if torch.cuda.is_available() else 'cpu',
        help='device to run on, e.g. cpu, cuda, cuda:1 (default: cuda if '
        'available, else cpu)')
    parser.add_argument(
        '--deploy',
        action='store_true',
        help='run on the inference fast path, as tools/test.py --deploy '
        '(switch_to_deploy() on the backbone after loading the checkpoint)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value (e.g. '
        'model.test_cfg.score_thr=0.01)')
    args = parser.parse_args(argv)
    try:
        check_score_thr(args.score_thr, '--score-thr')
        check_device(args.device, '--device')
    except InputError as exc:
        parser.error(str(exc))
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        result = infer(args.config, args.checkpoint, args.input,
                       out_dir=args.out_dir, score_thr=args.score_thr,
                       device=args.device, deploy=args.deploy,
                       cfg_options=args.cfg_options)
    except (InputError, CheckpointError) as exc:
        # One line, also where the message quotes torch's.
        sys.exit('error: ' + str(exc).replace('\n', ' '))
    drawn = ('the drawn video' if result.kind == 'video' else
             f'{len(result.vis)} drawn image(s)')
    print(f'\nwrote {drawn} to {osp.join(args.out_dir, "vis")} and the '
          f'predictions to {osp.join(args.out_dir, "preds")}')
    if result.backbone_only:
        print('warning: backbone weights only, the predictions are '
              'meaningless (see above)')
    return result


if __name__ == '__main__':
    main()
