"""Count the parameters and FLOPs of a config's model, or of a backbone.

Examples:
    # a detector or segmentor at its test size
    python tools/analysis/get_flops.py configs/retinanet_poolformer_s12.py
    python tools/analysis/get_flops.py configs/sem_fpn_poolformer_s12.py \
        --shape 512 704
    # the backbone alone at 224x224, the papers' ImageNet setting
    python tools/analysis/get_flops.py --arch s12
    python tools/analysis/get_flops.py --arch caformer_s18

The table lists every top-level part of the model (backbone, neck, heads;
the backbone alone: stem, stages, output norms) with its parameters and
FLOPs (multiply-adds, the papers' "MACs"), and the total; the rows add up to
the total. What is counted and how, and how the test size is read from the
config: :mod:`poolformer_mm.apis.complexity`, whose :func:`analyze` this
tool runs (``analyze_config`` / ``analyze_arch`` from Python).
"""
import argparse
import sys
from typing import Optional, Sequence

from mmengine.config import DictAction

from poolformer_mm.apis.common import exit_on_error, quiet_logs
from poolformer_mm.apis.complexity import (MIN_SIZE, Complexity, analyze,
                                           format_complexity, input_size)
from poolformer_mm.errors import InputError

PROG = 'get_flops.py'


def shape_value(text: str) -> int:
    try:
        return input_size(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):

    def error(self, message: str) -> None:
        # One line, so that the message is what one sees.
        self.exit(2, f'{self.prog}: error: {message}\n')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = _Parser(
        prog=PROG,
        description='Parameters and FLOPs (multiply-adds) of a config\'s '
        'model at its test size, or of a backbone (--arch) at 224x224')
    parser.add_argument(
        'config', nargs='?', help='detector or segmentor config file')
    parser.add_argument(
        '--arch',
        help='count this backbone alone instead of a config: a PoolFormer '
        'arch (s12, s24, s36, m36, m48, or poolformer_s12, ...) or a '
        'MetaFormer arch (e.g. poolformerv2_s12, convformer_s18, '
        'caformer_s18)')
    parser.add_argument(
        '--shape',
        type=shape_value,
        nargs=2,
        metavar=('H', 'W'),
        help='network input size, used as given (each >= '
        f'{MIN_SIZE}); default: the config\'s test size (see '
        'poolformer_mm.apis.complexity), 224 224 with --arch')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Complexity:
    args = parse_args(argv)
    with exit_on_error(PROG), quiet_logs():
        result = analyze(args.config, args.arch, args.shape,
                         args.cfg_options)
    print(format_complexity(result))
    return result


if __name__ == '__main__':
    main(sys.argv[1:])
