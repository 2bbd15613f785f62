"""Draw the four stage outputs of a PoolFormer / MetaFormer backbone on an
image, to see what each level holds and whether the weights loaded.

One picture, one row per stage (stride 4, 8, 16, 32): the input image, the
channel-mean activation and the ``--topk`` strongest channels over it. The
tool prints which weights it loaded (from CHECKPOINT, else the config's
``init_cfg``, else random: it says which, with every tensor missing or left
unused) and per stage the statistics of the features. What is drawn, how
the weights are fitted and the image resized:
:mod:`poolformer_mm.apis.features`, whose :func:`visualize` this tool runs
(``feature_maps`` and ``draw_features`` from Python).

Examples:
    python tools/analysis/vis_features.py \
        configs/retinanet_poolformer_s12.py \
        work_dirs/retinanet_poolformer_s12/epoch_12.pth demo.jpg \
        --out feats.png
    # the config's ImageNet weights (init_cfg), input 512x512
    python tools/analysis/vis_features.py configs/sem_fpn_poolformer_s12.py \
        demo.jpg --shape 512 512 --out feats.png
    # random weights, for comparison
    python tools/analysis/vis_features.py configs/sem_fpn_poolformer_s12.py \
        demo.jpg --out random.png --cfg-options model.backbone.init_cfg=None
"""
import argparse
import sys

from mmengine.config import DictAction

from poolformer_mm.apis.common import exit_on_error, quiet_logs
from poolformer_mm.apis.features import format_features, visualize


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Draw the stage outputs of a PoolFormer / MetaFormer '
        'backbone on an image')
    parser.add_argument(
        'config', help='detection or segmentation config of this repo')
    parser.add_argument(
        'checkpoint',
        nargs='?',
        help='optional: training checkpoint, whole-model file or backbone '
        'weights (any naming poolformer_mm.checkpoint reads); default: the '
        "config's init_cfg, or random weights")
    parser.add_argument('image', help='image file')
    parser.add_argument(
        '--out', default='features.png', help='picture to write (.png)')
    parser.add_argument(
        '--topk',
        type=int,
        default=4,
        help='channels of highest mean activation drawn per stage')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help="resize the image to exactly H x W instead of the config's "
        'test pipeline resize')
    parser.add_argument(
        '--max-size',
        type=int,
        default=1333,
        help='longest image side when the test pipeline has no Resize')
    parser.add_argument(
        '--alpha',
        type=float,
        default=0.7,
        help='opacity of the feature maps over the image (1: maps alone)')
    parser.add_argument('--device', default='cpu', help="e.g. 'cuda'")
    parser.add_argument(
        '--seed',
        type=int,
        default=0,
        help='seed of the random initialisation (weights not loaded)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value (e.g. '
        'model.backbone.init_cfg=None for random weights)')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    # Bad input: one 'error: ...' line and exit status 1, as before.
    with exit_on_error(status=1), quiet_logs():
        result, (width, height) = visualize(
            args.config, args.image, args.out, args.checkpoint,
            topk=args.topk, shape=args.shape, max_size=args.max_size,
            alpha=args.alpha, device=args.device, seed=args.seed,
            cfg_options=args.cfg_options)
    print(format_features(result))
    cols = result.columns
    print(f'wrote {args.out}: {width}x{height} px, {len(result.features)} '
          f'rows (stages) x {cols} columns (image, channel mean, '
          f'{cols - 2} strongest channels)')


if __name__ == '__main__':
    main(sys.argv[1:])
