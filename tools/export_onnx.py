"""Export a config's backbone, Semantic FPN, or detector (up to its dense
heads) to ONNX, and check the file against PyTorch in ONNX Runtime.

The command line of :func:`poolformer_mm.apis.onnx_export.export_onnx`,
whose module docstring says what each part exports, which execution path
is written, how dynamic exports hold at other sizes and what ``--verify``
compares. Without CHECKPOINT the weights are random (nothing is
downloaded); a checkpoint may be of any naming
``poolformer_mm.checkpoint.fitting`` reads (backbone weights alone for
``--part backbone`` only) and must fit the config's model. Bad input is one
``error: ...`` line (exit status 1).

Examples:
    # the backbone alone, any batch and size, checked at two sizes
    python tools/export_onnx.py configs/retinanet_poolformer_s12.py \
        --part backbone --out s12.onnx --shape 512 512 --dynamic --verify
    # a trained Semantic FPN, image -> class logits at the input size
    python tools/export_onnx.py configs/sem_fpn_poolformer_s12.py \
        work_dirs/sem_fpn_poolformer_s12/iter_40000.pth --out fpn.onnx \
        --dynamic --verify
    # the folded inference path, timed against PyTorch
    python tools/export_onnx.py configs/sem_fpn_poolformer_s12.py \
        --out fpn.onnx --deploy --verify --benchmark 20
"""
import argparse
import sys

from poolformer_mm.apis.onnx_export import (MAX_OPSET, MIN_OPSET, PARTS,
                                            export_onnx)
from poolformer_mm.errors import CheckpointError, InputError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a backbone, Semantic FPN or detector (up to '
        'its dense heads) to ONNX')
    parser.add_argument('config', help='detector or segmentor config')
    parser.add_argument('checkpoint', nargs='?', help='weights (optional: '
                        'random weights without)')
    parser.add_argument('--out', required=True, help='the .onnx file')
    parser.add_argument('--part', choices=PARTS,
                        default='model', help='the whole model up to its '
                        'dense heads, or the backbone alone')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size (default 512 512, detectors '
                        '800 1344)')
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch, height and width')
    parser.add_argument('--opset', type=int, default=MIN_OPSET,
                        help=f'ONNX opset, {MIN_OPSET}..{MAX_OPSET}')
    parser.add_argument('--deploy', action='store_true',
                        help='export the folded inference path')
    parser.add_argument('--verify', action='store_true',
                        help='compare with PyTorch in ONNX Runtime')
    parser.add_argument('--benchmark', type=int, metavar='N', default=0,
                        help='time ONNX Runtime and PyTorch, N repetitions')
    # CHECKPOINT may also come after the options.
    return parser.parse_intermixed_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        return export_onnx(args.config, args.checkpoint, out=args.out,
                           part=args.part, shape=args.shape,
                           opset=args.opset, dynamic=args.dynamic,
                           deploy=args.deploy, verify=args.verify,
                           benchmark=args.benchmark)
    except (InputError, CheckpointError) as exc:
        sys.exit('error: ' + str(exc).replace('\n', ' '))


if __name__ == '__main__':
    main()
